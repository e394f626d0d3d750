r"""The NumPy oracle of the attention stack: forward and hand-written backward.

No autodiff: every gradient below is derived by hand, one forward/backward pair per piece with
an explicit cache of what the backward needs, and checked against central finite differences in
tests/test_stack_oracle.py.  The model (config, parameter names, shapes, init) is specified in
``iclgd.models.stack``; its docstring is the definition this file transcribes.

Shapes: B batch, T tokens (the last is the query), D the raw token size, P the positional size,
C the width, H heads, N_k the keys (T - 1, or T when ``query_attended``: the keys are always
the first N_k rows, so the key mask is a slice), M a hidden width.  Row-vector convention;
"sum_bt" sums over the batch and the tokens.  Everything is computed in ``cfg.dtype``,
vectorised over the batch and the heads.

Forward, piece by piece (G = dL/d(output of the piece) is what each backward receives):

    positional    h_0 = [X | PE]                     X (B, T, D), PE (T, P)
                  dX = G[..., :D]                    (PE is fixed: no parameter)

    mlp           u = a W_in + b_in,  g = gelu(u),  out = g W_out + b_out         a (B, T, C), u (B, T, M)
                  dg = G W_out^T          du = dg * gelu'(u)
                  dW_out = sum_bt g^T G   db_out = sum_bt G
                  dW_in = sum_bt a^T du   db_in = sum_bt du     da = du W_in^T

    embedding     E = X W_e,  h_0 = E + mlp(E)       W_e (D, C)
                  dE = G + da_mlp(G)      dW_e = sum_bt X^T dE     dX = dE W_e^T

    layernorm     mu, var over the last axis (biased), r = 1 / sqrt(var + 1e-5)
                  xhat = (x - mu) r       y = xhat w + b
                  dxhat = G w
                  dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat))     (means over the last axis)
                  dw = sum_bt G xhat      db = sum_bt G
                  (layer_norm=False: y = x, dx = G, no parameters)

    attention     a_k = a[:, :N_k] (the key rows); per head j (all heads at once, (B, H, ., C)):
                  Q = a W_q[j]  (B, H, T, C)    K = a_k W_k[j]  (B, H, N_k, C)    V = a_k W_v[j]
                  S = Q K^T                                                  (B, H, T, N_k)
                  softmax:  A = softmax over the keys of S / sqrt(C)
                  linear:   A = S
                  Z = A V  (B, H, T, C),   out = sum_j Z_j W_o[j]            (B, T, C)
                  dZ_j = G W_o[j]^T       dW_o[j] = sum_bt Z_j^T G
                  dA = dZ V^T             dV = A^T dZ
                  softmax:  dS = A * (dA - rowsum(dA * A)) / sqrt(C)   (the softmax backward, row by row)
                  linear:   dS = dA
                  dQ = dS K               dK = dS^T Q
                  dW_q[j] = sum_bt a^T dQ_j     dW_k[j] = sum_bt a_k^T dK_j     dW_v[j] = sum_bt a_k^T dV_j
                  da = sum_j dQ_j W_q[j]^T,   da[:, :N_k] += sum_j (dK_j W_k[j]^T + dV_j W_v[j]^T)

    layer         h <- h + attention(LN(h));   with mlp: h <- h + mlp(LN'(h))
                  backward: the residual passes G through unchanged and each branch adds its dx

Read-out and loss: yhat = -h_L[:, T - 1, C - 1] and L = 0.5 mean_b (yhat_b - y_b)^2, so the
backward starts from

    dL/d h_L[b, T - 1, C - 1] = -(yhat_b - y_b) / B,      0 everywhere else.

``stream_vjp`` runs the same backward from an arbitrary upstream U at h_l down to the raw
tokens X (d <U, h_l> / dX), and ``prediction_input_grad`` is it with U = -e_{T-1, C-1} at
h_L (the batch elements are independent, so one pass gives d yhat_b / d X_b for every b).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd._checks import finite_array, nonnegative_int
from iclgd.backends.numpy_layers import LayerNormCache, layernorm_backward, layernorm_forward
from iclgd.backends.numpy_layers import flat as _flat
from iclgd.backends.numpy_layers import sum_bt as _sum_bt
from iclgd.models.stack import (
    LN_EPS,
    StackConfig,
    check_config,
    check_outputs,
    check_params,
    check_targets,
    check_tokens,
    gelu,
    gelu_grad,
    sinusoidal_encoding,
)


# --- positional encoding -------------------------------------------------------------------------------


def positional_forward(tokens: np.ndarray, size: int) -> np.ndarray:
    """h_0 = [X | PE]: (B, T, D) -> (B, T, D + P), PE the fixed sinusoidal encoding (T, P)."""
    batch, n_tokens, _ = tokens.shape
    if size == 0:
        return tokens.copy()
    encoding = sinusoidal_encoding(n_tokens, size).astype(tokens.dtype)
    return np.concatenate([tokens, np.broadcast_to(encoding, (batch, n_tokens, size))], axis=-1)


def positional_backward(grad: np.ndarray, token_size: int) -> np.ndarray:
    """G (B, T, D + P) -> dX = G[..., :D] (B, T, D)."""
    return grad[..., :token_size].copy()


# --- mlp (the embedding's and each layer's) ------------------------------------------------------------


@dataclass
class MLPCache:
    """What the MLP backward needs."""

    a: np.ndarray  # the input, (B, T, C)
    u: np.ndarray  # the pre-activation a W_in + b_in, (B, T, M)
    g: np.ndarray  # gelu(u), (B, T, M)


def mlp_forward(a: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray, b_out: np.ndarray) -> tuple[np.ndarray, MLPCache]:
    """gelu(a W_in + b_in) W_out + b_out: (B, T, C) -> (B, T, C)."""
    u = a @ w_in + b_in
    g = gelu(u)
    return g @ w_out + b_out, MLPCache(a, u, g)


def mlp_backward(grad: np.ndarray, cache: MLPCache, w_in: np.ndarray, w_out: np.ndarray):
    """G (B, T, C) -> (da, dW_in, db_in, dW_out, db_out)."""
    d_u = grad @ w_out.T
    d_u *= gelu_grad(cache.u)
    d_w_out = _flat(cache.g).T @ _flat(grad)
    d_w_in = _flat(cache.a).T @ _flat(d_u)
    return d_u @ w_in.T, d_w_in, _sum_bt(d_u), d_w_out, _sum_bt(grad)


# --- embedding -----------------------------------------------------------------------------------------


@dataclass
class EmbeddingCache:
    """What the embedding backward needs."""

    tokens: np.ndarray  # X (B, T, D)
    mlp: MLPCache  # the MLP's cache; its input is E = X W_e


def embedding_forward(tokens: np.ndarray, w: np.ndarray, w_in, b_in, w_out, b_out) -> tuple[np.ndarray, EmbeddingCache]:
    """h_0 = E + mlp(E), E = X W_e: (B, T, D) -> (B, T, C)."""
    e = tokens @ w
    update, mlp = mlp_forward(e, w_in, b_in, w_out, b_out)
    return e + update, EmbeddingCache(tokens, mlp)


def embedding_backward(grad: np.ndarray, cache: EmbeddingCache, w: np.ndarray, w_in: np.ndarray, w_out: np.ndarray):
    """G (B, T, C) -> (dX (B, T, D), {"embed.w": ..., "embed.mlp.*": ...})."""
    d_e, d_w_in, d_b_in, d_w_out, d_b_out = mlp_backward(grad, cache.mlp, w_in, w_out)
    d_e += grad
    grads = {
        "embed.w": _flat(cache.tokens).T @ _flat(d_e),
        "embed.mlp.w_in": d_w_in, "embed.mlp.b_in": d_b_in, "embed.mlp.w_out": d_w_out, "embed.mlp.b_out": d_b_out,
    }
    return d_e @ w.T, grads


# --- attention -----------------------------------------------------------------------------------------


@dataclass
class AttentionCache:
    """What the attention backward needs."""

    a: np.ndarray  # the input, (B, T, C)
    q: np.ndarray  # (B, H, T, C)
    k: np.ndarray  # (B, H, N_k, C)
    v: np.ndarray  # (B, H, N_k, C)
    mix: np.ndarray  # A: the softmax probabilities, or the raw scores Q K^T for "linear", (B, H, T, N_k)
    z: np.ndarray  # A V, (B, H, T, C)


def attention_forward(a: np.ndarray, w_q, w_k, w_v, w_o, kind: str, n_keys: int) -> tuple[np.ndarray, AttentionCache]:
    """Multi-head attention of a (B, T, C) over its first ``n_keys`` rows -> (B, T, C);
    W_* (H, C, C); ``kind`` "softmax" or "linear"."""
    rows = a[:, None]  # (B, 1, T, C): broadcasts against the heads of W (H, C, C)
    keys = rows[:, :, :n_keys]
    q, k, v = rows @ w_q, keys @ w_k, keys @ w_v  # (B, H, T, C), (B, H, N_k, C), (B, H, N_k, C)
    scores = q @ k.swapaxes(-1, -2)  # (B, H, T, N_k)
    if kind == "softmax":
        scores = scores * (1.0 / float(np.sqrt(a.shape[-1])))  # a Python float keeps float32 in float32
        scores -= scores.max(axis=-1, keepdims=True)
        mix = np.exp(scores)
        mix /= mix.sum(axis=-1, keepdims=True)
    else:
        mix = scores
    z = mix @ v  # (B, H, T, C)
    return (z @ w_o).sum(axis=1), AttentionCache(a, q, k, v, mix, z)


def attention_backward(grad: np.ndarray, cache: AttentionCache, w_q, w_k, w_v, w_o, kind: str):
    """G (B, T, C) -> (da (B, T, C), dW_q, dW_k, dW_v, dW_o, each (H, C, C))."""
    n_keys = cache.k.shape[2]
    g = grad[:, None]  # (B, 1, T, C)
    d_z = g @ w_o.swapaxes(-1, -2)  # (B, H, T, C)
    d_w_o = (cache.z.swapaxes(-1, -2) @ g).sum(axis=0)
    d_mix = d_z @ cache.v.swapaxes(-1, -2)  # (B, H, T, N_k)
    d_v = cache.mix.swapaxes(-1, -2) @ d_z  # (B, H, N_k, C)
    if kind == "softmax":
        d_scores = cache.mix * (d_mix - (d_mix * cache.mix).sum(axis=-1, keepdims=True))
        d_scores *= 1.0 / float(np.sqrt(cache.a.shape[-1]))
    else:
        d_scores = d_mix
    d_q = d_scores @ cache.k  # (B, H, T, C)
    d_k = d_scores.swapaxes(-1, -2) @ cache.q  # (B, H, N_k, C)
    rows_t = cache.a[:, None].swapaxes(-1, -2)  # (B, 1, C, T)
    keys_t = rows_t[..., :n_keys]  # (B, 1, C, N_k)
    d_w_q = (rows_t @ d_q).sum(axis=0)
    d_w_k = (keys_t @ d_k).sum(axis=0)
    d_w_v = (keys_t @ d_v).sum(axis=0)
    d_a = (d_q @ w_q.swapaxes(-1, -2)).sum(axis=1)
    d_a[:, :n_keys] += (d_k @ w_k.swapaxes(-1, -2) + d_v @ w_v.swapaxes(-1, -2)).sum(axis=1)
    return d_a, d_w_q, d_w_k, d_w_v, d_w_o


# --- the model -----------------------------------------------------------------------------------------


@dataclass
class LayerCache:
    ln: LayerNormCache | None
    attn: AttentionCache
    mlp_ln: LayerNormCache | None
    mlp: MLPCache | None


@dataclass
class ModelCache:
    embedding: EmbeddingCache | None  # None without the "mlp" embedding
    layers: list[LayerCache]


def n_keys(cfg: StackConfig, n_tokens: int) -> int:
    """N_k: T when the query is attended, else T - 1."""
    return n_tokens if cfg.query_attended else n_tokens - 1


def forward_with_cache(cfg: StackConfig, params: dict, tokens: np.ndarray) -> tuple[list[np.ndarray], ModelCache]:
    """([h_0, ..., h_L], cache) on checked inputs (params and tokens in cfg.dtype)."""
    if cfg.embedding == "mlp":
        p = lambda name: params["embed." + name]  # noqa: E731
        h, embedding = embedding_forward(tokens, p("w"), p("mlp.w_in"), p("mlp.b_in"), p("mlp.w_out"), p("mlp.b_out"))
    else:
        h, embedding = positional_forward(tokens, cfg.positional_size), None
    keys = n_keys(cfg, tokens.shape[1])
    states, layers = [h], []
    for layer, kind in enumerate(cfg.attention):
        p = _layer(params, layer)
        a, ln = layernorm_forward(h, p("ln.weight"), p("ln.bias"), LN_EPS)
        update, attn = attention_forward(a, p("w_q"), p("w_k"), p("w_v"), p("w_o"), kind, keys)
        h = h + update
        mlp_ln = mlp = None
        if cfg.mlp:
            a, mlp_ln = layernorm_forward(h, p("mlp_ln.weight"), p("mlp_ln.bias"), LN_EPS)
            update, mlp = mlp_forward(a, p("mlp.w_in"), p("mlp.b_in"), p("mlp.w_out"), p("mlp.b_out"))
            h = h + update
        states.append(h)
        layers.append(LayerCache(ln, attn, mlp_ln, mlp))
    return states, ModelCache(embedding, layers)


def backward(cfg: StackConfig, params: dict, cache: ModelCache, d_h: np.ndarray, top: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """From d_h = dL/d h_top (B, T, C), top in 0 .. L: (the gradient of every parameter that h_top
    depends on, dL/dX (B, T, D))."""
    grads: dict[str, np.ndarray] = {}
    for layer in reversed(range(top)):
        p, blk, prefix = _layer(params, layer), cache.layers[layer], f"layer{layer}."
        if cfg.mlp:  # h <- h + mlp(LN'(h))
            d_a, *mlp_grads = mlp_backward(d_h, blk.mlp, p("mlp.w_in"), p("mlp.w_out"))
            for name, value in zip(("mlp.w_in", "mlp.b_in", "mlp.w_out", "mlp.b_out"), mlp_grads):
                grads[prefix + name] = value
            d_a, d_weight, d_bias = layernorm_backward(d_a, blk.mlp_ln, p("mlp_ln.weight"))
            if cfg.layer_norm:
                grads[prefix + "mlp_ln.weight"], grads[prefix + "mlp_ln.bias"] = d_weight, d_bias
            d_h = d_h + d_a
        # h <- h + attention(LN(h))
        d_a, *attn_grads = attention_backward(d_h, blk.attn, p("w_q"), p("w_k"), p("w_v"), p("w_o"), cfg.attention[layer])
        for name, value in zip(("w_q", "w_k", "w_v", "w_o"), attn_grads):
            grads[prefix + name] = value
        d_a, d_weight, d_bias = layernorm_backward(d_a, blk.ln, p("ln.weight"))
        if cfg.layer_norm:
            grads[prefix + "ln.weight"], grads[prefix + "ln.bias"] = d_weight, d_bias
        d_h = d_h + d_a
    if cfg.embedding == "mlp":
        d_x, embed_grads = embedding_backward(d_h, cache.embedding, params["embed.w"], params["embed.mlp.w_in"], params["embed.mlp.w_out"])
        grads |= embed_grads
    else:
        d_x = positional_backward(d_h, cfg.token_size)
    return grads, d_x


def read_out(h_last: np.ndarray) -> np.ndarray:
    """yhat (B,) = -h_L[:, T - 1, C - 1]."""
    return -h_last[:, -1, -1]


# --- the engine functions (checked inputs in, cfg.dtype throughout) ------------------------------------


def forward(cfg: StackConfig, params: dict, tokens) -> list[np.ndarray]:
    """Every stage's stream [h_0, h_1, ..., h_L], each (B, T, C), in cfg.dtype."""
    params, tokens = _checked(cfg, params, tokens)
    with _quiet():
        states = forward_with_cache(cfg, params, tokens)[0]
    return check_outputs(cfg, "forward pass", states, params, tokens)


