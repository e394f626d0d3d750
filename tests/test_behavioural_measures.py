"""The behavioural measures a transformer run writes at every checkpoint (iclgd.train.evaluation):
prediction norms, layer-norm weight norms, and the out-of-distribution sets with inputs scaled
by 3, 5 and 10."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from iclgd import baselines
from iclgd.backends import get_backend
from iclgd.backends.training import initial_state
from iclgd.config import run_config_from_dict
from iclgd.train import train
from iclgd.train.evaluation import OOD_SCALES, CheckpointEvaluator, ood_name, validation_sets
from tests.test_transformer_training import TINY, tiny_config

OOD = [ood_name(scale) for scale in OOD_SCALES]
TINY_LN = ["block0.ln1.weight", "block0.ln1.bias", "block0.ln2.weight", "block0.ln2.bias",
           "unembed.ln.weight", "unembed.ln.bias"]


def _evaluator(config=None):
    config = config or tiny_config()
    return CheckpointEvaluator(get_backend("numpy"), config), initial_state(config)


def _perturbed(params, seed=1):
    """Params whose LayerNorm weights and biases are not their initial ones (ones and zeros)."""
    rng = np.random.default_rng(seed)
    return {name: value + 0.3 * rng.standard_normal(np.shape(value)) for name, value in params.items()}


def test_a_tiny_run_writes_the_new_measures_at_every_checkpoint(tmp_path):
    config = tiny_config(steps=10, checkpoint_every=5)
    train(tmp_path, config)
    rows = [json.loads(line) for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 5, 10]
    for row in rows:
        for name in ("pretraining", "true", *OOD):
            assert row[name]["prediction_norm"] > 0
            assert len(row[name]["prediction_norm_per_position"]) == 4
        for name in OOD:
            assert {"mse", "mse_per_position", "icl_score", "delta_ridge"} <= set(row[name])
            assert len(row[name]["mse_per_position"]) == 4
        assert sorted(row["layer_norm_weight_norms"]) == sorted(TINY_LN)
    found = json.loads((tmp_path / "baselines.json").read_text())
    for name in OOD:
        assert len(found["true"][f"ridge_{name}"]) == 4


def test_prediction_norm_is_the_rms_of_the_backends_predictions():
    evaluator, state = _evaluator()
    params = _perturbed(state.params)
    row = evaluator(SimpleNamespace(params=params))
    for name in ("pretraining", "true", "ood_x10"):
        direct = np.asarray(get_backend("numpy").predict(evaluator.config.model, params, evaluator.tokens[name]))
        assert row[name]["prediction_norm"] == pytest.approx(np.sqrt(np.mean(direct**2)), rel=1e-12)
        np.testing.assert_allclose(row[name]["prediction_norm_per_position"], np.sqrt(np.mean(direct**2, axis=0)), rtol=1e-12)


def test_layer_norm_norms_are_the_l2_norms_of_every_layer_norm_weight_and_bias():
    evaluator, state = _evaluator()
    params = _perturbed(state.params)
    norms = evaluator(SimpleNamespace(params=params))["layer_norm_weight_norms"]
    assert sorted(norms) == sorted(TINY_LN)
    for name, value in norms.items():
        assert value == pytest.approx(np.linalg.norm(params[name]), rel=1e-14)


def test_a_model_without_layer_norm_has_no_layer_norm_norms():
    config = run_config_from_dict({**TINY, "model": {**TINY["model"], "layer_norm": False},
                                   "train": {"steps": 2, "batch_size": 8, "eval_size": 16}})
    evaluator, state = _evaluator(config)
    assert evaluator(state)["layer_norm_weight_norms"] == {}


def test_a_model_that_predicts_zero_has_prediction_norm_zero_and_ood_mse_the_mean_square_label():
    evaluator, state = _evaluator()
    params = dict(state.params)
    params["unembed.w"] = np.zeros_like(params["unembed.w"])
    params["unembed.b"] = np.zeros_like(params["unembed.b"])
    row = evaluator(SimpleNamespace(params=params))
    for name in ("pretraining", "true", *OOD):
        assert row[name]["prediction_norm"] == 0.0
        assert row[name]["mse"] == pytest.approx(np.mean(evaluator.ood.get(name, evaluator.sets.get(name)).ys ** 2), rel=1e-12)
    # scaling x by s scales the signal w . x by s: the zero predictor's OOD loss grows about as s^2
    assert row["ood_x10"]["mse"] > 50 * row["true"]["mse"]


def test_ood_sets_are_the_true_sets_sequences_with_inputs_exactly_times_the_scale():
    config = tiny_config()
    evaluator, _ = _evaluator(config)
    true = validation_sets(config.task, config.eval_size)["true"]
    sigma = np.sqrt(config.task.noise_variance)
    for scale in OOD_SCALES:
        scaled = evaluator.ood[ood_name(scale)]
        np.testing.assert_array_equal(scaled.xs, true.xs * scale)
        np.testing.assert_array_equal(scaled.weights, true.weights)
        noise = scaled.ys - np.einsum("bkd,bd->bk", scaled.xs, scaled.weights)
        np.testing.assert_allclose(noise, true.ys - np.einsum("bkd,bd->bk", true.xs, true.weights), atol=1e-12)
        assert 0.5 * sigma < noise.std() < 2 * sigma


def test_baselines_json_holds_the_ridge_loss_per_position_on_each_ood_set():
    evaluator, _ = _evaluator()
    losses = evaluator.baseline_losses()
    assert set(losses) == {"pretraining", "true"}
    for name in OOD:
        scaled = evaluator.ood[name]
        expected = np.mean((baselines.ridge(scaled, evaluator.config.task.noise_variance) - scaled.ys) ** 2, axis=0)
        np.testing.assert_allclose(losses["true"][f"ridge_{name}"], expected, rtol=1e-12)


def test_ood_delta_ridge_is_measured_against_ridge_on_the_scaled_inputs():
    evaluator, state = _evaluator()
    params = _perturbed(state.params)
    row = evaluator(SimpleNamespace(params=params))
    scaled = evaluator.ood["ood_x5"]
    predictions = np.asarray(get_backend("numpy").predict(evaluator.config.model, params, evaluator.tokens["ood_x5"]))
    reference = baselines.ridge(scaled, evaluator.config.task.noise_variance)
    assert row["ood_x5"]["delta_ridge"] == pytest.approx(np.mean((predictions - reference) ** 2), rel=1e-12)
