r"""Evaluating a trained model against gradient descent on the same tasks.

Seeds: validation and line-search tasks come from streams keyed by (seed, purpose)
(``iclgd.streams.purpose_rng``, here called ``stream``), so they never overlap with each other
or with the training stream.

* GD's step size is tuned as the paper did, by a line search on training-distribution tasks
  (not the validation tasks): for one step the sample loss is a parabola in eta and its
  minimiser is exact, ``eta_hat = sum_b p_b y_b / sum_b p_b^2`` with p_b the prediction per unit
  eta; for K steps a grid over [0, 3 eta_hat_1] refined by golden-section search.
* GD++'s shared rates (eta, gamma) by a direct search on the same kind of tasks
  (``tune_gdpp_rates``): a grid, then coordinate descent by golden sections.
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


def _golden_minimum(loss, low: float, high: float, iterations: int = 40) -> float:
    """The minimiser of a unimodal ``loss`` on [low, high] by golden-section search: each
    iteration keeps one interior point and evaluates one new one (the bracket shrinks by 0.618)."""
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(iterations):
        if loss_left < loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    return 0.5 * (low + high)


def _grid_then_golden(loss, grid: np.ndarray, iterations: int = 40) -> float:
    """The best point of ``grid`` (increasing), refined by golden-section search between its
    neighbours on the grid; non-finite losses count as +inf."""
    losses = np.array([loss(value) for value in grid])
    losses[~np.isfinite(losses)] = np.inf
    best = int(np.argmin(losses))
    low = grid[best - 1] if best > 0 else grid[0]
    high = grid[min(best + 1, grid.size - 1)]
    return _golden_minimum(loss, float(low), float(high), iterations)


def _one_step_eta(batch: Batch) -> float:
    """The exact minimiser of one GD step's sample half-MSE (module doc)."""
    x, y, x_query = baselines.split_tokens(batch.tokens)
    per_unit_eta = np.einsum("bn,bnd,bd->b", y, x, x_query) / x.shape[1]
    return float(np.dot(per_unit_eta, batch.targets) / np.dot(per_unit_eta, per_unit_eta))


def tune_gd_eta(batch: Batch, steps: int = 1) -> float:
    """The step size minimising GD's half-MSE on ``batch`` (see module doc)."""
    steps = positive_int("steps", steps)
    eta_one_step = _one_step_eta(batch)
    if steps == 1:
        return eta_one_step
    grid = np.linspace(0.0, 3.0 * eta_one_step, 61)[1:]
    return _grid_then_golden(lambda eta: gd_loss(batch.tokens, batch.targets, eta, steps), np.concatenate([[0.0], grid]))


def gdpp_loss(tokens: np.ndarray, targets: np.ndarray, eta: float, gamma: float, steps: int) -> float:
    return float(np.mean(metrics.half_squared_errors(baselines.gdpp_predict(tokens, eta, gamma, steps), targets)))


def nelder_mead(loss, start, steps, tolerance: float = 1e-9, max_evaluations: int = 2000) -> np.ndarray:
    """A local minimum of ``loss`` (a function of an (n,) vector) by the Nelder-Mead simplex method
    (reflection 1, expansion 2, contraction 1/2, shrink 1/2), from the simplex of ``start`` and
    ``start + steps[i] e_i``; stops when every vertex lies within ``tolerance`` (relative to the
    steps) of the best one and their losses agree to ``tolerance`` (relative), or after
    ``max_evaluations``.  Non-finite losses count as +inf."""
    def value(point):
        result = loss(point)
        return result if np.isfinite(result) else np.inf

    start, steps = np.asarray(start, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    simplex = np.vstack([start, start + np.diag(steps)])
    losses = np.array([value(v) for v in simplex])
    evaluations = len(losses)
    while evaluations < max_evaluations:
        order = np.argsort(losses, kind="stable")
        simplex, losses = simplex[order], losses[order]
        spread = np.max(np.abs(simplex[1:] - simplex[0]) / np.abs(steps))
        if spread < tolerance and losses[-1] - losses[0] <= tolerance * max(abs(losses[0]), 1e-300):
            break
        centroid = simplex[:-1].mean(axis=0)
        reflected = centroid + (centroid - simplex[-1])
        loss_reflected = value(reflected)
        evaluations += 1
        if loss_reflected < losses[0]:
            expanded = centroid + 2.0 * (centroid - simplex[-1])
            loss_expanded = value(expanded)
            evaluations += 1
            simplex[-1], losses[-1] = (expanded, loss_expanded) if loss_expanded < loss_reflected else (reflected, loss_reflected)
        elif loss_reflected < losses[-2]:
            simplex[-1], losses[-1] = reflected, loss_reflected
        else:
            toward = reflected if loss_reflected < losses[-1] else simplex[-1]
            contracted = centroid + 0.5 * (toward - centroid)
            loss_contracted = value(contracted)
            evaluations += 1
            if loss_contracted < min(loss_reflected, losses[-1]):
                simplex[-1], losses[-1] = contracted, loss_contracted
            else:  # shrink toward the best vertex
                simplex[1:] = simplex[0] + 0.5 * (simplex[1:] - simplex[0])
                losses[1:] = [value(v) for v in simplex[1:]]
                evaluations += len(simplex) - 1
    return simplex[int(np.argmin(losses))]


def tune_gdpp_rates(batch: Batch, steps: int) -> tuple[float, float]:
    r"""The shared rates (eta, gamma) minimising K-step GD++'s half-MSE on ``batch`` (a direct
    search on training-distribution tasks, as ``tune_gd_eta`` does for GD).

    GD++ (iclgd.baselines.gdpp_predict) moves the inputs by x <- (I - gamma Sigma_hat) x with
    Sigma_hat = (1/N) sum_i x_i x_i^T, so gamma's scale is 1 / s2_hat (s2_hat the batch's mean
    x_i^2) as eta's is that of the one-step optimum eta_1.  The search: the best point of a grid
    eta in (0, 3 eta_1] x gamma in [0, 1.5 / s2_hat] (12 x 9), then ``nelder_mead`` from there
    with the grid's spacings as its first steps.  For K = 1, gamma does not enter the prediction
    (the query's label is updated from the old tokens): (eta_1, 0) exactly.

    The search is equivariant under a rescaling of the inputs x -> c x (labels c y): the rates
    become (eta, gamma) / c^2, since the grid and the steps are built from eta_1 and s2_hat."""
    steps = positive_int("steps", steps)
    eta_one_step = _one_step_eta(batch)
    if steps == 1:
        return eta_one_step, 0.0
    x, _, _ = baselines.split_tokens(batch.tokens)
    gamma_scale = 1.0 / float(np.mean(x**2))

    def loss(rates) -> float:
        return gdpp_loss(batch.tokens, batch.targets, float(rates[0]), float(rates[1]), steps)

    etas = np.linspace(0.0, 3.0 * eta_one_step, 13)[1:]
    gammas = np.linspace(0.0, 1.5 * gamma_scale, 9)
    table = np.array([[loss((eta, gamma)) for gamma in gammas] for eta in etas])
    table[~np.isfinite(table)] = np.inf
    i, j = np.unravel_index(int(np.argmin(table)), table.shape)
    best = nelder_mead(loss, (etas[i], gammas[j]), (etas[1] - etas[0], gammas[1] - gammas[0]))
    return float(best[0]), float(best[1])


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