def attention_maps(cfg: StackConfig, params: dict, tokens) -> list[np.ndarray]:
    """Per layer (B, H, T, N_k): the softmax probabilities A (softmax layers) or the raw scores
    Q K^T (linear layers); rows are the queries 0 .. T - 1, columns the keys 0 .. N_k - 1."""
    params, tokens = _checked(cfg, params, tokens)
    with _quiet():
        cache = forward_with_cache(cfg, params, tokens)[1]
    return check_outputs(cfg, "attention", [blk.attn.mix for blk in cache.layers], params, tokens)


def predict(cfg: StackConfig, params: dict, tokens) -> np.ndarray:
    """yhat (B,) = -h_L[:, T - 1, C - 1]."""
    params, tokens = _checked(cfg, params, tokens)
    with _quiet():
        yhat = read_out(forward_with_cache(cfg, params, tokens)[0][-1])
    return check_outputs(cfg, "prediction", yhat, params, tokens)


def loss(cfg: StackConfig, params: dict, tokens, targets) -> float:
    """0.5 mean_b (yhat_b - y_b)^2."""
    params, tokens = _checked(cfg, params, tokens)
    targets = check_targets(cfg, targets, tokens.shape[0])
    with _quiet():
        residual = read_out(forward_with_cache(cfg, params, tokens)[0][-1]) - targets
        value = 0.5 * np.mean(residual * residual)
    return float(check_outputs(cfg, "loss", value, params, tokens, targets))


