"""The closed-form GD construction: an LSA whose K layers are K steps of gradient descent."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import random_batch, seeds

import iclgd
from iclgd.baselines import gd_predict, gd_weights

numpy_backend = iclgd.get_backend("numpy")

dims = st.integers(1, 6)
contexts = st.integers(1, 12)
etas = st.floats(-1.5, 1.5).filter(lambda eta: abs(eta) > 1e-3)
steps = st.integers(1, 4)
x_scales = st.sampled_from([0.5, 1.0, 2.0])


def drawn_w0(seed, d, scale):
    return scale * np.random.default_rng(seed + 1).standard_normal(d)


@settings(max_examples=60, deadline=None)
@given(dims, contexts, etas, steps, st.booleans(), st.integers(1, 3), x_scales, st.floats(0.0, 2.0), seeds)
def test_constructed_lsa_prediction_equals_k_gd_steps(d, n, eta, k, tied, n_heads, a, w0_scale, seed):
    cfg = iclgd.LSAConfig(d=d, n_layers=k, n_heads=n_heads, tied=tied, n_context=n)
    w0 = drawn_w0(seed, d, w0_scale)
    batch = random_batch(d, n, batch_size=16, seed=seed, x_scale=a)
    model = numpy_backend.predict(cfg, iclgd.gd_construction(cfg, eta, w0=w0), iclgd.with_initial_guess(batch.tokens, w0))
    direct = gd_predict(batch.tokens, eta, steps=k, w0=w0)
    assert np.max(np.abs(model - direct)) <= 1e-9 * max(1.0, np.max(np.abs(direct)))


@settings(max_examples=40, deadline=None)
@given(dims, contexts, etas, steps, seeds)
def test_constructed_lsa_leaves_residuals_in_the_context_y_slots(d, n, eta, k, seed):
    cfg = iclgd.LSAConfig(d=d, n_layers=k, tied=True, n_context=n)
    batch = random_batch(d, n, batch_size=8, seed=seed)
    final = numpy_backend.forward(cfg, iclgd.gd_construction(cfg, eta), batch.tokens)[-1]
    x, y = batch.tokens[:, :n, :d], batch.tokens[:, :n, d]
    residuals = y - np.einsum("bnd,bd->bn", x, gd_weights(batch.tokens, eta, steps=k))
    assert np.max(np.abs(final[:, :n, d] - residuals)) <= 1e-9 * max(1.0, np.max(np.abs(residuals)))
    np.testing.assert_array_equal(final[:, :, :d], batch.tokens[:, :, :d])  # x-parts untouched


@settings(max_examples=60, deadline=None)
@given(dims, contexts, etas, st.floats(0.0, 2.0), seeds)
def test_constructed_one_step_sensitivity_is_the_gd_updated_weight(d, n, eta, w0_scale, seed):
    """d yhat / d x_q = W0 + (eta/N) sum_i (y_i - W0 x_i) x_i.  The model's own sensitivity holds
    the data term; the query's start state -W0 x_q (with_initial_guess) adds W0, because the
    constructed read-out passes the query's y-slot through with coefficient -1."""
    cfg = iclgd.LSAConfig(d=d, n_context=n)
    w0 = drawn_w0(seed, d, w0_scale)
    batch = random_batch(d, n, batch_size=8, seed=seed)
    tokens = iclgd.with_initial_guess(batch.tokens, w0)
    x, y = batch.tokens[:, :n, :d], batch.tokens[:, :n, d]
    expected = w0 + (eta / n) * np.einsum("bn,bnd->bd", y - x @ w0, x)
    model = numpy_backend.sensitivity(cfg, iclgd.gd_construction(cfg, eta, w0=w0), tokens) + w0
    assert np.max(np.abs(model - expected)) <= 1e-9 * max(1.0, np.max(np.abs(expected)))


def test_construction_at_the_paper_setting_matches_gd_to_round_off():
    cfg = iclgd.LSAConfig(d=10, n_layers=1, n_context=10)
    batch = iclgd.LinearRegressionTask(d=10, n_context=10).sample(2048, seed=0)
    eta = iclgd.baselines.optimal_eta(10, 10)
    model = numpy_backend.predict(cfg, iclgd.gd_construction(cfg, eta), batch.tokens)
    np.testing.assert_allclose(model, gd_predict(batch.tokens, eta), rtol=0, atol=1e-12)
