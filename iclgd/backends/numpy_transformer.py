r"""The NumPy oracle of the developmental-landscape transformer: forward and hand-written backward.

No autodiff: every gradient below is derived by hand, one forward/backward pair per piece with
an explicit cache of what the backward needs, and checked against central finite differences in
tests/test_transformer_oracle.py.  The model (config, parameter names, shapes, init) is specified
in ``iclgd.models.transformer``; its docstring is the definition this file transcribes.

Shapes: B batch, T = 2K tokens, C = d_model, H heads of size c = C / H, M = d_mlp, D + 1 the
token size.  Row-vector convention; "sum_bt" sums over the batch and the tokens.  Everything is
computed in the dtype of the inputs (``cfg.dtype``), vectorised over the batch and the heads.

Forward, piece by piece (G = dL/d(output of the piece) is what each backward receives):

    embedding     h_0 = X W_e + P                  X (B, T, D+1)
                  dW_e = sum_bt X^T G     dP = sum_b G

    layernorm     mu, var over the last axis (biased), r = 1 / sqrt(var + 1e-5)
                  xhat = (x - mu) r       y = xhat w + b
                  dxhat = G w
                  dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat))     (means over the last axis)
                  dw = sum_bt G xhat      db = sum_bt G
                  (layer_norm=False: y = x, dx = G, no parameters)

    attention     [Q | K | V] = a W_qkv, each (B, T, C) cut into H heads (B, H, T, c)
                  S = Q K^T / sqrt(c)                                       (B, H, T, T)
                  softmax:  A = softmax(S + mask), mask = -inf where key t' > query t
                  linear:   A = S where t' <= t, 0 elsewhere
                  Z = A V                                                   (B, H, T, c)
                  z = concat_heads(Z) (B, T, C),  out = z W_o  (or out = z without the projection)
                  dz = G W_o^T            dW_o = sum_bt z^T G
                  dA = dZ V^T             dV = A^T dZ
                  softmax:  dS = A * (dA - rowsum(dA * A))        (the softmax backward, row by row)
                  linear:   dS = dA where t' <= t, 0 elsewhere
                  dQ = dS K / sqrt(c)     dK = dS^T Q / sqrt(c)
                  d[Q | K | V] -> da = d[Q|K|V] W_qkv^T,   dW_qkv = sum_bt a^T d[Q|K|V]

    mlp           u = a W_in + b_in,  g = ReLU(u),  out = g W_out + b_out
                  dg = G W_out^T          du = dg * [u > 0]
                  dW_out = sum_bt g^T G   db_out = sum_bt G
                  dW_in = sum_bt a^T du   db_in = sum_bt du     da = du W_in^T

    block         h <- h + attention(LN1(h));   h <- h + mlp(LN2(h))
                  backward: the residual passes G through unchanged and each branch adds its dx

    unembedding   f = LN_f(h),  out = f W_u + b_u          (B, T, D+1)
                  dW_u = sum_bt f^T G     db_u = sum_bt G     df = G W_u^T

Read-out and loss: yhat_k = out[:, 2k - 2, 0] (0-based: out[:, 0::2, 0]), per position
L_k = mean_b (yhat_bk - y_bk)^2 and, for position weights w_k, L = sum_k w_k L_k (the paper's
MSE is w_k = 1/K, no factor 1/2), so the backward starts from

    dL/d out[:, 2k, 0] = 2 w_k (yhat_bk - y_bk) / B,      0 everywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd.backends.numpy_layers import LayerNormCache, layernorm_backward, layernorm_forward
from iclgd.backends.numpy_layers import flat as _flat
from iclgd.backends.numpy_layers import row_dot as _row_dot
from iclgd.backends.numpy_layers import sum_bt as _sum_bt
from iclgd.models.transformer import LN_EPS, TransformerConfig


# --- embedding -----------------------------------------------------------------------------------------


def embedding_forward(tokens: np.ndarray, w: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """h_0 = X W_e + P: (B, T, D+1) @ (D+1, C) + (T, C) -> (B, T, C).  The cache is ``tokens``."""
    return tokens @ w + pos


def embedding_backward(grad: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G (B, T, C) -> (dW_e = sum_bt X^T G (D+1, C), dP = sum_b G (T, C))."""
    d_w = _flat(tokens).T @ _flat(grad)
    return d_w, grad.sum(axis=0)


# --- attention -----------------------------------------------------------------------------------------


@dataclass
class AttentionCache:
    """What the attention backward needs."""

    a: np.ndarray  # the input, (B, T, C)
    q: np.ndarray  # (B, H, T, c)
    k: np.ndarray  # (B, H, T, c)
    v: np.ndarray  # (B, H, T, c)
    mix: np.ndarray  # A: softmax probabilities, or the masked scaled scores for "linear", (B, H, T, T)
    z: np.ndarray  # the heads concatenated, the input of W_o, (B, T, C)