def loss_and_grad(cfg: StackConfig, params: dict, tokens, targets) -> tuple[float, dict[str, np.ndarray]]:
    """(the loss, its gradient: a dict like params, in its order): one forward, one backward
    seeded with dL/d h_L[b, T - 1, C - 1] = -(yhat_b - y_b) / B."""
    params, tokens = _checked(cfg, params, tokens)
    targets = check_targets(cfg, targets, tokens.shape[0])
    with _quiet():
        states, cache = forward_with_cache(cfg, params, tokens)
        residual = read_out(states[-1]) - targets
        d_h = np.zeros_like(states[-1])
        d_h[:, -1, -1] = residual * (-1.0 / residual.shape[0])
        grads, _ = backward(cfg, params, cache, d_h, cfg.n_layers)
        value = 0.5 * np.mean(residual * residual)
    grads = {name: grads[name] for name in params}
    check_outputs(cfg, "loss and gradient", [value, *grads.values()], params, tokens, targets)
    return float(value), grads


def stream_vjp(cfg: StackConfig, params: dict, tokens, layer: int, upstream) -> np.ndarray:
    """d <upstream, h_layer> / dX (B, T, D): upstream (B, T, C), layer in 0 .. L (h_0 the embedded
    stream); the gradient is with respect to the raw tokens X (not the positional encoding)."""
    params, tokens = _checked(cfg, params, tokens)
    layer = nonnegative_int("layer", layer, maximum=cfg.n_layers)
    expected = (*tokens.shape[:2], cfg.width)
    upstream = finite_array("upstream", upstream, ndim=3, dtype=cfg.dtype)
    if upstream.shape != expected:
        raise ValueError(f"upstream must have the shape of the stream (B, T, C) = {expected}; got {upstream.shape}")
    with _quiet():
        cache = forward_with_cache(cfg, params, tokens)[1]
        d_x = backward(cfg, params, cache, upstream, layer)[1]
    return check_outputs(cfg, "stream gradient", d_x, params, tokens)


