"""GD and GD++ with learned rates (iclgd.gd_models): the models the paper trains as baselines.

A LearnedGDConfig model is a constrained LSA (the GD++ construction with per-step rates); the
training loop trains it through any backend's LSA gradient and the chain rule.
"""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import random_batch, seeds

import iclgd
from iclgd import gd_models
from iclgd.backends.training import ThroughLSA, batch_rng, initial_state, trainer_for
from iclgd.baselines import gd_predict, gdpp_predict, optimal_eta
from iclgd.config import ConfigError, RunConfig, TrainConfig, load_run_config, run_config_to_toml
from iclgd.gd_models import LearnedGDConfig
from iclgd.train import train

numpy_backend = iclgd.get_backend("numpy")


@st.composite
def learned_models(draw, max_d=6, max_n=8, max_layers=4):
    """A learned-rate model and rates: d, N, K, tied or not, GD or GD++; rates in a range where K steps stay finite."""
    cfg = LearnedGDConfig(
        d=draw(st.integers(1, max_d)),
        n_context=draw(st.integers(1, max_n)),
        n_layers=draw(st.integers(1, max_layers)),
        tied=draw(st.booleans()),
        variant=draw(st.sampled_from(gd_models.VARIANTS)),
    )
    rng = np.random.default_rng(draw(seeds))
    params = {"eta": rng.uniform(-1.5, 1.5, cfg.n_rates)}
    if cfg.variant == "gdpp":
        params["gamma"] = rng.uniform(-1.0, 1.0, cfg.n_rates)
    return cfg, params


def relative_error(actual, expected):
    return np.max(np.abs(actual - expected)) / max(1.0, np.max(np.abs(expected)))


@settings(max_examples=40, deadline=None)
@given(learned_models(), seeds)
def test_the_lsa_form_predicts_what_the_direct_recursion_computes_with_the_same_per_step_rates(model, seed):
    cfg, params = model
    batch = random_batch(cfg.d, cfg.n_context, 5, seed)
    eta, gamma = gd_models.rates(cfg, params)
    direct = gdpp_predict(batch.tokens, eta, gamma, cfg.n_layers)
    lsa_cfg, lsa_params = gd_models.as_lsa(cfg, params)
    assert relative_error(numpy_backend.predict(lsa_cfg, lsa_params, batch.tokens), direct) <= 1e-9


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(1, 4), seeds)
def test_learned_gd_with_per_step_rates_is_gd_with_those_rates(d, n_context, n_steps, seed):
    cfg = LearnedGDConfig(d=d, n_context=n_context, n_layers=n_steps, variant="gd")
    params = {"eta": np.random.default_rng(seed).uniform(0.0, 1.5, n_steps)}
    batch = random_batch(d, n_context, 5, seed)
    lsa_cfg, lsa_params = gd_models.as_lsa(cfg, params)
    expected = gd_predict(batch.tokens, params["eta"], n_steps)
    assert relative_error(numpy_backend.predict(lsa_cfg, lsa_params, batch.tokens), expected) <= 1e-9


def _loss(cfg, params, batch):
    lsa_cfg, lsa_params = gd_models.as_lsa(cfg, params)
    return numpy_backend.loss(lsa_cfg, lsa_params, batch)


@settings(max_examples=30, deadline=None)
@given(learned_models(max_layers=3), seeds)
def test_pullback_of_the_lsa_gradient_is_the_gradient_in_the_rates(model, seed):
    cfg, params = model
    batch = random_batch(cfg.d, cfg.n_context, 4, seed)
    lsa_cfg, lsa_params = gd_models.as_lsa(cfg, params)
    _, lsa_grads = numpy_backend.loss_and_grad(lsa_cfg, lsa_params, batch)
    grads = gd_models.pullback(cfg, lsa_grads)
    step = 1e-6
    for name, value in params.items():
        for index in range(value.size):
            plus, minus = {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in params.items()}
            plus[name][index] += step
            minus[name][index] -= step
            numeric = (_loss(cfg, plus, batch) - _loss(cfg, minus, batch)) / (2 * step)
            assert abs(grads[name][index] - numeric) <= 1e-6 * max(1.0, abs(numeric)), (name, index)


