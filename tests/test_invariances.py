"""Symmetries and trivial cases of the LSA model."""
import numpy as np
from hypothesis import given, settings
from strategies import lsa_configs, random_batch, random_params, seeds

import iclgd

numpy_backend = iclgd.get_backend("numpy")


@settings(max_examples=40, deadline=None)
@given(lsa_configs(), seeds)
def test_prediction_is_invariant_to_permuting_the_context(drawn, seed):
    cfg, n_context = drawn
    params = random_params(cfg, seed, 0.5)
    tokens = random_batch(cfg.d, n_context, batch_size=5, seed=seed).tokens
    order = np.random.default_rng(seed).permutation(n_context)
    permuted = np.concatenate([tokens[:, order], tokens[:, -1:]], axis=1)
    before, after = numpy_backend.predict(cfg, params, tokens), numpy_backend.predict(cfg, params, permuted)
    assert np.max(np.abs(before - after)) <= 1e-10 * max(1.0, np.max(np.abs(before)))


@settings(max_examples=20, deadline=None)
@given(lsa_configs(), seeds)
def test_zero_model_loss_is_half_mean_squared_target(drawn, seed):
    cfg, n_context = drawn
    batch = random_batch(cfg.d, n_context, batch_size=7, seed=seed)
    zero = iclgd.zero_params(cfg)
    np.testing.assert_array_equal(numpy_backend.predict(cfg, zero, batch.tokens), 0.0)
    assert numpy_backend.loss(cfg, zero, batch) == 0.5 * np.mean(batch.targets**2)


@settings(max_examples=20, deadline=None)
@given(lsa_configs(), seeds)
def test_forward_returns_every_layers_tokens_starting_with_the_input(drawn, seed):
    cfg, n_context = drawn
    params = random_params(cfg, seed, 0.5)
    tokens = random_batch(cfg.d, n_context, batch_size=3, seed=seed).tokens
    states = numpy_backend.forward(cfg, params, tokens)
    assert len(states) == cfg.n_layers + 1
    np.testing.assert_array_equal(states[0], tokens)
    assert all(s.shape == tokens.shape for s in states)
    np.testing.assert_allclose(numpy_backend.predict(cfg, params, tokens), -states[-1][:, -1, -1], rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(lsa_configs(), seeds)
def test_each_task_is_predicted_independently_of_the_rest_of_the_batch(drawn, seed):
    cfg, n_context = drawn
    params = random_params(cfg, seed, 0.5)
    tokens = random_batch(cfg.d, n_context, batch_size=6, seed=seed).tokens
    whole = numpy_backend.predict(cfg, params, tokens)
    alone = np.concatenate([numpy_backend.predict(cfg, params, tokens[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(whole, alone, rtol=1e-12, atol=1e-12)


def test_init_params_are_small_seeded_and_named_by_layer():
    cfg = iclgd.LSAConfig(d=10, n_layers=2, n_heads=2)
    params = iclgd.init_params(cfg, seed=3)
    assert list(params) == list(iclgd.param_shapes(cfg))
    assert set(params) == {f"layer{l}.{w}" for l in range(2) for w in ("w_q", "w_k", "w_v", "w_o")}
    for name, value in iclgd.init_params(cfg, seed=3).items():
        np.testing.assert_array_equal(value, params[name])
    fan_in = cfg.token_size
    assert abs(params["layer0.w_q"].std() - np.sqrt(0.002 / fan_in)) < 0.3 * np.sqrt(0.002 / fan_in)
    tied = iclgd.init_params(iclgd.LSAConfig(d=10, n_layers=3, tied=True), seed=0)
    assert set(tied) == {"shared.w_q", "shared.w_k", "shared.w_v", "shared.w_o"}