def prediction_input_grad(cfg: StackConfig, params: dict, tokens) -> np.ndarray:
    """d yhat_b / d X_b (B, T, D): the backward seeded with -1 at h_L[b, T - 1, C - 1] for every b."""
    params, tokens = _checked(cfg, params, tokens)
    with _quiet():
        states, cache = forward_with_cache(cfg, params, tokens)
        d_h = np.zeros_like(states[-1])
        d_h[:, -1, -1] = -1.0
        d_x = backward(cfg, params, cache, d_h, cfg.n_layers)[1]
    return check_outputs(cfg, "prediction gradient", d_x, params, tokens)


# --- helpers -------------------------------------------------------------------------------------------


def _checked(cfg: StackConfig, params: dict, tokens) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(params, tokens) validated and cast to cfg.dtype (``iclgd.models.stack.check_*``)."""
    check_config(cfg)
    return check_params(cfg, params), check_tokens(cfg, tokens)


def _quiet():
    """Overflow in a pass is reported by ``check_outputs`` (naming the inputs), not warned about."""
    return np.errstate(over="ignore", invalid="ignore")


def _layer(params: dict, layer: int):
    """name -> params[f"layer{layer}.{name}"], or None for a parameter the config has not."""
    prefix = f"layer{layer}."
    return lambda name: params.get(prefix + name)