def test_gd_has_one_rate_per_step_or_one_shared_and_gdpp_adds_gamma():
    assert gd_models.param_shapes(LearnedGDConfig(d=3, n_context=4, n_layers=5)) == {"eta": (5,)}
    assert gd_models.param_shapes(LearnedGDConfig(d=3, n_context=4, n_layers=5, tied=True)) == {"eta": (1,)}
    assert gd_models.param_shapes(LearnedGDConfig(d=3, n_context=4, n_layers=2, variant="gdpp")) == {"eta": (2,), "gamma": (2,)}


def test_initial_per_step_rates_differ_so_training_can_tell_the_steps_apart():
    # K-step GD is symmetric in its per-step rates: equal rates would stay equal under gradient descent
    params = gd_models.init_params(LearnedGDConfig(d=3, n_context=4, n_layers=4, variant="gdpp"), seed=0)
    assert len(set(params["eta"])) == 4 and len(set(params["gamma"])) == 4


def learned_run(variant="gd", n_layers=1, tied=False, steps=300, lr=0.05, backend="numpy", **task):
    return RunConfig(
        iclgd.LinearRegressionTask(**task),
        LearnedGDConfig(d=task.get("d", 10), n_context=task.get("n_context", 10), n_layers=n_layers, tied=tied, variant=variant),
        TrainConfig(steps=steps, batch_size=1024, lr=lr, schedule="cosine", checkpoint_every=100, backend=backend),
    )


def test_training_one_learned_gd_step_finds_the_closed_form_optimal_rate(tmp_path):
    state = train(tmp_path, learned_run())
    assert state.params["eta"][0] == pytest.approx(optimal_eta(10, 10, 1.0), rel=0.03)


def test_a_learned_gd_run_resumes_bit_for_bit(tmp_path):
    config = learned_run("gdpp", n_layers=2, steps=20, d=3, n_context=4)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, checkpoint_every=10))
    full = train(tmp_path / "full", config)
    train(tmp_path / "resumed", config)
    (tmp_path / "resumed" / "checkpoints" / "step_00000020.npz").unlink()
    resumed = train(tmp_path / "resumed", config)
    for name in full.params:
        np.testing.assert_array_equal(resumed.params[name], full.params[name])
        np.testing.assert_array_equal(resumed.adam.v[name], full.adam.v[name])


@pytest.mark.parametrize("backend", ["numba", "jax"])
def test_learned_rates_train_the_same_on_every_backend(backend):
    pytest.importorskip(backend)
    config = learned_run("gdpp", n_layers=3, steps=5, d=4, n_context=5)
    states = {}
    for name in ("numpy", backend):
        trainer = trainer_for(iclgd.get_backend(name), config)
        states[name], _ = trainer.advance(initial_state(config), 5)
    for name in states["numpy"].params:
        assert relative_error(states[backend].params[name], states["numpy"].params[name]) <= 1e-9


def test_through_lsa_returns_the_rates_gradient_of_the_sampled_batch():
    config = learned_run("gdpp", n_layers=2, d=3, n_context=4)
    params = initial_state(config).params
    loss, grads = ThroughLSA(numpy_backend).sample_loss_and_grad(config.model, config.task, params, 16, batch_rng(0, 7))
    batch = config.task.sample(16, batch_rng(0, 7))
    assert loss == pytest.approx(_loss(config.model, params, batch), rel=1e-12)
    assert set(grads) == {"eta", "gamma"}


@pytest.mark.parametrize("family", ["gd", "gdpp"])
def test_a_learned_gd_run_config_survives_the_toml_round_trip(tmp_path, family):
    path = tmp_path / "run.toml"
    path.write_text(f'[task]\nd = 3\nn_context = 4\n[model]\nfamily = "{family}"\nn_layers = 2\ntied = true\n')
    config = load_run_config(path)
    assert config.model == LearnedGDConfig(d=3, n_context=4, n_layers=2, tied=True, variant=family)
    path.write_text(run_config_to_toml(config))
    assert load_run_config(path) == config