def causal_mask(n_tokens: int) -> np.ndarray:
    """(T, T) boolean, True where key t' <= query t (the entries a query may attend to)."""
    return np.tril(np.ones((n_tokens, n_tokens), dtype=bool))


def attention_forward(a: np.ndarray, w_qkv: np.ndarray, w_out: np.ndarray | None, n_heads: int, kind: str) -> tuple[np.ndarray, AttentionCache]:
    """Causal multi-head attention of a (B, T, C) -> (B, T, C); ``w_out is None``: no projection."""
    batch, n_tokens, width = a.shape
    head = width // n_heads
    scale = 1.0 / float(np.sqrt(head))  # a Python float keeps float32 inputs in float32
    # (B, T, 3C) -> (B, T, 3, H, c) -> (3, B, H, T, c): columns [Q | K | V], head j = cols j c .. (j+1) c
    qkv = (a @ w_qkv).reshape(batch, n_tokens, 3, n_heads, head).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = (q @ k.swapaxes(-1, -2)) * scale  # (B, H, T, T)
    future = ~causal_mask(n_tokens)
    if kind == "softmax":
        scores[..., future] = -np.inf
        scores -= _row_max(scores)  # the diagonal is never masked: the max is finite
        mix = np.exp(scores, out=scores)
        mix /= _row_sum(mix)
    else:
        scores[..., future] = 0.0
        mix = scores
    z = (mix @ v).transpose(0, 2, 1, 3).reshape(batch, n_tokens, width)  # concat_j Z_j
    out = z if w_out is None else z @ w_out
    return out, AttentionCache(a, q, k, v, mix, z)


def attention_backward(grad: np.ndarray, cache: AttentionCache, w_qkv: np.ndarray, w_out: np.ndarray | None, kind: str):
    """G (B, T, C) -> (da (B, T, C), dW_qkv (C, 3C), dW_o (C, C) or None)."""
    batch, n_heads, n_tokens, head = cache.q.shape
    scale = 1.0 / float(np.sqrt(head))
    if w_out is None:
        d_z, d_w_out = grad, None
    else:
        d_z, d_w_out = grad @ w_out.T, _flat(cache.z).T @ _flat(grad)
    d_heads = d_z.reshape(batch, n_tokens, n_heads, head).transpose(0, 2, 1, 3)  # dZ (B, H, T, c)
    d_mix = d_heads @ cache.v.swapaxes(-1, -2)  # dA (B, H, T, T)
    d_v = cache.mix.swapaxes(-1, -2) @ d_heads
    if kind == "softmax":
        # dS = A * (dA - sum_t' dA A): A is 0 on masked entries, so dS is too
        d_mix -= _row_dot(d_mix, cache.mix)
        d_scores = d_mix * cache.mix
    else:
        d_mix[..., ~causal_mask(n_tokens)] = 0.0
        d_scores = d_mix
    d_scores *= scale
    d_q = d_scores @ cache.k
    d_k = d_scores.swapaxes(-1, -2) @ cache.q
    # (B, T, 3, H, c) -> (B, T, 3C), the layout of the forward's split
    d_qkv = np.empty((batch, n_tokens, 3, n_heads, head), dtype=grad.dtype)
    for third, d_part in enumerate((d_q, d_k, d_v)):
        d_qkv[:, :, third] = d_part.transpose(0, 2, 1, 3)
    d_qkv = d_qkv.reshape(batch, n_tokens, 3 * n_heads * head)
    d_w_qkv = _flat(cache.a).T @ _flat(d_qkv)
    return d_qkv @ w_qkv.T, d_w_qkv, d_w_out


# --- mlp -----------------------------------------------------------------------------------------------


@dataclass
class MLPCache:
    """What the MLP backward needs."""

    a: np.ndarray  # the input, (B, T, C)
    hidden: np.ndarray  # g = ReLU(a W_in + b_in), (B, T, M); g > 0 exactly where u > 0


def mlp_forward(a: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray, b_out: np.ndarray) -> tuple[np.ndarray, MLPCache]:
    """ReLU(a W_in + b_in) W_out + b_out: (B, T, C) -> (B, T, C)."""
    hidden = a @ w_in + b_in
    np.maximum(hidden, 0.0, out=hidden)
    return hidden @ w_out + b_out, MLPCache(a, hidden)


