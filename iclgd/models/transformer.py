r"""The causal transformer of the developmental-landscape paper: configuration, parameters, init, checks.

Hoogland et al., "The Developmental Landscape of In-Context Learning" (arXiv 2402.02364), train a
small pre-LayerNorm decoder on interleaved regression tokens (``iclgd.tokens.interleaved``).
Row-vector convention, shapes with B batch, T = 2K tokens, C = d_model, H heads of size c = C / H:

    h_0 = tokens W_embed + P                                   tokens (B, T, D + 1), W_embed (D + 1, C), P (T, C)
    for each block l:
        a   = LN1(h)                                           (B, T, C)
        Q, K, V = a W_qkv split in three, each cut into H heads    W_qkv (C, 3C): columns [Q | K | V], head j = cols j c .. (j+1) c
        A_j = mask(Q_j K_j^T / sqrt(c))                        (B, H, T, T), causal: key t' <= query t
        Z_j = softmax(A_j) V_j        (attention = "softmax"; "linear": Z_j = A_j V_j, masked entries 0)
        h   = h + concat_j(Z_j) [W_o]                          W_o (C, C) when output_projection
        h   = h + ReLU(LN2(h) W_in + b_in) W_out + b_out       W_in (C, d_mlp), W_out (d_mlp, C)
    out = LN_f(h) W_unembed + b_unembed                        (B, T, D + 1)
    yhat_k = out[:, 2k - 2, 0]                                 read at the x_k token (0-based: even tokens)

LN(h) = (h - mean) / sqrt(var + 1e-5) * weight + bias over the last axis (PyTorch's LayerNorm,
biased variance); with ``layer_norm=False`` every LN is the identity and has no parameters.

Loss (the paper's): MSE over the batch and all K positions, L = mean_{b,k} (yhat_bk - y_bk)^2
(no factor 1/2, unlike the LSA's half-MSE), and per position L_k = mean_b (yhat_bk - y_bk)^2.

Parameters live in a flat dict, the same names in every backend (``param_shapes``):

    "embed.w" (D+1, C)   "embed.pos" (2K, C)
    "block{l}.ln1.weight", "block{l}.ln1.bias" (C,)            (layer_norm only)
    "block{l}.attn.w_qkv" (C, 3C)   "block{l}.attn.w_out" (C, C) (output_projection only)
    "block{l}.ln2.weight", "block{l}.ln2.bias" (C,)            (layer_norm only)
    "block{l}.mlp.w_in" (C, d_mlp)  "block{l}.mlp.b_in" (d_mlp,)  "block{l}.mlp.w_out" (d_mlp, C)  "block{l}.mlp.b_out" (C,)
    "unembed.ln.weight", "unembed.ln.bias" (C,)                (layer_norm only)
    "unembed.w" (C, D+1)  "unembed.b" (D+1,)

Initialisation as the authors' framework (PyTorch's defaults, so that runs are comparable):
every Linear weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in the layer's input
size (the positional embedding is a bias-free Linear from 2K one-hot positions, fan_in = 2K);
LayerNorm weight 1, bias 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd import limits
from iclgd._checks import cast_finite, check_named_arrays, finite_array, float_dtype, largest, max_abs, positive_int
from iclgd.streams import as_generator

ATTENTION_KINDS = ("softmax", "linear")

#: PyTorch's LayerNorm epsilon, the authors' framework's.
LN_EPS = 1e-5


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of the developmental-landscape transformer (the paper's model is the default).

    d:                 D, the task's input dimension (tokens have D + 1 entries)
    n_examples:        K, (x, y) pairs per sequence (2K tokens; the positional embedding has 2K rows)
    n_layers:          transformer blocks
    n_heads:           attention heads per block (must divide d_model)
    d_model:           C, the residual stream's width
    d_mlp:             hidden width of each block's MLP
    layer_norm:        pre-LN blocks and a final LN (False: every LN is the identity, no parameters)
    output_projection: a bias-free C x C map after the heads are concatenated (the paper has one)
    attention:         "softmax" (the paper's) or "linear" (no softmax; masked scores are 0)
    dtype:             "float64" (default) or "float32", the precision backends compute in
    """

    d: int = 4
    n_examples: int = 8
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_mlp: int = 64
    layer_norm: bool = True
    output_projection: bool = True
    attention: str = "softmax"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("d", "n_examples", "n_heads", "d_model", "d_mlp"):
            set_(self, name, positive_int(name, getattr(self, name), maximum=1_000_000))
        set_(self, "n_layers", positive_int("n_layers", self.n_layers, maximum=limits.MAX_LAYERS))
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model; got d_model = {self.d_model}, n_heads = {self.n_heads}")
        for flag in ("layer_norm", "output_projection"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise ValueError(f"{flag} must be True or False; got {getattr(self, flag)!r}")
            set_(self, flag, bool(getattr(self, flag)))
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {list(ATTENTION_KINDS)}; got {self.attention!r}")
        set_(self, "dtype", float_dtype("dtype", self.dtype).name)
        limits.check_bytes(
            f"the transformer (n_layers = {self.n_layers}, d_model = {self.d_model}, d_mlp = {self.d_mlp}, "
            f"n_examples = {self.n_examples})",
            8 * param_count(self), f"its {param_count(self)} parameters",
        )

    @property
    def family(self) -> str:
        """The [model] family name in a run config."""
        return "transformer"

    @property
    def token_size(self) -> int:
        """D + 1."""
        return self.d + 1

    @property
    def n_tokens(self) -> int:
        """T = 2K."""
        return 2 * self.n_examples

    @property
    def head_size(self) -> int:
        """c = d_model / n_heads."""
        return self.d_model // self.n_heads


def check_config(cfg: object) -> TransformerConfig:
    """``cfg`` itself, or ValueError unless it is a TransformerConfig."""
    if not isinstance(cfg, TransformerConfig):
        raise ValueError(f"cfg must be an iclgd.TransformerConfig; got {type(cfg).__name__}")
    return cfg


def block_shapes(cfg: TransformerConfig, block: int) -> dict[str, tuple[int, ...]]:
    """The parameters of block ``block``, in order."""
    c, prefix = cfg.d_model, f"block{block}."
    shapes = {}
    if cfg.layer_norm:
        shapes |= {prefix + "ln1.weight": (c,), prefix + "ln1.bias": (c,)}
    shapes[prefix + "attn.w_qkv"] = (c, 3 * c)
    if cfg.output_projection:
        shapes[prefix + "attn.w_out"] = (c, c)
    if cfg.layer_norm:
        shapes |= {prefix + "ln2.weight": (c,), prefix + "ln2.bias": (c,)}
    shapes |= {
        prefix + "mlp.w_in": (c, cfg.d_mlp), prefix + "mlp.b_in": (cfg.d_mlp,),
        prefix + "mlp.w_out": (cfg.d_mlp, c), prefix + "mlp.b_out": (c,),
    }
    return shapes


def param_shapes(cfg: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in a fixed order (see the module docstring)."""
    check_config(cfg)
    c = cfg.d_model
    shapes = {"embed.w": (cfg.token_size, c), "embed.pos": (cfg.n_tokens, c)}
    for block in range(cfg.n_layers):
        shapes |= block_shapes(cfg, block)
    if cfg.layer_norm:
        shapes |= {"unembed.ln.weight": (c,), "unembed.ln.bias": (c,)}
    shapes |= {"unembed.w": (c, cfg.token_size), "unembed.b": (cfg.token_size,)}
    return shapes


def param_count(cfg: TransformerConfig) -> int:
    """The number of scalar parameters (51,717 for the paper's model at K = 8)."""
    return sum(int(np.prod(shape)) for shape in param_shapes(cfg).values())


def fan_in(cfg: TransformerConfig, name: str) -> int | None:
    """The input size of the Linear layer a parameter belongs to (None for LayerNorm parameters)."""
    if ".ln" in name or name.startswith("unembed.ln"):
        return None
    if name == "embed.w":
        return cfg.token_size
    if name == "embed.pos":
        return cfg.n_tokens
    if name.endswith(("mlp.w_out", "mlp.b_out")):
        return cfg.d_mlp
    return cfg.d_model  # w_qkv, attn.w_out, mlp.w_in/b_in, unembed.w/b


def init_params(cfg: TransformerConfig, seed: int | np.random.Generator = 0) -> dict[str, np.ndarray]:
    """PyTorch's default init (see the module docstring): Linear weights and biases
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LayerNorm weight 1 and bias 0; drawn in float64 in
    ``param_shapes`` order from ``seed``, returned in ``cfg.dtype``."""
    check_config(cfg)
    rng = as_generator(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        inputs = fan_in(cfg, name)
        if inputs is None:
            value = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
        else:
            bound = 1.0 / np.sqrt(inputs)
            value = rng.uniform(-bound, bound, size=shape)
        params[name] = value.astype(cfg.dtype)
    return params


def zero_params(cfg: TransformerConfig) -> dict[str, np.ndarray]:
    """All-zero parameters (LayerNorm weights too: the model then outputs the unembedding bias, 0)."""
    return {name: np.zeros(shape, dtype=cfg.dtype) for name, shape in param_shapes(cfg).items()}


# --- input checks: every backend validates through these -----------------------------------------------


def check_params(cfg: TransformerConfig, params: object) -> dict[str, np.ndarray]:
    """Raise ValueError unless ``params`` has exactly the names and shapes of ``param_shapes(cfg)``
    and only finite values that fit ``cfg.dtype``; return it as a dict of arrays in ``cfg.dtype``."""
    check_config(cfg)
    return check_named_arrays(
        params, param_shapes(cfg), cfg.dtype,
        f"n_layers={cfg.n_layers}, layer_norm={cfg.layer_norm}, output_projection={cfg.output_projection}",
        f"d_model={cfg.d_model}, d_mlp={cfg.d_mlp}, D + 1={cfg.token_size}, 2K={cfg.n_tokens}",
    )


def pass_bytes(cfg: TransformerConfig, batch_size: int) -> int:
    """An upper estimate of the memory of one forward and backward pass: the cached activations
    (about 12 C + 3 d_mlp numbers per token per block, and 3 H T numbers per token for the
    attention scores) twice over, in float64."""
    t, c = cfg.n_tokens, cfg.d_model
    per_block = batch_size * t * (12 * c + 3 * cfg.d_mlp + 3 * cfg.n_heads * t)
    return 2 * 8 * (cfg.n_layers * per_block + batch_size * t * (4 * c + 2 * cfg.token_size))


def check_tokens(cfg: TransformerConfig, tokens: object) -> np.ndarray:
    """Raise ValueError unless ``tokens`` is a finite (B, 2K, D + 1) array (B >= 1) whose values fit
    ``cfg.dtype`` and whose pass fits in memory; return it in ``cfg.dtype``."""
    check_config(cfg)
    tokens = finite_array("tokens", tokens, ndim=3)
    expected = (cfg.n_tokens, cfg.token_size)
    if tokens.shape[0] < 1 or tokens.shape[1:] != expected:
        raise ValueError(
            f"tokens must have shape (B, 2K = {cfg.n_tokens}, D + 1 = {cfg.token_size}) with B >= 1 "
            f"(interleaved format, K = {cfg.n_examples}); got {tokens.shape}"
        )
    limits.check_bytes(f"tokens of shape {tokens.shape}", pass_bytes(cfg, tokens.shape[0]),
                       f"a pass of the transformer over {tokens.shape[0]} sequences")
    return cast_finite("tokens", tokens, cfg.dtype)


def check_targets(cfg: TransformerConfig, targets: object, batch_size: int) -> np.ndarray:
    """Raise ValueError unless ``targets`` is a finite (B, K) array that fits ``cfg.dtype``; return it in ``cfg.dtype``."""
    check_config(cfg)
    targets = finite_array("targets", targets, ndim=2)
    if targets.shape != (batch_size, cfg.n_examples):
        raise ValueError(f"targets must have shape (B, K) = ({batch_size}, {cfg.n_examples}); got {targets.shape}")
    return cast_finite("targets", targets, cfg.dtype)


def check_outputs(cfg: TransformerConfig, what: str, outputs, params: dict, tokens: np.ndarray, targets: np.ndarray | None = None):
    """``outputs`` unchanged (an array, a number, a list or a dict of them), or ValueError if any
    entry is NaN or inf: the inputs were finite, so the engine overflowed ``cfg.dtype``; the
    message names the inputs with their largest entries."""
    arrays = list(outputs.values()) if isinstance(outputs, dict) else list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    bad = sum(int(np.asarray(a).size - np.count_nonzero(np.isfinite(np.asarray(a)))) for a in arrays)
    if not bad:
        return outputs
    total = sum(int(np.asarray(a).size) for a in arrays)
    largest_param = max(params, key=lambda name: max_abs(np.asarray(params[name])))
    inputs = [
        f"tokens (largest |entry| {max_abs(np.asarray(tokens)):.3g})",
        f"params (largest |entry| {max_abs(np.asarray(params[largest_param])):.3g}, in {largest_param!r})",
    ]
    if targets is not None:
        inputs.append(f"targets (largest |entry| {max_abs(np.asarray(targets)):.3g})")
    raise ValueError(
        f"{', '.join(inputs)} are too large for this transformer in {cfg.dtype}: its {what} overflows "
        f"({bad} of {total} entries NaN/inf; the largest {cfg.dtype} is {largest(cfg.dtype):.3g})"
    )
