r"""Closed-form LSA weights that run gradient descent (von Oswald et al. 2023, Prop. 1).

One layer with, in head 0 (other heads zero),

    W_q = W_k = blockdiag(I_d, 0)        so  q_j . k_i = x_j . x_i
    W_v e = (W_0 x - y) in value column 0,   W_o[0, y-slot] = eta / N

adds ``(eta / N) sum_i (x_j . x_i)(W_0 x_i - y_i)`` to every token's y-slot.  By induction,
after t such layers the context y-slots hold ``y_i - (W_t - W_0) x_i`` (the residuals
``y_i - W_t x_i`` when W_0 = 0) and the query's y-slot, started at ``-W_0 x_q``, holds
``-W_t x_q``: the read-out ``yhat = -E[query, y]`` is t GD steps' prediction ``W_t x_q``
(``W_{t+1} = W_t - (eta/N) sum_i (W_t x_i - y_i) x_i^T``).  The same weights in every layer,
so K = n_layers tied or untied layers make K steps.

Tokens come with the query y-slot 0; for W_0 != 0 use ``with_initial_guess`` to write
``-W_0 x_q`` there (an LSA layer cannot add a term linear in x_q by itself).
"""
from __future__ import annotations

import numpy as np

from iclgd._checks import finite_array, finite_float, positive_int
from iclgd.models import LSAConfig, layer_prefixes, zero_params


def _initial_guess(cfg: LSAConfig, w0: object) -> np.ndarray:
    if w0 is None:
        return np.zeros(cfg.d)
    w0 = finite_array("w0", w0).astype(np.float64)
    if w0.shape != (cfg.d,):
        raise ValueError(f"w0 must have shape (d,) = ({cfg.d},); got {w0.shape}")
    return w0


def gd_construction(cfg: LSAConfig, eta: float, w0: object = None, n_context: int | None = None) -> dict[str, np.ndarray]:
    """Parameters (in ``cfg.dtype``) for which the LSA's prediction is ``cfg.n_layers`` GD steps
    with rate ``eta`` from ``w0`` (default 0) on each context.

    The output weight is eta / N, so N must be known: ``n_context`` here, else ``cfg.n_context``.
    Needs key_size >= d and include_query off (the query must not attend to itself).
    """
    eta = finite_float("eta", eta)
    if n_context is None:
        n_context = cfg.n_context
    if n_context is None:
        raise ValueError(
            "gd_construction needs the number of context tokens N (the output weight is eta / N): "
            "pass n_context=N or set LSAConfig(n_context=N); got neither"
        )
    n_context = positive_int("n_context", n_context)
    if cfg.n_context is not None and cfg.n_context != n_context:
        raise ValueError(f"n_context={n_context} disagrees with cfg.n_context={cfg.n_context}")
    if cfg.key_size < cfg.d:
        raise ValueError(f"the GD construction needs key_size >= d = {cfg.d}; got key_size={cfg.key_size}")
    if cfg.include_query:
        raise ValueError("the GD construction needs include_query=False (the query must not attend to itself); got True")
    w0 = _initial_guess(cfg, w0)
    d = cfg.d
    params = zero_params(cfg)
    for prefix in dict.fromkeys(layer_prefixes(cfg)):
        params[f"{prefix}.w_q"][0, :d, :d] = np.eye(d)
        params[f"{prefix}.w_k"][0, :d, :d] = np.eye(d)
        params[f"{prefix}.w_v"][0, :d, 0] = w0
        params[f"{prefix}.w_v"][0, d, 0] = -1.0
        params[f"{prefix}.w_o"][0, 0, d] = eta / n_context
    return params


def with_initial_guess(tokens: object, w0: object) -> np.ndarray:
    """A copy of ``tokens`` with the query's y-slot set to ``-w0 . x_q``, the start state the
    construction needs for GD from ``w0`` ((d,) or (B, d))."""
    tokens = finite_array("tokens", tokens, ndim=3).copy()
    if tokens.shape[0] < 1 or tokens.shape[1] < 2 or tokens.shape[2] < 2:
        raise ValueError(f"tokens must have shape (B, N + 1, d + 1) with B, N, d >= 1; got {tokens.shape}")
    d = tokens.shape[2] - 1
    w0 = finite_array("w0", w0)
    if w0.shape not in ((d,), (tokens.shape[0], d)):
        raise ValueError(f"w0 must have shape (d,) or (B, d) with d = {d}; got {w0.shape}")
    tokens[:, -1, -1] = -np.einsum("bd,bd->b", tokens[:, -1, :-1], np.broadcast_to(w0, (tokens.shape[0], d)))
    return tokens
