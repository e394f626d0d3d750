"""Limits before allocation: sizes that pass validation are computable, and larger work is
refused, naming the argument (or the config key, or the flag) with the estimated bytes against
the limit, before anything is allocated or written (iclgd.limits)."""
from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iclgd
from iclgd import baselines, limits
from iclgd.cli import main
from iclgd.config import ConfigError, run_config_from_dict

FAST = settings(max_examples=25, deadline=None)
SMALL = 8 * 2**20  # a limit for tests: 8 MiB
REFUSAL = r"is too large: .* would take about .* \(\d+ bytes\), more than the memory limit of .* \(set by ICLGD_MEMORY_LIMIT_BYTES\)"


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, str(SMALL))
    return SMALL


def peak_bytes(function) -> tuple[int, object]:
    """(NumPy's and Python's peak allocation during the call, the call's result or exception)."""
    tracemalloc.start()
    try:
        result = function()
    except ValueError as error:
        result = error
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, result


# --- the limit -------------------------------------------------------------------------------------------


def test_the_default_limit_is_half_of_physical_memory(monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    physical = limits.physical_memory_bytes()
    expected = limits.FALLBACK_PHYSICAL_BYTES if physical is None else physical
    assert limits.memory_limit_bytes() == int(limits.DEFAULT_FRACTION * expected) and limits.DEFAULT_FRACTION == 0.5


@given(limit=st.integers(1, 2**62))
def test_the_environment_variable_sets_the_limit_in_bytes(limit):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(limits.ENV_VAR, str(limit))
        assert limits.memory_limit_bytes() == limit


@pytest.mark.parametrize("text", ["lots", "0", "-5", "1e9", "", "1.5"])
def test_a_malformed_limit_is_refused_naming_the_variable(monkeypatch, text):
    monkeypatch.setenv(limits.ENV_VAR, text)
    with pytest.raises(ValueError, match=rf"^the environment variable {limits.ENV_VAR} must be a positive integer number of bytes; got {re.escape(repr(text))}$"):
        limits.memory_limit_bytes()


@given(limit=st.integers(1, 2**40), extra=st.integers(0, 2**40))
def test_check_bytes_accepts_what_fits_and_refuses_the_rest_naming_the_subject_and_both_sizes(limit, extra):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(limits.ENV_VAR, str(limit))
        limits.check_bytes("thing = 1", limit - min(extra, limit - 1), "it")  # at or below the limit: no error
        with pytest.raises(ValueError, match=rf"^thing = 1 is too large: it would take about .* \({limit + extra + 1} bytes\), more than the memory limit of .*set by"):
            limits.check_bytes("thing = 1", limit + extra + 1, "it")


# --- estimates bound what NumPy really allocates ------------------------------------------------------------


@FAST
@given(d=st.integers(1, 12), n_context=st.integers(1, 20), batch_size=st.integers(1, 300), noise=st.booleans(),
       n_distractors=st.integers(0, 1), dtype=st.sampled_from(["float32", "float64"]),
       law=st.sampled_from(["uniform", "gaussian", "laplace", "exponential"]))
def test_the_sampling_estimate_bounds_the_peak_allocation_of_sample(d, n_context, batch_size, noise, n_distractors, dtype, law):
    task = iclgd.LinearRegressionTask(d=d, n_context=n_context, noise_std=0.1 if noise else 0.0,
                                      n_distractors=n_distractors, dtype=dtype, x_distribution=law)
    peak, batch = peak_bytes(lambda: task.sample(batch_size, seed=0))
    assert peak <= limits.task_sample_bytes(task, batch_size) + 64 * 1024  # + Python's objects


@FAST
@given(d=st.integers(1, 6), n_context=st.integers(1, 12), batch_size=st.integers(1, 64), n_layers=st.integers(1, 3),
       n_heads=st.integers(1, 3), include_query=st.booleans(), tied=st.booleans(),
       dtype=st.sampled_from(["float32", "float64"]), method=st.sampled_from(["forward", "predict", "sensitivity", "loss", "loss_and_grad"]),
       data=st.data())
def test_the_pass_estimate_bounds_the_oracles_peak_allocation_in_every_method(d, n_context, batch_size, n_layers, n_heads,
                                                                            include_query, tied, dtype, method, data):
    cfg = iclgd.LSAConfig(d=d, n_layers=n_layers, n_heads=n_heads, key_size=data.draw(st.integers(1, d + 2)),
                          value_size=data.draw(st.integers(1, d + 2)), include_query=include_query, tied=tied, dtype=dtype)
    batch = iclgd.LinearRegressionTask(d=d, n_context=n_context).sample(batch_size, seed=0)
    params, backend = iclgd.init_params(cfg), iclgd.get_backend("numpy")
    given_input = batch if method in ("loss", "loss_and_grad") else batch.tokens
    peak, _ = peak_bytes(lambda: getattr(backend, method)(cfg, params, given_input))
    assert peak <= limits.lsa_pass_bytes(cfg, batch_size, n_context) + 64 * 1024


# --- refusals, each before the allocation -------------------------------------------------------------------


@FAST
@given(batch_size=st.integers(2**20, 2**62))
def test_sample_refuses_a_batch_size_beyond_the_limit_naming_it_before_allocating(batch_size):
    task = iclgd.LinearRegressionTask(d=10, n_context=10)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(limits.ENV_VAR, str(SMALL))
        peak, error = peak_bytes(lambda: task.sample(batch_size, seed=0))
    assert isinstance(error, ValueError) and re.match(rf"^batch_size = {batch_size} \(with n_context = 10, d = 10\) {REFUSAL}", str(error))
    assert peak < 64 * 1024


@pytest.mark.parametrize("method", ["forward", "predict", "sensitivity", "loss", "loss_and_grad"])
def test_a_backend_refuses_tokens_whose_pass_exceeds_the_limit_naming_them_before_allocating(small_limit, method):
    cfg = iclgd.LSAConfig(d=3, n_layers=2)
    tokens = np.broadcast_to(np.float64(0.5), (10**6, 5, 4))  # a view: no memory of its own
    given_input = iclgd.Batch(tokens, np.broadcast_to(0.0, (10**6,)), None) if method.startswith("loss") else tokens
    peak, error = peak_bytes(lambda: getattr(iclgd.get_backend("numpy"), method)(cfg, iclgd.init_params(cfg), given_input))
    assert isinstance(error, ValueError) and re.match(rf"^tokens of shape \(1000000, 5, 4\) {REFUSAL}", str(error))
    assert peak < 64 * 1024


@pytest.mark.parametrize("field", ["d", "n_heads", "key_size", "value_size"])
def test_a_model_whose_parameters_exceed_the_limit_is_refused_naming_its_sizes(small_limit, field):
    kwargs = {"d": 3, field: 10**6}
    with pytest.raises(ValueError, match=rf"^the model \(.*{field} = 1000000.*\) {REFUSAL}"):
        iclgd.LSAConfig(**kwargs)


@pytest.mark.parametrize("make", [lambda n: iclgd.LSAConfig(d=2, n_layers=n), lambda n: iclgd.LearnedGDConfig(d=2, n_context=2, n_layers=n)],
                         ids=["lsa", "learned_gd"])
@FAST
@given(n_layers=st.integers(limits.MAX_LAYERS + 1, 2**62))
def test_n_layers_is_bounded(make, n_layers):
    with pytest.raises(ValueError, match=rf"^n_layers must be a positive integer <= {limits.MAX_LAYERS}; got {n_layers}$"):
        make(n_layers)


def test_the_deepest_allowed_model_can_be_built_and_initialised():
    cfg = iclgd.LSAConfig(d=1, n_layers=limits.MAX_LAYERS, key_size=1, value_size=1)
    assert len(iclgd.init_params(cfg)) == 4 * limits.MAX_LAYERS


@pytest.mark.parametrize("function", [baselines.gd_predict, baselines.gd_weights,
                                      lambda tokens, eta, steps: baselines.gdpp_predict(tokens, eta, 0.1, steps)],
                         ids=["gd_predict", "gd_weights", "gdpp_predict"])
@FAST
@given(steps=st.integers(limits.MAX_GD_STEPS + 1, 2**62))
def test_gd_baseline_steps_are_bounded(function, steps):
    tokens = iclgd.LinearRegressionTask(d=2, n_context=3).sample(2, seed=0).tokens
    with pytest.raises(ValueError, match=rf"^steps must be a non-negative integer <= {limits.MAX_GD_STEPS}; got {steps}$"):
        function(tokens, 0.1, steps)


def test_gdpp_predict_refuses_contexts_whose_gram_matrices_exceed_the_limit_before_allocating(small_limit):
    tokens = np.broadcast_to(np.float64(0.1), (1, 10**5, 3))
    peak, error = peak_bytes(lambda: baselines.gdpp_predict(tokens, 0.1, 0.1))
    assert isinstance(error, ValueError) and re.match(rf"^tokens of shape \(1, 100000, 3\) {REFUSAL}", str(error))
    assert peak < 64 * 1024


# --- run configs and the command line ------------------------------------------------------------------------


@FAST
@given(batch_size=st.integers(2**22, 2**62), n_layers=st.integers(1, 4))
def test_a_run_config_whose_training_step_exceeds_the_limit_names_train_batch_size(batch_size, n_layers):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(limits.ENV_VAR, str(SMALL))
        with pytest.raises(ConfigError, match=rf"^run.toml: \[train\]: batch_size = {batch_size} {REFUSAL}"):
            run_config_from_dict({"model": {"n_layers": n_layers}, "train": {"batch_size": batch_size}}, "run.toml")


def test_a_run_config_whose_training_step_fits_is_accepted(small_limit):
    config = run_config_from_dict({"task": {"d": 4, "n_context": 6}, "train": {"batch_size": 64}})
    assert limits.training_step_bytes(config.task, config.model, 64) <= SMALL


CONFIG = """
[task]
d = 4
n_context = 6
[train]
steps = 2
batch_size = 8
checkpoint_every = 1
"""


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG)
    return path