def test_an_lsa_run_config_round_trips_with_its_family_written(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[task]\nd = 3\n[model]\nn_layers = 2\n")
    config = load_run_config(path)
    text = run_config_to_toml(config)
    assert 'family = "lsa"' in text
    path.write_text(text)
    assert load_run_config(path) == config


@pytest.mark.parametrize(
    "model_table, message",
    [
        ('family = "sgd"', "family' must be one of ['lsa', 'gd', 'gdpp', 'transformer']; got 'sgd'"),
        ('family = ["gd"]', "family' must be one of ['lsa', 'gd', 'gdpp', 'transformer']; got ['gd']"),
        ('family = "gd"\nvariant = "gdpp"', "unknown key 'variant'; expected one of ['d', 'n_context', 'n_layers', 'tied', 'dtype']"),
        ('variant = "gdpp"', "unknown key 'variant'"),
        ('family = "gd"\nn_heads = 2', "unknown key 'n_heads'"),
        ('family = "gdpp"\nn_layers = 0', "n_layers must be a positive integer"),
    ],
)
def test_bad_model_families_are_reported_with_file_and_key(tmp_path, model_table, message):
    path = tmp_path / "run.toml"
    path.write_text(f"[task]\nd = 3\n[model]\n{model_table}\n")
    with pytest.raises(ConfigError, match="run.toml: \\[model\\]: ") as error:
        load_run_config(path)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"eta": np.zeros(2)}, r"exactly the keys \['eta', 'gamma'\]"),
        ({"eta": np.zeros(3), "gamma": np.zeros(2)}, r"params\['eta'\] must have shape \(2,\); got \(3,\)"),
        ({"eta": np.array([0.0, np.nan]), "gamma": np.zeros(2)}, "finite"),
        ([1.0], "must be a dict"),
    ],
)
def test_bad_rates_are_rejected_with_what_was_expected(params, message):
    with pytest.raises(ValueError, match=message):
        gd_models.to_lsa_params(LearnedGDConfig(d=2, n_context=3, n_layers=2, variant="gdpp"), params)


def test_bad_learned_gd_configs_say_what_was_expected():
    with pytest.raises(ValueError, match=r"variant must be one of \['gd', 'gdpp'\]; got 'newton'"):
        LearnedGDConfig(d=2, n_context=3, variant="newton")
    with pytest.raises(ValueError, match="tied must be True or False"):
        LearnedGDConfig(d=2, n_context=3, tied="yes")


def test_learned_gd_models_refuse_the_in_graph_jax_sampler_before_anything_is_written():
    config = learned_run(backend="jax")
    with pytest.raises(ValueError, match="sampler must be 'numpy'; got sampler 'jax'"):
        dataclasses.replace(config, train=dataclasses.replace(config.train, sampler="jax"))


def test_a_learned_gd_config_file_with_the_jax_sampler_is_a_config_error(tmp_path):
    pytest.importorskip("jax")
    path = tmp_path / "run.toml"
    path.write_text('[task]\nd = 3\n[model]\nfamily = "gd"\n[train]\nbackend = "jax"\nsampler = "jax"\n')
    with pytest.raises(ConfigError, match=r"run.toml: \[train\]: .*sampler must be 'numpy'"):
        load_run_config(path)


def test_iclgd_train_fits_a_learned_gdpp_model_from_a_config_file(tmp_path):
    from iclgd.cli import main
    from iclgd.train import latest_checkpoint

    path = tmp_path / "gdpp.toml"
    path.write_text('[task]\nd = 3\nn_context = 6\n[model]\nfamily = "gdpp"\nn_layers = 2\ntied = true\n'
                    '[train]\nsteps = 30\nbatch_size = 64\nlr = 0.05\ncheckpoint_every = 10\n')
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    state, _ = latest_checkpoint(tmp_path / "run", "float64")
    assert state.step == 30 and set(state.params) == {"eta", "gamma"} and state.params["eta"].shape == (1,)
    assert 'family = "gdpp"' in (tmp_path / "run" / "config.toml").read_text()


def test_pullback_rejects_gradients_of_another_lsa_layout():
    untied = LearnedGDConfig(d=2, n_context=3, n_layers=2, variant="gdpp")
    _, lsa_params = gd_models.as_lsa(untied, gd_models.init_params(untied))
    tied = LearnedGDConfig(d=2, n_context=3, n_layers=2, tied=True, variant="gdpp")
    with pytest.raises(ValueError, match=r"lsa_grads\['shared.w_o'\] must have shape \(1, 3, 3\) .*tied, 2 layers\); got no such key"):
        gd_models.pullback(tied, lsa_params)
