r"""Pieces shared by the NumPy oracles of the attention stack (``numpy_stack``) and the
transformer (``numpy_transformer``): LayerNorm's forward and backward, and the reductions over
(batch, token) they and the layers use.  Shapes: B tasks, T tokens, C channels.

LayerNorm over the last axis with the biased variance (PyTorch's convention):

    xhat = (x - mean(x)) r,   r = 1 / sqrt(var(x) + eps),   y = xhat w + b;
    backward, with G = dL/dy:   dxhat = G w,
                                dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),
                                dw = sum_bt G xhat,   db = sum_bt G.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LayerNormCache:
    """What the LayerNorm backward needs (None stands for the identity of layer_norm=False)."""

    xhat: np.ndarray  # (x - mu) / sqrt(var + eps), (B, T, C)
    rstd: np.ndarray  # 1 / sqrt(var + eps), (B, T, 1)


def layernorm_forward(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None,
                      eps: float) -> tuple[np.ndarray, LayerNormCache | None]:
    """y = (x - mu) / sqrt(var + eps) * weight + bias over the last axis (biased variance):
    (B, T, C) -> (B, T, C); ``weight is None`` (layer_norm=False) is the identity."""
    if weight is None:
        return x, None
    xhat = x - x.mean(axis=-1, keepdims=True)
    var = row_dot(xhat, xhat) / x.shape[-1]
    rstd = 1.0 / np.sqrt(var + eps)
    xhat *= rstd
    y = xhat * weight
    y += bias
    return y, LayerNormCache(xhat, rstd)


def layernorm_backward(grad: np.ndarray, cache: LayerNormCache | None, weight: np.ndarray | None):
    """G (B, T, C) -> (dx (B, T, C), dweight (C,), dbias (C,)); (G, None, None) for the identity
    (the module docstring's equations)."""
    if cache is None:
        return grad, None, None
    xhat = cache.xhat
    d_xhat = grad * weight
    width = xhat.shape[-1]
    d_x = d_xhat - d_xhat.mean(axis=-1, keepdims=True)
    d_x -= xhat * (row_dot(d_xhat, xhat) / width)
    d_x *= cache.rstd
    return d_x, np.einsum("btc,btc->c", grad, xhat), sum_bt(grad)


def flat(x: np.ndarray) -> np.ndarray:
    """(B, T, n) -> (B T, n), so that sum_bt x^T y is one matrix product."""
    return x.reshape(-1, x.shape[-1])


def sum_bt(x: np.ndarray) -> np.ndarray:
    """sum over the batch and the tokens: (B, T, n) -> (n,)."""
    return x.sum(axis=(0, 1))


def row_dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sum over the last axis of x * y, keepdims, without the product's temporary."""
    return np.einsum("...t,...t->...", x, y)[..., None]
