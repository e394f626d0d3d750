"""GD++ (von Oswald et al. 2023, multi-layer experiments): the closed-form LSA construction against the recursion
computed directly, its gamma = 0 limit (plain GD), and the errors of the new entry points.

One GD++ step updates every token j (context and query) from the step's old tokens:
    x_j <- x_j - (gamma / N) sum_i (x_i . x_j) x_i
    y_j <- y_j + (eta / N)   sum_i (x_i . x_j) (W0 x_i - y_i)
"""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import random_batch, seeds

import iclgd
from iclgd import LSAConfig
from iclgd.baselines import gd_predict, gdpp_predict

numpy_backend = iclgd.get_backend("numpy")

dims = st.integers(1, 6)
contexts = st.integers(1, 12)
etas = st.floats(-1.5, 1.5)
gammas = st.floats(-1.0, 1.0)  # x ~ U(-1, 1): K <= 4 steps stay finite (|x| can grow, but far from overflow)
steps = st.integers(1, 4)
w0_scales = st.floats(0.0, 2.0)

D, N, B = 3, 4, 2


def drawn_w0(seed, d, scale):
    return scale * np.random.default_rng(seed + 1).standard_normal(d)


def assert_close(actual, expected, rel=1e-9):
    assert np.max(np.abs(actual - expected)) <= rel * max(1.0, np.max(np.abs(expected)))


def constructed_prediction(cfg, eta, gamma, w0, tokens):
    params = iclgd.gdpp_construction(cfg, eta, gamma, w0=w0)
    return numpy_backend.predict(cfg, params, iclgd.with_initial_guess(tokens, w0))


# --- the construction equals the recursion ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(dims, contexts, etas, gammas, steps, st.booleans(), st.integers(1, 3), w0_scales, seeds)
def test_constructed_lsa_prediction_equals_k_gdpp_steps(d, n, eta, gamma, k, tied, n_heads, w0_scale, seed):
    cfg = LSAConfig(d=d, n_layers=k, n_heads=n_heads, tied=tied, n_context=n)
    w0 = drawn_w0(seed, d, w0_scale)
    batch = random_batch(d, n, batch_size=16, seed=seed)
    direct = gdpp_predict(batch.tokens, eta, gamma, steps=k, w0=w0)
    assert np.all(np.isfinite(direct))
    assert_close(constructed_prediction(cfg, eta, gamma, w0, batch.tokens), direct)


@settings(max_examples=60, deadline=None)
@given(dims, contexts, etas, steps, st.booleans(), st.integers(1, 3), w0_scales, seeds)
def test_gdpp_with_gamma_zero_is_gd(d, n, eta, k, tied, n_heads, w0_scale, seed):
    cfg = LSAConfig(d=d, n_layers=k, n_heads=n_heads, tied=tied, n_context=n)
    w0 = drawn_w0(seed, d, w0_scale)
    batch = random_batch(d, n, batch_size=16, seed=seed)
    gd = gd_predict(batch.tokens, eta, steps=k, w0=w0)
    assert_close(gdpp_predict(batch.tokens, eta, 0.0, steps=k, w0=w0), gd)
    assert_close(constructed_prediction(cfg, eta, 0.0, w0, batch.tokens), gd)


@settings(max_examples=30, deadline=None)
@given(dims, contexts, etas, gammas, st.booleans(), st.integers(1, 3), st.integers(0, 2), w0_scales, seeds)
def test_gdpp_weights_are_the_gd_weights_plus_the_x_block(d, n, eta, gamma, tied, n_heads, extra, w0_scale, seed):
    """Same GD entries as gd_construction; the only other non-zeros are value columns 1..d
    (copying x) and W_o's rows 1..d (-gamma/N into the x-slots)."""
    cfg = LSAConfig(d=d, n_layers=2, n_heads=n_heads, tied=tied, value_size=d + 1 + extra, n_context=n)
    w0 = drawn_w0(seed, d, w0_scale)
    gd, gdpp = iclgd.gd_construction(cfg, eta, w0=w0), iclgd.gdpp_construction(cfg, eta, gamma, w0=w0)
    assert gd.keys() == gdpp.keys()
    for name in gd:
        expected = gd[name].copy()
        if name.endswith("w_v"):
            expected[0, :d, 1 : d + 1] = np.eye(d)
        if name.endswith("w_o"):
            expected[0, 1 : d + 1, :d] = -(gamma / n) * np.eye(d)
        np.testing.assert_array_equal(gdpp[name], expected, err_msg=name)


