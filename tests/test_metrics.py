"""The paper's alignment metrics on cases with known answers."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import random_batch, random_params, seeds

import iclgd
from iclgd import metrics
from iclgd.evaluate import compare_with_gd, tune_gd_eta
from iclgd.interpolate import interpolate

numpy_backend = iclgd.get_backend("numpy")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.floats(0.1, 2.0), st.integers(1, 3), seeds)
def test_the_constructed_model_against_gd_has_zero_diffs_and_unit_cosine(d, n, eta, steps, seed):
    cfg = iclgd.LSAConfig(d=d, n_layers=steps, tied=True, n_context=n)
    batch = random_batch(d, n, batch_size=64, seed=seed)
    c = compare_with_gd(numpy_backend, cfg, iclgd.gd_construction(cfg, eta), batch, eta, steps)
    scale = max(1.0, float(np.abs(iclgd.baselines.gd_predict(batch.tokens, eta, steps)).max()))
    assert c.preds_diff.mean <= 1e-10 * scale
    assert c.model_diff.mean <= 1e-10 * scale
    assert c.model_cos.mean == pytest.approx(1.0, abs=1e-10)
    assert c.model_minus_gd.mean == pytest.approx(0.0, abs=1e-10 * scale**2)
    assert c.model_loss.mean == pytest.approx(c.gd_loss.mean, rel=1e-9)


def test_metrics_of_known_vectors():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [0.0, -1.0], [3.0, 4.0]])
    assert metrics.model_cos(a, b).mean == pytest.approx((1 - 1 + 1) / 3)
    assert metrics.model_diff(a, b).mean == pytest.approx((1 + 3 + 0) / 3)
    assert metrics.preds_diff(np.array([1.0, -1.0]), np.array([0.5, 1.0])).mean == pytest.approx(1.25)
    assert metrics.cosine_per_task(np.zeros((1, 2)), np.ones((1, 2)))[0] == 0.0


def test_standard_error_is_the_sample_std_over_root_n():
    values = np.arange(10.0)
    estimate = metrics.estimate(values)
    assert estimate.mean == 4.5
    assert estimate.stderr == pytest.approx(np.std(values, ddof=1) / np.sqrt(10))


def test_paired_difference_has_a_smaller_error_than_either_loss_when_models_agree():
    rng = np.random.default_rng(0)
    shared = rng.exponential(size=10_000)
    a, b = shared + 0.01 * rng.standard_normal(10_000), shared
    paired = metrics.paired_difference(a, b)
    assert paired.stderr < 0.05 * metrics.estimate(a).stderr


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 10), st.integers(1, 2), st.booleans(), st.floats(-0.5, 1.5), seeds)
def test_a_model_interpolated_with_itself_is_itself(d, n, layers, tied, alpha, seed):
    cfg = iclgd.LSAConfig(d=d, n_layers=layers, tied=tied, key_size=2, value_size=3)
    params = random_params(cfg, seed, 0.5)
    tokens = random_batch(d, n, batch_size=8, seed=seed).tokens
    mixed_cfg, mixed = interpolate(cfg, params, params, alpha)
    expected = numpy_backend.predict(cfg, params, tokens)
    np.testing.assert_allclose(numpy_backend.predict(mixed_cfg, mixed, tokens), expected, rtol=1e-9, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 10), st.floats(0.1, 2.0), st.floats(0.2, 5.0), st.floats(0.0, 1.0), seeds)
def test_interpolating_two_rescalings_of_the_construction_gives_the_construction(d, n, eta, s, alpha, seed):
    """(s W_q, W_k, W_v / s, W_o) computes the same function; interpolation must not depend on s."""
    cfg = iclgd.LSAConfig(d=d, n_context=n)
    gd = iclgd.gd_construction(cfg, eta)
    rescaled = {**gd, "layer0.w_q": s * gd["layer0.w_q"], "layer0.w_v": gd["layer0.w_v"] / s}
    tokens = random_batch(d, n, batch_size=8, seed=seed).tokens
    mixed_cfg, mixed = interpolate(cfg, rescaled, gd, alpha)
    np.testing.assert_allclose(
        numpy_backend.predict(mixed_cfg, mixed, tokens), iclgd.baselines.gd_predict(tokens, eta), rtol=1e-9, atol=1e-10
    )


def test_line_search_finds_the_closed_form_optimal_eta():
    batch = iclgd.LinearRegressionTask(d=10, n_context=10).sample(100_000, seed=5)
    assert tune_gd_eta(batch, steps=1) == pytest.approx(iclgd.baselines.optimal_eta(10, 10), rel=0.02)


def test_line_search_over_k_steps_is_no_worse_than_any_grid_rate():
    batch = iclgd.LinearRegressionTask(d=5, n_context=10).sample(5000, seed=6)
    eta = tune_gd_eta(batch, steps=3)
    def loss(e):
        return np.mean((iclgd.baselines.gd_predict(batch.tokens, e, 3) - batch.targets) ** 2)
    assert all(loss(eta) <= loss(e) + 1e-12 for e in np.linspace(0.1, 4.0, 40))
