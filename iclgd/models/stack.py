r"""The attention stack: von Oswald et al.'s transformers beyond the constructed LSA.

Configuration, parameter names and shapes, initialisation and input checks of a small stack of
self-attention layers, each layer softmax or linear, with optional positional encoding, learned
embedding, pre-LayerNorm and MLP sublayers.  The engines (``iclgd.backends.numpy_stack``, the
oracle, and ``iclgd.backends.jax_stack``) compute what this docstring defines.

Row-vector convention.  B batch, T tokens (the last one, index T - 1, is the query), D the raw
token size, P the positional size, C the model width, H heads.  The keys and values are the
rows ``keys`` = 0 .. T - 2 (N_k = T - 1 of them), or every row 0 .. T - 1 (N_k = T) when
``query_attended``; every row is a query.

Stream in (one of):

    h_0 = [X | PE]                                   X (B, T, D), PE (T, P), h_0 (B, T, C = D + P)
          PE[t, 2i] = sin(t / 10000^(2i / P)),  PE[t, 2i + 1] = cos(t / 10000^(2i / P)),  t = 0 .. T - 1
    h_0 = E + GELU(E W_in + b_in) W_out + b_out,   E = X W_embed    (embedding "mlp", P = 0)
          W_embed (D, C), W_in (C, M), b_in (M,), W_out (M, C), b_out (C,); C = d_embed, M = d_embed_hidden

Each layer l = 0 .. L - 1 (pre-LN; LN is the identity without ``layer_norm``):

    a = LN_l(h)                                                      (B, T, C)
    per head j:  Q_j = a W_q[j]   K_j = a[:, keys] W_k[j]   V_j = a[:, keys] W_v[j]
                 (B, T, C), (B, N_k, C), (B, N_k, C): key and value size C, W_* (H, C, C)
    softmax:     A_j = softmax over the keys of Q_j K_j^T / sqrt(C)   (B, T, N_k)
    linear:      A_j = Q_j K_j^T                                      (no scale, no 1/N)
    h <- h + sum_j (A_j V_j) W_o[j]
    with mlp:    h <- h + GELU(LN'_l(h) W1 + b1) W2 + b2              W1 (C, 4C), W2 (4C, C)

Read-out and loss (the authors' sign flip, and the LSA's half-MSE):

    yhat = -h_L[:, T - 1, C - 1]                                     (B,)
    loss = 0.5 mean_b (yhat_b - y_b)^2

Note that the read-out is the last coordinate of the stream: with a positional encoding
(P > 0) that is the last positional coordinate of the query, which the layers must write into.

LN(x) = (x - mean) / sqrt(var + 1e-5) * weight + bias over the last axis (biased variance).
GELU is the tanh approximation (jax.nn.gelu's default):

    gelu(u) = 0.5 u (1 + tanh(sqrt(2 / pi) (u + 0.044715 u^3)))

Parameters, a flat dict name -> array, the same names in every engine (``param_shapes``):

    "embed.w" (D, C), "embed.mlp.w_in" (C, M), "embed.mlp.b_in" (M,),
    "embed.mlp.w_out" (M, C), "embed.mlp.b_out" (C,)                         (embedding "mlp")
    "layer{l}.ln.weight", "layer{l}.ln.bias" (C,)                            (layer_norm)
    "layer{l}.w_q", "layer{l}.w_k", "layer{l}.w_v", "layer{l}.w_o" (H, C, C)
    "layer{l}.mlp_ln.weight", "layer{l}.mlp_ln.bias" (C,)                    (layer_norm and mlp)
    "layer{l}.mlp.w_in" (C, 4C), "layer{l}.mlp.b_in" (4C,),
    "layer{l}.mlp.w_out" (4C, C), "layer{l}.mlp.b_out" (C,)                  (mlp)

Initialisation (the authors', haiku's VarianceScaling(scale, "fan_in", "truncated_normal")):
every weight matrix ~ sigma * z, z a standard normal truncated to [-2, 2] and
sigma = sqrt(scale / fan_in) / 0.87962566103423978 (the truncated normal's std is 0.8796...,
so the entries have std sqrt(scale / fan_in)); fan_in is the input size of the map (C for
every attention matrix, D for W_embed, C for W_in, M or 4C for W_out); biases 0; LN weight 1
and bias 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd import limits
from iclgd._checks import (
    cast_finite,
    check_named_arrays,
    finite_array,
    finite_float,
    float_dtype,
    largest,
    max_abs,
    nonnegative_int,
    positive_int,
)
from iclgd.streams import as_generator

ATTENTION_KINDS = ("softmax", "linear")
EMBEDDINGS = ("none", "mlp")

#: LayerNorm's epsilon (PyTorch's and haiku's default as the authors use it).
LN_EPS = 1e-5

#: The standard deviation of a standard normal truncated to [-2, 2] (haiku divides by it).
TRUNCATED_STD = 0.87962566103423978

#: Truncation of the initial draws, in units of sigma.
TRUNCATION = 2.0

#: The hidden width of a layer's MLP is this many times C.
MLP_EXPANSION = 4

_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))
_GELU_CUBIC = 0.044715


@dataclass(frozen=True)
class StackConfig:
    """Shape of an attention stack (see the module docstring for the model).

    token_size:       D, entries of a raw token
    attention:        one kind per layer, each "softmax" or "linear"; n_layers = len(attention)
    n_heads:          H, heads per layer (each head has key and value size C)
    positional_size:  P >= 0, even: a fixed sinusoidal encoding concatenated after each token
    embedding:        "none" (h_0 = [X | PE]) or "mlp" (h_0 = E + MLP(E), E = X W_embed; needs P = 0)
    d_embed:          C when embedding == "mlp"
    d_embed_hidden:   hidden width of the embedding's MLP
    layer_norm:       pre-LN before every attention (and MLP) sublayer; no final LN
    mlp:              an MLP sublayer (hidden 4C, GELU) after each attention sublayer
    query_attended:   the query token (the last) is a key/value too
    dtype:            "float64" (default) or "float32", the precision engines compute in
    """

    token_size: int
    attention: tuple[str, ...] = ("softmax", "linear")
    n_heads: int = 1
    positional_size: int = 0
    embedding: str = "none"
    d_embed: int = 40
    d_embed_hidden: int = 160
    layer_norm: bool = False
    mlp: bool = False
    query_attended: bool = False
    dtype: str = "float64"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "token_size", positive_int("token_size", self.token_size, maximum=1_000_000))
        set_(self, "attention", _attention_kinds(self.attention))
        set_(self, "n_heads", positive_int("n_heads", self.n_heads, maximum=1_000_000))
        size = nonnegative_int("positional_size", self.positional_size, maximum=1_000_000)
        if size % 2:
            raise ValueError(f"positional_size must be even (sin and cos pairs); got {size}")
        set_(self, "positional_size", size)
        if not isinstance(self.embedding, str) or self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {list(EMBEDDINGS)}; got {self.embedding!r}")
        if self.embedding == "mlp" and size:
            raise ValueError(
                f'embedding "mlp" takes no positional encoding: positional_size must be 0; got {size}'
            )
        set_(self, "d_embed", positive_int("d_embed", self.d_embed, maximum=1_000_000))
        set_(self, "d_embed_hidden", positive_int("d_embed_hidden", self.d_embed_hidden, maximum=1_000_000))
        for flag in ("layer_norm", "mlp", "query_attended"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise ValueError(f"{flag} must be True or False; got {getattr(self, flag)!r}")
            set_(self, flag, bool(getattr(self, flag)))
        set_(self, "dtype", float_dtype("dtype", self.dtype).name)
        count = param_count(self)
        limits.check_bytes(
            f"the attention stack (n_layers = {self.n_layers}, n_heads = {self.n_heads}, width = {self.width})",
            count * (2 * 8 + np.dtype(self.dtype).itemsize),
            f"its {count} parameters (drawn in float64 by init_params, kept in {self.dtype})",
        )

    @property
    def family(self) -> str:
        """The model family's name."""
        return "stack"

    @property
    def n_layers(self) -> int:
        """L = len(attention)."""
        return len(self.attention)

    @property
    def width(self) -> int:
        """C: D + P without an embedding, d_embed with the "mlp" embedding."""
        return self.d_embed if self.embedding == "mlp" else self.token_size + self.positional_size


