"""The numba backend is held to the NumPy oracle: its fused sampler, thread-count independence,
training runs and resumes across backends.  Forward, loss, gradient and sensitivity parity
(golden states and drawn configs, float64 and float32) live in tests/test_parity.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import lsa_configs, random_batch, random_params, seeds

pytest.importorskip("numba", reason="the numba backend needs the numba extra: pip install 'iclgd[numba]'")

import iclgd  # noqa: E402
from iclgd.backends import numba_backend  # noqa: E402
from iclgd.backends.training import batch_rng  # noqa: E402
from iclgd.checks import relative_error  # noqa: E402
from iclgd.config import run_config_from_dict  # noqa: E402
from iclgd.train import train  # noqa: E402

oracle = iclgd.get_backend("numpy")
numba = iclgd.get_backend("numba")


@settings(max_examples=20, deadline=None)
@given(lsa_configs(max_layers=2), seeds, st.integers(1, 40))
def test_fused_sampling_draws_the_tasks_of_task_sample(drawn, seed, batch_size):
    cfg, n_context = drawn
    params = random_params(cfg, seed, 0.4)
    task = iclgd.LinearRegressionTask(d=cfg.d, n_context=n_context, x_scale=0.7, w_scale=1.3)
    fused = numba.sample_loss_and_grad(cfg, task, params, batch_size, batch_rng(seed, 3))
    plain = oracle.loss_and_grad(cfg, params, task.sample(batch_size, batch_rng(seed, 3)))
    assert abs(fused[0] - plain[0]) <= 1e-9 * max(1.0, plain[0])
    assert relative_error(fused[1], plain[1]) <= 1e-9


def test_results_do_not_depend_on_the_number_of_threads():
    cfg = iclgd.LSAConfig(d=5, n_layers=2, n_heads=2)
    params = random_params(cfg, 0, 0.4)
    batch = random_batch(5, 7, 100, 0)
    before = numba_backend.numba.get_num_threads()
    try:
        numba_backend.set_threads(1)
        one = numba.loss_and_grad(cfg, params, batch)
        numba_backend.set_threads(before)
        many = numba.loss_and_grad(cfg, params, batch)
    finally:
        numba_backend.set_threads(before)
    assert one[0] == many[0]
    assert all(np.array_equal(one[1][k], many[1][k]) for k in one[1])


@pytest.mark.parametrize("model", [{"n_layers": 1}, {"n_layers": 2, "n_heads": 2, "tied": True}])
def test_fifty_training_steps_end_where_the_oracle_ends(tmp_path, model):
    def config(backend):
        return run_config_from_dict({"task": {"d": 4, "n_context": 6}, "model": model,
                                     "train": {"steps": 50, "batch_size": 64, "lr": 0.01, "seed": 7,
                                               "checkpoint_every": 25, "backend": backend, "init_scale": 0.5}})
    ours = train(tmp_path / "numba", config("numba"))
    truth = train(tmp_path / "numpy", config("numpy"))
    assert relative_error(ours.params, truth.params) <= 1e-8


def test_a_numpy_run_resumes_on_numba_and_vice_versa(tmp_path):
    def config(backend, steps):
        return run_config_from_dict({"task": {"d": 3, "n_context": 5}, "train": {
            "steps": steps, "batch_size": 32, "lr": 0.01, "checkpoint_every": 10, "backend": backend, "init_scale": 0.5}})
    truth = train(tmp_path / "numpy", config("numpy", 40))
    for first, second in (("numpy", "numba"), ("numba", "numpy")):
        run = tmp_path / f"{first}-{second}"
        train(run, config(first, 40))
        for step, path in iclgd.runio.list_checkpoints(run):
            if step > 20:
                path.unlink()
        resumed = train(run, config(second, 40))
        assert resumed.step == 40
        assert relative_error(resumed.params, truth.params) <= 1e-8
