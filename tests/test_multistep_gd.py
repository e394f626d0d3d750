"""K steps of GD with a shared, line-searched rate: the loss falls with K as Monte Carlo says.

Reference values for d = N = 10, a = 1 (issue 5): half-MSE about 0.626 at K = 2 and 0.473 at
K = 4.  Here the rate is tuned on one set of tasks and the loss measured on 10^5 others."""
import numpy as np
import pytest

import iclgd
from iclgd import baselines, metrics
from iclgd.evaluate import stream, tune_gd_eta

REFERENCE = {2: 0.626, 4: 0.473}


@pytest.fixture(scope="module")
def tasks():
    task = iclgd.LinearRegressionTask(d=10, n_context=10)
    return task.sample(20_000, stream(0, "line_search")), task.sample(100_000, stream(0, "validation"))


@pytest.mark.parametrize("steps", sorted(REFERENCE))
def test_tuned_k_step_gd_reaches_the_reference_loss(tasks, steps):
    tune, validation = tasks
    eta = tune_gd_eta(tune, steps)
    loss = metrics.estimate(metrics.half_squared_errors(baselines.gd_predict(validation.tokens, eta, steps), validation.targets))
    assert abs(loss.mean - REFERENCE[steps]) <= 3 * loss.stderr + 0.002  # the references are rounded to 3 digits


def test_more_gd_steps_give_a_lower_loss_on_the_same_tasks(tasks):
    tune, validation = tasks
    losses = [np.mean(metrics.half_squared_errors(baselines.gd_predict(validation.tokens, tune_gd_eta(tune, k), k), validation.targets))
              for k in (1, 2, 3, 4)]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
