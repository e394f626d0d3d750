"""iclgd.theory: the closed forms against hand computation and Monte Carlo, GD++ token by token against
the recursion worked by hand and the vectorised GD++, the construction's products, the eigenbasis formula
against the direct GD++ recursion, and the layer readings on constructions whose scales are known."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import random_batch, seeds

import iclgd
from iclgd import baselines, theory
from iclgd.interpolate import effective_matrices

CENTRED = ("uniform", "gaussian", "laplace")


def within(measured: float, expected: float, stderr: float, z: float = 4.0) -> bool:
    return abs(measured - expected) <= z * stderr


# --- one GD step: the parabola ----------------------------------------------------------------


def test_the_parabola_of_the_papers_setting_gives_eta_50_33_and_half_mse_245_297():
    # by hand, d = N = 10, a = 1: s2 = 1/3, m4 = 1/5, A = (1/3)(1/5 + 18/9) = 11/15, B = 10/9, C = 10/3
    a, b, c = Fraction(11, 15), Fraction(10, 9), Fraction(10, 3)
    parabola = theory.one_step_parabola(10, 10, 1 / 3, 1 / 5)
    assert (parabola.a, parabola.b, parabola.c) == pytest.approx((float(a), float(b), float(c)), rel=1e-15)
    assert parabola.eta == pytest.approx(float(b / a)) == pytest.approx(50 / 33)
    assert parabola.half_mse(parabola.eta) == pytest.approx(float((c - b * b / a) / 2)) == pytest.approx(245 / 297)


@pytest.mark.parametrize("distribution", CENTRED)
def test_the_parabola_is_one_gd_steps_loss_under_every_centred_law(distribution):
    task = iclgd.LinearRegressionTask(d=3, n_context=4, x_scale=0.8, x_distribution=distribution)
    batch = task.sample(200_000, seed=11)
    losses = 0.5 * (baselines.gd_predict(batch.tokens, 0.9, 1) - batch.targets) ** 2
    expected = theory.one_step_parabola(3, 4, *theory.centred_moments(distribution, 0.8)).half_mse(0.9)
    assert within(losses.mean(), expected, losses.std(ddof=1) / np.sqrt(losses.size))


@pytest.mark.parametrize("distribution", CENTRED)
def test_centred_moments_are_the_second_and_fourth_moments_of_the_drawn_inputs(distribution):
    x = iclgd.LinearRegressionTask(d=4, n_context=4, x_scale=1.5, x_distribution=distribution).sample(50_000, seed=3).tokens[:, :, :-1].ravel()
    s2, m4 = theory.centred_moments(distribution, 1.5)
    assert within((x**2).mean(), s2, (x**2).std(ddof=1) / np.sqrt(x.size))
    assert within((x**4).mean(), m4, (x**4).std(ddof=1) / np.sqrt(x.size))


def test_the_exponential_law_has_no_centred_moments():
    with pytest.raises(ValueError, match="not centred"):
        theory.centred_moments("exponential", 1.0)


@pytest.mark.parametrize("distribution", [*CENTRED, "exponential"])
def test_top_second_moment_is_the_largest_eigenvalue_of_the_inputs_second_moment_matrix(distribution):
    x = iclgd.LinearRegressionTask(d=5, n_context=9, x_scale=1.2, x_distribution=distribution).sample(40_000, seed=5).tokens[:, :, :-1]
    x = x.reshape(-1, 5)
    measured = np.linalg.eigvalsh(x.T @ x / len(x))[-1]
    assert measured == pytest.approx(theory.top_second_moment(distribution, 5, 1.2), rel=0.02)


# --- one GD step on a sample ------------------------------------------------------------------


def test_a_samples_loss_at_eta_is_the_loss_of_one_gd_step_at_eta_on_its_tasks():
    task = iclgd.LinearRegressionTask(d=4, n_context=6)
    sample = theory.OneStepSample.draw(task, 500, np.random.default_rng(2))
    batch = task.sample(500, np.random.default_rng(2))
    direct = 0.5 * (baselines.gd_predict(batch.tokens, 1.3, 1) - batch.targets) ** 2
    assert sample.half_mse(1.3).mean == pytest.approx(direct.mean(), rel=1e-12)


def test_a_chunked_draw_is_the_chunks_drawn_one_after_another_from_the_generator():
    task = iclgd.LinearRegressionTask(d=3, n_context=5)
    chunked = theory.OneStepSample.draw(task, 100, np.random.default_rng(4), chunk=40)
    rng = np.random.default_rng(4)
    batches = [task.sample(size, rng) for size in (40, 40, 20)]
    assert np.array_equal(chunked.targets, np.concatenate([b.targets for b in batches]))
    assert np.array_equal(chunked.per_unit_eta, np.concatenate([baselines.gd_predict(b.tokens, 1.0, 1) for b in batches]))


def test_the_best_eta_of_labels_proportional_to_p_is_that_factor_with_no_error():
    p = np.random.default_rng(0).standard_normal(50)
    best = theory.OneStepSample(p, 1.7 * p).best_eta()
    assert best.mean == pytest.approx(1.7, rel=1e-14) and best.stderr == pytest.approx(0.0, abs=1e-12)


def test_the_best_etas_standard_error_is_its_spread_over_independent_samples():
    task = iclgd.LinearRegressionTask(d=4, n_context=6)
    rng = np.random.default_rng(8)
    draws = [theory.OneStepSample.draw(task, 400, rng).best_eta() for _ in range(300)]
    spread = np.std([d.mean for d in draws], ddof=1)
    assert np.mean([d.stderr for d in draws]) == pytest.approx(spread, rel=0.15)


# --- GD++ token by token, and the products of the layer that does it --------------------------


@pytest.mark.parametrize("gamma, steps, expected", [(0.125, 1, 0.75), (0.125, 2, 0.84375), (0.0, 2, 1.125)])
def test_gdpp_token_by_token_on_one_pair_is_the_recursion_worked_by_hand(gamma, steps, expected):
    # d = N = 1, context (x, y) = (2, 3), query (1, 0), eta = 1/8.  Step 1: the query's y-slot gets
    # -(eta/N)(2 * 1) * 3 = -0.75; the context token becomes x = 2 - gamma * 4 * 2, y = 3 - (1/8) * 4 * 3 = 1.5 and
    # the query x = 1 - gamma * 2 * 2.  gamma = 1/8: (1, 1.5), x_q = 0.5, and step 2 adds -(1/8)(1 * 0.5) * 1.5 = -0.09375.
    # gamma = 0: (2, 1.5), x_q = 1, and step 2 adds -(1/8)(2 * 1) * 1.5 = -0.375, which is two GD steps:
    # W1 = (1/8) * 3 * 2 = 0.75, W2 = W1 - (1/8)(W1 * 2 - 3) * 2 = 1.125.
    tokens = np.array([[2.0, 3.0], [1.0, 0.0]])
    assert theory.gdpp_token_by_token(tokens, 0.125, gamma, steps) == expected


@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 3), st.floats(-1.0, 1.5), st.floats(-0.5, 0.8), seeds)
def test_gdpp_token_by_token_predicts_what_the_vectorised_gdpp_predicts(d, n_context, steps, eta, gamma, seed):
    batch = random_batch(d, n_context, 3, seed)
    by_hand = [theory.gdpp_token_by_token(tokens, eta, gamma, steps) for tokens in batch.tokens]
    assert np.allclose(by_hand, baselines.gdpp_predict(batch.tokens, eta, gamma, steps), rtol=1e-12, atol=1e-12)


def test_gdpp_token_by_token_leaves_its_input_alone():
    tokens = random_batch(3, 4, 1, seed=2).tokens[0]
    kept = tokens.copy()
    theory.gdpp_token_by_token(tokens, 0.9, 0.4, 3)
    assert np.array_equal(tokens, kept)


@pytest.mark.parametrize("eta, gamma", [(0.9, 0.4), (0.7, 0.0), (-0.3, 1.7)])
def test_gdpp_products_are_the_products_of_the_gdpp_construction(eta, gamma):
    cfg = iclgd.LSAConfig(d=4, n_layers=1, n_heads=1, n_context=6)
    qk, ov = theory.gdpp_products(4, 6, eta, gamma)
    constructed = [m[0] for m in effective_matrices(cfg, iclgd.gdpp_construction(cfg, eta, gamma))["layer0"]]
    assert np.allclose(qk, constructed[0], rtol=0, atol=1e-15) and np.allclose(ov, constructed[1], rtol=0, atol=1e-15)
    # by hand: the identity on the x-block of W_QK; -gamma/N on the x-diagonal of W_OV and -eta/N in its (y, y) corner
    assert np.array_equal(qk, np.diag([1.0, 1.0, 1.0, 1.0, 0.0]))
    assert np.array_equal(ov, np.diag([-gamma / 6] * 4 + [-eta / 6]))


def test_gdpp_products_with_gamma_0_are_the_products_of_the_gd_construction():
    qk, ov = gd_products(0.7)
    expected_qk, expected_ov = theory.gdpp_products(4, 5, 0.7, 0.0)
    assert np.allclose(qk, expected_qk, rtol=0, atol=1e-15) and np.allclose(ov, expected_ov, rtol=0, atol=1e-15)


# --- K steps in the eigenbasis of a context ---------------------------------------------------


def test_context_spectrum_diagonalises_the_contexts_input_covariance():
    batch = random_batch(4, 7, 5, seed=1)
    lam, vectors = theory.context_spectrum(batch.tokens)
    x = batch.tokens[:, :-1, :-1]
    for b in range(5):
        sigma = sum(np.outer(row, row) for row in x[b]) / 7
        assert np.allclose(vectors[b] @ np.diag(lam[b]) @ vectors[b].T, sigma, atol=1e-13)
    assert np.all(np.diff(lam, axis=1) >= 0)


def test_gd_error_factors_are_one_minus_eta_lambda_to_the_k():
    lam = np.array([0.1, 0.5, 1.2])
    assert np.allclose(theory.error_factors(lam, 0.7, 0.0, 4), (1 - 0.7 * lam) ** 4, rtol=1e-14)


def test_two_gdpp_steps_miss_the_fraction_written_out_by_hand():
    lam, eta, gamma = np.array([0.2, 0.9]), 1.1, 0.6
    by_hand = (1 - eta * lam) * (1 - eta * lam * (1 - gamma * lam) ** 2)
    assert np.allclose(theory.error_factors(lam, eta, gamma, 2), by_hand, rtol=1e-14)


@given(st.integers(1, 5), st.integers(2, 8), st.integers(1, 3), st.floats(0.1, 1.5), st.floats(0.0, 0.8), seeds)
def test_gdpp_in_the_eigenbasis_predicts_what_the_gdpp_recursion_predicts(d, n_context, steps, eta, gamma, seed):
    batch = random_batch(d, n_context, 6, seed)
    direct = baselines.gdpp_predict(batch.tokens, eta, gamma, steps)
    assert np.allclose(theory.gdpp_eigenbasis_predict(batch.tokens, batch.weights, eta, gamma, steps), direct, atol=1e-10)


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_the_spectral_loss_is_the_loss_averaged_over_w_and_the_query_for_a_fixed_context(gamma):
    d, n, a, eta, steps, draws = 3, 4, 1.0, 0.8, 2, 200_000
    rng = np.random.default_rng(6)
    context = rng.uniform(-a, a, (n, d))
    w = rng.standard_normal((draws, d))
    query = rng.uniform(-a, a, (draws, d))
    tokens = np.zeros((draws, n + 1, d + 1))
    tokens[:, :n, :d] = context
    tokens[:, :n, d] = w @ context.T
    tokens[:, n, :d] = query
    losses = 0.5 * (baselines.gdpp_predict(tokens, eta, gamma, steps) - np.einsum("bd,bd->b", w, query)) ** 2
    lam, _ = theory.context_spectrum(tokens[:1])
    expected = float(theory.spectral_half_mse(lam, eta, gamma, steps, a**2 / 3)[0])
    assert within(losses.mean(), expected, losses.std(ddof=1) / np.sqrt(draws))


# --- reading a trained layer ------------------------------------------------------------------


def gd_products(eta: float, d: int = 4, n: int = 5):
    cfg = iclgd.LSAConfig(d=d, n_layers=1, n_heads=1, n_context=n)
    return (m[0] for m in effective_matrices(cfg, iclgd.gd_construction(cfg, eta))["layer0"])


def test_the_gd_construction_reads_as_c_1_g_eta_over_n_and_nothing_else():
    qk, ov = gd_products(0.7)
    reading = theory.read_gd_layer(qk, ov)
    assert (reading.c, reading.g, reading.other_qk, reading.other_ov) == pytest.approx((1.0, 0.7 / 5, 0.0, 0.0))
    assert reading.eta(5) == pytest.approx(0.7)


def test_a_rescaled_construction_reads_as_the_same_rate():
    qk, ov = gd_products(0.7)
    reading = theory.read_gd_layer(3.0 * qk, ov / 3.0)
    assert (reading.c, reading.g, reading.eta(5)) == pytest.approx((3.0, 0.7 / 15, 0.7))


def test_the_one_layer_reading_ignores_what_cannot_reach_the_prediction_and_reports_what_can():
    qk, ov = gd_products(0.7)
    qk[4, :] = 9.0  # the y-row of W_QK meets the query's zero y-slot
    ov[:, :4] = 9.0  # W_OV's x-columns write into x-slots nobody reads
    assert theory.read_gd_layer(qk, ov).other_qk == 0.0 and theory.read_gd_layer(qk, ov).other_ov == 0.0
    qk[0, 2], ov[1, 4] = 0.05, -0.03
    reading = theory.read_gd_layer(qk, ov)
    assert (reading.other_qk, reading.other_ov) == pytest.approx((0.05, 0.03))


def test_the_gdpp_construction_reads_as_its_rates_and_nothing_else():
    cfg = iclgd.LSAConfig(d=3, n_layers=2, n_heads=1, tied=True, n_context=6)
    qk, ov = (m[0] for m in effective_matrices(cfg, iclgd.gdpp_construction(cfg, 0.9, 0.4))["shared"])
    reading = theory.read_gdpp_layer(2.0 * qk, ov / 2.0)
    assert (reading.c, reading.g_x, reading.g_y) == pytest.approx((2.0, 0.4 / 12, 0.9 / 12))
    assert (reading.other_qk, reading.other_ov_x, reading.other_ov_y) == pytest.approx((0.0, 0.0, 0.0))
    assert (reading.eta(6), reading.gamma(6)) == pytest.approx((0.9, 0.4))


def test_the_gdpp_reading_reports_the_y_row_that_a_deeper_model_reads():
    cfg = iclgd.LSAConfig(d=3, n_layers=2, n_heads=1, tied=True, n_context=6)
    qk, ov = (m[0] for m in effective_matrices(cfg, iclgd.gdpp_construction(cfg, 0.9, 0.4))["shared"])
    qk[3, 1], ov[3, 0], ov[2, 3] = 0.02, -0.04, 0.01
    reading = theory.read_gdpp_layer(qk, ov)
    assert (reading.other_qk, reading.other_ov_x, reading.other_ov_y) == pytest.approx((0.02, 0.04, 0.01))


def test_the_gdpp_readings_relative_other_entries_are_each_over_its_own_scale():
    # d = 2, c = 2 with one stray 0.5 (the query's x reaching the y-key); g_x = 0.1 with a stray 0.05 written into an
    # x-slot; g_y = 0.8 with a stray 0.3 in the y-column: (0.5 / 2, 0.05 / 0.1, 0.3 / 0.8)
    qk = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    ov = np.array([[-0.1, 0.05, 0.3], [0.0, -0.1, 0.0], [0.0, 0.0, -0.8]])
    reading = theory.read_gdpp_layer(qk, ov)
    assert (reading.c, reading.g_x, reading.g_y) == pytest.approx((2.0, 0.1, 0.8))
    assert reading.relative_other == pytest.approx((0.25, 0.5, 0.375))


def test_the_gdpp_construction_has_no_entry_outside_its_pattern():
    reading = theory.read_gdpp_layer(*theory.gdpp_products(3, 6, 0.9, 0.4))
    assert (reading.c, reading.g_x, reading.g_y) == pytest.approx((1.0, 0.4 / 6, 0.9 / 6))
    assert reading.relative_other == (0.0, 0.0, 0.0)
