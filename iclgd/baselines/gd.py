r"""Learning algorithms computed directly on each context, to compare trained models with.

(``iclgd.baselines.gd``; ``iclgd.baselines`` re-exports every name of this module.)

All functions take tokens in the constructed format, (B, N + 1, d + 1): context rows
(x_i, y_i), then the query row (x_q, .) whose y-slot is ignored.  They compute in float64.

Gradient descent on the context loss ``L(W) = 1/(2N) sum_i (W x_i - y_i)^2`` from ``W_0``:

    W_{t+1} = W_t - (eta / N) sum_i (W_t x_i - y_i) x_i^T,     prediction  W_K x_q.

GD++ (von Oswald et al. 2023, multi-layer experiments), the curvature-corrected variant that the LSA of
``iclgd.gdpp_construction`` runs: every token j (context and query) is updated from the
step's old tokens,

    x_j <- x_j - (gamma / N) sum_i (x_i . x_j) x_i,
    y_j <- y_j + (eta / N)   sum_i (x_i . x_j) (W_0 x_i - y_i),

from the query (x_q, -W_0 x_q); the prediction after K steps is minus the query's y-slot.
gamma is divided by N like eta (our normalisation).  gamma = 0 is K GD steps.

One-step optimum (the task family of iclgd.tasks, no distractors): with per-coordinate
moments ``s2 = E x^2 = a^2 / 3`` and ``m4 = E x^4 = a^4 / 5``, prior ``w ~ N(0, sw^2 I)``
and label noise ``sigma^2``, the expected squared error of one GD step from W_0 = 0 is

    MSE(eta) = A eta^2 - 2 B eta + C,
    A = (d / N) s2 (sw^2 (m4 + (N + d - 2) s2^2) + sigma^2 s2),   B = sw^2 d s2^2,   C = sw^2 d s2 + sigma^2,

so ``eta* = B / A`` and ``MSE* = C - B^2 / A``.  (E tr(Sigma_hat^2) = (d/N)(m4 + (N+d-2) s2^2)
for the empirical covariance of N inputs does the work.)  For sigma = 0, sw = 1 this is
docs/conventions.md's ``eta* = N s2 / (m4 + (N + d - 2) s2^2)``; d = N = 10, a = 1 gives eta* = 50/33
and half-MSE* = 0.8249.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from iclgd import limits
from iclgd._checks import finite_array, finite_float, max_abs, nonnegative_int, positive_int
from iclgd.tasks import resolve_x_scale
from iclgd.tokens.constructed import split as split_tokens  # (B, N+1, d+1) -> X (B,N,d), y (B,N), x_q (B,d)


def _initial_weights(w0: object, batch_size: int, d: int) -> np.ndarray:
    """W_0 as a (B, d) float64 array: zeros for None, a (d,) vector shared by all tasks, or (B, d)."""
    if w0 is None:
        return np.zeros((batch_size, d))
    w0 = finite_array("w0", w0).astype(np.float64)
    if w0.shape == (d,):
        return np.broadcast_to(w0, (batch_size, d)).copy()
    if w0.shape == (batch_size, d):
        return w0.copy()
    raise ValueError(f"w0 must have shape (d,) = ({d},) or (B, d) = ({batch_size}, {d}); got {w0.shape}")


def _steps(steps: object) -> int:
    """The number of GD steps: an integer in 0..limits.MAX_GD_STEPS."""
    return nonnegative_int("steps", steps, maximum=limits.MAX_GD_STEPS)


def _finite_result(caller: str, result: np.ndarray, tokens: object, **arguments) -> np.ndarray:
    """``result``, or ValueError naming the inputs when the computation overflowed float64
    (the inputs are finite, so a NaN/inf is an overflow: GD diverging at a large rate, or huge
    tokens)."""
    if np.isfinite(result).all():
        return result
    arguments = {name: value for name, value in arguments.items() if value is not None}
    suspects = [f"tokens (largest |entry| {max_abs(np.asarray(tokens, dtype=np.float64)):.3g})", *arguments]
    given = "".join(f", {name} = {value}" for name, value in arguments.items() if np.ndim(value) == 0)
    n_bad = np.size(result) - np.count_nonzero(np.isfinite(result))
    raise ValueError(
        f"{', '.join(suspects[:-1])} or {suspects[-1]} too large: {caller} overflows float64 "
        f"({n_bad} of {np.size(result)} results NaN/inf{given})"
        if len(suspects) > 1 else f"{suspects[0]} too large: {caller} overflows float64 ({n_bad} of {np.size(result)} results NaN/inf)"
    )


def step_rates(name: str, rate: object, steps: int) -> np.ndarray:
    """A rate per step, (steps,) float64: a number is used for every step, a sequence must have one
    entry per step (learned per-step rates, iclgd.gd_models)."""
    try:
        scalar = np.ndim(rate) == 0
    except (ValueError, TypeError):  # a ragged sequence: finite_array words the error
        scalar = False
    if scalar:
        return np.full(steps, finite_float(name, rate.item() if isinstance(rate, np.ndarray) else rate))
    rate = finite_array(name, rate, ndim=1).astype(np.float64)
    if rate.shape != (steps,):
        raise ValueError(f"{name} must be a number or have one entry per step, shape ({steps},); got shape {rate.shape}")
    return rate


def gd_weights(tokens: object, eta: object, steps: int = 1, w0: object = None) -> np.ndarray:
    """The weights W_K (B, d) after ``steps`` GD steps with rate ``eta`` (a number, or one per
    step: eta_t for step t) on each context.  Raises ValueError when GD overflows float64."""
    x, y, _ = split_tokens(tokens)
    steps = _steps(steps)
    etas = step_rates("eta", eta, steps)
    n_context = x.shape[1]
    w = _initial_weights(w0, x.shape[0], x.shape[2])
    with np.errstate(over="ignore", invalid="ignore"):
        for eta_t in etas:
            residual = np.einsum("bnd,bd->bn", x, w) - y  # W x_i - y_i
            w = w - (eta_t / n_context) * np.einsum("bn,bnd->bd", residual, x)
    return _finite_result("gd_weights", w, tokens, eta=eta, steps=steps, w0=w0)


def gd_predict(tokens: object, eta: object, steps: int = 1, w0: object = None) -> np.ndarray:
    """Prediction W_K x_q (B,) of ``steps`` GD steps from ``w0`` (default 0) on each context."""
    _, _, x_query = split_tokens(tokens)
    weights = gd_weights(tokens, eta, steps, w0)
    with np.errstate(over="ignore", invalid="ignore"):
        prediction = np.einsum("bd,bd->b", weights, x_query)
    return _finite_result("gd_predict", prediction, tokens, eta=eta, steps=steps, w0=w0)


def gdpp_predict(tokens: object, eta: object, gamma: object, steps: int = 1, w0: object = None) -> np.ndarray:
    """Prediction (B,) of ``steps`` GD++ steps with rates ``eta`` (labels) and ``gamma`` (inputs)
    from ``w0`` (default 0; (d,) or (B, d)) on each context, computed directly (module doc):

        x_j <- x_j - (gamma / N) sum_i (x_i . x_j) x_i
        y_j <- y_j + (eta / N)   sum_i (x_i . x_j) (W0 x_i - y_i)

    for the N context tokens and the query, which starts as (x_q, -W0 x_q); returns minus the
    query's final y-slot.  gamma is divided by N like eta; gamma = 0 gives ``gd_predict``.
    ``eta`` and ``gamma`` are numbers or one rate per step ((steps,) sequences).  Raises
    ValueError when the Gram matrices (B, N, N) would not fit in memory (``iclgd.limits``) or
    the recursion overflows float64.
    """
    x, y, x_query = split_tokens(tokens)
    steps = _steps(steps)
    etas, gammas = step_rates("eta", eta, steps), step_rates("gamma", gamma, steps)
    batch_size, n_context, d = x.shape
    limits.check_bytes(f"tokens of shape {(batch_size, n_context + 1, d + 1)}", limits.gdpp_bytes(batch_size, n_context, d),
                       f"GD++ with its Gram matrices (B, N, N) = ({batch_size}, {n_context}, {n_context})")
    w0_given, w0 = w0, _initial_weights(w0, batch_size, d)
    with np.errstate(over="ignore", invalid="ignore"):
        y_query = -np.einsum("bd,bd->b", x_query, w0)
        for eta, gamma in zip(etas, gammas):
            gram = x @ x.swapaxes(-1, -2)  # (B, N, N): x_i . x_j
            query_gram = np.einsum("bnd,bd->bn", x, x_query)  # (B, N): x_i . x_q
            residual = np.einsum("bnd,bd->bn", x, w0) - y  # W0 x_i - y_i, from the old tokens
            x, x_query, y, y_query = (
                x - (gamma / n_context) * (gram @ x),
                x_query - (gamma / n_context) * np.einsum("bn,bnd->bd", query_gram, x),
                y + (eta / n_context) * np.einsum("bij,bj->bi", gram, residual),
                y_query + (eta / n_context) * np.einsum("bn,bn->b", query_gram, residual),
            )
    return _finite_result("gdpp_predict", -y_query, tokens, eta=etas, gamma=gammas, steps=steps, w0=w0_given)


def svd_ridge(x: np.ndarray, y: np.ndarray, ridge: float, inputs: str = "examples", rows: str = "prefixes") -> np.ndarray:
    """argmin_w ||X w - y||^2 + ridge ||w||^2 for every sequence: x (B, n, d), y (B, n) -> (B, d),
    float64, from the SVD X = U diag(s) V^T: w = V diag(s / (s^2 + ridge)) U^T y (the gain written
    1 / (s + ridge / s) where s^2 overflows).  ridge = 0: singular values below max(n, d) eps s_max
    are dropped, the minimum-norm least-squares solution X^+ y.  ``inputs`` and ``rows`` name the
    arrays in the error raised when the SVD fails."""
    try:
        u, s, vt = np.linalg.svd(x, full_matrices=False)  # (B, n, r), (B, r), (B, r, d)
    except np.linalg.LinAlgError as error:
        raise ValueError(f"{inputs} (largest |entry| {max_abs(x):.3g}) defeat the SVD of their {rows}: {error}") from None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if ridge > 0:
            gain = s / (s**2 + ridge)
            if not np.isfinite(gain).all():  # s^2 overflowed (huge inputs): the same gain, written as 1 / (s + ridge / s)
                positive = np.where(s > 0, s, 1.0)
                gain = np.where(s > 0, 1.0 / (positive + ridge / positive), 0.0)
        else:
            cutoff = max(x.shape[1], x.shape[2]) * np.finfo(np.float64).eps * s[:, :1]
            keep = s > cutoff
            gain = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
        return np.einsum("brd,br->bd", vt, gain * np.einsum("bnr,bn->br", u, y))


def ridge_weights(tokens: object, ridge: float) -> np.ndarray:
    r"""Per-task ridge solution ``argmin_w sum_i (w . x_i - y_i)^2 + ridge ||w||^2``, (B, d).

    Computed from the SVD X = U diag(s) V^T as w = V diag(s / (s^2 + ridge)) U^T y, which is
    stable where the normal equations are not (N = d, nearly singular X).  With ridge = 0,
    singular values below ``max(N, d) * eps * s_max`` are dropped: the minimum-norm least-squares
    solution.  The Bayes posterior mean for w ~ N(0, sw^2 I) and noise sigma^2 is ridge =
    sigma^2 / sw^2.
    """
    x, y, _ = split_tokens(tokens)
    ridge = finite_float("ridge", ridge, nonnegative=True)
    weights = svd_ridge(x, y, ridge, "tokens", "contexts")
    return _finite_result("ridge_weights", weights, tokens, ridge=ridge)


def ridge_predict(tokens: object, ridge: float) -> np.ndarray:
    """Ridge regression's prediction w . x_q, (B,)."""
    _, _, x_query = split_tokens(tokens)
    weights = ridge_weights(tokens, ridge)
    with np.errstate(over="ignore", invalid="ignore"):
        prediction = np.einsum("bd,bd->b", weights, x_query)
    return _finite_result("ridge_predict", prediction, tokens, ridge=ridge)


