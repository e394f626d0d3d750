r"""What a transformer run measures at every checkpoint, on fixed validation sets.

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
    prediction_norm_per_position[k] = sqrt(mean_b yhat_bk^2)             (K,)
    prediction_norm      = sqrt(mean_{b,k} yhat_bk^2)                    the root-mean-square prediction

(``prediction_norm`` is the RMS over all B x K predictions, not the mean of the per-position
values: prediction_norm^2 = mean_k prediction_norm_per_position[k]^2; a model that predicts 0
has 0, and then its mse is mean_{b,k} y_bk^2.)

Out of distribution, larger inputs (``OOD_SCALES`` = 3, 5, 10): for each scale s a set "ood_x{s}"
of the same ``eval_size`` sequences as the "true" set with every input multiplied by s and the
labels recomputed, x'_bk = s x_bk, y'_bk = w_b . x'_bk + eps_bk, the same task vectors w_b and
noise eps_bk.  It is drawn with ``NoisyRegressionTask.sample_examples`` from the "true" set's
own stream (``purpose_rng(VALIDATION_SEED, "validation/true")``) by the true distribution with
``x_scale`` multiplied by s: the task, input and noise streams are independent children of that
generator (``iclgd.tasks.noisy``), so the draws are the "true" set's and only the inputs are
scaled; with the paper's x_scale = 1 the inputs are exactly (bitwise) the "true" set's times s.
Each OOD set's row has mse, mse_per_position, icl_score, delta_ridge (ridge, still the Bayes
predictor of the Gaussian prior whatever the inputs' law, on the scaled inputs and labels),
prediction_norm and prediction_norm_per_position.

Over the parameters: ``param_norm`` = sqrt(sum of every parameter squared), and
``layer_norm_weight_norms`` = {name: L2 norm} of every LayerNorm weight and, separately, bias
(``block{l}.ln1.weight``, ``block{l}.ln1.bias``, ``block{l}.ln2.*``, ``unembed.ln.*``; empty when
the model has no LayerNorm), the quantities whose collapse marks the paper's later stages.

The baselines' own MSE per position on the same sets go to ``baselines.json`` once
(``CheckpointEvaluator.baseline_losses``): {"pretraining": {baseline: (K,)}, "true": {baseline:
(K,)}}, and ridge's on each OOD set under "true" as "ridge_ood_x3", "ridge_ood_x5", "ridge_ood_x10"
(the "true" sequences with scaled inputs; the file keeps its two top-level sets).

Cost: the three OOD sets add three forward passes of eval_size sequences per checkpoint to the
two of before (and three ridge fits, once per run, with the sets).  Measured on the paper's model
(51,717 parameters, D = 4, K = 8), eval_size 2048 in chunks of batch 256, on 2 shared CPU cores
(best of 3): a row took 0.10 s before and 0.25 s now with jax in float32 (+0.15 s per checkpoint,
about +28 s over the paper's 190 checkpoints), 0.49 s before and 1.18 s now with numpy in float64
(+0.7 s per checkpoint); the prediction and layer-norm norms cost well under 1 ms.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from iclgd import baselines
from iclgd.models import TransformerConfig
from iclgd.streams import purpose_rng

#: The seed of the validation streams (fixed: the sets depend on the task alone).
VALIDATION_SEED = 0

#: The input scales of the out-of-distribution sets, "ood_x3", "ood_x5", "ood_x10".
OOD_SCALES = (3, 5, 10)


def ood_name(scale) -> str:
    """The row (and set) name of inputs scaled by ``scale``: "ood_x3" for 3."""
    return f"ood_x{scale:g}"


def validation_sets(task, size: int) -> dict:
    """{"pretraining": Examples, "true": Examples} of ``size`` sequences each (see the module docstring)."""
    return {
        "pretraining": task.sample_examples(size, purpose_rng(VALIDATION_SEED, "validation/pretraining")),
        "true": task.true_distribution().sample_examples(size, purpose_rng(VALIDATION_SEED, "validation/true")),
    }


def ood_sets(task, size: int, scales=OOD_SCALES) -> dict:
    """{"ood_x{s}": Examples} for each scale s: the "true" set of ``validation_sets`` (same
    stream, tasks and noise) with its inputs scaled by s and its labels recomputed (module docstring)."""
    true = task.true_distribution()
    return {
        ood_name(scale): dataclasses.replace(true, x_scale=true.x_scale * scale).sample_examples(
            size, purpose_rng(VALIDATION_SEED, "validation/true"))
        for scale in scales
    }


def baseline_predictions(task, examples) -> dict[str, np.ndarray]:
    """(B, K) predictions of the Bayes baselines on ``examples``: ridge always, dMMSE for a finite pool."""
    predictions = {"ridge": baselines.ridge(examples, task.noise_variance)}
    if task.n_tasks is not None:
        predictions["dmmse"] = baselines.dmmse(examples, task.pool(), task.noise_variance)
    return predictions


def layer_norm_names(params: dict) -> list[str]:
    """The LayerNorm weights and biases among ``params``' names (a component ``ln``, ``ln1``, .. before
    the last, which is ``weight`` or ``bias``), in the params' order."""
    def is_layer_norm(name: str) -> bool:
        *path, last = name.split(".")
        return last in ("weight", "bias") and any(part.startswith("ln") for part in path)
    return [name for name in params if is_layer_norm(name)]