def refused(argv: list[str], capsys) -> str:
    """Run the command, expect exit code 2 and return its one error line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iclgd: error: ") and "\n" not in err
    return err


def test_train_refuses_a_batch_size_beyond_the_limit_naming_the_key_and_writes_nothing(tmp_path, config_file, capsys):
    out = tmp_path / "run"
    err = refused(["train", "--config", str(config_file), "--out", str(out), "--set", "train.batch_size=100000000000"], capsys)
    assert re.search(r"\[train\]: batch_size = 100000000000 is too large: .* would take about", err)
    assert not out.exists()


def test_train_refuses_seeds_whose_runs_exceed_the_limit_naming_seeds_and_writes_nothing(tmp_path, config_file, capsys, monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, str(200 * 2**20))  # room for the default settings, not for 1000 runs' state
    out = tmp_path / "runs"
    err = refused(["train", "--config", str(config_file), "--out", str(out), "--seeds", "1000"], capsys)
    assert re.search(r"--seeds 1000 is too large: training 1000 runs .* would take about", err)
    assert not out.exists()


def test_train_refuses_more_seeds_than_open_files_naming_seeds_and_writes_nothing(tmp_path, config_file, capsys, monkeypatch):
    monkeypatch.setattr(limits, "open_files_limit", lambda: 100)
    out = tmp_path / "runs"
    err = refused(["train", "--config", str(config_file), "--out", str(out), "--seeds", str(100 - limits.RESERVED_FILES + 1)], capsys)
    assert re.search(r"--seeds 37 is too many for this process: each run holds .*an open file.* use at most 36 seeds", err)
    assert not out.exists()


def test_train_refuses_seeds_that_run_past_the_largest_seed_naming_seeds(tmp_path, config_file, capsys):
    out = tmp_path / "runs"
    err = refused(["train", "--config", str(config_file), "--out", str(out), "--set", f"train.seed={2**63 - 2}", "--seeds", "3"], capsys)
    assert "--seeds 3 from [train] seed 9223372036854775806 runs past the largest seed 2**63 - 1" in err
    assert not out.exists()


@pytest.mark.parametrize("layers", ["10001", "1,2,20000"])
def test_reproduce_multi_layer_refuses_depths_beyond_the_bound_naming_layers(tmp_path, capsys, layers):
    out = tmp_path / "ml"
    err = refused(["reproduce", "multi-layer", "--quick", "--layers", layers, "--out", str(out)], capsys)
    assert f"--layers must be depths K <= {limits.MAX_LAYERS}" in err
    assert not out.exists()


def test_reproduce_multi_layer_refuses_a_depth_that_cannot_train_in_memory_naming_layers(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, str(2**30))  # room for the default settings, not for 9000 layers
    out = tmp_path / "ml"
    err = refused(["reproduce", "multi-layer", "--quick", "--layers", "1,9000", "--out", str(out)], capsys)
    assert re.search(r"--layers 1,9000 is too large: training the deepest model \(.*9000 layer\(s\).*would take about", err)
    assert not out.exists()


@pytest.mark.parametrize("claim", ["one-layer", "multi-layer", "ood"])
def test_reproduce_refuses_validation_tasks_beyond_the_limit_naming_val_tasks(tmp_path, capsys, claim):
    out = tmp_path / claim
    err = refused(["reproduce", claim, "--quick", "--val-tasks", str(10**11), "--out", str(out)], capsys)
    assert re.search(rf"--val-tasks {10**11} is too large: evaluating {10**11} tasks .* would take about", err)
    assert not out.exists()
