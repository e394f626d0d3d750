"""`iclgd reproduce one-layer`, run short: it writes every promised file, and they agree; and the
skeleton every reproduce command shares (iclgd.experiments.skeleton), on a toy experiment."""
import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

import iclgd
from iclgd import plots, runio
from iclgd.cli import main
from iclgd.experiments.one_layer import OneLayerSetting
from iclgd.experiments.skeleton import Experiment, Measured, Setting

KEYS = ["trained_loss", "gd_loss", "gd_eta", "optimal_eta", "optimal_loss", "preds_diff", "model_cos", "model_diff"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-layer")
    code = main(["reproduce", "one-layer", "--out", str(out), "--steps", "300", "--val-tasks", "2000", "--quiet", "--x-scale", "authors_code"])
    return code, out


def test_quick_reproduce_writes_every_file_and_exits_1_exactly_when_a_claim_fails(quick_run):
    code, out = quick_run
    from iclgd.experiments.one_layer import comparison_rows

    results = json.loads((out / "results.json").read_text())
    assert code == (0 if all(row[3] for row in comparison_rows(results)) else 1)
    for name in ["config.toml", "metrics.jsonl", "results.json", "params.npz", "report.md", "loss.png", "alignment.png", "ood.png"]:
        assert (out / name).is_file(), name
    assert runio.list_checkpoints(out)[-1][0] == 300


def test_results_hold_every_promised_number_with_standard_errors(quick_run):
    _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    for key in KEYS:
        assert key in results
    for key in ["trained_loss", "gd_loss", "preds_diff", "model_cos", "model_diff"]:
        assert set(results[key]) == {"mean", "stderr"} and results[key]["stderr"] > 0
    assert results["optimal_eta"] == pytest.approx(iclgd.baselines.optimal_eta(10, 10, 0.5))
    assert results["optimal_loss"] == pytest.approx(0.8249158 / 4, rel=1e-6)
    assert "authors_code" in results["x_scale"]


def test_saved_params_are_the_api_flat_dict_and_reproduce_the_reported_loss(quick_run):
    _, out = quick_run
    params = runio.load_params(out / "params.npz")
    cfg = OneLayerSetting().run_config().model
    assert {k: v.shape for k, v in params.items()} == iclgd.param_shapes(cfg)
    results = json.loads((out / "results.json").read_text())
    from iclgd.evaluate import validation_batch

    task = iclgd.LinearRegressionTask(d=10, n_context=10, x_scale=0.5)
    loss = iclgd.get_backend("numpy").loss(cfg, params, validation_batch(task, 2000, 0))
    assert loss == pytest.approx(results["trained_loss"]["mean"], rel=1e-12)


def test_report_compares_with_the_papers_statements(quick_run):
    _, out = quick_run
    report = (out / "report.md").read_text()
    assert "| paper's statement | ours | criterion | holds |" in report
    assert "Input-scale shift" in report and "Interpolation" in report


def test_rerunning_reproduce_on_a_finished_directory_does_not_retrain(quick_run):
    _, out = quick_run
    before = runio.load_npz(runio.list_checkpoints(out)[-1][1])
    main(["reproduce", "one-layer", "--out", str(out), "--steps", "300", "--val-tasks", "2000", "--quiet", "--x-scale", "0.5"])
    after = runio.load_npz(runio.list_checkpoints(out)[-1][1])
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_bad_setting_is_rejected_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "one-layer", "--out", str(out), "--val-tasks", "1", "--quiet"]) == 2
    assert not out.exists()
    assert "--val-tasks must be >= 2" in capsys.readouterr().err


# --- the experiment skeleton (iclgd.experiments.skeleton), on a toy experiment -----------------


@dataclass(frozen=True)
class ToySetting(Setting):
    QUICK: ClassVar[dict] = {"n": 3}
    TASK_COUNTS: ClassVar[tuple[str, ...]] = ("val_tasks",)

    n: int = 10
    val_tasks: int = 100
    backend: str = "numpy"
    smoke: bool = False

    def __post_init__(self) -> None:
        self.check_common()


def toy_measure(out_dir, setting, backend, quiet):
    out_dir.mkdir(parents=True, exist_ok=True)  # what training does for a real experiment
    return Measured({"value": {"mean": float(setting.n), "stderr": 0.5}}, {"toy.png": lambda path: path.write_bytes(b"\x89PNG")})


