r"""What a transformer run measures at every checkpoint, on a fixed validation set.

Two validation sets of ``RunConfig.eval_size`` sequences each, drawn once from streams that
depend on the task alone (the same sets for every training seed, so seeds are compared on the
same sequences): the pretraining distribution (the task as trained, a finite pool of M tasks or
the Gaussian prior) and the "true" distribution (the Gaussian prior), as the paper evaluates.
For each set and checkpoint, with yhat (B, K) the model's predictions:

    mse_per_position[k]  = mean_b (yhat_bk - y_bk)^2                     (K,)
    mse                  = mean_k mse_per_position[k]                    (the training loss)
    icl_score            = mse_per_position[K] - mse_per_position[1]     (< 0: later positions better)
    delta_ridge          = mean_{b,k} (yhat_bk - ridge_bk)^2             distance to the Bayes predictor of the Gaussian prior
    delta_dmmse          = mean_{b,k} (yhat_bk - dmmse_bk)^2             ... of the finite pool (finite M only)

and ``param_norm`` = sqrt(sum of every parameter squared).  The baselines' own MSE per position
on the same sets go to ``baselines.json`` once.
"""
from __future__ import annotations

import numpy as np

from iclgd import baselines
from iclgd.models import TransformerConfig
from iclgd.streams import purpose_rng

#: The seed of the validation streams (fixed: the sets depend on the task alone).
VALIDATION_SEED = 0


def validation_sets(task, size: int) -> dict:
    """{"pretraining": Examples, "true": Examples} of ``size`` sequences each (see the module docstring)."""
    return {
        "pretraining": task.sample_examples(size, purpose_rng(VALIDATION_SEED, "validation/pretraining")),
        "true": task.true_distribution().sample_examples(size, purpose_rng(VALIDATION_SEED, "validation/true")),
    }


def baseline_predictions(task, examples) -> dict[str, np.ndarray]:
    """(B, K) predictions of the Bayes baselines on ``examples``: ridge always, dMMSE for a finite pool."""
    predictions = {"ridge": baselines.ridge(examples, task.noise_variance)}
    if task.n_tasks is not None:
        predictions["dmmse"] = baselines.dmmse(examples, task.pool(), task.noise_variance)
    return predictions


def _mse_per_position(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.mean((np.asarray(predictions, dtype=np.float64) - targets) ** 2, axis=0)


class CheckpointEvaluator:
    """``evaluator(state)`` -> the row of measures above for ``state.params`` (a JSON-able dict)."""

    def __init__(self, backend, config):
        from iclgd.tokens.interleaved import encode

        self.backend, self.config = backend, config
        self.sets = validation_sets(config.task, config.eval_size)
        self.tokens = {name: encode(examples, config.model.dtype).tokens for name, examples in self.sets.items()}
        self.baselines = {name: baseline_predictions(config.task, examples) for name, examples in self.sets.items()}

    def baseline_losses(self) -> dict:
        """{set: {baseline: MSE per position (list of K)}} on the validation sets."""
        return {
            name: {baseline: _mse_per_position(predictions, self.sets[name].ys).tolist() for baseline, predictions in found.items()}
            for name, found in self.baselines.items()
        }

    def _predict(self, params: dict, tokens: np.ndarray) -> np.ndarray:
        """(B, K) predictions in chunks of the run's batch size (a size whose pass the config was
        checked to fit in memory), float64."""
        step = self.config.train.batch_size
        parts = [self.backend.predict(self.config.model, params, tokens[i:i + step]) for i in range(0, len(tokens), step)]
        return np.concatenate([np.asarray(part, dtype=np.float64) for part in parts])

    def __call__(self, state) -> dict:
        row = {"param_norm": float(np.sqrt(sum(float(np.sum(np.square(p, dtype=np.float64))) for p in state.params.values())))}
        for name, examples in self.sets.items():
            predictions = self._predict(state.params, self.tokens[name])
            per_position = _mse_per_position(predictions, examples.ys)
            measures = {
                "mse": float(per_position.mean()),
                "mse_per_position": per_position.tolist(),
                "icl_score": float(per_position[-1] - per_position[0]),
            }
            for baseline, reference in self.baselines[name].items():
                measures[f"delta_{baseline}"] = float(np.mean((predictions - reference) ** 2))
            row[name] = measures
        return row


def checkpoint_evaluator(backend, config):
    """The evaluator a run calls at every checkpoint: a CheckpointEvaluator for a transformer run
    (the run directory writes its ``baseline_losses`` to ``baselines.json``), None for the other families."""
    if not isinstance(config.model, TransformerConfig):
        return None
    return CheckpointEvaluator(backend, config)

