"""iclgd.scoring: named predictors scored on the same tasks (losses, paired differences, alignment,
read-outs after each layer) against values worked by hand, and a run's curve over its checkpoints
against the run's own log and final state."""
import json
from fractions import Fraction
from math import sqrt

import numpy as np
import pytest
from runs import small_config

import iclgd
from iclgd.scoring import Scores, checkpoint_curve
from iclgd.train import train

TARGETS = np.array([1.0, 2.0, 3.0, 4.0])
# a misses the last task by 2: half squared errors (0, 0, 0, 2); b misses the first by 1: (0.5, 0, 0, 0)
PREDICTIONS = {"a": np.array([1.0, 2.0, 3.0, 6.0]), "b": np.array([2.0, 2.0, 3.0, 4.0])}


def test_each_predictor_is_scored_by_its_per_task_half_squared_errors():
    scores = Scores(TARGETS, PREDICTIONS)
    assert np.array_equal(scores.losses["a"], [0.0, 0.0, 0.0, 2.0]) and np.array_equal(scores.losses["b"], [0.5, 0.0, 0.0, 0.0])
    # mean 1/2; sample variance ((3 * (1/2)^2 + (3/2)^2) / 3 = 1, so the standard error is 1 / sqrt(4)
    assert (scores.loss("a").mean, scores.loss("a").stderr) == pytest.approx((0.5, 0.5), rel=1e-15)
    assert scores.loss("b").mean == 0.125


def test_two_predictors_are_compared_on_the_same_tasks():
    scores = Scores(TARGETS, PREDICTIONS)
    # per-task differences a - b: (-1/2, 0, 0, 2), mean 3/8, squared deviations sum to 59/16 over 3 degrees of freedom
    paired = scores.paired("a", "b")
    assert paired.mean == 0.375
    assert paired.stderr == pytest.approx(sqrt(Fraction(59, 48)) / 2, rel=1e-14)
    assert scores.paired("b", "a").mean == -0.375


def test_the_rms_error_is_the_root_of_the_mean_squared_error():
    assert Scores(TARGETS, PREDICTIONS).rms_error("a") == 1.0  # sqrt((0 + 0 + 0 + 4) / 4)


def test_alignment_is_the_papers_three_metrics_between_two_predictors():
    sensitivities = {"a": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]),
                     "b": np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0], [0.0, 3.0]])}
    alignment = Scores(TARGETS, PREDICTIONS, sensitivities=sensitivities).alignment("a", "b")
    assert alignment["preds_diff"].mean == 0.75  # |a - b| = (1, 0, 0, 2)
    assert alignment["model_cos"].mean == pytest.approx(0.25, rel=1e-15)  # cosines (1, 1, -1, 0)
    assert alignment["model_diff"].mean == pytest.approx((0 + 1 + 2 * sqrt(2) + sqrt(13)) / 4, rel=1e-15)


def test_the_layer_losses_are_the_losses_of_the_predictions_read_out_after_each_layer():
    readouts = {"a": [np.zeros(4), PREDICTIONS["a"]]}
    layers = Scores(TARGETS, PREDICTIONS, readouts=readouts).layer_losses("a")
    assert [entry.mean for entry in layers] == [3.75, 0.5]  # predicting 0: (1 + 4 + 9 + 16) / 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 6-step run with checkpoints at 0, 2, 4, 6 and a loss logged every step, and validation tasks."""
    run_dir = tmp_path_factory.mktemp("curve") / "run"
    config = small_config(steps=6, checkpoint_every=2, log_every=1, batch_size=8)
    state = train(run_dir, config, quiet=True)
    batch = iclgd.LinearRegressionTask(d=3, n_context=5).sample(50, seed=9)
    return run_dir, config, state, batch


def test_the_curve_has_a_point_per_checkpoint_and_ends_at_the_final_parameters_loss(run):
    run_dir, config, state, batch = run
    backend = iclgd.get_backend("numpy")
    curve = checkpoint_curve(backend, config.model, run_dir, batch)
    assert [point["step"] for point in curve] == [0, 2, 4, 6]
    final = float(np.mean(0.5 * (backend.predict(config.model, state.params, batch.tokens) - batch.targets) ** 2))
    assert curve[-1]["val_loss"] == final


def test_the_training_loss_of_a_point_is_the_mean_logged_since_the_previous_checkpoint(run):
    run_dir, config, _, batch = run
    logged = {row["step"]: row["loss"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    curve = checkpoint_curve(iclgd.get_backend("numpy"), config.model, run_dir, batch)
    expected = [logged[0], np.mean([logged[0], logged[1]]), np.mean([logged[2], logged[3]]), np.mean([logged[4], logged[5]])]
    assert [point["train_loss"] for point in curve] == pytest.approx(expected, rel=1e-15)


def test_a_window_with_no_logged_loss_has_none(tmp_path):
    config = small_config(steps=6, checkpoint_every=2, log_every=3, batch_size=8)  # losses logged at steps 0 and 3
    train(tmp_path / "run", config, quiet=True)
    logged = {row["step"]: row["loss"] for row in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())}
    batch = iclgd.LinearRegressionTask(d=3, n_context=5).sample(10, seed=1)
    curve = checkpoint_curve(iclgd.get_backend("numpy"), config.model, tmp_path / "run", batch)
    assert [point["train_loss"] for point in curve] == [logged[0], logged[0], logged[3], None]
