r"""Closed-form LSA weights that run gradient descent (von Oswald et al. 2023, Prop. 1) and
its curvature-corrected variant GD++ (ibid., the multi-layer experiments).

GD.  One layer with, in head 0 (other heads zero),

    W_q = W_k = blockdiag(I_d, 0)        so  q_j . k_i = x_j . x_i
    W_v e = (W_0 x - y) in value column 0,   W_o[0, y-slot] = eta / N

adds ``(eta / N) sum_i (x_j . x_i)(W_0 x_i - y_i)`` to every token's y-slot.  By induction,
after t such layers the context y-slots hold ``y_i - (W_t - W_0) x_i`` (the residuals
``y_i - W_t x_i`` when W_0 = 0) and the query's y-slot, started at ``-W_0 x_q``, holds
``-W_t x_q``: the read-out ``yhat = -E[query, y]`` is t GD steps' prediction ``W_t x_q``
(``W_{t+1} = W_t - (eta/N) sum_i (W_t x_i - y_i) x_i^T``).  The same weights in every layer,
so K = n_layers tied or untied layers make K steps.

GD++.  The same layer also moves the inputs: with value columns 1..d copying x and
``W_o[1 + a, a] = -gamma / N`` (a = 0..d-1), one layer maps every token j, context and query
alike, from the layer's old tokens to

    x_j <- x_j - (gamma / N) sum_i (x_i . x_j) x_i          = (I - gamma Sigma) x_j,  Sigma = (1/N) sum_i x_i x_i^T
    y_j <- y_j + (eta / N)   sum_i (x_i . x_j) (W_0 x_i - y_i)

(sums over the N context tokens).  The x-update is a curvature correction: it shrinks the
inputs along the directions where the context covariance is large, so that the GD steps of
later layers see a better-conditioned problem.  gamma is divided by N like eta (our choice,
so that gamma is a rate against the empirical covariance Sigma, not against sum_i x_i x_i^T).
With gamma = 0 the x-parts never change and K layers are exactly K GD steps.
``iclgd.baselines.gdpp_predict`` computes the same recursion directly.

Tokens come with the query y-slot 0; for W_0 != 0 use ``with_initial_guess`` to write
``-W_0 x_q`` there (an LSA layer cannot add a term linear in x_q by itself).
"""
from __future__ import annotations

import numpy as np

from iclgd._checks import finite_array, finite_float, largest, positive_int
from iclgd.models import LSAConfig, layer_prefixes, zero_params
from iclgd.models.lsa import check_config


def _initial_guess(cfg: LSAConfig, w0: object) -> np.ndarray:
    if w0 is None:
        return np.zeros(cfg.d)
    w0 = finite_array("w0", w0)
    if w0.shape != (cfg.d,):
        raise ValueError(f"w0 must have shape (d,) = ({cfg.d},); got {w0.shape}")
    finite_array("w0", w0, dtype=cfg.dtype)  # the weights hold w0 in cfg.dtype
    return w0.astype(np.float64)


def _context_size(cfg: LSAConfig, n_context: object, caller: str, why: str) -> int:
    """N from the argument or from cfg (they must agree if both are given)."""
    if n_context is None:
        n_context = cfg.n_context
    if n_context is None:
        raise ValueError(
            f"{caller} needs the number of context tokens N ({why}): "
            "pass n_context=N or set LSAConfig(n_context=N); got neither"
        )
    n_context = positive_int("n_context", n_context)
    if cfg.n_context is not None and cfg.n_context != n_context:
        raise ValueError(f"n_context={n_context} disagrees with cfg.n_context={cfg.n_context}")
    return n_context


def _construction(
    cfg: LSAConfig,
    eta: object,
    gamma: object,
    w0: object,
    n_context: object,
    *,
    moves_inputs: bool,
    caller: str,
    label: str,
    why: str,
) -> dict[str, np.ndarray]:
    """Weights of the GD layer (``moves_inputs=False``: gamma unused, any value_size) or the
    GD++ layer, shared by every layer; see the module doc for the layout."""
    check_config(cfg)
    eta = finite_float("eta", eta)
    if moves_inputs:
        gamma = finite_float("gamma", gamma)
    n_context = _context_size(cfg, n_context, caller, why)
    for name, rate in (("eta", eta), ("gamma", gamma if moves_inputs else 0.0)):
        if abs(rate) / n_context > largest(cfg.dtype):
            raise ValueError(
                f"{name} = {rate:.3g} is too large for {cfg.dtype}: the output weight {name} / N = {rate:.3g} / {n_context} "
                f"overflows it (the largest {cfg.dtype} is {largest(cfg.dtype):.3g})"
            )
    d = cfg.d
    if cfg.key_size < d:
        raise ValueError(f"the {label} construction needs key_size >= d = {d}; got key_size={cfg.key_size}")
    if moves_inputs and cfg.value_size < d + 1:
        raise ValueError(
            f"the {label} construction needs value_size >= d + 1 = {d + 1} (value column 0 carries "
            f"W0 x_i - y_i, columns 1..d carry x_i); got value_size={cfg.value_size}"
        )
    if cfg.include_query:
        raise ValueError(f"the {label} construction needs include_query=False (the query must not attend to itself); got True")
    w0 = _initial_guess(cfg, w0)
    params = zero_params(cfg)
    for prefix in dict.fromkeys(layer_prefixes(cfg)):
        params[f"{prefix}.w_q"][0, :d, :d] = np.eye(d)
        params[f"{prefix}.w_k"][0, :d, :d] = np.eye(d)
        # GD: value column 0 = W0 x - y, written into the y-slot with weight eta / N
        params[f"{prefix}.w_v"][0, :d, 0] = w0
        params[f"{prefix}.w_v"][0, d, 0] = -1.0
        params[f"{prefix}.w_o"][0, 0, d] = eta / n_context
        if moves_inputs:
            # GD++: value columns 1..d = x, written into the x-slots with weight -gamma / N
            params[f"{prefix}.w_v"][0, :d, 1 : d + 1] = np.eye(d)
            params[f"{prefix}.w_o"][0, 1 : d + 1, :d] = -(gamma / n_context) * np.eye(d)
    return params