def toy_experiment(figures_inline: bool = False) -> Experiment:
    return Experiment(
        claim="toys count to ten", title="Toys", source="nowhere, Sec. 0", measure=toy_measure,
        claims=lambda r: [("n is ten", f"{r['value']['mean']:g}", "== 10", r["value"]["mean"] == 10)],
        checks=lambda r: [("n is positive", f"{r['value']['mean']:g}", "> 0", r["value"]["mean"] > 0)],
        setting_text=lambda r: f"Setting: n = {r['setting']['n']}.", sections=lambda r: "## More\n\nText.",
        figures_inline=figures_inline)


DRAWN = ["toy.png"] if plots.matplotlib_available() else []


def test_quick_is_the_full_setting_with_its_quick_changes_then_the_callers_and_smoke_on():
    assert ToySetting.quick() == ToySetting(n=3, smoke=True)
    assert ToySetting.quick(n=4, val_tasks=7) == ToySetting(n=4, val_tasks=7, smoke=True)


@pytest.mark.parametrize("change, message", [({"smoke": 1}, "smoke must be True or False"),
                                             ({"val_tasks": 1}, "val_tasks must be >= 2")])
def test_a_setting_rejects_a_non_bool_smoke_flag_and_a_task_count_below_two(change, message):
    with pytest.raises(ValueError, match=message):
        ToySetting(**change)


def test_run_writes_the_claim_the_setting_the_measured_numbers_and_then_the_verdicts(tmp_path):
    results = toy_experiment().run(tmp_path, ToySetting())
    assert list(results) == ["claim", "setting", "value", "figures", "provenance", "verdicts"]
    assert results["setting"] == dataclasses.asdict(ToySetting()) and results["figures"] == DRAWN
    assert results["verdicts"] == [{"claim": "n is ten", "ours": "10", "criterion": "== 10", "holds": True}]
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert [path.name for path in tmp_path.glob("*.png")] == DRAWN


def test_a_smoke_run_records_its_checks_and_exits_as_they_say_not_as_the_claims_say(tmp_path):
    experiment = toy_experiment()
    smoke = experiment.run(tmp_path / "quick", ToySetting.quick())
    assert smoke["smoke_checks"] == [{"claim": "n is positive", "ours": "3", "criterion": "> 0", "holds": True}]
    assert smoke["verdicts"][0]["holds"] is False and experiment.exit_code(smoke) == 0
    assert experiment.exit_code(experiment.run(tmp_path / "full", ToySetting(n=3))) == 1


def test_a_full_runs_report_is_title_claim_setting_claims_table_sections_and_the_figures(tmp_path):
    results = toy_experiment().run(tmp_path, ToySetting())
    links = "".join(f"\n![{name}]({name})" for name in DRAWN)
    assert (tmp_path / "report.md").read_text() == (
        "# Toys\n\nClaim (nowhere, Sec. 0): toys count to ten.\n\nSetting: n = 10.\n\n"
        "| paper's statement | ours | criterion | holds |\n|---|---|---|---|\n| n is ten | 10 | == 10 | yes |\n\n"
        f"## More\n\nText.\n{links}\n")
    assert toy_experiment().report(results) == (tmp_path / "report.md").read_text()


def test_sections_that_place_the_figures_themselves_end_the_report(tmp_path):
    toy_experiment(figures_inline=True).run(tmp_path, ToySetting())
    assert (tmp_path / "report.md").read_text().endswith("## More\n\nText.")


def test_a_smoke_runs_table_says_so_and_puts_its_checks_before_the_claims(tmp_path):
    results = toy_experiment().run(tmp_path, ToySetting.quick())
    table = toy_experiment().table(results)
    assert table.startswith("SMOKE RUN (--quick)") and "| n is positive | 3 | > 0 | yes |" in table
    assert table.index("| smoke-run check |") < table.index("| paper's statement |")
    assert (tmp_path / "report.md").read_text().startswith("# Toys (smoke run, --quick)\n")


def test_the_expected_loss_is_the_closed_form_optimum_plus_the_paired_difference_at_eta_star():
    from iclgd.baselines import one_step_optimum
    from iclgd.evaluate import Comparison
    from iclgd.experiments.one_layer import LayerEvaluation
    from iclgd.metrics import Estimate

    optimum = one_step_optimum(10, 10, 1.0)  # half-MSE 245/297
    some = Estimate(0.5, 0.1)
    at_optimum = Comparison(some, some, Estimate(-0.003, 0.0004), some, some, some)
    evaluation = LayerEvaluation(1.5, optimum, None, at_optimum, at_optimum, [])
    assert evaluation.expected_loss == Estimate(pytest.approx(245 / 297 - 0.003), 0.0004)
