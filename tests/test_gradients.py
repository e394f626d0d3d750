"""The hand-written backward pass of the NumPy oracle equals central finite differences."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import lsa_configs, random_batch, random_params, seeds

import iclgd
from iclgd.checks import finite_difference_gradient, relative_error

numpy_backend = iclgd.get_backend("numpy")


@settings(max_examples=40, deadline=None)
@given(lsa_configs(), seeds, st.floats(0.2, 0.6))
def test_parameter_gradients_equal_central_finite_differences(drawn, seed, std):
    cfg, n_context = drawn
    batch = random_batch(cfg.d, n_context, batch_size=3, seed=seed)
    params = random_params(cfg, seed, std)
    loss, grads = numpy_backend.loss_and_grad(cfg, params, batch)
    numeric = finite_difference_gradient(lambda p: numpy_backend.loss(cfg, p, batch), params, step=1e-6)
    assert loss == numpy_backend.loss(cfg, params, batch)
    assert relative_error(grads, numeric) <= 1e-6


@settings(max_examples=40, deadline=None)
@given(lsa_configs(), seeds, st.floats(0.2, 0.6))
def test_sensitivity_equals_finite_differences_of_the_prediction_in_the_query(drawn, seed, std):
    cfg, n_context = drawn
    tokens = random_batch(cfg.d, n_context, batch_size=4, seed=seed).tokens
    params = random_params(cfg, seed, std)
    step = 1e-6
    numeric = np.zeros((tokens.shape[0], cfg.d))
    for i in range(cfg.d):
        up, down = tokens.copy(), tokens.copy()
        up[:, -1, i] += step
        down[:, -1, i] -= step
        numeric[:, i] = (numpy_backend.predict(cfg, params, up) - numpy_backend.predict(cfg, params, down)) / (2 * step)
    analytic = numpy_backend.sensitivity(cfg, params, tokens)
    assert analytic.shape == (tokens.shape[0], cfg.d)
    assert np.max(np.abs(analytic - numeric)) <= 1e-6 * max(1.0, np.max(np.abs(numeric)))


@settings(max_examples=20, deadline=None)
@given(lsa_configs(max_layers=2), seeds)
def test_tied_gradient_is_the_sum_of_the_untied_layer_gradients(drawn, seed):
    cfg, n_context = drawn
    tied = iclgd.LSAConfig(**{**cfg.__dict__, "tied": True})
    untied = iclgd.LSAConfig(**{**cfg.__dict__, "tied": False})
    shared = random_params(tied, seed, 0.4)
    copies = {f"layer{l}.{k.split('.')[1]}": v for l in range(cfg.n_layers) for k, v in shared.items()}
    batch = random_batch(cfg.d, n_context, batch_size=3, seed=seed)
    _, tied_grads = numpy_backend.loss_and_grad(tied, shared, batch)
    _, untied_grads = numpy_backend.loss_and_grad(untied, copies, batch)
    for name, grad in tied_grads.items():
        summed = sum(untied_grads[f"layer{l}.{name.split('.')[1]}"] for l in range(cfg.n_layers))
        np.testing.assert_allclose(grad, summed, rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(lsa_configs(max_layers=2), seeds)
def test_float32_on_request_agrees_with_float64(drawn, seed):
    cfg64, n_context = drawn
    cfg32 = iclgd.LSAConfig(**{**cfg64.__dict__, "dtype": "float32"})
    params = random_params(cfg64, seed, 0.3)
    batch = random_batch(cfg64.d, n_context, batch_size=8, seed=seed)
    loss64, grads64 = numpy_backend.loss_and_grad(cfg64, params, batch)
    loss32, grads32 = numpy_backend.loss_and_grad(cfg32, params, batch)
    assert all(g.dtype == np.float32 for g in grads32.values())
    assert numpy_backend.predict(cfg32, params, batch.tokens).dtype == np.float32
    assert abs(loss32 - loss64) <= 1e-4 * max(1.0, abs(loss64))
    assert relative_error(grads32, grads64) <= 1e-4
