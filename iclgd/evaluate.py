r"""Evaluating a trained model against gradient descent on the same tasks.

Seeds: validation and line-search tasks come from streams keyed by (seed, purpose)
(``iclgd.streams.purpose_rng``, here called ``stream``), so they never overlap with each other
or with the training stream.

* GD's step size is tuned as the paper did, by a line search on training-distribution tasks
  (not the validation tasks): for one step the sample loss is a parabola in eta and its
  minimiser is exact, ``eta_hat = sum_b p_b y_b / sum_b p_b^2`` with p_b the prediction per unit
  eta; for K steps a grid over [0, 3 eta_hat_1] refined by golden-section search.
* Input-scale shift (OOD): the same tasks with every input (context and query) drawn from
  U(-alpha a, alpha a), i.e. the same seed with x_scale multiplied by alpha.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from iclgd import baselines, metrics
from iclgd._checks import positive_int
from iclgd.interpolate import interpolate
from iclgd.models import LSAConfig
from iclgd.streams import purpose_rng as stream  # (seed, purpose) -> an independent generator
from iclgd.tasks import Batch, LinearRegressionTask

DEFAULT_ALPHAS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
DEFAULT_INTERPOLATION = (0.0, 0.25, 0.5, 0.75, 1.0)


def validation_batch(task: LinearRegressionTask, n_tasks: int, seed: int) -> Batch:
    return task.sample(n_tasks, stream(seed, "validation"))


def gd_loss(tokens: np.ndarray, targets: np.ndarray, eta: float, steps: int) -> float:
    return float(np.mean(metrics.half_squared_errors(baselines.gd_predict(tokens, eta, steps), targets)))


def tune_gd_eta(batch: Batch, steps: int = 1) -> float:
    """The step size minimising GD's half-MSE on ``batch`` (see module doc)."""
    steps = positive_int("steps", steps)
    x, y, x_query = baselines.split_tokens(batch.tokens)
    per_unit_eta = np.einsum("bn,bnd,bd->b", y, x, x_query) / x.shape[1]
    eta_one_step = float(np.dot(per_unit_eta, batch.targets) / np.dot(per_unit_eta, per_unit_eta))
    if steps == 1:
        return eta_one_step
    grid = np.linspace(0.0, 3.0 * eta_one_step, 61)[1:]
    losses = np.array([gd_loss(batch.tokens, batch.targets, eta, steps) for eta in grid])
    losses[~np.isfinite(losses)] = np.inf
    best = int(np.argmin(losses))
    low = grid[best - 1] if best > 0 else 0.0  # the bracket around the best grid rate
    high = grid[min(best + 1, grid.size - 1)]
    def loss(eta: float) -> float:
        return gd_loss(batch.tokens, batch.targets, eta, steps)

    # golden-section search: each iteration keeps one interior point and evaluates one new one
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(40):
        if loss_left < loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Comparison:
    """A model and GD on the same tasks: per-task losses and the alignment metrics."""

    model_loss: metrics.Estimate
    gd_loss: metrics.Estimate
    model_minus_gd: metrics.Estimate
    preds_diff: metrics.Estimate
    model_cos: metrics.Estimate
    model_diff: metrics.Estimate

    def to_dict(self) -> dict:
        return {field.name: getattr(self, field.name).to_dict() for field in dataclasses.fields(self)}


def compare_with_gd(backend, cfg: LSAConfig, params: dict, batch: Batch, eta: float, steps: int = 1) -> Comparison:
    """The model against ``steps`` GD steps with rate ``eta`` on the same tasks."""
    prediction = backend.predict(cfg, params, batch.tokens)
    sensitivity = backend.sensitivity(cfg, params, batch.tokens)
    gd_prediction = baselines.gd_predict(batch.tokens, eta, steps)
    gd_sensitivity = baselines.gd_weights(batch.tokens, eta, steps)  # d(W_K x_q)/d x_q = W_K
    model_losses = metrics.half_squared_errors(prediction, batch.targets)
    gd_losses = metrics.half_squared_errors(gd_prediction, batch.targets)
    return Comparison(
        model_loss=metrics.estimate(model_losses),
        gd_loss=metrics.estimate(gd_losses),
        model_minus_gd=metrics.paired_difference(model_losses, gd_losses),
        **metrics.alignment(prediction, sensitivity, gd_prediction, gd_sensitivity),
    )


def interpolation_sweep(backend, cfg, trained, constructed, batch: Batch, alphas=DEFAULT_INTERPOLATION) -> list[dict]:
    """Loss of the model whose weight products are (1 - alpha) trained + alpha constructed."""
    rows = []
    for alpha in alphas:
        mixed_cfg, mixed = interpolate(cfg, trained, constructed, alpha)
        losses = metrics.half_squared_errors(backend.predict(mixed_cfg, mixed, batch.tokens), batch.targets)
        rows.append({"alpha": float(alpha), "loss": metrics.estimate(losses).to_dict()})
    return rows


def input_scale_sweep(backend, cfg, params, task: LinearRegressionTask, n_tasks: int, seed: int, eta: float,
                      steps: int = 1, alphas=DEFAULT_ALPHAS) -> list[dict]:
    """Model and GD (rate tuned in distribution) on inputs drawn from U(-alpha a, alpha a)."""
    rows = []
    for alpha in alphas:
        shifted = dataclasses.replace(task, x_scale=task.x_scale * alpha)
        batch = validation_batch(shifted, n_tasks, seed)
        comparison = compare_with_gd(backend, cfg, params, batch, eta, steps)
        rows.append({"alpha": float(alpha), "model_loss": comparison.model_loss.to_dict(),
                     "gd_loss": comparison.gd_loss.to_dict(), "model_minus_gd": comparison.model_minus_gd.to_dict()})
    return rows