def _attention_kinds(value: object) -> tuple[str, ...]:
    """``value`` as a non-empty tuple of attention kinds, or ValueError."""
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise ValueError(
            f"attention must be a tuple with one kind per layer, each one of {list(ATTENTION_KINDS)} "
            f"(e.g. ('softmax', 'linear')); got {value!r}"
        )
    kinds = tuple(value)
    if not kinds:
        raise ValueError("attention must name at least one layer; got an empty tuple")
    if len(kinds) > limits.MAX_LAYERS:
        raise ValueError(f"attention may name at most {limits.MAX_LAYERS} layers; got {len(kinds)}")
    for layer, kind in enumerate(kinds):
        if not isinstance(kind, str) or kind not in ATTENTION_KINDS:
            raise ValueError(
                f"attention[{layer}] must be one of {list(ATTENTION_KINDS)} (the unknown attention kind "
                f"is {kind!r}); got attention = {value!r}"
            )
    return kinds


def check_config(cfg: object) -> StackConfig:
    """``cfg`` itself, or ValueError unless it is a StackConfig."""
    if not isinstance(cfg, StackConfig):
        raise ValueError(f"cfg must be an iclgd.models.stack.StackConfig; got {type(cfg).__name__}")
    return cfg


# --- parameters ----------------------------------------------------------------------------------------


