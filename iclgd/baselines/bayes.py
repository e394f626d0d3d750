r"""The Bayes predictors of noisy in-context regression (Hoogland et al.), per prefix.

For the task family of ``iclgd.tasks.NoisyRegressionTask`` (x_k ~ N(0, I_d), y_k = w . x_k +
eps_k, eps_k ~ N(0, sigma^2)) the prediction minimising the expected squared error of y_k
given pairs 1..k-1 and x_k is the posterior mean of w, dotted with x_k:

    yhat_k = E[w | (x_j, y_j)_{j<k}] . x_k.

Every function here answers per prefix, as ``iclgd.predictors`` does: it takes Examples
(xs (B, K, d), ys (B, K)) and returns (B, K), column k - 1 (k = 1..K) predicting y_k from the
pairs before it and x_k; the labels of pair k and later are never read.  Shapes below: X_k is
the (k-1) x d matrix of the inputs x_1..x_{k-1}, y_{<k} their labels.

ridge (prior w ~ N(0, I_d), "M = infinity"): the posterior is Gaussian,

    w | data ~ N(mu_k, Sigma_k),   Sigma_k = sigma^2 (X_k^T X_k + sigma^2 I)^{-1},
                                   mu_k = (X_k^T X_k + sigma^2 I)^{-1} X_k^T y_{<k},

i.e. ridge regression with penalty sigma^2; mu_1 = 0 (no pairs).

dMMSE (prior uniform on a pool t_1..t_M): the posterior puts on t_m the weight

    p_m ∝ exp(-SSE_m / (2 sigma^2)),   SSE_m = sum_{j<k} (y_j - t_m . x_j)^2,

so mu_k = sum_m softmax_m(-SSE_m / (2 sigma^2)) t_m, the pool's mean at k = 1.

least_squares (minimum-norm least squares, the sigma^2 -> 0 limit of ridge) and zero (always
0) are the reference points below and above them.  ``expected_ridge_loss`` is ridge's risk,
the Bayes risk of the Gaussian prior, per position.
"""
from __future__ import annotations

import numpy as np

from iclgd import limits
from iclgd._checks import finite_array, finite_float, max_abs, positive_int
from iclgd.baselines.gd import svd_ridge
from iclgd.streams import as_generator
from iclgd.tasks.examples import Examples

#: The memory ``dmmse`` aims each chunk of the pool at when ``chunk_size`` is not given.
DMMSE_CHUNK_BYTES = 64 * 2**20

#: float64 arrays of shape (B, chunk, K) that ``dmmse`` holds at once for one chunk (the
#: predictions t.x, residuals, their squares, prefix sums, weights and weighted predictions,
#: and a temporary).
_DMMSE_ARRAYS = 7

#: Samples of X drawn at a time by ``expected_ridge_loss`` (the result depends on it; fixed).
RISK_CHUNK = 2**14


# --- inputs ---------------------------------------------------------------------------------------


def _checked(examples: object, caller: str) -> tuple[np.ndarray, np.ndarray]:
    """(xs (B, K, d), ys (B, K)) of ``examples`` as float64, or ValueError."""
    if not isinstance(examples, Examples):
        raise ValueError(f"{caller}: examples must be an iclgd.tasks.Examples; got {type(examples).__name__}")
    xs = finite_array("examples.xs", examples.xs, ndim=3).astype(np.float64, copy=False)
    ys = finite_array("examples.ys", examples.ys, ndim=2).astype(np.float64, copy=False)
    if min(xs.shape) < 1:
        raise ValueError(f"{caller}: examples.xs must have shape (B, K, d) with B, K, d >= 1; got {xs.shape}")
    if ys.shape != xs.shape[:2]:
        raise ValueError(f"{caller}: examples.ys must have shape (B, K) = {xs.shape[:2]} to match xs; got {ys.shape}")
    return xs, ys