def least_squares_predict(tokens: object) -> np.ndarray:
    """Minimum-norm least squares on each context, (B,) (ridge -> 0)."""
    return ridge_predict(tokens, 0.0)


@dataclass(frozen=True)
class OneStepOptimum:
    """The best single GD step from W_0 = 0: its rate, its MSE and half-MSE (see module doc)."""

    eta: float
    mse: float

    @property
    def half_mse(self) -> float:
        return 0.5 * self.mse


def one_step_optimum(
    d: int, n_context: int, x_scale: float | str = 1.0, w_scale: float = 1.0, noise_std: float = 0.0
) -> OneStepOptimum:
    """Closed-form optimal rate and loss of one GD step for the task family (module doc).

    Evaluated in float64 as the formula reads (the numbers every recorded result holds) and
    checked against exact rational arithmetic; where the float evaluation overflows or underflows
    (huge or tiny x_scale), the exact value rounded once is returned instead, and ValueError when
    eta* or the MSE itself is beyond float64."""
    eta, mse = _closed_form(d, n_context, x_scale, w_scale, noise_std)
    floats = _closed_form_in_floats(d, n_context, x_scale, w_scale, noise_std)
    if floats is not None and all(_close(f, exact) for f, exact in zip(floats, (eta, mse))):
        return OneStepOptimum(eta=floats[0], mse=floats[1])  # the float formula, to the last bit as it always was
    return OneStepOptimum(eta=_to_float("eta*", eta, x_scale, w_scale, noise_std),
                          mse=_to_float("the MSE", mse, x_scale, w_scale, noise_std))