@settings(max_examples=40, deadline=None)
@given(dims, contexts, etas, gammas, st.integers(1, 3), w0_scales, seeds)
def test_one_constructed_layer_applies_the_curvature_correction_to_every_token(d, n, eta, gamma, n_heads, w0_scale, seed):
    """After one layer, every row equals the GD++ update written out as plain sums over i."""
    cfg = LSAConfig(d=d, n_layers=3, n_heads=n_heads, n_context=n)
    w0 = drawn_w0(seed, d, w0_scale)
    tokens = iclgd.with_initial_guess(random_batch(d, n, batch_size=6, seed=seed).tokens, w0)
    after_one = numpy_backend.forward(cfg, iclgd.gdpp_construction(cfg, eta, gamma, w0=w0), tokens)[1]
    expected = tokens.copy()
    for b in range(tokens.shape[0]):
        for j in range(n + 1):  # the N context tokens and the query
            for i in range(n):
                x_i, y_i, x_j = tokens[b, i, :d], tokens[b, i, d], tokens[b, j, :d]
                expected[b, j, :d] -= (gamma / n) * np.dot(x_i, x_j) * x_i
                expected[b, j, d] += (eta / n) * np.dot(x_i, x_j) * (np.dot(w0, x_i) - y_i)
    assert_close(after_one[:, :n, :d], expected[:, :n, :d])  # context x-parts
    assert_close(after_one[:, n, :d], expected[:, n, :d])  # the query's x-part
    assert_close(after_one[..., d], expected[..., d])  # y-slots: the GD step


@settings(max_examples=20, deadline=None)
@given(dims, contexts, etas, gammas, seeds)
def test_zero_gdpp_steps_predict_the_initial_guess(d, n, eta, gamma, seed):
    batch = random_batch(d, n, batch_size=5, seed=seed)
    w0 = np.random.default_rng(seed).standard_normal(d)
    np.testing.assert_allclose(gdpp_predict(batch.tokens, eta, gamma, steps=0, w0=w0), batch.tokens[:, -1, :-1] @ w0)


@settings(max_examples=30, deadline=None)
@given(dims, contexts, etas, st.integers(1, 7), steps, st.booleans(), seeds)
def test_gd_construction_still_works_with_any_value_size(d, n, eta, value_size, k, tied, seed):
    cfg = LSAConfig(d=d, n_layers=k, tied=tied, value_size=value_size, n_context=n)
    batch = random_batch(d, n, batch_size=8, seed=seed)
    model = numpy_backend.predict(cfg, iclgd.gd_construction(cfg, eta), batch.tokens)
    assert_close(model, gd_predict(batch.tokens, eta, steps=k))


def test_gdpp_construction_is_exported():
    assert "gdpp_construction" in iclgd.__all__
    assert iclgd.gdpp_construction is iclgd.construct.gdpp_construction


# --- errors: gdpp_construction -----------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 8), data=st.data())
def test_gdpp_construction_rejects_a_value_size_below_d_plus_one(d, data):
    value_size = data.draw(st.integers(1, d))
    with pytest.raises(ValueError, match=rf"^the GD\+\+ construction needs value_size >= d \+ 1 = {d + 1} .*got value_size={value_size}$"):
        iclgd.gdpp_construction(LSAConfig(d=d, value_size=value_size, n_context=5), eta=1.0, gamma=0.5)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(2, 8), data=st.data())
def test_gdpp_construction_rejects_a_key_size_below_d(d, data):
    key_size = data.draw(st.integers(1, d - 1))
    cfg = LSAConfig(d=d, key_size=key_size, value_size=d + 1, n_context=5)
    with pytest.raises(ValueError, match=rf"^the GD\+\+ construction needs key_size >= d = {d}; got key_size={key_size}$"):
        iclgd.gdpp_construction(cfg, eta=1.0, gamma=0.5)


def test_gdpp_construction_rejects_include_query():
    with pytest.raises(ValueError, match=r"^the GD\+\+ construction needs include_query=False.*got True$"):
        iclgd.gdpp_construction(LSAConfig(d=D, include_query=True, n_context=N), eta=1.0, gamma=0.5)


def test_gdpp_construction_needs_n_context_from_cfg_or_argument():
    with pytest.raises(ValueError, match=r"^gdpp_construction needs the number of context tokens N.*gamma / N.*got neither$"):
        iclgd.gdpp_construction(LSAConfig(d=D), eta=1.0, gamma=0.5)


