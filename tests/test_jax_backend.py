"""The jax backend is held to the NumPy oracle: training runs, checkpoints shared with the host
backends, data parallelism, many seeds, its sampler, its errors.  Forward, loss, gradient and
sensitivity parity (golden states and drawn configs, float64 and float32) live in
tests/test_parity.py."""
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="the jax backend needs jax and optax: pip install 'iclgd[jax]'")
pytest.importorskip("optax", reason="the jax backend needs jax and optax: pip install 'iclgd[jax]'")

from strategies import random_batch  # noqa: E402

import iclgd  # noqa: E402
from iclgd import runio  # noqa: E402
from iclgd.config import run_config_from_dict  # noqa: E402
from iclgd.optim import AdamConfig, AdamState  # noqa: E402
from iclgd.train import initial_state, load_checkpoint, train  # noqa: E402

numpy_backend = iclgd.get_backend("numpy")
jax_backend = iclgd.get_backend("jax")
REPO = Path(__file__).resolve().parents[1]
SMALL = {"task": {"d": 3, "n_context": 5}, "model": {"n_layers": 2, "n_heads": 2}}


def small_config(**train):
    settings_ = {"steps": 50, "batch_size": 16, "lr": 0.01, "checkpoint_every": 10, "log_every": 5, "backend": "jax"}
    return run_config_from_dict({**SMALL, "train": {**settings_, **train}})


def relative(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def params_relative(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(relative(a[k], b[k]) for k in b)


# --- agreement with the oracle --------------------------------------------------------------------


def test_bad_input_raises_the_oracles_value_errors():
    cfg = iclgd.LSAConfig(d=3)
    params = iclgd.init_params(cfg, 0)
    batch = random_batch(3, 5, 2, 0)
    with pytest.raises(ValueError, match="tokens must have shape"):
        jax_backend.predict(cfg, params, batch.tokens[:, :, :3])
    with pytest.raises(ValueError, match="missing"):
        jax_backend.loss_and_grad(cfg, {}, batch)
    with pytest.raises(ValueError, match="targets must have shape"):
        jax_backend.loss(cfg, params, iclgd.Batch(batch.tokens, batch.targets[:1], batch.weights))
    with pytest.raises(ValueError, match="NaN"):
        jax_backend.sensitivity(cfg, params, np.full_like(batch.tokens, np.nan))


def test_importing_iclgd_does_not_import_jax():
    code = "import sys, iclgd; iclgd.get_backend('numpy'); assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- the optimiser --------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup_cosine"])
def test_the_schedule_reproduces_adam_config_learning_rate(schedule):
    from iclgd.backends.jax_backend import learning_rate_schedule

    adam = AdamConfig(lr=0.003, schedule=schedule, warmup_steps=7, total_steps=40)
    rate = learning_rate_schedule(adam)
    for count in range(45):
        assert float(rate(np.int32(count))) == pytest.approx(adam.learning_rate(count), rel=1e-15, abs=1e-18)


def test_adam_state_maps_to_optax_and_back():
    from iclgd.backends.jax_backend import from_optax_state, make_optimizer, to_optax_state

    cfg = iclgd.LSAConfig(d=2, n_layers=2)
    rng = np.random.default_rng(0)
    params = iclgd.init_params(cfg, 1)
    state = AdamState({k: rng.standard_normal(v.shape) for k, v in params.items()}, {k: rng.random(v.shape) for k, v in params.items()}, 17)
    for clip in (None, 1.0):
        back = from_optax_state(to_optax_state(make_optimizer(AdamConfig(clip_norm=clip)), state, params))
        assert back.count == 17
        for k in params:
            np.testing.assert_array_equal(back.m[k], state.m[k])
            np.testing.assert_array_equal(back.v[k], state.v[k])


# --- training -------------------------------------------------------------------------------------