def gd_construction(cfg: LSAConfig, eta: float, w0: object = None, n_context: int | None = None) -> dict[str, np.ndarray]:
    """Parameters (in ``cfg.dtype``) for which the LSA's prediction is ``cfg.n_layers`` GD steps
    with rate ``eta`` from ``w0`` (default 0) on each context.

    The output weight is eta / N, so N must be known: ``n_context`` here, else ``cfg.n_context``.
    Needs key_size >= d and include_query off (the query must not attend to itself); any
    value_size works (only value column 0 is used).  ``gdpp_construction`` with gamma = 0
    predicts the same (it also fills value columns 1..d, with zero output weight).
    """
    return _construction(
        cfg,
        eta,
        None,
        w0,
        n_context,
        moves_inputs=False,
        caller="gd_construction",
        label="GD",
        why="the output weight is eta / N",
    )


def gdpp_construction(
    cfg: LSAConfig, eta: float, gamma: float, w0: object = None, n_context: int | None = None
) -> dict[str, np.ndarray]:
    """Parameters (in ``cfg.dtype``) for which ``cfg.n_layers`` LSA layers (tied or not) do that
    many GD++ steps with rates ``eta`` and ``gamma`` from ``w0`` (default 0), every token j
    updated from the layer's old tokens:

        x_j <- x_j - (gamma / N) sum_i (x_i . x_j) x_i
        y_j <- y_j + (eta / N)   sum_i (x_i . x_j) (W0 x_i - y_i)

    gamma is divided by N like eta (our normalisation: gamma is a rate against the empirical
    input covariance (1/N) sum_i x_i x_i^T).  gamma = 0 is plain GD (``gd_construction``).
    Head 0 does the work, other heads are zero: W_q = W_k = blockdiag(I_d, 0), and W_v W_o sends
    e_i to (-(gamma/N) x_i, (eta/N)(W0 x_i - y_i)) through value column 0 (W0 x_i - y_i) and
    columns 1..d (x_i).  For w0 != 0 feed ``with_initial_guess(tokens, w0)``; the read-out is
    ``-E[query, y-slot]``, the same recursion as ``iclgd.baselines.gdpp_predict``.

    N must be known: ``n_context`` here, else ``cfg.n_context``.  Needs key_size >= d,
    value_size >= d + 1 and include_query off; raises ValueError otherwise.
    """
    return _construction(
        cfg,
        eta,
        gamma,
        w0,
        n_context,
        moves_inputs=True,
        caller="gdpp_construction",
        label="GD++",
        why="the output weights are eta / N and gamma / N",
    )


def with_initial_guess(tokens: object, w0: object) -> np.ndarray:
    """A copy of ``tokens`` with the query's y-slot set to ``-w0 . x_q``, the start state the
    construction needs for GD (or GD++) from ``w0`` ((d,) or (B, d))."""
    tokens = finite_array("tokens", tokens, ndim=3).astype(np.float64)  # a float copy
    if tokens.shape[0] < 1 or tokens.shape[1] < 2 or tokens.shape[2] < 2:
        raise ValueError(f"tokens must have shape (B, N + 1, d + 1) with B, N, d >= 1; got {tokens.shape}")
    d = tokens.shape[2] - 1
    w0 = finite_array("w0", w0)
    if w0.shape not in ((d,), (tokens.shape[0], d)):
        raise ValueError(f"w0 must have shape (d,) or (B, d) with d = {d}; got {w0.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        tokens[:, -1, -1] = -np.einsum("bd,bd->b", tokens[:, -1, :-1], np.broadcast_to(w0, (tokens.shape[0], d)))
    if not np.isfinite(tokens[:, -1, -1]).all():
        raise ValueError(
            f"w0 and tokens are too large: the initial guess -w0 . x_q overflows float64 (largest |w0| "
            f"{np.max(np.abs(w0)):.3g}, largest |x_q| {np.max(np.abs(tokens[:, -1, :-1])):.3g})"
        )
    return tokens