def test_gdpp_construction_takes_n_context_as_an_argument_and_checks_it_against_cfg():
    by_argument = iclgd.gdpp_construction(LSAConfig(d=D), eta=1.0, gamma=0.5, n_context=N)
    by_cfg = iclgd.gdpp_construction(LSAConfig(d=D, n_context=N), eta=1.0, gamma=0.5)
    assert all(np.array_equal(by_argument[name], by_cfg[name]) for name in by_cfg)
    with pytest.raises(ValueError, match=rf"^n_context={N + 1} disagrees with cfg.n_context={N}$"):
        iclgd.gdpp_construction(LSAConfig(d=D, n_context=N), eta=1.0, gamma=0.5, n_context=N + 1)
    with pytest.raises(ValueError, match=r"^n_context must be a positive integer.*got 0"):
        iclgd.gdpp_construction(LSAConfig(d=D), eta=1.0, gamma=0.5, n_context=0)


@pytest.mark.parametrize("name", ["eta", "gamma"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=repr)
def test_gdpp_construction_rejects_non_finite_rates(name, value):
    rates = {"eta": 1.0, "gamma": 0.5, name: value}
    with pytest.raises(ValueError, match=rf"^{name} must be finite; got {value}$"):
        iclgd.gdpp_construction(LSAConfig(d=D, n_context=N), **rates)


@pytest.mark.parametrize("name", ["eta", "gamma"])
@pytest.mark.parametrize("value", ["1.0", None, True, 1j], ids=repr)
def test_gdpp_construction_rejects_rates_that_are_not_real_numbers(name, value):
    rates = {"eta": 1.0, "gamma": 0.5, name: value}
    with pytest.raises(ValueError, match=rf"^{name} must be a real number; got {re.escape(repr(value))}"):
        iclgd.gdpp_construction(LSAConfig(d=D, n_context=N), **rates)


@pytest.mark.parametrize("shape", [(D - 1,), (D + 1,), (1, D), ()], ids=str)
def test_gdpp_construction_rejects_w0_of_the_wrong_shape(shape):
    with pytest.raises(ValueError, match=rf"^w0 must have shape \(d,\) = \({D},\); got {re.escape(str(shape))}$"):
        iclgd.gdpp_construction(LSAConfig(d=D, n_context=N), eta=1.0, gamma=0.5, w0=np.ones(shape))


# --- errors: gdpp_predict ----------------------------------------------------------------------


def good_tokens():
    return iclgd.LinearRegressionTask(d=D, n_context=N).sample(B, seed=0).tokens


@pytest.mark.parametrize("shape", [(N + 1, D + 1), (B, 1, D + 1), (B, N + 1, 1), (0, N + 1, D + 1)], ids=str)
def test_gdpp_predict_rejects_tokens_of_the_wrong_shape(shape):
    with pytest.raises(ValueError, match=rf"^tokens must .*got (shape )?{re.escape(str(shape))}$"):
        gdpp_predict(np.zeros(shape), eta=1.0, gamma=0.5)


def test_gdpp_predict_rejects_non_finite_tokens():
    tokens = good_tokens()
    tokens[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"^tokens must hold only finite values; got 1 NaN/inf entries \(first at index \(1, 2, 0\)\)"):
        gdpp_predict(tokens, eta=1.0, gamma=0.5)


@pytest.mark.parametrize("name", ["eta", "gamma"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=repr)
def test_gdpp_predict_rejects_non_finite_rates(name, value):
    rates = {"eta": 1.0, "gamma": 0.5, name: value}
    with pytest.raises(ValueError, match=rf"^{name} must be finite; got {value}$"):
        gdpp_predict(good_tokens(), **rates)


@pytest.mark.parametrize("name", ["eta", "gamma"])
def test_gdpp_predict_rejects_rates_that_are_not_real_numbers(name):
    rates = {"eta": 1.0, "gamma": 0.5, name: "0.1"}
    with pytest.raises(ValueError, match=rf"^{name} must be a real number; got '0.1'"):
        gdpp_predict(good_tokens(), **rates)


@pytest.mark.parametrize("steps", [-1, 1.0, True], ids=repr)
def test_gdpp_predict_rejects_steps_that_are_not_non_negative_integers(steps):
    with pytest.raises(ValueError, match=rf"^steps must be a non-negative integer.*got {re.escape(repr(steps))}"):
        gdpp_predict(good_tokens(), eta=1.0, gamma=0.5, steps=steps)


@pytest.mark.parametrize("shape", [(D - 1,), (B + 1, D), (1, 1, D), ()], ids=str)
def test_gdpp_predict_rejects_w0_of_the_wrong_shape(shape):
    with pytest.raises(ValueError, match=rf"^w0 must have shape \(d,\) = \({D},\) or \(B, d\) = \({B}, {D}\); got {re.escape(str(shape))}$"):
        gdpp_predict(good_tokens(), eta=1.0, gamma=0.5, w0=np.ones(shape))