def test_fifty_steps_with_the_numpy_sampler_equal_the_numpy_backend():
    config = small_config(schedule="warmup_cosine", warmup_steps=10, clip_norm=0.5)
    host = numpy_backend.trainer(config)
    ours = jax_backend.trainer(config)
    start = initial_state(config)
    (host_state, host_records), (state, records) = host.advance(start, 50), ours.advance(start, 50)
    assert state.step == host_state.step == 50 and state.adam.count == 50
    assert params_relative(state.params, host_state.params) <= 1e-8
    assert params_relative(state.adam.m, host_state.adam.m) <= 1e-8
    assert [r.step for r in records] == list(range(50))
    for mine, theirs in zip(records, host_records):
        assert mine.lr == pytest.approx(theirs.lr, rel=1e-14)
        assert mine.loss == pytest.approx(theirs.loss, rel=1e-9)
        assert mine.grad_norm == pytest.approx(theirs.grad_norm, rel=1e-8)


@pytest.mark.parametrize("first, second", [("numpy", "jax"), ("jax", "numpy")])
def test_a_run_directory_resumes_on_the_other_backend(tmp_path, first, second):
    config = small_config(steps=40, backend="numpy")
    reference = train(tmp_path / "reference", config)
    run = tmp_path / "run"
    train(run, config, backend=iclgd.get_backend(first))
    for step, path in runio.list_checkpoints(run):
        if step > 20:
            path.unlink()  # as if the run had stopped after step 20
    resumed = train(run, config, backend=iclgd.get_backend(second))
    assert resumed.step == reference.step == 40 and resumed.adam.count == 40
    assert params_relative(resumed.params, reference.params) <= 1e-8
    assert [r["step"] for r in runio.read_jsonl(run / "metrics.jsonl")] == list(range(0, 40, 5))


def test_a_jax_sampler_run_resumes_bit_for_bit(tmp_path):
    config = small_config(sampler="jax")
    whole = train(tmp_path / "whole", config)
    partial = tmp_path / "partial"
    train(partial, config)
    for step, path in runio.list_checkpoints(partial):
        if step > 20:
            path.unlink()
    resumed = train(partial, config)
    assert resumed.step == whole.step == 50 and resumed.adam.count == 50
    for name in whole.params:
        np.testing.assert_array_equal(resumed.params[name], whole.params[name])
        np.testing.assert_array_equal(resumed.adam.v[name], whole.adam.v[name])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("sampler", ["jax", "numpy"])
def test_a_non_finite_step_stops_advance_and_keeps_the_last_good_state(sampler):
    config = run_config_from_dict(
        {**SMALL, "model": {"dtype": "float32", "n_layers": 1},
         "train": {"batch_size": 8, "lr": 1e12, "clip_norm": 0.0, "init_scale": 1.0, "backend": "jax", "sampler": sampler}}
    )
    state, records = jax_backend.trainer(config).advance(initial_state(config), 30)
    assert not records[-1].finite and all(r.finite for r in records[:-1])
    assert state.step == len(records) - 1 == records[-1].step
    assert all(np.isfinite(v).all() for v in state.params.values())


@pytest.mark.parametrize("sampler", ["jax", "numpy"])
def test_vmapped_seeds_equal_single_seed_runs(sampler):
    config = small_config(sampler=sampler)
    many = jax_backend.seeds_trainer(config, [0, 1, 2, 7])
    starts = many.initial_states()
    states, records = many.advance(starts, 5)
    states, more = many.advance(states, 5)
    for seed, state, start, first, second in zip([0, 1, 2, 7], states, starts, records, more):
        single_config = replace(config, train=replace(config.train, seed=seed))
        expected = initial_state(single_config)
        assert params_relative(start.params, expected.params) == 0.0
        trainer = jax_backend.trainer(single_config)
        alone, alone_records = trainer.advance(expected, 5)
        alone, later_records = trainer.advance(alone, 5)
        alone_records += later_records
        assert state.step == alone.step == 10
        assert params_relative(state.params, alone.params) <= 1e-12
        assert params_relative(state.adam.v, alone.adam.v) <= 1e-12
        assert [r.loss for r in first + second] == pytest.approx([r.loss for r in alone_records], rel=1e-12)


