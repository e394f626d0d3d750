"""Baselines computed directly on each context: GD, its closed-form optimum, least squares, ridge."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import random_batch, seeds

import iclgd
from iclgd import baselines


def test_optimal_eta_and_loss_at_the_paper_setting():
    assert baselines.optimal_eta(d=10, n_context=10, x_scale=1.0) == pytest.approx(50 / 33, rel=1e-14)
    assert baselines.optimal_loss(d=10, n_context=10, x_scale=1.0) == pytest.approx(0.8249158, abs=1e-7)
    assert baselines.optimal_loss(d=10, n_context=10, x_scale="authors_code") == pytest.approx(0.8249158 / 4, abs=1e-7)


@pytest.mark.parametrize(
    "d, n_context, x_scale, w_scale, noise_std",
    [(10, 10, 1.0, 1.0, 0.0), (3, 20, 0.5, 1.0, 0.0), (5, 2, 2.0, 1.0, 0.0), (4, 8, 1.0, 2.0, 0.5)],
)
def test_monte_carlo_one_step_loss_at_optimal_eta_matches_the_closed_form(d, n_context, x_scale, w_scale, noise_std):
    task = iclgd.LinearRegressionTask(d=d, n_context=n_context, x_scale=x_scale, w_scale=w_scale, noise_std=noise_std)
    optimum = baselines.one_step_optimum(d, n_context, x_scale, w_scale, noise_std)
    rng = np.random.default_rng(1234)
    losses = []
    for _ in range(20):  # 2 * 10^5 tasks
        batch = task.sample(10_000, rng)
        losses.append(0.5 * (baselines.gd_predict(batch.tokens, optimum.eta) - batch.targets) ** 2)
    losses = np.concatenate(losses)
    stderr = losses.std(ddof=1) / np.sqrt(losses.size)
    assert abs(losses.mean() - optimum.half_mse) <= 3 * stderr


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 4), seeds)
def test_least_squares_recovers_the_task_exactly_when_n_is_at_least_d(d, extra, seed):
    batch = random_batch(d, d + extra, batch_size=50, seed=seed)  # N = d included
    prediction = baselines.least_squares_predict(batch.tokens)
    np.testing.assert_allclose(prediction, batch.targets, rtol=1e-7, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 10), st.floats(1e-3, 10.0), seeds)
def test_ridge_solves_the_regularised_normal_equations(d, n, ridge, seed):
    batch = random_batch(d, n, batch_size=10, seed=seed)
    x, y, _ = baselines.split_tokens(batch.tokens)
    for b in range(10):
        expected = np.linalg.solve(x[b].T @ x[b] + ridge * np.eye(d), x[b].T @ y[b])
        np.testing.assert_allclose(baselines.ridge_weights(batch.tokens, ridge)[b], expected, rtol=1e-8, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), seeds)
def test_least_squares_is_the_minimum_norm_solution_when_n_is_below_d(d, n, seed):
    batch = random_batch(d, n, batch_size=10, seed=seed)
    x, y, _ = baselines.split_tokens(batch.tokens)
    for b in range(10):
        expected = np.linalg.lstsq(x[b], y[b], rcond=None)[0]
        np.testing.assert_allclose(baselines.ridge_weights(batch.tokens, 0.0)[b], expected, rtol=1e-7, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 6), st.floats(-2.0, 2.0), seeds)
def test_least_squares_weights_are_a_fixed_point_of_gd_when_n_is_at_least_d(d, extra, eta, seed):
    batch = random_batch(d, d + extra, batch_size=10, seed=seed)
    w_ls = baselines.ridge_weights(batch.tokens, 0.0)
    np.testing.assert_allclose(baselines.gd_weights(batch.tokens, eta, steps=3, w0=w_ls), w_ls, rtol=1e-8, atol=1e-8)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), seeds)
def test_zero_gd_steps_predict_the_initial_guess(d, n, seed):
    batch = random_batch(d, n, batch_size=5, seed=seed)
    w0 = np.random.default_rng(seed).standard_normal(d)
    np.testing.assert_allclose(baselines.gd_predict(batch.tokens, eta=1.0, steps=0, w0=w0), batch.tokens[:, -1, :-1] @ w0)
