"""`iclgd reproduce ood`, run short: it writes every promised file, and its numbers agree with each other.

The quick run trains far too briefly for the paper's claims to hold; these tests check the
experiment's bookkeeping (files, standard errors, pairing, exit code, resuming), not the claims.
The full run's numbers are recorded in reference/results/03_out_of_distribution.*.
"""
import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iclgd import runio
from iclgd.backends import get_backend
from iclgd.evaluate import input_scale_sweep
from iclgd.experiments import ood
from iclgd.experiments.ood import OODSetting
from iclgd.tasks import X_DISTRIBUTIONS
from iclgd.train import load_checkpoint



@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ood")
    setting = OODSetting.quick()  # the duel runs on as many tasks as the sweeps
    return setting, out, ood.run(out, setting, quiet=True)


def estimates(node, where=""):
    """Every {mean, stderr} entry in a results tree, with its path."""
    if isinstance(node, dict):
        if "mean" in node:
            yield where, node
        else:
            for key, child in node.items():
                yield from estimates(child, f"{where}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from estimates(child, f"{where}[{i}]")


def final_params(out, model):
    return load_checkpoint(runio.list_checkpoints(out / model)[-1][1], "float64").params


# --- files ------------------------------------------------------------------------------------


def test_quick_run_writes_results_report_figures_and_one_run_directory_per_model(quick_run):
    setting, out, results = quick_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (out / "report.md").is_file()
    assert results["figures"] == (["ood_scale.png", "ood_distributions.png", "ood_distractors.png"]
                                  if ood.plots.matplotlib_available() else [])
    for name in results["figures"]:
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    for model in ood.MODELS:
        assert (out / model / "config.toml").is_file() and (out / model / "metrics.jsonl").is_file()
        assert runio.list_checkpoints(out / model)[-1][0] == setting.steps


def test_the_two_models_are_trained_on_the_clean_task_and_on_the_distractor_task(quick_run):
    setting, out, results = quick_run
    from iclgd.config import load_run_config

    clean, distractors = (load_run_config(out / model / "config.toml") for model in ("clean", "distractors"))
    assert clean.task.n_distractors == 0 and distractors.task.n_distractors == setting.n_train_distractors
    assert dataclasses.replace(distractors.task, n_distractors=0) == clean.task
    assert (clean.model, clean.train.steps, clean.train.batch_size, clean.train.lr) == (distractors.model, setting.steps, 2048, 1e-3)
    assert [results["models"][m]["train_distractors"] for m in ("clean", "distractors")] == [0, setting.n_train_distractors]


# --- numbers ----------------------------------------------------------------------------------


def test_every_reported_number_comes_with_a_finite_positive_standard_error(quick_run):
    _, _, results = quick_run
    found = list(estimates(results))
    assert len(found) > 100
    for where, entry in found:
        assert set(entry) == {"mean", "stderr"}, where
        assert math.isfinite(entry["mean"]) and math.isfinite(entry["stderr"]) and entry["stderr"] > 0, where


def test_every_sweep_has_one_row_per_shift_for_each_model(quick_run):
    setting, _, results = quick_run
    expected = {"input_scale": list(setting.alphas), "input_distribution": list(X_DISTRIBUTIONS),
                "test_distractors": list(range(setting.max_test_distractors + 1))}
    for key, values in expected.items():
        row_key = ood.SWEEPS[key][0]
        for model in ood.MODELS:
            rows = results["sweeps"][key][model]
            assert [row[row_key] for row in rows] == values
            assert all({"model_loss", "gd_loss", "model_minus_gd", "preds_diff", "model_cos", "model_diff"} <= set(row) for row in rows)
    assert [row["n_distractors"] for row in results["head_to_head"]] == expected["test_distractors"]


def test_the_unshifted_row_of_every_sweep_is_the_in_distribution_comparison(quick_run):
    # the same validation tasks (same seed and task) give the same numbers: the sweeps are paired with it
    setting, _, results = quick_run
    for model in ood.MODELS:
        own = results["models"][model]["in_distribution"]
        sweeps = results["sweeps"]
        at_one = next(row for row in sweeps["input_scale"][model] if row["alpha"] == 1.0)
        uniform = next(row for row in sweeps["input_distribution"][model] if row["distribution"] == "uniform")
        trained_k = results["models"][model]["train_distractors"]
        same_k = sweeps["test_distractors"][model][trained_k]
        for row in (at_one, uniform, same_k):
            assert {k: row[k] for k in own} == own


def test_the_head_to_head_losses_are_the_sweep_losses_on_the_same_tasks(quick_run):
    # duel_tasks = val_tasks in the quick run: the duel's tasks are then the sweep's
    _, _, results = quick_run
    for row in results["head_to_head"]:
        swept = {model: results["sweeps"]["test_distractors"][model][row["n_distractors"]] for model in ood.MODELS}
        for model in ood.MODELS:
            assert row[f"{model}_loss"]["mean"] == pytest.approx(swept[model]["model_loss"]["mean"], rel=1e-12)
        lsa_gap = row["distractors_loss"]["mean"] - row["clean_loss"]["mean"]
        gd_gap = swept["distractors"]["gd_loss"]["mean"] - swept["clean"]["gd_loss"]["mean"]
        assert row["distractors_minus_clean"]["mean"] == pytest.approx(lsa_gap, rel=1e-9, abs=1e-12)
        assert row["gd_distractors_minus_clean"]["mean"] == pytest.approx(gd_gap, rel=1e-9, abs=1e-12)


def test_the_input_scale_rows_are_those_of_evaluate_input_scale_sweep(quick_run):
    setting, out, results = quick_run
    config = setting.run_config("clean")
    eta = results["models"]["clean"]["gd_eta"]
    backend = get_backend(setting.backend)
    expected = input_scale_sweep(backend, config.model, final_params(out, "clean"), config.task, setting.val_tasks, setting.seed, eta)
    ours = results["sweeps"]["input_scale"]["clean"]
    for mine, theirs in zip(ours, expected, strict=True):
        for key in theirs:
            assert mine[key] == (pytest.approx(theirs[key], rel=1e-9) if key == "alpha" else
                                 {k: pytest.approx(v, rel=1e-9) for k, v in theirs[key].items()})


# --- claims, report and exit code -------------------------------------------------------------


def as_full_run(results):
    """A copy of the quick run's results judged as a full run's (by the paper's claims)."""
    full = json.loads(json.dumps(results))
    full["setting"]["smoke"] = False
    return full


def test_exit_code_of_a_full_run_is_0_exactly_when_every_claim_holds(quick_run):
    _, out, results = quick_run
    saved = as_full_run(json.loads((out / "results.json").read_text()))
    rows = ood.comparison_rows(saved)
    assert rows == ood.comparison_rows(results)
    assert ood.exit_code(saved) == (0 if all(row[3] for row in rows) else 1)


def test_exit_code_of_a_quick_run_is_0_exactly_when_every_smoke_check_holds(quick_run):
    _, out, results = quick_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["setting"]["smoke"] is True
    assert ood.exit_code(saved) == (0 if all(row[3] for row in ood.smoke_rows(saved)) else 1)


def test_an_ood_gap_just_over_10_percent_fails_its_claim_and_the_exit_code(quick_run):
    _, _, results = quick_run
    passing = as_full_run(results)
    for model in ood.MODELS:  # make every claim hold: LSA = GD everywhere, distractor model better
        own = passing["models"][model]["in_distribution"]
        own["model_minus_gd"]["mean"] = 0.0
        for rows in passing["sweeps"].values():
            for row in rows[model]:
                row["model_minus_gd"]["mean"] = 0.099 * row["gd_loss"]["mean"]
    for row in passing["head_to_head"]:
        row["distractors_minus_clean"] = {"mean": -1.0, "stderr": 0.1}
    assert all(row[3] for row in ood.comparison_rows(passing)) and ood.exit_code(passing) == 0
    failing = json.loads(json.dumps(passing))
    row = failing["sweeps"]["input_distribution"]["distractors"][2]
    row["model_minus_gd"]["mean"] = -0.101 * row["gd_loss"]["mean"]
    held = {claim: ok for claim, _, _, ok in ood.comparison_rows(failing)}
    assert [claim for claim, ok in held.items() if not ok] == ["under a change of input law (same norm) the trained LSA degrades like GD"]
    assert ood.exit_code(failing) == 1


def test_the_distractor_claim_needs_a_difference_of_four_standard_errors(quick_run):
    _, _, results = quick_run
    k = results["setting"]["n_train_distractors"]

    def holds(mean, stderr):
        changed = json.loads(json.dumps(results))
        changed["head_to_head"][k]["distractors_minus_clean"] = {"mean": mean, "stderr": stderr}
        return dict((claim, ok) for claim, _, _, ok in ood.comparison_rows(changed))[
            "a model trained with distractors beats the clean model on distractor tasks"]

    assert holds(-0.0041, 0.001) and not holds(-0.0039, 0.001) and not holds(0.01, 0.001)


def test_the_report_holds_the_claims_table_and_a_table_per_sweep(quick_run):
    _, out, results = quick_run
    report = (out / "report.md").read_text()
    assert ood.table(results) in report
    for key in ood.SWEEPS:
        assert ood.sweep_table(results, key) in report
    assert ood.head_to_head_table(results) in report
    for name in results["figures"]:
        assert f"]({name})" in report


def test_rerunning_on_a_finished_directory_does_not_retrain_and_repeats_every_number(quick_run):
    setting, out, results = quick_run
    before = {model: runio.load_npz(runio.list_checkpoints(out / model)[-1][1]) for model in ood.MODELS}
    again = ood.run(out, setting, quiet=True)
    for model in ood.MODELS:
        after = runio.load_npz(runio.list_checkpoints(out / model)[-1][1])
        assert all(np.array_equal(before[model][k], after[k]) for k in before[model])
    assert list(estimates(again)) == list(estimates(results))


# --- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"val_tasks": 1}, "val_tasks must be >= 2"),
    ({"tune_tasks": 1}, "tune_tasks must be >= 2"),
    ({"duel_tasks": 1}, "duel_tasks must be >= 2"),
    ({"n_train_distractors": 0}, "n_train_distractors must be a positive integer"),
    ({"n_train_distractors": 11}, "n_train_distractors must be in 1..10"),
    ({"max_test_distractors": 11}, "max_test_distractors must be in n_train_distractors..10"),
    ({"n_train_distractors": 3, "max_test_distractors": 2}, r"max_test_distractors must be in .* = 3\.\.10"),
    ({"alphas": ()}, "alphas must be a non-empty sequence"),
    ({"alphas": (1.0, -0.5)}, "alphas must be > 0"),
    ({"distributions": ("uniform", "cauchy")}, "x_distribution must be one of"),
    ({"distributions": ("uniform", "uniform")}, "distributions must not repeat"),
    ({"backend": "cuda"}, "backend must be one of"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"x_scale": "big"}, "x_scale must be"),
])
def test_a_bad_setting_is_rejected_with_a_message_naming_it(change, message):
    with pytest.raises(ValueError, match=message):
        OODSetting(**change)


