r"""Alignment between a trained model and gradient descent (von Oswald et al. 2023, Sec. 3).

On the same validation tasks b = 1..B:

    preds diff = mean_b |yhat_TF(b) - yhat_GD(b)|
    model cos  = mean_b cos(s_TF(b), s_GD(b)),      s(b) = d yhat(b) / d x_q   (B, d)
    model diff = mean_b ||s_TF(b) - s_GD(b)||_2

For K GD steps from W0 the prediction is W_K x_q with W_K independent of x_q, so s_GD = W_K.
Every metric comes with its standard error over tasks (std / sqrt(B)); loss comparisons are
paired: the mean of per-task differences, whose standard error is far smaller than either loss's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean over tasks and its standard error."""

    mean: float
    stderr: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __format__(self, spec: str) -> str:
        spec = spec or ".4f"
        return f"{self.mean:{spec}} ± {self.stderr:{spec}}"


def estimate(values: np.ndarray) -> Estimate:
    """Mean and standard error of per-task values."""
    values = np.asarray(values, dtype=np.float64)
    stderr = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
    return Estimate(float(values.mean()), stderr)


def half_squared_errors(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0.5 (yhat - y)^2 per task; its mean is the half-MSE loss."""
    return 0.5 * (np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)) ** 2


def cosine_per_task(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_b, b_b) per row; 0 where either vector is zero (no direction to align)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    dots = np.einsum("bd,bd->b", a, b)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)


def preds_diff(pred_a: np.ndarray, pred_b: np.ndarray) -> Estimate:
    return estimate(np.abs(np.asarray(pred_a, np.float64) - np.asarray(pred_b, np.float64)))


def model_cos(sens_a: np.ndarray, sens_b: np.ndarray) -> Estimate:
    return estimate(cosine_per_task(sens_a, sens_b))


def model_diff(sens_a: np.ndarray, sens_b: np.ndarray) -> Estimate:
    return estimate(np.linalg.norm(np.asarray(sens_a, np.float64) - np.asarray(sens_b, np.float64), axis=-1))


def alignment(pred_a, sens_a, pred_b, sens_b) -> dict[str, Estimate]:
    """The paper's three alignment metrics between models a and b on the same tasks."""
    return {
        "preds_diff": preds_diff(pred_a, pred_b),
        "model_cos": model_cos(sens_a, sens_b),
        "model_diff": model_diff(sens_a, sens_b),
    }


def paired_difference(losses_a: np.ndarray, losses_b: np.ndarray) -> Estimate:
    """mean_b (loss_a(b) - loss_b(b)) with its standard error (the two on the same tasks)."""
    return estimate(np.asarray(losses_a, np.float64) - np.asarray(losses_b, np.float64))