def test_iclgd_train_seeds_runs_the_vmapped_program_and_matches_single_runs(tmp_path):
    from iclgd.cli import main

    config = tmp_path / "run.toml"
    config.write_text('[task]\nd = 3\nn_context = 4\n[train]\nsteps = 20\nbatch_size = 16\n'
                      'checkpoint_every = 10\nseed = 5\nbackend = "jax"\nsampler = "jax"\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "many"), "--seeds", "2", "--quiet"]) == 0
    for seed in (5, 6):
        single = config.with_name(f"single{seed}.toml")
        single.write_text(config.read_text().replace("seed = 5", f"seed = {seed}"))
        assert main(["train", "--config", str(single), "--out", str(tmp_path / f"one{seed}"), "--quiet"]) == 0
        many = load_checkpoint(tmp_path / "many" / f"seed_{seed}" / "checkpoints" / "step_00000020.npz", "float64")
        one = load_checkpoint(tmp_path / f"one{seed}" / "checkpoints" / "step_00000020.npz", "float64")
        assert params_relative(many.params, one.params) <= 1e-12


# --- the jax sampler ------------------------------------------------------------------------------


def test_the_jax_sampler_draws_the_task_distribution_reproducibly():
    task = iclgd.LinearRegressionTask(d=4, n_context=6, x_scale="authors_code", w_scale=2.0)
    batch = jax_backend.sample_batch(task, 4000, seed=3, step=5)
    assert batch.tokens.shape == (4000, 7, 5) and batch.targets.shape == (4000,) and batch.weights.shape == (4000, 4)
    x = batch.tokens[:, :, :4]
    assert np.all(np.abs(x) <= 0.5) and np.all(batch.tokens[:, -1, -1] == 0.0)
    np.testing.assert_allclose(batch.tokens[:, :-1, -1], np.einsum("btd,bd->bt", x[:, :-1], batch.weights), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batch.targets, np.einsum("bd,bd->b", x[:, -1], batch.weights), rtol=1e-12, atol=1e-12)
    assert np.mean(x) == pytest.approx(0.0, abs=0.01) and np.var(x) == pytest.approx(0.25 / 3, rel=0.02)
    assert np.mean(batch.weights) == pytest.approx(0.0, abs=0.05) and np.var(batch.weights) == pytest.approx(4.0, rel=0.05)
    again = jax_backend.sample_batch(task, 4000, seed=3, step=5)
    np.testing.assert_array_equal(again.tokens, batch.tokens)
    assert not np.array_equal(jax_backend.sample_batch(task, 4000, seed=3, step=6).tokens, batch.tokens)
    assert not np.array_equal(jax_backend.sample_batch(task, 4000, seed=4, step=5).tokens, batch.tokens)


def test_the_jax_sampler_adds_label_noise_and_distractors():
    task = iclgd.LinearRegressionTask(d=3, n_context=8, noise_std=0.1, n_distractors=2)
    batch = jax_backend.sample_batch(task, 3000, seed=0, step=0)
    x = batch.tokens[:, :, :3]
    residual = batch.tokens[:, :-1, -1] - np.einsum("btd,bd->bt", x[:, :-1], batch.weights)
    replaced = np.abs(residual) > 0.6  # distractors are N(0, 1); noise is N(0, 0.01)
    assert np.mean(replaced.sum(axis=1) <= 2) == 1.0 and np.mean(replaced.sum(axis=1)) > 1.2
    clean = np.sort(np.abs(residual), axis=1)[:, :6]
    assert np.std(batch.targets - np.einsum("bd,bd->b", x[:, -1], batch.weights)) == pytest.approx(0.1, rel=0.05)
    assert np.max(clean) < 0.6


def test_the_fused_step_trains_on_the_sampled_batches():
    config = small_config(sampler="jax", seed=11)
    start = initial_state(config)
    _, records = jax_backend.trainer(config).advance(start, 5)
    assert [record.step for record in records] == list(range(5))
    batch = jax_backend.sample_batch(config.task, 16, seed=11, step=0, dtype="float64")
    assert records[0].loss == pytest.approx(numpy_backend.loss(config.model, start.params, batch), rel=1e-12)


# --- many devices ---------------------------------------------------------------------------------

DATA_PARALLEL = textwrap.dedent(
    """
    import jax, numpy as np, iclgd
    from iclgd.backends.jax_backend import JaxBackend
    from iclgd.config import run_config_from_dict
    from iclgd.train import initial_state

    assert len(jax.devices()) == 4, jax.devices()
    sharded, single = JaxBackend(), JaxBackend(devices=jax.devices()[:1])
    assert sharded._shardings(8)[1].mesh.size == 4 and sharded._shardings(6)[1].mesh.size == 1

    def rel(a, b):
        return np.max(np.abs(a - b)) / np.max(np.abs(b))

    cfg = iclgd.LSAConfig(d=3, n_layers=2, n_heads=2)
    params = iclgd.init_params(cfg, 0, scale=1.0)
    for batch_size in (8, 6):  # 6: not divisible by 4, so one device
        batch = iclgd.LinearRegressionTask(d=3, n_context=5).sample(batch_size, 1)
        (loss4, grads4), (loss1, grads1) = sharded.loss_and_grad(cfg, params, batch), single.loss_and_grad(cfg, params, batch)
        assert abs(loss4 - loss1) <= 1e-13 * loss1, (loss4, loss1)
        assert max(rel(grads4[k], grads1[k]) for k in grads1) <= 1e-12
        assert rel(sharded.sensitivity(cfg, params, batch.tokens), single.sensitivity(cfg, params, batch.tokens)) <= 1e-12

    for sampler in ("jax", "numpy"):
        config = run_config_from_dict({"task": {"d": 3, "n_context": 5}, "model": {"n_layers": 2},
                                       "train": {"batch_size": 8, "lr": 0.01, "backend": "jax", "sampler": sampler}})
        trainer4 = sharded.trainer(config)
        assert trainer4.plan.batch_sharding is not None and trainer4.plan.batch_sharding.mesh.size == 4
        (state4, records4), (state1, records1) = trainer4.advance(initial_state(config), 5), single.trainer(config).advance(initial_state(config), 5)
        assert state4.step == state1.step == 5
        assert max(rel(state4.params[k], state1.params[k]) for k in state1.params) <= 1e-12
        assert max(abs(a.loss - b.loss) / b.loss for a, b in zip(records4, records1)) <= 1e-13
        if sampler == "numpy":
            continue
        many4, many1 = sharded.seeds_trainer(config, [0, 5]), single.seeds_trainer(config, [0, 5])
        (states4, _), (states1, _) = many4.advance(many4.initial_states(), 3), many1.advance(many1.initial_states(), 3)
        for a, b in zip(states4, states1):
            assert a.step == b.step == 3
            assert max(rel(a.params[k], b.params[k]) for k in b.params) <= 1e-12
    print("ok")
    """
)


def test_data_parallel_on_four_devices_equals_one_device(tmp_path):
    script = tmp_path / "data_parallel.py"
    script.write_text(DATA_PARALLEL)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("distribution", ["uniform", "gaussian", "exponential", "laplace"])
def test_the_jax_sampler_draws_the_inputs_of_task_sample_for_every_input_distribution(distribution):
    # the same law as the numpy sampler: E[x], E[x^2] = a^2 / 3 and E[x^4] agree within 5 standard
    # errors of the two-sample difference (200,000 draws each); exponential inputs are >= 0
    task = iclgd.LinearRegressionTask(d=4, n_context=9, x_scale=0.5, x_distribution=distribution)
    ours = jax_backend.sample_batch(task, 5000, seed=3, step=1)
    truth = task.sample(5000, seed=3)
    x, x_truth = ours.tokens[:, :, :-1].ravel(), truth.tokens[:, :, :-1].ravel()
    for power in (1, 2, 4):
        a, b = x**power, x_truth**power
        z = (a.mean() - b.mean()) / np.sqrt(a.var() / a.size + b.var() / b.size)
        assert abs(z) < 5, (power, z)
    assert np.mean(x**2) == pytest.approx(0.25 / 3, rel=0.03)
    assert np.all(x >= 0) if distribution == "exponential" else x.min() < 0 < x.max()
    np.testing.assert_allclose(ours.targets, np.einsum("bd,bd->b", ours.tokens[:, -1, :-1], ours.weights), rtol=1e-12, atol=1e-12)
