r"""The linear self-attention (LSA) model: configuration, parameter names and shapes, init.

A layer acts on tokens ``E`` of shape (B, T, D), ``T = N + 1``, ``D = d + 1`` (row vectors).
With ``C`` the tokens that are attended to (the N context tokens; all T tokens when
``include_query``), and for each head h:

    Q_h = E W_q[h]   (B, T, k)      K_h = C W_k[h]   (B, N_k, k)      V_h = C W_v[h]   (B, N_k, v)
    E  <-  E + sum_h (Q_h K_h^T) V_h W_o[h]                          (no softmax, no 1/N)

``sum_h (...) W_o[h]`` is ``concat_h(A_h V_h) W_o`` with ``W_o`` cut into per-head blocks.
The prediction is read out with a sign flip: ``yhat = -E_out[:, query, d]``.

Parameters live in a flat dict, the same names in every backend:

    "layer{l}.w_q" (H, D, k)   "layer{l}.w_k" (H, D, k)   "layer{l}.w_v" (H, D, v)   "layer{l}.w_o" (H, v, D)

for l = 0 .. n_layers - 1; a tied (recurrent) model has one set, "shared.w_q", ..., used by
every layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd import limits
from iclgd._checks import DRAW_BOUND, cast_finite, check_named_arrays, finite_array, finite_float, float_dtype, largest, max_abs, positive_int
from iclgd.streams import as_generator

WEIGHT_NAMES = ("w_q", "w_k", "w_v", "w_o")


@dataclass(frozen=True)
class LSAConfig:
    """Shape of a linear self-attention model.

    d:             input dimension (tokens have d + 1 entries)
    n_layers:      number of layers K
    n_heads:       heads per layer H
    key_size:      k, columns of W_q and W_k per head (default d + 1)
    value_size:    v, columns of W_v per head (default key_size)
    tied:          one set of weights shared by all layers (the recurrent variant)
    include_query: the query token is also a key/value (off in the paper's construction)
    n_context:     N, if known: then token batches must have N context tokens, and the
                   GD construction (whose output weight is eta / N) can be built from cfg alone
    dtype:         "float64" (default) or "float32", the precision backends compute in
    """

    d: int
    n_layers: int = 1
    n_heads: int = 1
    key_size: int | None = None
    value_size: int | None = None
    tied: bool = False
    include_query: bool = False
    n_context: int | None = None
    dtype: str = "float64"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "d", positive_int("d", self.d))
        set_(self, "n_layers", positive_int("n_layers", self.n_layers, maximum=limits.MAX_LAYERS))
        set_(self, "n_heads", positive_int("n_heads", self.n_heads))
        key_size = self.d + 1 if self.key_size is None else positive_int("key_size", self.key_size)
        set_(self, "key_size", key_size)
        value_size = key_size if self.value_size is None else positive_int("value_size", self.value_size)
        set_(self, "value_size", value_size)
        for flag in ("tied", "include_query"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise ValueError(f"{flag} must be True or False; got {getattr(self, flag)!r}")
            set_(self, flag, bool(getattr(self, flag)))
        if self.n_context is not None:
            set_(self, "n_context", positive_int("n_context", self.n_context))
        set_(self, "dtype", float_dtype("dtype", self.dtype).name)
        limits.check_bytes(
            f"the model (d = {self.d}, n_layers = {self.n_layers}, n_heads = {self.n_heads}, key_size = {self.key_size}, "
            f"value_size = {self.value_size}, tied = {self.tied})",
            limits.init_params_bytes(self),
            f"its {limits.lsa_param_count(self)} parameters (drawn in float64 by init_params, kept in {self.dtype})",
        )

    @property
    def family(self) -> str:
        """The [model] family name in a run config ("lsa"; see iclgd.gd_models for "gd", "gdpp")."""
        return "lsa"

    @property
    def token_size(self) -> int:
        """D = d + 1."""
        return self.d + 1


def layer_prefixes(cfg: LSAConfig) -> list[str]:
    """The parameter-name prefix used by each layer, in order (repeated when tied)."""
    if cfg.tied:
        return ["shared"] * cfg.n_layers
    return [f"layer{layer}" for layer in range(cfg.n_layers)]


def check_config(cfg: object) -> LSAConfig:
    """``cfg`` itself, or ValueError unless it is an LSAConfig."""
    if not isinstance(cfg, LSAConfig):
        raise ValueError(f"cfg must be an iclgd.LSAConfig; got {type(cfg).__name__}")
    return cfg


def param_shapes(cfg: LSAConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in a fixed order."""
    check_config(cfg)
    h, dim, k, v = cfg.n_heads, cfg.token_size, cfg.key_size, cfg.value_size
    shapes = {"w_q": (h, dim, k), "w_k": (h, dim, k), "w_v": (h, dim, v), "w_o": (h, v, dim)}
    return {f"{prefix}.{name}": shapes[name] for prefix in dict.fromkeys(layer_prefixes(cfg)) for name in WEIGHT_NAMES}


def attention_products(params: dict, prefix: str):
    """The two products a layer's weights enter the model through, for the layer ``prefix``:

        P_h = W_q[h] W_k[h]^T  (H, D, D)        R_h = W_v[h] W_o[h]  (H, D, D)

    so that a layer is ``E' = E + sum_h (E P_h C^T)(C R_h)``.  Written with ``@`` and
    ``swapaxes``, it works on NumPy and jax arrays alike (every engine builds them here)."""
    w_q, w_k, w_v, w_o = (params[f"{prefix}.{name}"] for name in WEIGHT_NAMES)
    return w_q @ w_k.swapaxes(-1, -2), w_v @ w_o


def init_params(cfg: LSAConfig, seed: int | np.random.Generator = 0, scale: float = 0.002) -> dict[str, np.ndarray]:
    """Small variance-scaled Gaussian init: every entry ``~ N(0, scale / fan_in)``, with
    fan_in = D for W_q, W_k, W_v and H * v for W_o (scale 0.002 as in the paper).
    Returned in ``cfg.dtype``; a scale whose draws would overflow it is refused."""
    check_config(cfg)
    rng = as_generator(seed)
    scale = check_init_scale(cfg, scale)
    params = {}
    for name, shape in param_shapes(cfg).items():
        fan_in = cfg.n_heads * cfg.value_size if name.endswith("w_o") else cfg.token_size
        params[name] = (np.sqrt(scale / fan_in) * rng.standard_normal(shape)).astype(cfg.dtype)
    return params


def check_init_scale(cfg: LSAConfig, scale: object, name: str = "scale") -> float:
    """``scale`` as a float, or ValueError unless it is finite, >= 0 and its draws fit ``cfg.dtype``
    (every entry sqrt(scale / fan_in) N(0, 1) is below DRAW_BOUND sqrt(scale / fan_in))."""
    check_config(cfg)
    scale = finite_float(name, scale, nonnegative=True)
    smallest_fan_in = min(cfg.token_size, cfg.n_heads * cfg.value_size)
    reach = DRAW_BOUND * np.sqrt(scale / smallest_fan_in)
    if reach > largest(cfg.dtype):
        raise ValueError(
            f"{name} = {scale:.3g} is too large for {cfg.dtype}: entries sqrt({name} / fan_in) N(0, 1) can reach "
            f"{DRAW_BOUND:g} sqrt({name} / {smallest_fan_in}) = {reach:.3g}, above the largest {cfg.dtype} {largest(cfg.dtype):.3g}"
        )
    return scale


def zero_params(cfg: LSAConfig) -> dict[str, np.ndarray]:
    """All-zero parameters (the model then returns yhat = -(query y-slot) = 0)."""
    return {name: np.zeros(shape, dtype=cfg.dtype) for name, shape in param_shapes(cfg).items()}


def check_params(cfg: LSAConfig, params: object) -> dict[str, np.ndarray]:
    """Raise ValueError unless ``params`` has exactly the names and shapes of ``param_shapes(cfg)``
    and only finite values that fit ``cfg.dtype``; return it as a dict of arrays in ``cfg.dtype``."""
    check_config(cfg)
    return check_named_arrays(
        params, param_shapes(cfg), cfg.dtype, f"n_layers={cfg.n_layers}, tied={cfg.tied}",
        f"n_heads={cfg.n_heads}, D={cfg.token_size}, key_size={cfg.key_size}, value_size={cfg.value_size}",
    )


def check_tokens(cfg: LSAConfig, tokens: object) -> np.ndarray:
    """Raise ValueError unless ``tokens`` is a finite (B, N + 1, d + 1) array with N >= 1
    (and N = cfg.n_context when that is set) whose values fit ``cfg.dtype``, and a pass of the
    model over it fits in memory (``iclgd.limits``); return it in ``cfg.dtype``."""
    check_config(cfg)
    tokens = finite_array("tokens", tokens, ndim=3)
    n_context = cfg.n_context if cfg.n_context is not None else "N"
    expected = f"(B, {n_context} + 1, d + 1 = {cfg.token_size})"
    if tokens.shape[2] != cfg.token_size or tokens.shape[1] < 2 or tokens.shape[0] < 1:
        raise ValueError(f"tokens must have shape {expected} with B >= 1, N >= 1; got {tokens.shape}")
    if cfg.n_context is not None and tokens.shape[1] != cfg.n_context + 1:
        raise ValueError(f"tokens must have shape {expected}; got {tokens.shape}")
    batch_size, n = tokens.shape[0], tokens.shape[1] - 1
    limits.check_bytes(f"tokens of shape {tokens.shape}", limits.lsa_pass_bytes(cfg, batch_size, n),
                       f"a pass of {limits.lsa_shape_text(cfg, batch_size, n)}")
    return cast_finite("tokens", tokens, cfg.dtype)


def check_batch(batch: object) -> None:
    """Raise ValueError unless ``batch`` has .tokens and .targets (an iclgd.Batch)."""
    if not (hasattr(batch, "tokens") and hasattr(batch, "targets")):
        raise ValueError(f"batch must be an iclgd.Batch (with .tokens and .targets); got {type(batch).__name__}")


def check_targets(cfg: LSAConfig, targets: object, batch_size: int) -> np.ndarray:
    """Raise ValueError unless ``targets`` is a finite (B,) array that fits ``cfg.dtype``; return it in ``cfg.dtype``."""
    check_config(cfg)
    targets = finite_array("targets", targets, ndim=1)
    if targets.shape[0] != batch_size:
        raise ValueError(f"targets must have shape (B,) = ({batch_size},); got {targets.shape}")
    return cast_finite("targets", targets, cfg.dtype)


def check_outputs(cfg: LSAConfig, what: str, outputs, params: dict, tokens: np.ndarray, targets: np.ndarray | None = None):
    """``outputs`` unchanged (an array, a number, a list or a dict of them, NumPy or jax), or
    ValueError if any entry is NaN or inf.

    The inputs are finite when this is called (check_params, check_tokens, check_targets), so a
    NaN or inf is an overflow of ``cfg.dtype`` inside the engine: a layer is cubic in its tokens
    and linear in each weight, so K layers grow like |tokens|^(3^K).  This is checked after the
    pass rather than bounded before it, since any bound on the inputs that holds for every
    model would refuse deep models on ordinary inputs; the message names the inputs with their
    largest entries, so that the caller sees which one to scale down."""
    if isinstance(outputs, dict):
        arrays = list(outputs.values())
    elif isinstance(outputs, (list, tuple)):
        arrays = list(outputs)
    else:
        arrays = [outputs]
    bad = total = 0
    for array in arrays:
        array = np.asarray(array)
        bad += int(array.size - np.count_nonzero(np.isfinite(array)))
        total += int(array.size)
    if not bad:
        return outputs
    largest_param = max(params, key=lambda name: max_abs(np.asarray(params[name])), default=None)
    inputs = [f"tokens (largest |entry| {max_abs(np.asarray(tokens)):.3g})"]
    if largest_param is not None:
        inputs.append(f"params (largest |entry| {max_abs(np.asarray(params[largest_param])):.3g}, in {largest_param!r})")
    if targets is not None:
        inputs.append(f"targets (largest |entry| {max_abs(np.asarray(targets)):.3g})")
    raise ValueError(
        f"{', '.join(inputs)} are too large for this model in {cfg.dtype}: its {what} overflows "
        f"({bad} of {total} entries NaN/inf; the largest {cfg.dtype} is {largest(cfg.dtype):.3g}, and "
        f"{cfg.n_layers} layer(s) grow like |tokens|^(3^{cfg.n_layers}))"
    )
