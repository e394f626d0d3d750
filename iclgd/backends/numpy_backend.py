r"""The NumPy oracle: forward and hand-written backward passes of the LSA model.

No autodiff; every gradient below is derived by hand and checked against central finite
differences in tests/test_gradients.py.  Vectorised over the batch and the heads.

Forward of one layer (shapes: B batch, H heads, T = N + 1 tokens, N_k attended tokens,
D = d + 1, k key size, v value size):

    Q = E W_q        (B, H, T, k)        K = C W_k      (B, H, N_k, k)      V = C W_v   (B, H, N_k, v)
    S = Q K^T        (B, H, T, N_k)      Z = S V        (B, H, T, v)
    E' = E + sum_h Z_h W_o[h]            (B, T, D)

Backward, given G = dL/dE' (B, T, D):

    dZ = G W_o^T     dS = dZ V^T     dV = S^T dZ     dQ = dS K     dK = dS^T Q
    dW_o = sum_{b,t} Z^T G     dW_q = sum_{b,t} E^T dQ     dW_k = sum_{b,n} C^T dK     dW_v = sum_{b,n} C^T dV
    dE = G + sum_h dQ W_q^T,   and on the attended rows also  + sum_h (dK W_k^T + dV W_v^T)

The last layer is read at the query row only, so predict / loss / gradients compute that
layer's output for the query row alone (``forward`` returns every row of every layer).

Read-out and loss: yhat = -E_K[:, N, d];  L = 0.5 mean_b (yhat_b - y_b)^2, so
dL/dE_K[:, N, d] = -(yhat - y) / B and zero elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd.backends.base import Backend
from iclgd.models import WEIGHT_NAMES, LSAConfig, TransformerConfig, layer_prefixes


@dataclass
class _LayerCache:
    """What one layer's backward needs from its forward."""

    tokens: np.ndarray  # E (B, T, D), the layer's input
    rows: slice  # the rows of E whose output was computed (all, or only the query)
    attended: np.ndarray  # C (B, N_k, D)
    q: np.ndarray  # (B, H, R, k) for the R computed rows
    k: np.ndarray  # (B, H, N_k, k)
    v: np.ndarray  # (B, H, N_k, v)
    scores: np.ndarray  # S (B, H, R, N_k)
    mixed: np.ndarray  # Z (B, H, R, v)


ALL_ROWS = slice(None)
QUERY_ROW = slice(-1, None)


def _layer_weights(params: dict, prefix: str) -> tuple[np.ndarray, ...]:
    return tuple(params[f"{prefix}.{name}"] for name in WEIGHT_NAMES)


def _layer_forward(tokens: np.ndarray, weights: tuple, include_query: bool, rows: slice) -> tuple[np.ndarray, _LayerCache]:
    """One layer's output rows ``E[:, rows] + sum_h S_h V_h W_o[h]``, (B, R, D).

    Only the rows asked for are computed: the last layer's output is read at the query row
    alone, so there ``rows = QUERY_ROW`` saves a factor N + 1 in Q, S and Z."""
    w_q, w_k, w_v, w_o = weights
    n_context = tokens.shape[1] - 1
    attended = tokens if include_query else tokens[:, :n_context]
    q = tokens[:, None, rows] @ w_q  # (B, 1, R, D) @ (H, D, k) -> (B, H, R, k)
    k = attended[:, None] @ w_k
    v = attended[:, None] @ w_v
    scores = q @ k.swapaxes(-1, -2)
    mixed = scores @ v
    update = np.einsum("bhtv,hvd->btd", mixed, w_o)
    return tokens[:, rows] + update, _LayerCache(tokens, rows, attended, q, k, v, scores, mixed)


