"""The Bayes baselines (iclgd.baselines.bayes), per prefix: column k - 1 predicts y_k from pairs
1..k-1 and x_k.

ridge is the posterior mean under w ~ N(0, I) and dmmse the posterior mean over a finite pool;
both are checked against plain-loop transcriptions of their formulas, against each other (dMMSE
tends to ridge as the pool grows), and ridge's empirical risk against expected_ridge_loss.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

import iclgd
from iclgd import baselines, limits
from iclgd.baselines import dmmse, expected_ridge_loss, least_squares, ridge, zero
from iclgd.tasks import Examples, NoisyRegressionTask

PAPER = NoisyRegressionTask(d=4, n_examples=8, noise_variance=0.125)


@st.composite
def drawn_examples(draw, max_batch=3, max_k=7, max_d=4, n_tasks=None, min_k=1):
    """Examples of a NoisyRegressionTask of drawn shape and noise (x ~ N(0, I), w ~ N(0, I))."""
    task = NoisyRegressionTask(d=draw(st.integers(1, max_d)), n_examples=draw(st.integers(min_k, max_k)),
                               noise_variance=draw(st.floats(0.05, 2.0)), n_tasks=n_tasks)
    return task.sample_examples(draw(st.integers(1, max_batch)), draw(seeds))


def pool_of(m: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, d))


# --- the formulas, transcribed --------------------------------------------------------------------


def ridge_by_hand(xs, ys, variance):
    """w_k = (X^T X + sigma^2 I)^{-1} X^T y over pairs j < k (w = 0 for k = 1), predicting w_k . x_k."""
    batch_size, length, d = xs.shape
    out = np.zeros((batch_size, length))
    for b in range(batch_size):
        for k in range(1, length + 1):
            w = np.zeros(d)
            if k > 1:
                x, y = xs[b, : k - 1], ys[b, : k - 1]
                w = np.linalg.solve(x.T @ x + variance * np.eye(d), x.T @ y)
            out[b, k - 1] = float(w @ xs[b, k - 1])
    return out


def dmmse_by_hand(xs, ys, pool, variance):
    """w_k = sum_m softmax_m(-SSE_m / (2 sigma^2)) t_m, SSE_m over pairs j < k, in plain Python."""
    batch_size, length, d = xs.shape
    out = np.zeros((batch_size, length))
    for b in range(batch_size):
        for k in range(1, length + 1):
            logits = []
            for m in range(len(pool)):
                sse = 0.0
                for j in range(k - 1):
                    sse += (ys[b, j] - sum(pool[m, i] * xs[b, j, i] for i in range(d))) ** 2
                logits.append(-sse / (2 * variance))
            top = max(logits)
            weights = [math.exp(logit - top) for logit in logits]
            w = [sum(weights[m] * pool[m, i] for m in range(len(pool))) / sum(weights) for i in range(d)]
            out[b, k - 1] = sum(w[i] * xs[b, k - 1, i] for i in range(d))
    return out


@given(drawn_examples(), st.floats(0.05, 3.0))
def test_ridge_equals_its_formula_transcribed_loop_by_loop(ex, variance):
    np.testing.assert_allclose(ridge(ex, variance), ridge_by_hand(ex.xs, ex.ys, variance), rtol=1e-9, atol=1e-11)


@settings(max_examples=50)
@given(drawn_examples(max_k=6), st.integers(1, 12), st.floats(0.05, 3.0), seeds)
def test_dmmse_equals_its_formula_transcribed_loop_by_loop(ex, n_pool, variance, seed):
    pool = pool_of(n_pool, ex.d, seed)
    np.testing.assert_allclose(dmmse(ex, pool, variance), dmmse_by_hand(ex.xs, ex.ys, pool, variance), rtol=1e-9, atol=1e-11)


@given(drawn_examples())
def test_least_squares_is_the_minimum_norm_solution_of_each_prefix(ex):
    expected = np.zeros((ex.batch_size, ex.length))
    for b in range(ex.batch_size):
        for k in range(2, ex.length + 1):
            w = np.linalg.pinv(ex.xs[b, : k - 1]) @ ex.ys[b, : k - 1]
            expected[b, k - 1] = w @ ex.xs[b, k - 1]
    np.testing.assert_allclose(least_squares(ex), expected, rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(least_squares(ex), ridge(ex, 0.0))


@given(drawn_examples(min_k=2), st.floats(1e-9, 1e-3))
def test_ridge_tends_to_least_squares_as_the_noise_variance_vanishes(ex, ratio):
    """ridge(eps) differs from least squares (what ridge(0) returns) only in its gains
    s / (s^2 + eps) instead of 1 / s, off by at most eps / s^2 relatively, so a prediction moves
    by at most (eps / s_min^2) |y| |x| / s_min."""
    s_min = min(np.linalg.svd(ex.xs[b, : k - 1], compute_uv=False).min()
                for b in range(ex.batch_size) for k in range(2, ex.length + 1))
    eps = ratio * s_min**2
    bound = ratio * np.linalg.norm(ex.ys, axis=1).max() * np.linalg.norm(ex.xs, axis=2).max() / s_min
    assert np.abs(ridge(ex, eps) - ridge(ex, 0.0)).max() <= 2 * bound + 1e-12


@given(drawn_examples())
def test_zero_predicts_zero_everywhere(ex):
    np.testing.assert_array_equal(zero(ex), np.zeros((ex.batch_size, ex.length)))


@given(drawn_examples(n_tasks=1), st.floats(1e-6, 10.0))
def test_dmmse_over_a_pool_of_one_task_predicts_with_that_task(ex, variance):
    pool = ex.weights[:1]  # the task every sequence was drawn with
    np.testing.assert_allclose(dmmse(ex, pool, variance), np.einsum("bkd,d->bk", ex.xs, pool[0]), rtol=1e-14, atol=1e-14)


@given(drawn_examples(), st.integers(1, 20), st.floats(0.05, 3.0), seeds)
def test_dmmse_at_the_first_position_predicts_with_the_pool_mean(ex, n_pool, variance, seed):
    pool = pool_of(n_pool, ex.d, seed)
    np.testing.assert_allclose(dmmse(ex, pool, variance)[:, 0], ex.xs[:, 0] @ pool.mean(axis=0), rtol=1e-12, atol=1e-12)


@given(drawn_examples(), st.integers(1, 8), st.floats(0.05, 3.0), seeds, st.data())
def test_no_baseline_reads_the_label_it_predicts_or_later_ones(ex, n_pool, variance, seed, data):
    k = data.draw(st.integers(1, ex.length))
    changed = ex.ys.copy()
    changed[:, k - 1:] = 100.0 * np.random.default_rng(seed).standard_normal(changed[:, k - 1:].shape)
    other = Examples(ex.xs, changed, ex.weights)
    pool = pool_of(n_pool, ex.d, seed)
    for predict in (lambda e: ridge(e, variance), lambda e: dmmse(e, pool, variance), least_squares, zero):
        np.testing.assert_array_equal(predict(ex)[:, :k], predict(other)[:, :k])


# --- dMMSE and ridge ------------------------------------------------------------------------------


def test_dmmse_tends_to_ridge_as_the_pool_grows():
    """On the same sequences drawn from the Gaussian prior (d = 4, K = 8, sigma^2 = 0.125), the
    mean squared difference between dMMSE over M prior draws and ridge falls at every step of
    M = 1, 16, 256, 4096, 16384 and is below 0.05 at M = 16384.

    dMMSE over M draws from N(0, I) is a self-normalised importance-sampling estimate of the
    Gaussian posterior mean, so its squared distance to ridge decays roughly like 1/M (measured
    here, by `python reference/bayes_baselines.py`: 4.75, 1.56, 0.433, 0.0729, 0.0338; the late positions, whose posterior is narrowest, converge
    slowest).  0.05 is 3% of ridge's own risk averaged over positions (1.66): at M ~ 10^4 the two
    predictors are nearly indistinguishable in loss, while M = 1 is 70 times further off."""
    ex = PAPER.sample_examples(400, 2024)
    target = ridge(ex, 0.125)
    gaps = [float(np.mean((dmmse(ex, NoisyRegressionTask(n_tasks=m, pool_seed=7).pool(), 0.125) - target) ** 2))
            for m in (1, 16, 256, 4096, 16384)]
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.05, gaps


@given(drawn_examples(max_batch=4), st.integers(1, 40), st.floats(0.05, 3.0), seeds, st.data())
def test_chunking_over_the_pool_gives_the_same_answer_as_no_chunking(ex, n_pool, variance, seed, data):
    pool = pool_of(n_pool, ex.d, seed)
    whole = dmmse(ex, pool, variance, chunk_size=n_pool)
    chunk = data.draw(st.integers(1, n_pool + 3))
    np.testing.assert_allclose(dmmse(ex, pool, variance, chunk_size=chunk), whole, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dmmse(ex, pool, variance), whole, rtol=1e-12, atol=1e-12)


@settings(max_examples=30)
@given(drawn_examples(), st.integers(2, 10), st.sampled_from([1e-300, 1e-200, 1e-30, 1e-12]),
       st.sampled_from([1.0, 1e50, 1e150, 1e300]), seeds)
def test_dmmse_is_finite_for_huge_sse_and_concentrates_on_the_best_fitting_task(ex, n_pool, variance, y_scale, seed):
    """Tiny sigma^2 or huge labels make -SSE / (2 sigma^2) overflow any naive softmax; dMMSE stays
    finite, and with sigma^2 -> 0 it predicts with the pool vector of least SSE on the prefix."""
    pool = pool_of(n_pool, ex.d, seed)
    scaled = Examples(ex.xs, y_scale * ex.ys, ex.weights)
    predictions = dmmse(scaled, pool, variance)
    assert np.isfinite(predictions).all()
    residuals = (scaled.ys[:, None, :] - np.einsum("bkd,md->bmk", scaled.xs, pool)) / y_scale  # (B, M, K), SSE order kept
    sse = np.concatenate([np.zeros(residuals.shape[:2] + (1,)), np.cumsum(residuals**2, axis=2)[:, :, :-1]], axis=2)
    for b in range(ex.batch_size):
        for k in range(2, ex.length + 1):
            order = np.sort(sse[b, :, k - 1])
            if order[1] - order[0] > 1e-6 * order[1]:  # a unique best vector, by a margin sigma^2 cannot blur
                best = pool[np.argmin(sse[b, :, k - 1])]
                assert predictions[b, k - 1] == pytest.approx(best @ scaled.xs[b, k - 1], rel=1e-9, abs=1e-9)


# --- the Bayes risk -------------------------------------------------------------------------------


def test_ridge_risk_on_the_gaussian_prior_matches_expected_ridge_loss_within_3_standard_errors():
    """The paper's setting: D = 4, K = 8, sigma^2 = 0.125.  Position 1 is exactly D + sigma^2 =
    4.125; the mean over positions is about 1.659."""
    mean, stderr = expected_ridge_loss(4, 8, 0.125, n_samples=100_000, seed=3)
    ex = PAPER.sample_examples(40_000, 4)
    errors = (ridge(ex, 0.125) - ex.ys) ** 2
    empirical = errors.mean(axis=0)
    empirical_stderr = errors.std(axis=0, ddof=1) / np.sqrt(errors.shape[0])
    assert np.all(np.abs(empirical - mean) <= 3 * np.sqrt(empirical_stderr**2 + stderr**2)), (empirical, mean)
    assert mean[0] == 4.125 and stderr[0] == 0.0
    assert np.all(np.diff(mean) < 0)  # each pair helps
    assert mean.mean() == pytest.approx(1.659, abs=0.002)


@settings(max_examples=20)
@given(st.integers(1, 6), st.integers(1, 5), st.floats(1e-3, 1e3), seeds)
def test_expected_ridge_loss_at_the_first_position_is_d_plus_sigma2_exactly(d, k, variance, seed):
    mean, stderr = expected_ridge_loss(d, k, variance, n_samples=20, seed=seed)
    assert mean.shape == stderr.shape == (k,)
    assert mean[0] == d + variance and stderr[0] == 0.0


def test_expected_ridge_loss_at_the_second_position_matches_its_one_dimensional_integral():
    """With one pair, tr((x x^T + s I)^{-1}) = (d - 1)/s + 1/(|x|^2 + s), so risk_2 =
    d - 1 + s + s E[1/(chi2_d + s)]: a 1-d integral against the chi-square density."""
    d, s = 4, 0.125
    t = np.linspace(0.0, 200.0, 2_000_001)
    density = t ** (d / 2 - 1) * np.exp(-t / 2) / (2 ** (d / 2) * math.gamma(d / 2))
    exact = d - 1 + s + s * np.trapezoid(density / (t + s), t)
    mean, stderr = expected_ridge_loss(d, 2, s, n_samples=50_000, seed=8)
    assert abs(mean[1] - exact) <= 4 * stderr[1]


@settings(max_examples=10)
@given(st.integers(1, 5), st.integers(2, 6), st.floats(0.05, 2.0), seeds)
def test_expected_ridge_loss_is_reproducible_from_its_seed(d, k, variance, seed):
    first, second = expected_ridge_loss(d, k, variance, 50, seed), expected_ridge_loss(d, k, variance, 50, np.random.default_rng(seed))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


# --- refusals and names ---------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda ex: ridge(ex, -1.0), r"^noise_variance must be >= 0"),
    (lambda ex: ridge(ex, float("nan")), r"^noise_variance must be finite"),
    (lambda ex: dmmse(ex, np.zeros((3, 4)), 0.0), r"^noise_variance must be > 0"),
    (lambda ex: dmmse(ex, np.zeros((3, 5)), 0.1), r"^pool must have shape \(M, d\) = \(M, 4\)"),
    (lambda ex: dmmse(ex, np.zeros((0, 4)), 0.1), r"^pool must have shape"),
    (lambda ex: dmmse(ex, np.zeros(4), 0.1), r"^pool must be a 2-d array"),
    (lambda ex: dmmse(ex, np.full((2, 4), np.inf), 0.1), r"^pool must hold only finite values"),
    (lambda ex: dmmse(ex, np.zeros((2, 4)), 0.1, chunk_size=0), r"^chunk_size must be a positive integer"),
    (lambda ex: ridge(ex.xs, 0.1), r"^ridge: examples must be an iclgd.tasks.Examples; got ndarray"),
    (lambda ex: dmmse(Examples(ex.xs, ex.ys[:, :3], ex.weights), np.zeros((2, 4)), 0.1), r"^dmmse: examples.ys must have shape"),
    (lambda ex: least_squares(Examples(np.full_like(ex.xs, np.nan), ex.ys, ex.weights)), r"^examples.xs must hold only finite"),
    (lambda ex: expected_ridge_loss(4, 8, 0.0, 10, 0), r"^noise_variance must be > 0"),
    (lambda ex: expected_ridge_loss(4, 8, 0.1, 1, 0), r"^n_samples must be >= 2"),
    (lambda ex: expected_ridge_loss(0, 8, 0.1, 10, 0), r"^d must be a positive integer"),
    (lambda ex: expected_ridge_loss(4, 0, 0.1, 10, 0), r"^n_examples must be a positive integer"),
])
def test_bad_arguments_are_refused_with_a_value_error_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call(PAPER.sample_examples(3, 0))


def test_dmmse_beyond_the_memory_limit_is_refused_before_allocation(monkeypatch):
    ex, small, pool = PAPER.sample_examples(20_000, 0), PAPER.sample_examples(1000, 1), np.random.default_rng(0).standard_normal((10, 4))
    monkeypatch.setenv(limits.ENV_VAR, str(2**20))  # 1 MiB
    with pytest.raises(ValueError, match=r"^examples of 20000 sequences x 8 pairs \(chunk_size = 1\) is too large"):
        dmmse(ex, np.zeros((10, 4)), 0.1)
    limited = dmmse(small, pool, 0.125)  # the automatic chunk shrinks to fit the limit (here one vector)
    monkeypatch.delenv(limits.ENV_VAR)
    np.testing.assert_allclose(limited, dmmse(small, pool, 0.125), rtol=1e-12, atol=1e-12)


def test_huge_labels_that_overflow_ridge_are_refused_rather_than_returned_as_inf():
    ex = PAPER.sample_examples(2, 0)
    with pytest.raises(ValueError, match=r"^examples too large: ridge overflows float64"):
        ridge(Examples(1e-200 * ex.xs, 1e300 * ex.ys, ex.weights), 1e-300)  # w ~ 1e500


def test_the_baselines_package_keeps_every_name_of_the_former_module_and_adds_the_bayes_ones():
    for name in ("gd_predict", "gd_weights", "gdpp_predict", "ridge_weights", "ridge_predict", "least_squares_predict",
                 "one_step_optimum", "optimal_eta", "optimal_loss", "OneStepOptimum", "step_rates", "split_tokens",
                 "_closed_form", "_closed_form_in_floats", "_close", "_to_float", "_initial_weights", "_steps", "_finite_result",
                 "ridge", "dmmse", "zero", "least_squares", "expected_ridge_loss"):
        assert hasattr(iclgd.baselines, name), name
    assert iclgd.baselines.ridge is baselines.bayes.ridge and iclgd.baselines.gd_predict is baselines.gd.gd_predict
