"""`iclgd reproduce one-layer`, run short: it writes every promised file, and they agree."""
import json

import numpy as np
import pytest

import iclgd
from iclgd import runio
from iclgd.cli import main
from iclgd.experiments.one_layer import OneLayerSetting

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