def _tensordot_heads(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """sum over batch and rows of left^T right: (B, R, D) x (B, H, R, k) -> (H, D, k)."""
    return np.tensordot(left, right, axes=([0, 1], [0, 2])).transpose(1, 0, 2)


def _layer_backward(
    grad_out: np.ndarray, cache: _LayerCache, weights: tuple, want_input_grad: bool, want_weight_grads: bool
) -> tuple[np.ndarray | None, tuple | None]:
    """grad_out = dL/d(output rows), (B, R, D) -> (dL/dE (B, T, D) or None, weight grads or None)."""
    w_q, w_k, w_v, w_o = weights
    d_mixed = grad_out[:, None] @ w_o.swapaxes(-1, -2)  # (B, H, R, v)
    d_scores = d_mixed @ cache.v.swapaxes(-1, -2)  # (B, H, R, N_k)
    d_v = cache.scores.swapaxes(-1, -2) @ d_mixed  # (B, H, N_k, v)
    d_q = d_scores @ cache.k  # (B, H, R, k)
    d_k = d_scores.swapaxes(-1, -2) @ cache.q  # (B, H, N_k, k)
    grad_in = None
    if want_input_grad:
        grad_in = np.zeros_like(cache.tokens)
        grad_in[:, cache.rows] = grad_out + (d_q @ w_q.swapaxes(-1, -2)).sum(axis=1)
        n_attended = cache.attended.shape[1]
        grad_in[:, :n_attended] += (d_k @ w_k.swapaxes(-1, -2) + d_v @ w_v.swapaxes(-1, -2)).sum(axis=1)
    if not want_weight_grads:
        return grad_in, None
    # dW_o[h] = sum_{b,r} Z[b,h,r,:]^T G[b,r,:]
    d_w_o = np.tensordot(cache.mixed, grad_out, axes=([0, 2], [0, 1]))
    d_w_q = _tensordot_heads(cache.tokens[:, cache.rows], d_q)
    d_w_k = _tensordot_heads(cache.attended, d_k)
    d_w_v = _tensordot_heads(cache.attended, d_v)
    return grad_in, (d_w_q, d_w_k, d_w_v, d_w_o)


def _forward(cfg: LSAConfig, params: dict, tokens: np.ndarray, last_rows: slice) -> tuple[list[np.ndarray], list[_LayerCache]]:
    """[E_0, ..., E_K] and the caches; the last layer computes only ``last_rows``."""
    states, caches = [tokens], []
    prefixes = layer_prefixes(cfg)
    for layer, prefix in enumerate(prefixes):
        rows = last_rows if layer == len(prefixes) - 1 else ALL_ROWS
        out, cache = _layer_forward(states[-1], _layer_weights(params, prefix), cfg.include_query, rows)
        states.append(out)
        caches.append(cache)
    return states, caches


def _backward(cfg: LSAConfig, params: dict, caches: list[_LayerCache], grad_out: np.ndarray, want_input_grad: bool, want_weight_grads: bool):
    """Backpropagate dL/d(last layer's output rows) through all layers; return (dL/dE_0 or None, grads or None)."""
    grads = {name: np.zeros_like(value) for name, value in params.items()} if want_weight_grads else None
    grad = grad_out
    prefixes = layer_prefixes(cfg)
    for layer in reversed(range(cfg.n_layers)):
        prefix = prefixes[layer]
        grad, weight_grads = _layer_backward(
            grad, caches[layer], _layer_weights(params, prefix), want_input_grad or layer > 0, want_weight_grads
        )
        if want_weight_grads:
            for name, value in zip(WEIGHT_NAMES, weight_grads):
                grads[f"{prefix}.{name}"] += value  # tied layers add up their gradients
    return grad, grads


def _read_out(tokens: np.ndarray) -> np.ndarray:
    """yhat = -E[:, query, y-slot], (B,)."""
    return -tokens[:, -1, -1]


class NumpyBackend(Backend):
    """The oracle backend: the public methods of ``Backend`` validate the inputs, these compute
    in ``cfg.dtype`` on NumPy arrays."""

    name = "numpy"
    families = (LSAConfig, TransformerConfig)

    def _engine(self, cfg):
        """The LSA is computed by this class; the transformer by its own oracle
        (iclgd.backends.numpy_transformer)."""
        if isinstance(cfg, TransformerConfig):
            if self._transformer_engine is None:  # built once, on first use
                from iclgd.backends.numpy_transformer import TransformerOracle

                self._transformer_engine = TransformerOracle()
            return self._transformer_engine
        return self

    def _forward(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> list[np.ndarray]:
        """Every layer's tokens: [E_0 = tokens, E_1, ..., E_K], each (B, N + 1, d + 1)."""
        return _forward(cfg, params, tokens, ALL_ROWS)[0]

    def _predict(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        """yhat = -E_K[:, N, d], (B,)."""
        return _read_out(_forward(cfg, params, tokens, QUERY_ROW)[0][-1])

    def _loss_and_grad(self, cfg: LSAConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """The half-MSE and its gradient with respect to every parameter (a dict like params)."""
        states, caches = _forward(cfg, params, tokens, QUERY_ROW)
        residual = _read_out(states[-1]) - targets
        grad_out = np.zeros_like(states[-1])
        grad_out[:, -1, -1] = -residual / residual.shape[0]
        _, grads = _backward(cfg, params, caches, grad_out, want_input_grad=False, want_weight_grads=True)
        return float(0.5 * np.mean(residual**2)), grads

    def _sensitivity(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        """d yhat_b / d x_q,b for every task, (B, d): one backward pass seeded with
        d yhat / d E_K[:, N, d] = -1 (tasks are independent, so no batch sum mixes them).
        The derivative is taken through the x-part of the query token with its y-slot held
        fixed (for tokens from ``with_initial_guess``, add d yhat/d y_q * d y_q/d x_q yourself)."""
        states, caches = _forward(cfg, params, tokens, QUERY_ROW)
        grad_out = np.zeros_like(states[-1])
        grad_out[:, -1, -1] = -1.0
        grad_in, _ = _backward(cfg, params, caches, grad_out, want_input_grad=True, want_weight_grads=False)
        return grad_in[:, -1, :-1]