def _mse_per_position(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.mean((np.asarray(predictions, dtype=np.float64) - targets) ** 2, axis=0)


def _prediction_norms(predictions: np.ndarray) -> dict:
    """prediction_norm = sqrt(mean_{b,k} yhat^2) and prediction_norm_per_position[k] = sqrt(mean_b yhat_bk^2)."""
    squares = np.square(predictions, dtype=np.float64)
    return {"prediction_norm": float(np.sqrt(squares.mean())),
            "prediction_norm_per_position": np.sqrt(squares.mean(axis=0)).tolist()}


class CheckpointEvaluator:
    """``evaluator(state)`` -> the row of measures above for ``state.params`` (a JSON-able dict)."""

    def __init__(self, backend, config):
        from iclgd.tokens.interleaved import encode

        self.backend, self.config = backend, config
        self.sets = validation_sets(config.task, config.eval_size)
        self.ood = ood_sets(config.task, config.eval_size)
        every = {**self.sets, **self.ood}
        self.tokens = {name: encode(examples, config.model.dtype).tokens for name, examples in every.items()}
        self.baselines = {name: baseline_predictions(config.task, examples) for name, examples in self.sets.items()}
        true = config.task.true_distribution()
        self.baselines |= {name: baseline_predictions(true, examples) for name, examples in self.ood.items()}

    def baseline_losses(self) -> dict:
        """{set: {baseline: MSE per position (list of K)}} on the validation sets "pretraining" and
        "true"; the ridge loss per position on each OOD set s goes under "true" as "ridge_{s}"
        (e.g. "ridge_ood_x3"), the "true" set's sequences with scaled inputs."""
        losses = {
            name: {baseline: _mse_per_position(self.baselines[name][baseline], examples.ys).tolist()
                   for baseline in self.baselines[name]}
            for name, examples in self.sets.items()
        }
        for name, examples in self.ood.items():
            losses["true"][f"ridge_{name}"] = _mse_per_position(self.baselines[name]["ridge"], examples.ys).tolist()
        return losses

    def _predict(self, params: dict, tokens: np.ndarray) -> np.ndarray:
        """(B, K) predictions in chunks of the run's batch size (a size whose pass the config was
        checked to fit in memory), float64."""
        step = self.config.train.batch_size
        parts = [self.backend.predict(self.config.model, params, tokens[i:i + step]) for i in range(0, len(tokens), step)]
        return np.concatenate([np.asarray(part, dtype=np.float64) for part in parts])

    def _measures(self, params: dict, name: str, examples) -> dict:
        predictions = self._predict(params, self.tokens[name])
        per_position = _mse_per_position(predictions, examples.ys)
        measures = {
            "mse": float(per_position.mean()),
            "mse_per_position": per_position.tolist(),
            "icl_score": float(per_position[-1] - per_position[0]),
        }
        for baseline, reference in self.baselines[name].items():
            measures[f"delta_{baseline}"] = float(np.mean((predictions - reference) ** 2))
        return measures | _prediction_norms(predictions)

    def __call__(self, state) -> dict:
        params = state.params
        row = {"param_norm": float(np.sqrt(sum(float(np.sum(np.square(p, dtype=np.float64))) for p in params.values())))}
        for name, examples in self.sets.items():
            row[name] = self._measures(params, name, examples)
        row["layer_norm_weight_norms"] = {
            name: float(np.linalg.norm(np.asarray(params[name], dtype=np.float64))) for name in layer_norm_names(params)
        }
        for name, examples in self.ood.items():
            row[name] = self._measures(params, name, examples)
        return row


def checkpoint_evaluator(backend, config):
    """The evaluator a run calls at every checkpoint: a CheckpointEvaluator for a transformer run
    (the run directory writes its ``baseline_losses`` to ``baselines.json``), None for the other families."""
    if not isinstance(config.model, TransformerConfig):
        return None
    return CheckpointEvaluator(backend, config)