def _closed_form_in_floats(d, n_context, x_scale, w_scale, noise_std) -> tuple[float, float] | None:
    """(eta*, MSE*) in float64 arithmetic (checked arguments), or None where a power overflows."""
    n, a = n_context, resolve_x_scale(x_scale)
    try:
        sw2, sigma2 = float(w_scale) ** 2, float(noise_std) ** 2
        s2, m4 = a**2 / 3.0, a**4 / 5.0
        curvature = (d / n) * s2 * (sw2 * (m4 + (n + d - 2) * s2**2) + sigma2 * s2)
        slope = sw2 * d * s2**2
        offset = sw2 * d * s2 + sigma2
        if curvature == 0:
            return 0.0, offset
        return slope / curvature, offset - slope**2 / curvature
    except (OverflowError, ZeroDivisionError):
        return None


def _close(value: float, exact: Fraction) -> bool:
    """Whether a float64 result is finite and within 1e-12 (relative) of the exact value."""
    if not np.isfinite(value):
        return False
    if exact == 0:
        return value == 0
    return abs(Fraction(value) - exact) <= abs(exact) / 10**12


def _closed_form(d, n_context, x_scale, w_scale, noise_std) -> tuple[Fraction, Fraction]:
    """(eta*, MSE*) exactly, from checked arguments (module doc)."""
    d, n = positive_int("d", d), positive_int("n_context", n_context)
    a = Fraction(resolve_x_scale(x_scale))
    sw2 = Fraction(finite_float("w_scale", w_scale, nonnegative=True)) ** 2
    sigma2 = Fraction(finite_float("noise_std", noise_std, nonnegative=True)) ** 2
    s2, m4 = a**2 / 3, a**4 / 5
    curvature = Fraction(d, n) * s2 * (sw2 * (m4 + (n + d - 2) * s2**2) + sigma2 * s2)
    slope = sw2 * d * s2**2
    offset = sw2 * d * s2 + sigma2
    if curvature == 0:  # w_scale = 0 and noise 0: every prediction is exact at eta = 0
        return Fraction(0), offset
    return slope / curvature, offset - slope**2 / curvature