def _finite(caller: str, result: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``result``, or ValueError when it overflowed float64 (finite inputs: an overflow)."""
    if np.isfinite(result).all():
        return result
    n_bad = result.size - int(np.count_nonzero(np.isfinite(result)))
    raise ValueError(
        f"examples too large: {caller} overflows float64 ({n_bad} of {result.size} predictions NaN/inf; largest "
        f"|x| {max_abs(xs):.3g}, largest |y| {max_abs(ys):.3g})"
    )


# --- ridge, least squares, zero -------------------------------------------------------------------


def ridge(examples: Examples, noise_variance: float) -> np.ndarray:
    r"""The posterior-mean prediction under the prior w ~ N(0, I_d), per prefix, (B, K):

        column k - 1 = w_k . x_k,   w_k = (X_k^T X_k + sigma^2 I)^{-1} X_k^T y_{<k}   (w_1 = 0),

    X_k (k - 1, d) the inputs and y_{<k} the labels of the pairs before k, sigma^2 =
    ``noise_variance``.  Batched over sequences (one SVD of the (B, k - 1, d) prefixes per k;
    see ``iclgd.baselines.gd.svd_ridge``), float64.

    noise_variance = 0 is allowed and gives the limit sigma^2 -> 0 of the posterior mean, the
    minimum-norm least-squares solution X_k^+ y_{<k} (``least_squares``): under-determined
    prefixes (k - 1 < d) have no unique solution, and this is the one ridge tends to.
    Raises ValueError on bad examples or a negative/non-finite noise_variance."""
    xs, ys = _checked(examples, "ridge")
    penalty = finite_float("noise_variance", noise_variance, nonnegative=True)
    batch_size, length, d = xs.shape
    n = max(length - 1, 1)
    limits.check_bytes(
        f"examples of shape {xs.shape}", limits.FLOAT64 * batch_size * (length * (d + 1) + 3 * n * d + 2 * d * d + 4 * n),
        f"ridge on {batch_size} sequences of {length} pairs (an SVD of each (k - 1) x {d} prefix)",
    )
    out = np.zeros((batch_size, length))
    for k in range(2, length + 1):
        weights = svd_ridge(xs[:, : k - 1], ys[:, : k - 1], penalty)
        with np.errstate(over="ignore", invalid="ignore"):
            out[:, k - 1] = np.einsum("bd,bd->b", weights, xs[:, k - 1])
    return _finite("ridge", out, xs, ys)


def least_squares(examples: Examples) -> np.ndarray:
    """Minimum-norm least squares per prefix, (B, K): column k - 1 = (X_k^+ y_{<k}) . x_k, 0 at
    k = 1 (no pairs: w = 0).  The same as ``ridge(examples, 0)``."""
    return ridge(examples, 0.0)


def zero(examples: Examples) -> np.ndarray:
    """The zero predictor, (B, K) zeros: the prior mean of y under any prior centred at w = 0
    (its risk at every position is E (w . x)^2 + sigma^2 = d + sigma^2 for the Gaussian prior)."""
    xs, _ = _checked(examples, "zero")
    return np.zeros(xs.shape[:2])


# --- dMMSE ----------------------------------------------------------------------------------------


def _log_free_weights(excess: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """exp(-excess / denominator) for excess >= 0 (possibly inf) and denominator >= 0 (possibly 0
    or inf), with exp(-0 / anything) = 1: the weight of an SSE ``excess`` above the minimum."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        weights = np.exp(-(excess / denominator))
    return np.where(excess == 0, 1.0, weights)


def _chunk_size(chunk_size: object, batch_size: int, length: int, n_pool: int) -> int:
    """The number of pool vectors per chunk: ``chunk_size`` (capped at M), or the largest that
    keeps a chunk's arrays within DMMSE_CHUNK_BYTES and the memory limit (at least 1); then
    checked against the memory limit (``iclgd.limits``)."""
    per_vector = limits.FLOAT64 * _DMMSE_ARRAYS * batch_size * length
    fixed = limits.FLOAT64 * batch_size * length * 6  # the running sums, the result, temporaries
    if chunk_size is None:
        budget = min(DMMSE_CHUNK_BYTES, limits.memory_limit_bytes() - fixed)
        chunk = max(1, min(n_pool, budget // per_vector))
    else:
        chunk = min(positive_int("chunk_size", chunk_size), n_pool)
    limits.check_bytes(
        f"examples of {batch_size} sequences x {length} pairs (chunk_size = {chunk})",
        per_vector * chunk + fixed,
        f"dMMSE over a chunk of {chunk} pool vectors at once (arrays of shape (B, chunk, K) = ({batch_size}, {chunk}, {length}))",
    )
    return chunk


def dmmse(examples: Examples, pool: object, noise_variance: float, *, chunk_size: int | None = None) -> np.ndarray:
    r"""The posterior-mean prediction under the uniform prior on a finite pool, per prefix, (B, K):

        column k - 1 = w_k . x_k = sum_m p_km (t_m . x_k),
        p_km = softmax_m(-SSE_km / (2 sigma^2)),   SSE_km = sum_{j<k} (y_j - t_m . x_j)^2,

    t_m the rows of ``pool`` (M, d), sigma^2 = ``noise_variance`` (> 0).  At k = 1 every SSE is
    0 and w_1 is the pool's mean.  M = 1 gives t_1 . x_k exactly.

    Stable: the softmax is taken relative to the smallest SSE (a log-sum-exp), so the best
    vector has weight exactly 1 and no exponent overflows, for any sigma^2 > 0 and any SSE; the
    residuals of each sequence are first divided by a power of two c_b >= 1 bounding them
    (|y_j| + d max|t| max|x_j|), an exact scaling that keeps SSE / c_b^2 <= K finite even where
    SSE itself would overflow float64.

    Memory: the pool is processed ``chunk_size`` vectors at a time (default: chunks of about
    DMMSE_CHUNK_BYTES) with a running minimum and running sums, rescaled when the minimum
    drops, so memory is O(B x chunk x K), not O(B x M x K); every chunking gives the same answer
    up to rounding.  Raises ValueError on bad examples, a pool not of shape (M, d) with M >= 1,
    noise_variance <= 0, or predictions that overflow float64."""
    xs, ys = _checked(examples, "dmmse")
    batch_size, length, d = xs.shape
    pool = finite_array("pool", pool, ndim=2).astype(np.float64, copy=False)
    if pool.shape[0] < 1 or pool.shape[1] != d:
        raise ValueError(f"pool must have shape (M, d) = (M, {d}) with M >= 1, d matching the examples; got {pool.shape}")
    variance = finite_float("noise_variance", noise_variance, positive=True)
    n_pool = pool.shape[0]
    chunk = _chunk_size(chunk_size, batch_size, length, n_pool)

    # c_b = 2^e_b >= every |y_j - t_m . x_j| of sequence b (e_b >= 0); residuals / c_b are exact
    with np.errstate(over="ignore"):
        bound = np.abs(ys).max(axis=1) + d * max_abs(pool) * np.abs(xs).max(axis=(1, 2))
    if not np.isfinite(bound).all():
        raise ValueError(
            f"examples or pool too large: t . x overflows float64 (largest |x| {max_abs(xs):.3g}, largest |y| "
            f"{max_abs(ys):.3g}, largest |t| {max_abs(pool):.3g})"
        )
    exponent = np.maximum(np.frexp(bound)[1], 0)  # bound <= 2^exponent
    denominator = np.ldexp(2.0 * variance, -2 * exponent)  # 2 sigma^2 / c_b^2 (may underflow to 0: handled)

    running_min = np.full((batch_size, length), np.inf)  # min_m SSE_km / c_b^2 so far
    total = np.zeros((batch_size, length))  # sum_m exp(-(SSE_km / c_b^2 - running_min) / denominator)
    weighted = np.zeros((batch_size, length))  # the same sum, each term times t_m . x_k
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n_pool, chunk):
            vectors = pool[start : start + chunk]
            predictions = np.einsum("bkd,md->bmk", xs, vectors)  # t_m . x_k  (B, C, K)
            residuals = np.ldexp(ys[:, None, :] - predictions, -exponent[:, None, None])
            sse = np.zeros_like(residuals)  # the prefix sums over j < k: 0 at k = 1
            np.cumsum(np.square(residuals[:, :, :-1]), axis=2, out=sse[:, :, 1:])
            new_min = np.minimum(running_min, sse.min(axis=1))
            rescale = _log_free_weights(running_min - new_min, denominator[:, None])  # 0 on the first chunk
            weights = _log_free_weights(sse - new_min[:, None, :], denominator[:, None, None])
            total = total * rescale + weights.sum(axis=1)
            weighted = weighted * rescale + np.einsum("bmk,bmk->bk", weights, predictions)
            running_min = new_min
        out = weighted / total  # total >= 1: the minimiser's weight is 1
    return _finite("dmmse", out, xs, ys)


# --- the Bayes risk of ridge ----------------------------------------------------------------------


def expected_ridge_loss(d: int, n_examples: int, noise_variance: float, n_samples: int,
                        seed: int | np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    r"""The expected squared error of ``ridge`` at each position k = 1..K (the Bayes risk under
    w ~ N(0, I_d), x ~ N(0, I_d), noise sigma^2 > 0), by Monte Carlo over the inputs only:
    (mean (K,), standard error (K,)).

    Derivation.  Given the first k - 1 pairs, w | data ~ N(mu_k, Sigma_k) with
    Sigma_k = sigma^2 (X_k^T X_k + sigma^2 I)^{-1} (module docstring), and ridge predicts
    mu_k . x_k.  With y_k = w . x_k + eps_k, the error y_k - mu_k . x_k = (w - mu_k) . x_k + eps_k
    has, given X_k and x_k, mean 0 and variance x_k^T Sigma_k x_k + sigma^2 (w - mu_k is
    independent of x_k and eps_k).  Averaging over x_k ~ N(0, I_d), E x^T Sigma x = tr(Sigma), so

        risk_k = E_X [ sigma^2 (1 + tr((X_k^T X_k + sigma^2 I)^{-1})) ],

    an expectation over the (k - 1) x d Gaussian matrix X_k alone: w, the labels and the noise
    are integrated exactly, which is why this estimate has low variance.  At k = 1 (X_1 empty)
    the trace is d / sigma^2 and risk_1 = d + sigma^2 exactly, returned as such with standard
    error 0.  tr((G + sigma^2 I)^{-1}) = sum_i 1 / (lambda_i + sigma^2) over the eigenvalues of
    G = X_k^T X_k.

    Draws: ``n_samples`` (>= 2) independent sequences of K - 1 inputs, RISK_CHUNK at a time
    from the generator of ``seed`` (positions share a sequence's inputs: prefix k uses its first
    k - 1); the standard error is the sample standard deviation over sqrt(n_samples).  For the
    paper's d = 4, K = 8, sigma^2 = 0.125 the mean over positions is about 1.656."""
    d = positive_int("d", d)
    length = positive_int("n_examples", n_examples)
    variance = finite_float("noise_variance", noise_variance, positive=True)
    n_samples = positive_int("n_samples", n_samples)
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 to give a standard error; got {n_samples}")
    rng = as_generator(seed)
    limits.check_bytes(
        f"n_examples = {length} (with d = {d})",
        limits.FLOAT64 * RISK_CHUNK * (length * d + 2 * d * d + 3 * d + 3 * length),
        f"the ridge risk for {RISK_CHUNK} samples of {max(length - 1, 0)} x {d} inputs at a time",
    )
    count, mean, m2 = 0, np.zeros(length), np.zeros(length)  # Chan et al.'s running mean and sum of squares
    for start in range(0, n_samples, RISK_CHUNK):
        size = min(RISK_CHUNK, n_samples - start)
        x = rng.standard_normal((size, max(length - 1, 0), d))
        risks = np.empty((size, length))
        risks[:, 0] = d + variance
        gram = np.zeros((size, d, d))
        for k in range(2, length + 1):
            row = x[:, k - 2]
            gram += row[:, :, None] * row[:, None, :]
            eigenvalues = np.maximum(np.linalg.eigvalsh(gram), 0.0)
            risks[:, k - 1] = variance * (1.0 + np.sum(1.0 / (eigenvalues + variance), axis=1))
        chunk_mean = risks.mean(axis=0)
        chunk_m2 = np.sum((risks - chunk_mean) ** 2, axis=0)
        merged = count + size
        delta = chunk_mean - mean
        mean = mean + delta * (size / merged)
        m2 = m2 + chunk_m2 + delta**2 * (count * size / merged)
        count = merged
    mean[0] = d + variance
    m2[0] = 0.0
    return mean, np.sqrt(m2 / (count - 1) / count)
