"""Training on the numba backend's Philox stream (TrainConfig.sampler = "philox"): where it is
allowed, and that it trains reproducibly, resumably and independently of the thread count."""
from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from iclgd.backends import get_backend  # noqa: E402
from iclgd.backends.numba_backend import set_threads  # noqa: E402
from iclgd.backends import numba_philox  # noqa: E402
from iclgd.backends.numba_philox import philox_sampled_grad  # noqa: E402
from iclgd.backends.training import HostTrainer, initial_state  # noqa: E402
from iclgd.config import RunConfig, TrainConfig  # noqa: E402
from iclgd.models import LSAConfig  # noqa: E402
from iclgd.streams import DATA_STREAMS  # noqa: E402
from iclgd.tasks import LinearRegressionTask  # noqa: E402


def config(steps=6, n_layers=1, **task):
    task = LinearRegressionTask(d=3, n_context=5, **task)
    model = LSAConfig(d=3, n_layers=n_layers, n_heads=1, n_context=5)
    return RunConfig(task, model, TrainConfig(steps=steps, batch_size=64, lr=1e-2, backend="numba", sampler="philox"))


def trained(cfg, n_steps, state=None):
    trainer = HostTrainer(get_backend("numba"), cfg)
    state, records = trainer.advance(state or initial_state(cfg), n_steps)
    return state, records


def test_philox_is_refused_on_any_backend_but_numba():
    with pytest.raises(ValueError, match="sampler 'philox' draws batches in the numba backend's compiled code"):
        TrainConfig(backend="numpy", sampler="philox")


@pytest.mark.parametrize("task", [{"noise_std": 0.1}, {"n_distractors": 1}, {"w_scale": 2.0}, {"x_distribution": "gaussian"}])
def test_philox_is_refused_for_tasks_its_stream_does_not_draw(task):
    with pytest.raises(ValueError, match="sampler 'philox' draws noise-free tasks"):
        config(**task)


def test_the_checkpoints_name_the_philox_stream():
    assert "Philox4x32-10" in DATA_STREAMS["philox"]
    assert DATA_STREAMS["philox"] == numba_philox.STREAM  # the checkpoint's name is the module's


def test_each_step_is_the_philox_batch_of_its_step_number():
    cfg = config(n_layers=2)
    state = initial_state(cfg)
    _, records = trained(cfg, 1, state)
    loss, _ = philox_sampled_grad(cfg.model, state.params, 0, 0, 64, 5, cfg.task.x_scale)
    assert records[0].loss == loss


@pytest.mark.slow  # trains on the Philox stream (tests/test_numba_philox.py holds its gradient to the oracle by default)
def test_training_is_the_same_on_one_thread_and_on_two():
    cfg = config()
    set_threads(1)
    try:
        one, _ = trained(cfg, 4)
    finally:
        set_threads(numba.config.NUMBA_NUM_THREADS)
    two, _ = trained(cfg, 4)
    for name in one.params:
        np.testing.assert_array_equal(one.params[name], two.params[name])


@pytest.mark.slow  # trains on the Philox stream (tests/test_numba_philox.py holds its gradient to the oracle by default)
def test_three_then_three_steps_equal_six():
    cfg = config()
    straight, _ = trained(cfg, 6)
    half, _ = trained(cfg, 3)
    resumed, _ = trained(cfg, 3, half)
    for name in straight.params:
        np.testing.assert_array_equal(straight.params[name], resumed.params[name])


@pytest.mark.slow  # trains on the Philox stream (tests/test_numba_philox.py holds its gradient to the oracle by default)
def test_training_on_the_philox_stream_lowers_the_loss():
    cfg = RunConfig(LinearRegressionTask(d=3, n_context=5), LSAConfig(d=3, n_layers=1, n_heads=1, n_context=5),
                    TrainConfig(steps=300, batch_size=256, lr=1e-2, backend="numba", sampler="philox"))
    _, records = trained(cfg, 300)
    first, last = np.mean([r.loss for r in records[:20]]), np.mean([r.loss for r in records[-20:]])
    assert last < 0.7 * first