def _to_float(what: str, value: Fraction, x_scale, w_scale, noise_std) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ValueError(
            f"x_scale = {x_scale!r}, w_scale = {w_scale!r} or noise_std = {noise_std!r} is too extreme: {what} of one GD "
            f"step is beyond float64 (about 10^{int(value.numerator).bit_length() * 0.30103 - int(value.denominator).bit_length() * 0.30103:.0f})"
        ) from None


def optimal_eta(d: int, n_context: int, x_scale: float | str = 1.0, w_scale: float = 1.0, noise_std: float = 0.0) -> float:
    """eta* of one GD step (d = N = 10, a = 1: 50/33)."""
    eta, _ = _closed_form(d, n_context, x_scale, w_scale, noise_std)
    floats = _closed_form_in_floats(d, n_context, x_scale, w_scale, noise_std)
    if floats is not None and _close(floats[0], eta):
        return floats[0]
    return _to_float("eta*", eta, x_scale, w_scale, noise_std)


def optimal_loss(d: int, n_context: int, x_scale: float | str = 1.0, w_scale: float = 1.0, noise_std: float = 0.0) -> float:
    """The half-MSE at eta* (d = N = 10, a = 1: 0.8249)."""
    _, mse = _closed_form(d, n_context, x_scale, w_scale, noise_std)
    floats = _closed_form_in_floats(d, n_context, x_scale, w_scale, noise_std)
    if floats is not None and _close(floats[1], mse):
        return 0.5 * floats[1]
    return _to_float("the half-MSE", mse / 2, x_scale, w_scale, noise_std)
