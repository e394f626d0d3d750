"""`iclgd reproduce interleaved` (iclgd.experiments.interleaved), run short: it writes every promised
file, its rows are well formed, a rerun resumes, and its measurements are what they say.

The quick run trains far too briefly for the paper's claims; these tests check the bookkeeping
and the measuring instruments (copy metrics, GD's sensitivity), not the claims.
"""
import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

from iclgd import baselines, runio
from iclgd.experiments import interleaved
from iclgd.experiments.interleaved import InterleavedSetting
from iclgd.tasks import LinearRegressionTask
from iclgd.tokens import classic, constructed

pytest.importorskip("iclgd.train.stack_training")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("interleaved")
    setting = InterleavedSetting.quick(backend="numpy")
    started = time.perf_counter()
    results = interleaved.run(out, setting, quiet=True)
    return setting, out, results, time.perf_counter() - started


def estimates(node, where=""):
    """Every {mean, stderr} entry of a results tree, with its path."""
    if isinstance(node, dict):
        if "mean" in node and "stderr" in node:
            yield where, node
        else:
            for key, child in node.items():
                yield from estimates(child, f"{where}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from estimates(child, f"{where}[{i}]")


def random_params(setting, seed, std=0.3):
    """Non-small parameters, so that attention is far from uniform (float64)."""
    from iclgd.models.stack import param_shapes

    rng = np.random.default_rng(seed)
    return {name: std * rng.standard_normal(shape) for name, shape in param_shapes(setting.model_config("float64")).items()}


# --- the quick run ------------------------------------------------------------------------------


def test_the_quick_run_finishes_in_seconds(quick_run):
    *_, seconds = quick_run
    assert seconds < 60  # ~5 s on a shared 2-core machine


def test_the_quick_run_writes_results_report_figures_and_a_run_directory(quick_run):
    setting, out, results, _ = quick_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["figures"] == (list(interleaved.FIGURES.values()) if interleaved.plots.matplotlib_available() else [])
    for name in results["figures"]:
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    assert [step for step, _ in runio.list_checkpoints(out / "model")] == [0, 20, 40]


def test_the_report_states_the_input_scale_the_tuned_gd_rate_and_the_tables(quick_run):
    _, out, results, _ = quick_run
    report = (out / "report.md").read_text()
    assert "a = 0.5 (authors_code)" in report and "**tuned**" in report and f"eta = {results['gd_eta']:.4f}" in report
    assert interleaved.table(results) in report and interleaved.history_table(results) in report
    for name in results["figures"]:
        assert f"]({name})" in report


def test_every_number_comes_with_a_finite_standard_error(quick_run):
    _, _, results, _ = quick_run
    found = list(estimates(results))
    assert len(found) > 40
    for where, entry in found:
        assert set(entry) == {"mean", "stderr"}, where
        assert math.isfinite(entry["mean"]) and math.isfinite(entry["stderr"]) and entry["stderr"] >= 0, where


def test_the_rows_are_well_formed_and_the_quick_run_exits_on_its_smoke_checks(quick_run):
    _, _, results, _ = quick_run
    for key, rows in (("verdicts", interleaved.comparison_rows(results)), ("smoke_checks", interleaved.smoke_rows(results))):
        assert results[key] == [{"claim": c, "ours": o, "criterion": k, "holds": bool(h)} for c, o, k, h in rows]
        for row in results[key]:
            assert {type(row[name]) for name in ("claim", "ours", "criterion")} == {str} and isinstance(row["holds"], bool)
    assert len(results["verdicts"]) == 5
    assert interleaved.exit_code(results) == (0 if all(row["holds"] for row in results["smoke_checks"]) else 1)
    assert interleaved.table(results).startswith("SMOKE RUN")


def test_the_evaluations_are_at_step_0_and_every_checkpoint_and_the_last_is_the_final_one(quick_run):
    setting, _, results, _ = quick_run
    evaluations = results["evaluations"]
    assert [e["step"] for e in evaluations] == [0, 20, 40]
    last = evaluations[-1]
    assert last["loss"] == results["comparison"]["model_loss"]
    assert last["copy"] == results["copy"]
    assert last["copy_attention"] == {key: results["copy_attention"][key] for key in ("weight", "argmax_fraction")}


def test_the_attention_map_is_queries_by_keys_with_rows_summing_to_one(quick_run):
    setting, _, results, _ = quick_run
    weights = np.array(results["copy_attention"]["map"])
    assert weights.shape == (2 * setting.n_context + 1, 2 * setting.n_context)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    queries = classic.x_token_indices(setting.n_context)
    assert results["copy_attention"]["weight"]["mean"] == pytest.approx(weights[queries, queries + 1].mean(), rel=1e-12)


def test_the_gd_rate_is_tuned_on_training_tasks_in_the_mean_convention(quick_run):
    setting, _, results, _ = quick_run
    tune = setting.task().sample(setting.tune_tasks, interleaved.stream(setting.seed, "line_search"))
    assert results["gd_eta"] == interleaved.tune_gd_eta(tune)
    assert results["gd_eta_sum_form"] == pytest.approx(results["gd_eta"] / setting.n_context)
    assert results["gd_eta"] == pytest.approx(results["optimal_eta"], rel=0.05)


def test_a_rerun_on_a_finished_directory_does_not_retrain_and_repeats_every_number(quick_run):
    setting, out, results, _ = quick_run
    before = runio.load_npz(runio.list_checkpoints(out / "model")[-1][1])
    again = interleaved.run(out, setting, quiet=True)
    after = runio.load_npz(runio.list_checkpoints(out / "model")[-1][1])
    assert all(np.array_equal(before[key], after[key]) for key in before)
    assert list(estimates(again)) == list(estimates(results))


def test_a_longer_rerun_resumes_from_the_last_checkpoint(tmp_path):
    setting = InterleavedSetting.quick(backend="numpy", steps=20, checkpoint_every=10, eval_tasks=64, copy_tasks=16, tune_tasks=256)
    short = interleaved.run(tmp_path, setting, quiet=True)
    longer = interleaved.run(tmp_path, InterleavedSetting.quick(**{**setting.__dict__, "steps": 30}), quiet=True)
    assert [e["step"] for e in longer["evaluations"]] == [0, 10, 20, 30]
    assert longer["evaluations"][:3] == short["evaluations"]
    straight = interleaved.run(tmp_path / "straight", InterleavedSetting.quick(**{**setting.__dict__, "steps": 30}), quiet=True)
    assert straight["evaluations"] == longer["evaluations"]


def test_the_jax_engine_trains_the_same_model_as_the_numpy_engine(tmp_path):
    pytest.importorskip("jax")
    change = dict(steps=10, checkpoint_every=10, eval_tasks=64, copy_tasks=16, tune_tasks=256)
    on = {engine: interleaved.run(tmp_path / engine, InterleavedSetting.quick(backend=engine, **change), quiet=True)
          for engine in ("numpy", "jax")}
    for (where, a), (_, b) in zip(estimates(on["numpy"]["evaluations"]), estimates(on["jax"]["evaluations"]), strict=True):
        assert a["mean"] == pytest.approx(b["mean"], rel=1e-3, abs=1e-6), where


# --- the instruments ----------------------------------------------------------------------------


@settings(max_examples=25)
@given(d=st.integers(1, 6), n=st.integers(1, 8), eta=st.floats(0.1, 10.0), seed=seeds)
def test_one_gd_steps_sensitivity_to_the_query_is_eta_over_n_sum_y_i_x_i_as_finite_differences_say(d, n, eta, seed):
    batch = LinearRegressionTask(d=d, n_context=n).sample(3, seed)
    analytic = baselines.gd_weights(batch.tokens, eta, 1)
    x, y, _ = constructed.split(batch.tokens)
    np.testing.assert_allclose(analytic, (eta / n) * np.einsum("bn,bnd->bd", y, x), rtol=1e-12, atol=1e-14)
    h = 1e-4
    for j in range(d):
        plus, minus = batch.tokens.copy(), batch.tokens.copy()
        plus[:, -1, j] += h
        minus[:, -1, j] -= h
        numeric = (baselines.gd_predict(plus, eta, 1) - baselines.gd_predict(minus, eta, 1)) / (2 * h)
        np.testing.assert_allclose(numeric, analytic[:, j], rtol=1e-7, atol=1e-9)


@settings(max_examples=10)
@given(seed=seeds)
def test_the_models_sensitivity_is_the_gradient_of_its_prediction_at_the_query_token(seed):
    from iclgd.backends import numpy_stack

    setting = InterleavedSetting.quick(backend="numpy", d=3, n_context=4)
    cfg, params = setting.model_config("float64"), random_params(setting, seed)
    tokens = classic.encode(setting.task().sample_examples(2, seed)).tokens
    analytic = numpy_stack.prediction_input_grad(cfg, params, tokens)[:, -1, :]
    h = 1e-6
    for j in range(setting.d):
        plus, minus = tokens.copy(), tokens.copy()
        plus[:, -1, j] += h
        minus[:, -1, j] -= h
        numeric = (numpy_stack.predict(cfg, params, plus) - numpy_stack.predict(cfg, params, minus)) / (2 * h)
        np.testing.assert_allclose(numeric, analytic[:, j], rtol=1e-5, atol=1e-8)


@settings(max_examples=10)
@given(seed=seeds)
def test_the_copy_sensitivities_are_the_norms_of_the_task_averaged_gradients(seed):
    setting = InterleavedSetting.quick(backend="numpy", d=3, n_context=4)
    cfg, params = setting.model_config("float64"), random_params(setting, seed)
    tokens = classic.encode(setting.task().sample_examples(5, seed)).tokens
    n_tokens = tokens.shape[1]
    norms = np.array([np.linalg.norm(interleaved.token_gradients(cfg, params, tokens, k).mean(axis=0), axis=-1)
                      for k in range(n_tokens - 2)])  # (k, j)
    x_tokens = classic.x_token_indices(setting.n_context)
    expected = {"own": np.mean([norms[k, k] for k in x_tokens]), "next": np.mean([norms[k, k + 1] for k in x_tokens]),
                "other": np.mean([np.mean([norms[k, j] for j in range(n_tokens) if j not in (k, k + 1)]) for k in x_tokens])}
    every = {"own": np.mean([norms[k, k] for k in range(n_tokens - 2)]), "next": np.mean([norms[k, k + 1] for k in range(n_tokens - 2)]),
             "other": np.mean([(norms[k].sum() - norms[k, k]) / (n_tokens - 2) for k in range(n_tokens - 2)])}
    found = interleaved.copy_sensitivities(cfg, params, tokens)
    for part in ("own", "next", "other"):
        assert found[part]["mean"] == pytest.approx(expected[part], rel=1e-10)
        assert found["all_tokens"][part]["mean"] == pytest.approx(every[part], rel=1e-10)


def test_the_token_gradient_is_the_finite_difference_of_the_sum_of_token_ks_layer_0_output():
    from iclgd.backends import numpy_stack

    setting = InterleavedSetting.quick(backend="numpy", d=3, n_context=3)
    cfg, params = setting.model_config("float64"), random_params(setting, 7)
    tokens = classic.encode(setting.task().sample_examples(2, 7)).tokens
    k, j, feature, h = 2, 3, 1, 1e-6
    plus, minus = tokens.copy(), tokens.copy()
    plus[:, j, feature] += h
    minus[:, j, feature] -= h
    numeric = (numpy_stack.forward(cfg, params, plus)[1][:, k].sum(axis=-1)
               - numpy_stack.forward(cfg, params, minus)[1][:, k].sum(axis=-1)) / (2 * h)
    np.testing.assert_allclose(interleaved.token_gradients(cfg, params, tokens, k)[:, j, feature], numeric, rtol=1e-6, atol=1e-9)


def test_without_attention_the_copy_sensitivities_are_the_residuals_own_sqrt_d_and_nothing_else():
    from iclgd.models.stack import zero_params

    setting = InterleavedSetting.quick(backend="numpy", d=4, n_context=3)
    cfg = setting.model_config("float64")
    tokens = classic.encode(setting.task().sample_examples(6, 1)).tokens
    found = interleaved.copy_sensitivities(cfg, zero_params(cfg), tokens)
    assert found["own"] == {"mean": pytest.approx(2.0), "stderr": pytest.approx(0.0, abs=1e-15)}
    assert found["next"]["mean"] == found["other"]["mean"] == 0.0


# --- the setting --------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"backend": "numba"}, r"backend must be one of \['numpy', 'jax'\]"),
    ({"copy_tasks": 1}, "copy_tasks must be >= 2"),
    ({"eval_tasks": 1, "copy_tasks": 1}, "eval_tasks must be >= 2"),
    ({"copy_tasks": 600, "eval_tasks": 500}, "copy_tasks must be <= eval_tasks = 500"),
    ({"tune_tasks": 1}, "tune_tasks must be >= 2"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"lr": -1.0}, "lr must be > 0"),
    ({"x_scale": "huge"}, "x_scale must be"),
    ({"dtype": "float16"}, "dtype must be one of"),
    ({"checkpoint_every": -1}, "checkpoint_every must be a non-negative integer"),
])
def test_a_bad_setting_is_rejected_with_a_message_naming_it(change, message):
    with pytest.raises(ValueError, match=message):
        InterleavedSetting(**change)


def test_the_default_setting_sees_the_authors_number_of_tasks_on_the_fastest_engine():
    setting = InterleavedSetting()
    assert setting.backend == interleaved.fastest_engine()
    assert setting.steps * setting.batch_size == 10_000 * 2048 and setting.batch_size == 512
    assert (setting.d, setting.n_context, setting.x_scale, setting.lr, setting.eval_tasks) == (10, 10, 0.5, 1e-3, 10_000)
    assert setting.checkpoint_every == setting.steps // 20
    cfg = setting.model_config()
    assert (cfg.attention, cfg.positional_size, cfg.width, cfg.n_heads, cfg.query_attended) == (("softmax", "linear"), 10, 20, 1, False)
    assert InterleavedSetting(x_scale=1.0).task().x_scale == 1.0