def test_the_default_setting_is_the_papers_one_layer_setting_on_the_fastest_backend():
    setting = OODSetting()
    assert setting.backend == ood.fastest_backend()
    assert (setting.steps, setting.x_scale, setting.val_tasks, setting.n_train_distractors) == (5000, 1.0, 10_000, 2)
    config = setting.run_config("clean")
    assert (config.task.d, config.task.n_context, config.model.n_layers, config.model.n_heads) == (10, 10, 1, 1)
    assert (config.train.batch_size, config.train.lr, config.train.schedule) == (2048, 1e-3, "cosine")


@settings(max_examples=20, deadline=None)
@given(k=st.integers(1, 10), seed=st.integers(0, 2**32), x_scale=st.sampled_from([0.5, 1.0, "authors_code"]))
def test_the_two_run_configs_differ_only_in_the_training_distractor_count(k, seed, x_scale):
    setting = OODSetting(n_train_distractors=k, max_test_distractors=10, seed=seed, x_scale=x_scale, backend="numpy")
    clean, distractors = setting.run_config("clean"), setting.run_config("distractors")
    assert distractors.task.n_distractors == k and clean.task.n_distractors == 0
    assert dataclasses.replace(distractors, task=dataclasses.replace(distractors.task, n_distractors=0)) == clean


def test_the_cli_runs_the_quick_setting_and_exits_as_the_claims_say(tmp_path):
    from iclgd.cli import main

    code = main(["reproduce", "ood", "--quick", "--out", str(tmp_path), "--quiet", "--backend", "numpy"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["setting"] == json.loads(json.dumps(dataclasses.asdict(OODSetting.quick(backend="numpy"))))
    assert code == ood.exit_code(results)


def test_bad_ood_arguments_exit_2_with_a_message(tmp_path, capsys):
    from iclgd.cli import main

    assert main(["reproduce", "ood", "--quick", "--out", str(tmp_path), "--val-tasks", "1"]) == 2
    assert "--val-tasks must be >= 2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