def layer_shapes(cfg: StackConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """The parameters of layer ``layer``, in order."""
    c, h, prefix = cfg.width, cfg.n_heads, f"layer{layer}."
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.layer_norm:
        shapes |= {prefix + "ln.weight": (c,), prefix + "ln.bias": (c,)}
    shapes |= {prefix + name: (h, c, c) for name in ("w_q", "w_k", "w_v", "w_o")}
    if cfg.mlp:
        hidden = MLP_EXPANSION * c
        if cfg.layer_norm:
            shapes |= {prefix + "mlp_ln.weight": (c,), prefix + "mlp_ln.bias": (c,)}
        shapes |= {
            prefix + "mlp.w_in": (c, hidden), prefix + "mlp.b_in": (hidden,),
            prefix + "mlp.w_out": (hidden, c), prefix + "mlp.b_out": (c,),
        }
    return shapes


def param_shapes(cfg: StackConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in a fixed order (see the module docstring)."""
    check_config(cfg)
    c = cfg.width
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.embedding == "mlp":
        m = cfg.d_embed_hidden
        shapes |= {
            "embed.w": (cfg.token_size, c),
            "embed.mlp.w_in": (c, m), "embed.mlp.b_in": (m,),
            "embed.mlp.w_out": (m, c), "embed.mlp.b_out": (c,),
        }
    for layer in range(cfg.n_layers):
        shapes |= layer_shapes(cfg, layer)
    return shapes


def param_count(cfg: StackConfig) -> int:
    """The number of scalar parameters."""
    return sum(int(np.prod(shape)) for shape in param_shapes(cfg).values())


def fan_in(cfg: StackConfig, name: str) -> int | None:
    """The input size of the map a weight matrix belongs to; None for biases and LN parameters."""
    if name.endswith(("weight", "bias")) or ".b_" in name:
        return None
    if name == "embed.w":
        return cfg.token_size
    if name == "embed.mlp.w_out":
        return cfg.d_embed_hidden
    if name.endswith("mlp.w_out"):
        return MLP_EXPANSION * cfg.width
    return cfg.width  # w_q, w_k, w_v, w_o (each head maps C to C), mlp.w_in, embed.mlp.w_in


def truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal draws conditioned on |z| <= 2 (float64), by rejection: draw, then redraw
    the entries outside [-2, 2] until none is left (about 4.6 % of them each round)."""
    z = rng.standard_normal(shape)
    outside = np.abs(z) > TRUNCATION
    while outside.any():
        z[outside] = rng.standard_normal(int(np.count_nonzero(outside)))
        outside = np.abs(z) > TRUNCATION
    return z


def check_init_scale(cfg: StackConfig, scale: object, name: str = "scale") -> float:
    """``scale`` as a float, or ValueError unless it is finite, > 0 and its draws fit ``cfg.dtype``."""
    check_config(cfg)
    scale = finite_float(name, scale, positive=True)
    fans = [fan_in(cfg, key) for key in param_shapes(cfg)]
    smallest = min(f for f in fans if f is not None)
    reach = TRUNCATION * np.sqrt(scale / smallest) / TRUNCATED_STD
    if not np.isfinite(reach) or reach > largest(cfg.dtype):
        raise ValueError(
            f"{name} = {scale:.3g} is too large for {cfg.dtype}: entries can reach 2 sqrt({name} / {smallest}) / "
            f"{TRUNCATED_STD:.4f} = {reach:.3g}, above the largest {cfg.dtype} {largest(cfg.dtype):.3g}"
        )
    return scale


def init_params(cfg: StackConfig, seed: int | np.random.Generator = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """The authors' init (module docstring): weight matrices sigma * z, z truncated standard normal
    on [-2, 2], sigma = sqrt(scale / fan_in) / 0.8796...; biases 0; LN weight 1, bias 0.
    Drawn in float64 in ``param_shapes`` order from ``seed`` (an int >= 0 or a Generator),
    returned in ``cfg.dtype``."""
    check_config(cfg)
    scale = check_init_scale(cfg, scale)
    rng = as_generator(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        inputs = fan_in(cfg, name)
        if inputs is None:
            value = np.ones(shape) if name.endswith("ln.weight") else np.zeros(shape)
        else:
            value = (np.sqrt(scale / inputs) / TRUNCATED_STD) * truncated_normal(rng, shape)
        params[name] = value.astype(cfg.dtype)
    return params


def zero_params(cfg: StackConfig) -> dict[str, np.ndarray]:
    """All-zero parameters (LN weights too): every sublayer then adds 0 (the MLPs add their zero
    biases), so h_L = h_0 and yhat = -h_0[:, T - 1, C - 1]."""
    return {name: np.zeros(shape, dtype=cfg.dtype) for name, shape in param_shapes(cfg).items()}


# --- input checks: every engine validates through these ------------------------------------------------


def check_params(cfg: StackConfig, params: object) -> dict[str, np.ndarray]:
    """Raise ValueError unless ``params`` has exactly the names and shapes of ``param_shapes(cfg)``
    and only finite values that fit ``cfg.dtype``; return it as a dict of arrays in ``cfg.dtype``."""
    check_config(cfg)
    return check_named_arrays(
        params, param_shapes(cfg), cfg.dtype,
        f"attention={cfg.attention}, embedding={cfg.embedding!r}, layer_norm={cfg.layer_norm}, mlp={cfg.mlp}",
        f"n_heads={cfg.n_heads}, D={cfg.token_size}, C={cfg.width}, d_embed_hidden={cfg.d_embed_hidden}",
    )


def min_tokens(cfg: StackConfig) -> int:
    """The fewest tokens a sequence may have: 2 (a key and the query), 1 when the query is a key."""
    return 1 if cfg.query_attended else 2


def pass_bytes(cfg: StackConfig, batch_size: int, n_tokens: int) -> int:
    """An upper estimate of the memory of one forward and backward pass: per layer the cached
    activations (about 8 C + 8 (4C) numbers per token and 4 H C + 4 H T for the heads) twice over,
    in float64, plus the embedding's."""
    b, t, c, h = batch_size, n_tokens, cfg.width, cfg.n_heads
    per_layer = b * t * (8 * c + 4 * h * c + 4 * h * t + (8 * MLP_EXPANSION * c if cfg.mlp else 0))
    embed = b * t * (4 * c + 3 * cfg.d_embed_hidden + cfg.token_size + cfg.positional_size)
    return 2 * 8 * (cfg.n_layers * per_layer + embed) + 3 * 8 * param_count(cfg)


def check_tokens(cfg: StackConfig, tokens: object) -> np.ndarray:
    """Raise ValueError unless ``tokens`` is a finite (B, T, D) array (B >= 1, T >= 2, or T >= 1
    when the query is attended) whose values fit ``cfg.dtype`` and whose pass fits in memory;
    return it in ``cfg.dtype``."""
    check_config(cfg)
    tokens = finite_array("tokens", tokens, ndim=3)
    fewest = min_tokens(cfg)
    if tokens.shape[0] < 1 or tokens.shape[1] < fewest or tokens.shape[2] != cfg.token_size:
        raise ValueError(
            f"tokens must have shape (B, T, D = {cfg.token_size}) with B >= 1 and T >= {fewest} "
            f"(the last token is the query); got {tokens.shape}"
        )
    limits.check_bytes(f"tokens of shape {tokens.shape}", pass_bytes(cfg, tokens.shape[0], tokens.shape[1]),
                       f"a pass of the attention stack over {tokens.shape[0]} sequences of {tokens.shape[1]} tokens")
    return cast_finite("tokens", tokens, cfg.dtype)


def check_targets(cfg: StackConfig, targets: object, batch_size: int) -> np.ndarray:
    """Raise ValueError unless ``targets`` is a finite (B,) array that fits ``cfg.dtype``; return it in ``cfg.dtype``."""
    check_config(cfg)
    targets = finite_array("targets", targets, ndim=1)
    if targets.shape[0] != batch_size:
        raise ValueError(f"targets must have shape (B,) = ({batch_size},); got {targets.shape}")
    return cast_finite("targets", targets, cfg.dtype)


def check_outputs(cfg: StackConfig, what: str, outputs, params: dict, tokens: np.ndarray, targets: np.ndarray | None = None):
    """``outputs`` unchanged (an array, a number, a list or a dict of them), or ValueError if any
    entry is NaN or inf: the inputs were finite, so the engine overflowed ``cfg.dtype``; the
    message names the inputs with their largest entries."""
    arrays = list(outputs.values()) if isinstance(outputs, dict) else list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    bad = sum(int(np.asarray(a).size - np.count_nonzero(np.isfinite(np.asarray(a)))) for a in arrays)
    if not bad:
        return outputs
    total = sum(int(np.asarray(a).size) for a in arrays)
    inputs = [f"tokens (largest |entry| {max_abs(np.asarray(tokens)):.3g})"]
    if params:
        name = max(params, key=lambda key: max_abs(np.asarray(params[key])))
        inputs.append(f"params (largest |entry| {max_abs(np.asarray(params[name])):.3g}, in {name!r})")
    if targets is not None:
        inputs.append(f"targets (largest |entry| {max_abs(np.asarray(targets)):.3g})")
    raise ValueError(
        f"{', '.join(inputs)} are too large for this attention stack in {cfg.dtype}: its {what} overflows "
        f"({bad} of {total} entries NaN/inf; the largest {cfg.dtype} is {largest(cfg.dtype):.3g})"
    )


# --- fixed functions -----------------------------------------------------------------------------------


def sinusoidal_encoding(n_tokens: int, size: int) -> np.ndarray:
    """PE (T, P) in float64: PE[t, 2i] = sin(t / 10000^(2i / P)), PE[t, 2i + 1] = cos(t / 10000^(2i / P)),
    t = 0 .. T - 1, i = 0 .. P/2 - 1 (P = 0: a (T, 0) array)."""
    n_tokens = nonnegative_int("n_tokens", n_tokens, maximum=10_000_000)
    size = nonnegative_int("size", size, maximum=1_000_000)
    if size % 2:
        raise ValueError(f"size (the positional size P) must be even; got {size}")
    t = np.arange(n_tokens, dtype=np.float64)[:, None]
    rates = 10000.0 ** (-np.arange(0, size, 2, dtype=np.float64) / max(size, 1))  # 10000^(-2i/P)
    angles = t * rates
    encoding = np.empty((n_tokens, size))
    encoding[:, 0::2] = np.sin(angles)
    encoding[:, 1::2] = np.cos(angles)
    return encoding


def gelu(u: np.ndarray) -> np.ndarray:
    """gelu(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))), elementwise, in u's dtype."""
    u = np.asarray(u)
    return 0.5 * u * (1.0 + np.tanh(_SQRT_2_OVER_PI * (u + _GELU_CUBIC * u * u * u)))


def gelu_grad(u: np.ndarray) -> np.ndarray:
    """d gelu / du = 0.5 (1 + th) + 0.5 u (1 - th^2) sqrt(2/pi) (1 + 3 * 0.044715 u^2),
    th = tanh(sqrt(2/pi) (u + 0.044715 u^3)); elementwise, in u's dtype."""
    u = np.asarray(u)
    u2 = u * u
    th = np.tanh(_SQRT_2_OVER_PI * (u + _GELU_CUBIC * u2 * u))
    return 0.5 * (1.0 + th) + (0.5 * _SQRT_2_OVER_PI) * u * (1.0 - th * th) * (1.0 + 3.0 * _GELU_CUBIC * u2)
