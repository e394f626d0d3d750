"""`iclgd reproduce sine` (iclgd.experiments.sine), run short (the quick setting): results.json,
report.md and the figures with the claims table; a rerun resumes without retraining; MLP + GD's
fixed layer is one GD step on the embedded context and stays fixed while its embedding trains.
The quick run trains for seconds: these tests check the pipeline, not the paper's claims."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

from iclgd.experiments import sine
from iclgd.experiments.sine import SineSetting
from iclgd.models.stack import gelu, param_shapes

QUICK_SECONDS = 120  # generous: seconds on an idle laptop, the bound allows a machine shared several ways


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("sine")
    started = time.perf_counter()
    results = sine.run(out, SineSetting.quick(), quiet=True)
    return out, results, time.perf_counter() - started


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("results.json", "report.md") and p.suffix != ".png"}


def test_the_quick_run_finishes_in_seconds_and_passes_its_smoke_checks(quick_out):
    out, results, seconds = quick_out
    assert seconds < QUICK_SECONDS
    assert results["setting"]["smoke"] is True and results["setting"]["backend"] == "numpy"
    assert results["smoke_checks"] and all(row["holds"] for row in results["smoke_checks"])
    assert sine.exit_code(results) == 0


def test_the_quick_run_writes_results_report_and_figures(quick_out):
    out, results, _ = quick_out
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    report = (out / "report.md").read_text()
    for words in ("SMOKE RUN (--quick)", "| paper's statement |", "| smoke-run check |", "## Over training", "## A few tasks",
                  "perfectly correlated", 'draws = "authors"', "## What differs from the authors"):
        assert words in report, words
    for run in ("model", "mlp_gd"):
        assert (out / run / "config.json").is_file() and (out / run / "history.json").is_file()
    if sine.plots.matplotlib_available():
        assert results["figures"] == list(sine.FIGURES.values())
        for name in results["figures"]:
            assert (out / name).read_bytes().startswith(b"\x89PNG")
            assert f"![{name}]({name})" in report


def test_every_claim_and_check_row_is_well_formed(quick_out):
    _, results, _ = quick_out
    for rows in (results["verdicts"], results["smoke_checks"]):
        for row in rows:
            assert set(row) == {"claim", "ours", "criterion", "holds"}
            assert all(isinstance(row[key], str) and row[key] for key in ("claim", "ours", "criterion"))
            assert isinstance(row["holds"], bool)
    assert len(results["verdicts"]) == 4
    table = sine.table(results)
    assert table.count("| yes |") + table.count("| NO |") == len(results["verdicts"]) + len(results["smoke_checks"])


def test_the_measures_are_estimates_and_the_final_one_is_the_last_evaluation(quick_out):
    _, results, _ = quick_out
    setting = results["setting"]
    model_rows = results["over_training"]["model"]
    assert [row["step"] for row in model_rows] == list(range(0, setting["model_steps"] + 1, setting["checkpoint_every"]))
    assert [row["step"] for row in results["over_training"]["mlp_gd"]] == list(range(0, setting["mlp_gd_steps"] + 1, setting["checkpoint_every"]))
    for key in ("loss", "mlp_gd_loss", "minus_mlp_gd", "preds_diff", "partial_cosine"):
        entry = results["final"][key]
        assert math.isfinite(entry["mean"]) and math.isfinite(entry["stderr"]) and entry["stderr"] > 0
        assert entry["mean"] == pytest.approx(model_rows[-1][key]["mean"], rel=1e-12, abs=1e-15)
    final = results["final"]
    assert final["minus_mlp_gd"]["mean"] == pytest.approx(final["loss"]["mean"] - final["mlp_gd_loss"]["mean"], rel=1e-9)
    assert -1.0 <= final["partial_cosine"]["mean"] <= 1.0
    # the MLP+GD run's last evaluation is the loss of the parameters the model is compared with
    assert results["over_training"]["mlp_gd"][-1]["loss"]["mean"] == pytest.approx(final["mlp_gd_loss"]["mean"], rel=1e-12)


def test_a_rerun_resumes_without_retraining(quick_out):
    out, results, _ = quick_out
    before = _mtimes(out)
    assert any(p.suffix == ".npz" for p in before)
    again = sine.run(out, SineSetting.quick(), quiet=True)
    assert _mtimes(out) == before
    assert again["final"] == results["final"] and again["over_training"] == results["over_training"]
    assert again["train_seconds"] == results["train_seconds"]  # the first invocation's, kept in timing.json


def test_mlp_gd_keeps_its_gd_layer_and_trains_its_embedding(quick_out):
    out, _, _ = quick_out
    setting = SineSetting.quick()
    start = sine.initial_params(setting, "mlp_gd")
    final, history, _ = sine.train_run(out, setting, "mlp_gd", None, quiet=True)  # resumes: the finished run's params
    assert len(history["loss"]) == setting.mlp_gd_steps
    fixed = sine.gd_layer_params(setting.model_config())
    for name, value in fixed.items():
        np.testing.assert_array_equal(final[name], value)
    for name in sine.embedding_names(setting.model_config()):
        assert not np.array_equal(final[name], start[name]), name


def test_the_jax_engine_also_keeps_the_gd_layer_fixed(tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    setting = SineSetting.quick(backend="jax", dtype="float32", mlp_gd_steps=5, checkpoint_every=5)
    final, _, _ = sine.train_run(tmp_path, setting, "mlp_gd", None, quiet=True)
    start = sine.initial_params(setting, "mlp_gd")
    for name in param_shapes(setting.model_config()):
        same = np.array_equal(final[name], start[name])
        assert same == name.startswith("layer0."), name


def _embedded(params: dict, tokens: np.ndarray) -> np.ndarray:
    """e = E + gelu(E W_in + b_in) W_out + b_out, E = X W_embed, written out here (float64)."""
    e = tokens @ params["embed.w"]
    return e + gelu(e @ params["embed.mlp.w_in"] + params["embed.mlp.b_in"]) @ params["embed.mlp.w_out"] + params["embed.mlp.b_out"]


@settings(max_examples=15)
@given(seeds, st.integers(1, 12), st.integers(1, 5), st.floats(0.05, 2.0), st.floats(0.01, 1.0))
def test_the_gd_layer_predicts_one_gd_step_on_the_embedded_context(seed, n_context, batch_size, std, gd_lr):
    from iclgd.backends import numpy_stack

    cfg = sine.stack_config("float64")
    rng = np.random.default_rng(seed)
    params = {name: std * rng.standard_normal(shape) for name, shape in param_shapes(cfg).items()}
    params |= sine.gd_layer_params(cfg, gd_lr, n_context)
    tokens = rng.uniform(-5, 5, size=(batch_size, n_context + 1, 2))
    tokens[:, -1, 1] = 0.0
    e = _embedded(params, tokens)
    expected = np.array([  # (gd_lr / N) sum_i e_i[-1] <e_i[:-1], e_q[:-1]> - e_q[-1], task by task
        (gd_lr / n_context) * sum(e[b, i, -1] * np.dot(e[b, i, :-1], e[b, -1, :-1]) for i in range(n_context)) - e[b, -1, -1]
        for b in range(batch_size)])
    predicted = numpy_stack.predict(cfg, params, tokens)
    scale = 1.0 + np.max(np.abs(expected))
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(sine.gd_layer_formula(cfg, params, tokens, gd_lr), expected, rtol=0, atol=1e-10 * scale)


def test_the_gd_layer_with_the_authors_numbers_is_0_01_times_the_sum():
    cfg = sine.stack_config("float64")
    layer = sine.gd_layer_params(cfg)
    c = cfg.width
    np.testing.assert_array_equal(layer["layer0.w_q"][0], np.diag([1.0] * (c - 1) + [0.0]))
    np.testing.assert_array_equal(layer["layer0.w_k"][0], layer["layer0.w_q"][0])
    assert layer["layer0.w_v"][0][-1, -1] == -1.0 and np.count_nonzero(layer["layer0.w_v"]) == 1
    assert layer["layer0.w_o"][0][-1, -1] == pytest.approx(0.01) and np.count_nonzero(layer["layer0.w_o"]) == 1


def test_the_partial_cosine_is_the_mean_sign_agreement():
    a = np.array([1.0, -2.0, 3.0, -0.5])
    b = np.array([0.1, 4.0, 2.0, -1.0])
    estimate = sine.partial_cosine(a, b)
    assert estimate.mean == pytest.approx(0.5)  # signs agree, disagree, agree, agree
    assert estimate.stderr == pytest.approx(np.std([1, -1, 1, 1], ddof=1) / 2)


def test_the_laptop_setting_is_the_documented_one():
    laptop = SineSetting()
    assert (laptop.draws, laptop.model_steps, laptop.mlp_gd_steps, laptop.batch_size) == ("authors", 8000, 8000, 512)
    assert (laptop.model_lr, laptop.mlp_gd_lr, laptop.dtype, laptop.eval_tasks, laptop.smoke) == (1e-3, 1e-3, "float32", 2048, False)
    assert laptop.backend in sine.ENGINES and laptop.task().n_context == 10


@pytest.mark.parametrize("changes, words", [
    (dict(draws="correlated"), "draws"),
    (dict(backend="numba"), "backend"),
    (dict(model_steps=0), "model_steps"),
    (dict(mlp_gd_steps=1.5), "mlp_gd_steps"),
    (dict(batch_size=-1), "batch_size"),
    (dict(model_lr=0.0), "model_lr"),
    (dict(mlp_gd_lr=float("nan")), "mlp_gd_lr"),
    (dict(seed=-1), "seed"),
    (dict(eval_tasks=1), "eval_tasks"),
    (dict(checkpoint_every=0), "checkpoint_every"),
    (dict(dtype="float16"), "dtype"),
])
def test_bad_settings_are_value_errors_naming_the_field(changes, words):
    with pytest.raises(ValueError, match=words):
        SineSetting(**changes)