def mlp_backward(grad: np.ndarray, cache: MLPCache, w_in: np.ndarray, w_out: np.ndarray):
    """G (B, T, C) -> (da, dW_in, db_in, dW_out, db_out)."""
    d_hidden = grad @ w_out.T
    d_hidden *= cache.hidden > 0  # ReLU's derivative (0 at the kink u = 0, as PyTorch)
    d_w_out = _flat(cache.hidden).T @ _flat(grad)
    d_w_in = _flat(cache.a).T @ _flat(d_hidden)
    return d_hidden @ w_in.T, d_w_in, _sum_bt(d_hidden), d_w_out, _sum_bt(grad)


# --- unembedding ---------------------------------------------------------------------------------------


def unembedding_forward(f: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """out = f W_u + b_u: (B, T, C) -> (B, T, D+1), f = LN_f(h).  The cache is ``f``."""
    return f @ w + b


def unembedding_backward(grad: np.ndarray, f: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """G (B, T, D+1) -> (df (B, T, C), dW_u (C, D+1), db_u (D+1,))."""
    return grad @ w.T, _flat(f).T @ _flat(grad), _sum_bt(grad)


# --- the model -----------------------------------------------------------------------------------------


@dataclass
class BlockCache:
    ln1: LayerNormCache | None
    attn: AttentionCache
    ln2: LayerNormCache | None
    mlp: MLPCache


@dataclass
class ModelCache:
    tokens: np.ndarray  # X (B, T, D+1)
    blocks: list[BlockCache]
    ln_f: LayerNormCache | None
    f: np.ndarray  # LN_f(h_L), the unembedding's input (B, T, C)


def forward(cfg: TransformerConfig, params: dict, tokens: np.ndarray) -> tuple[list[np.ndarray], ModelCache]:
    """([h_0, h_1, ..., h_L, out], cache): the residual stream after the embedding and after each
    block (B, T, C), then the output (B, T, D+1)."""
    h = embedding_forward(tokens, params["embed.w"], params["embed.pos"])
    states, blocks = [h], []
    for l in range(cfg.n_layers):
        p = _block(params, l)
        a, ln1 = layernorm_forward(h, p("ln1.weight"), p("ln1.bias"), LN_EPS)
        update, attn = attention_forward(a, p("attn.w_qkv"), p("attn.w_out"), cfg.n_heads, cfg.attention)
        h = h + update
        a, ln2 = layernorm_forward(h, p("ln2.weight"), p("ln2.bias"), LN_EPS)
        update, mlp = mlp_forward(a, p("mlp.w_in"), p("mlp.b_in"), p("mlp.w_out"), p("mlp.b_out"))
        h = h + update
        states.append(h)
        blocks.append(BlockCache(ln1, attn, ln2, mlp))
    f, ln_f = layernorm_forward(h, params.get("unembed.ln.weight"), params.get("unembed.ln.bias"), LN_EPS)
    states.append(unembedding_forward(f, params["unembed.w"], params["unembed.b"]))
    return states, ModelCache(tokens, blocks, ln_f, f)


def backward(cfg: TransformerConfig, params: dict, cache: ModelCache, d_out: np.ndarray) -> dict[str, np.ndarray]:
    """dL/d(every parameter), a dict like params, from d_out = dL/d out (B, T, D+1)."""
    grads = {}
    d_f, grads["unembed.w"], grads["unembed.b"] = unembedding_backward(d_out, cache.f, params["unembed.w"])
    d_h, d_weight, d_bias = layernorm_backward(d_f, cache.ln_f, params.get("unembed.ln.weight"))
    if cfg.layer_norm:
        grads["unembed.ln.weight"], grads["unembed.ln.bias"] = d_weight, d_bias
    for l in reversed(range(cfg.n_layers)):
        p, blk, prefix = _block(params, l), cache.blocks[l], f"block{l}."
        # h <- h + mlp(LN2(h))
        d_a, *mlp_grads = mlp_backward(d_h, blk.mlp, p("mlp.w_in"), p("mlp.w_out"))
        for name, value in zip(("mlp.w_in", "mlp.b_in", "mlp.w_out", "mlp.b_out"), mlp_grads):
            grads[prefix + name] = value
        d_a, d_weight, d_bias = layernorm_backward(d_a, blk.ln2, p("ln2.weight"))
        d_h = d_h + d_a
        if cfg.layer_norm:
            grads[prefix + "ln2.weight"], grads[prefix + "ln2.bias"] = d_weight, d_bias
        # h <- h + attention(LN1(h))
        d_a, grads[prefix + "attn.w_qkv"], d_w_out = attention_backward(d_h, blk.attn, p("attn.w_qkv"), p("attn.w_out"), cfg.attention)
        if cfg.output_projection:
            grads[prefix + "attn.w_out"] = d_w_out
        d_a, d_weight, d_bias = layernorm_backward(d_a, blk.ln1, p("ln1.weight"))
        d_h = d_h + d_a
        if cfg.layer_norm:
            grads[prefix + "ln1.weight"], grads[prefix + "ln1.bias"] = d_weight, d_bias
    grads["embed.w"], grads["embed.pos"] = embedding_backward(d_h, cache.tokens)
    return {name: grads[name] for name in params}  # the order of params


def attention_patterns(cfg: TransformerConfig, params: dict, tokens: np.ndarray) -> list[np.ndarray]:
    """Each block's mixing weights A (B, H, T, T): the softmax probabilities, or for
    attention="linear" the masked scaled scores; rows are queries, columns keys (0 above the diagonal)."""
    _, cache = forward(cfg, params, tokens)
    return [blk.attn.mix for blk in cache.blocks]


def read_out(out: np.ndarray) -> np.ndarray:
    """yhat (B, K) = out[:, 0::2, 0], the output at the x tokens."""
    return out[:, 0::2, 0]


class TransformerOracle:
    """The transformer's engine methods on checked inputs: params a dict of arrays in cfg.dtype,
    tokens (B, 2K, D+1) and targets (B, K) in cfg.dtype (``iclgd.models.transformer.check_*``)."""

    def _forward(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray) -> list[np.ndarray]:
        """[h_0, h_1, ..., h_L, out]: the residual stream (B, T, C) after the embedding and after
        each block, then the model's output (B, T, D+1)."""
        return forward(cfg, params, tokens)[0]

    def _predict(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        """yhat (B, K) = out[:, 0::2, 0]."""
        return read_out(self._forward(cfg, params, tokens)[-1])

    def _per_position_loss(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """L_k = mean_b (yhat_bk - y_bk)^2, (K,)."""
        residual = self._predict(cfg, params, tokens) - targets
        return np.mean(residual * residual, axis=0)

    def _loss(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> float:
        """The paper's MSE, mean over the batch and the K positions (no factor 1/2)."""
        return float(np.mean(self._per_position_loss(cfg, params, tokens, targets)))

    def _loss_and_grad(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """(``_loss``, its gradient, a dict like params): the weighted loss with w_k = 1/K."""
        weights = np.full(cfg.n_examples, 1.0 / cfg.n_examples, dtype=tokens.dtype)
        per_position, grads = _per_position_loss_and_grad(cfg, params, tokens, targets, weights)
        return float(np.mean(per_position)), grads

    def _per_position_loss_and_grad(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray,
                                    targets: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(L_k (K,), the gradient of L = mean_k L_k): one forward and one backward pass."""
        weights = np.full(cfg.n_examples, 1.0 / cfg.n_examples, dtype=tokens.dtype)
        return _per_position_loss_and_grad(cfg, params, tokens, targets, weights)

    def _loss_and_grad_weighted(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray, targets: np.ndarray,
                                position_weights) -> tuple[float, dict[str, np.ndarray]]:
        """(L = sum_k position_weights[k] L_k, its gradient): position_weights a (K,) array."""
        weights = np.asarray(position_weights, dtype=tokens.dtype)
        per_position, grads = _per_position_loss_and_grad(cfg, params, tokens, targets, weights)
        return float(per_position @ weights), grads

    def _sensitivity(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        raise ValueError(
            "the input sensitivity is defined for the LSA family; the transformer predicts at every "
            "x token and has no single query (use the gradients of the per-position loss instead)"
        )


def _per_position_loss_and_grad(cfg, params, tokens, targets, weights) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(L_k (K,), the gradient of sum_k weights[k] L_k): one forward, one backward seeded with
    dL/d out[:, 2k, 0] = 2 w_k (yhat_bk - y_bk) / B."""
    states, cache = forward(cfg, params, tokens)
    out = states[-1]
    residual = read_out(out) - targets
    d_out = np.zeros_like(out)
    d_out[:, 0::2, 0] = residual * (weights * (2.0 / residual.shape[0]))
    return np.mean(residual * residual, axis=0), backward(cfg, params, cache, d_out)


# --- helpers -------------------------------------------------------------------------------------------


def _block(params: dict, layer: int):
    """name -> params[f"block{layer}.{name}"], or None for a parameter the config has not."""
    prefix = f"block{layer}."
    return lambda name: params.get(prefix + name)


def _row_max(x: np.ndarray) -> np.ndarray:
    """max over the last axis, keepdims: a running maximum over its (few) columns, ten times
    faster than ``x.max(axis=-1)``, which NumPy does not vectorise along a short last axis."""
    top = x[..., 0].copy()
    for column in range(1, x.shape[-1]):
        np.maximum(top, x[..., column], out=top)
    return top[..., None]


def _row_sum(x: np.ndarray) -> np.ndarray:
    """sum over the last axis, keepdims (einsum: faster than ``x.sum(axis=-1)`` on short rows)."""
    return np.einsum("...t->...", x)[..., None]

