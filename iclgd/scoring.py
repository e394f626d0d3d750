r"""Named predictors scored on the same tasks, and a training run scored at its checkpoints.

**Scores.**  Predictors a, b, ... predict ``yhat_a(b)`` on the same tasks b = 1..B with targets
``y(b)``.  Each is scored by its per-task half squared errors ``l_a(b) = (yhat_a(b) - y(b))^2 / 2``,
summarised as the mean (the half-MSE) with its standard error over tasks, and two predictors are
compared *paired*: ``mean_b (l_a(b) - l_c(b))`` with the standard error of those per-task
differences, which is far smaller than either loss's when the two err alike; and by the paper's
alignment metrics (preds diff, model cos, model diff of the sensitivities, iclgd.metrics).  A
multi-layer predictor may also be scored by the prediction read out after each of its layers.

**A run's curve.**  At every checkpoint of a run (iclgd.train), in step order s_0 < s_1 < ...: its
step, the half-MSE of its parameters on a fixed batch of validation tasks, and the training loss
averaged over the losses logged in metrics.jsonl at the steps s with ``s_{j-1} <= s < s_j``
(``s_{-1} = 0``; each loss on that step's own fresh batch).  A checkpoint at step 0 gets the loss
logged at step 0, the initial weights' loss on the first batch; a window with no logged loss, None.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from iclgd import metrics
from iclgd.runio import list_checkpoints, read_jsonl
from iclgd.train import load_checkpoint


@dataclass(frozen=True)
class Scores:
    """Named predictors on the same tasks (module doc): their predictions (B,) of ``targets`` (B,),
    and where given their sensitivities d yhat / d x_q (B, d) and the predictions read out after
    each of their layers, [(B,), ...]."""

    targets: np.ndarray
    predictions: dict[str, np.ndarray]
    sensitivities: dict[str, np.ndarray] = field(default_factory=dict)
    readouts: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @cached_property
    def losses(self) -> dict[str, np.ndarray]:
        """Per-task half squared errors 0.5 (yhat - y)^2 (B,) of every predictor."""
        return {name: metrics.half_squared_errors(p, self.targets) for name, p in self.predictions.items()}

    def loss(self, name: str) -> metrics.Estimate:
        """The half-MSE of ``name`` with its standard error over tasks."""
        return metrics.estimate(self.losses[name])

    def paired(self, name: str, other: str) -> metrics.Estimate:
        """mean_b (l_name(b) - l_other(b)) with its standard error."""
        return metrics.paired_difference(self.losses[name], self.losses[other])

    def rms_error(self, name: str) -> float:
        """sqrt(mean_b (yhat(b) - y(b))^2) = sqrt(2 half-MSE): the typical size of ``name``'s error."""
        return float(np.sqrt(2 * self.losses[name].mean()))

    def alignment(self, name: str, other: str) -> dict[str, metrics.Estimate]:
        """The paper's preds diff, model cos and model diff of ``name`` against ``other``
        (iclgd.metrics.alignment; both need sensitivities)."""
        return metrics.alignment(self.predictions[name], self.sensitivities[name], self.predictions[other], self.sensitivities[other])

    def layer_losses(self, name: str) -> list[metrics.Estimate]:
        """The half-MSE of the prediction read out after each layer of ``name``."""
        return [metrics.estimate(metrics.half_squared_errors(r, self.targets)) for r in self.readouts[name]]


def checkpoint_curve(backend, cfg, run_dir: Path, batch) -> list[dict]:
    """``{"step", "val_loss", "train_loss"}`` at every checkpoint of the run in ``run_dir``, in step
    order (module doc): ``val_loss`` the half-MSE on ``batch`` of the checkpoint's parameters
    (loaded in ``cfg.dtype``, predicted by ``backend``), ``train_loss`` the mean logged training
    loss since the previous checkpoint, or None."""
    log, curve, previous = read_jsonl(Path(run_dir) / "metrics.jsonl"), [], 0
    for step, path in list_checkpoints(run_dir):
        params = load_checkpoint(path, cfg.dtype).params
        val_loss = float(np.mean(metrics.half_squared_errors(backend.predict(cfg, params, batch.tokens), batch.targets)))
        window = [r["loss"] for r in log if (r["step"] == 0 if step == 0 else previous <= r["step"] < step)]
        curve.append({"step": step, "val_loss": val_loss, "train_loss": float(np.mean(window)) if window else None})
        previous = step
    return curve
