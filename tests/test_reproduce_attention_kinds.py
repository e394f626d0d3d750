"""`iclgd reproduce softmax-vs-linear`: the smoke run end to end, and the claims' logic on made-up numbers."""
from __future__ import annotations

import json

import pytest

from iclgd.cli import main
from iclgd.experiments import attention_kinds
from iclgd.experiments.attention_kinds import AttentionKindsSetting


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("softmax-vs-linear")
    code = main(["reproduce", "softmax-vs-linear", "--quick", "--out", str(out), "--quiet"])
    return code, out, json.loads((out / "results.json").read_text())


def test_the_quick_run_writes_its_report_and_one_run_directory_per_model(quick_run):
    code, out, results = quick_run
    assert (out / "report.md").is_file()
    for name in AttentionKindsSetting.quick().models():
        assert (out / name / "config.json").is_file(), name
    assert code == attention_kinds.exit_code(results)


def test_the_quick_runs_exit_code_follows_its_smoke_checks(quick_run):
    code, _, results = quick_run
    assert code == (0 if all(row[3] for row in attention_kinds.smoke_rows(results)) else 1)


def test_every_model_is_compared_with_gd_and_gdpp_on_the_same_tasks(quick_run):
    """Paired differences: mean(model - baseline) = mean(model) - mean(baseline)."""
    _, _, results = quick_run
    for row in results["depths"]:
        for baseline in ("gd", "gdpp"):
            for name, difference in row[f"minus_{baseline}"].items():
                expected = row["loss"][name]["mean"] - row["loss"][baseline]["mean"]
                assert difference["mean"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_tuned_gdpp_is_no_worse_than_tuned_gd(quick_run):
    _, _, results = quick_run
    for row in results["depths"]:
        assert row["loss"]["gdpp"]["mean"] <= row["loss"]["gd"]["mean"] * 1.01


def test_a_rerun_resumes_every_model_and_reproduces_the_numbers(quick_run, capsys):
    _, out, results = quick_run
    assert main(["reproduce", "softmax-vs-linear", "--quick", "--out", str(out), "--quiet"]) in (0, 1)
    again = json.loads((out / "results.json").read_text())
    assert again["depths"] == results["depths"]


def made_up(softmax_minus_linear, more_heads_minus_one, stderr=0.001):
    rows = [{"n_layers": k, "softmax_minus_linear": {"mean": a, "stderr": stderr},
             "more_heads_minus_one": {"mean": b, "stderr": stderr}}
            for k, (a, b) in enumerate(zip(softmax_minus_linear, more_heads_minus_one), start=1)]
    return {"depths": rows, "setting": {"capacity_heads": 4}}


def test_both_claims_hold_when_softmax_trails_linear_and_heads_help_at_every_depth():
    rows = attention_kinds.comparison_rows(made_up((0.05, 0.04), (-0.03, -0.02)))
    assert [row[3] for row in rows] == [True, True]


def test_softmax_level_with_linear_at_one_depth_fails_the_first_claim():
    rows = attention_kinds.comparison_rows(made_up((0.05, 0.002), (-0.03, -0.02)))
    assert [row[3] for row in rows] == [False, True]


def test_heads_that_do_not_help_clearly_fail_the_second_claim():
    rows = attention_kinds.comparison_rows(made_up((0.05, 0.04), (-0.03, -0.002)))
    assert [row[3] for row in rows] == [True, False]


@pytest.mark.parametrize("changes, message", [
    ({"capacity_heads": 1}, "capacity_heads must be >= 2"),
    ({"backend": "numba"}, "backend must be 'numpy' or 'jax'"),
    ({"depths": ()}, "depths must name at least one depth"),
    ({"depths": (2, 2)}, "depths must not repeat"),
    ({"lr": -1.0}, "lr must be a positive number"),
])
def test_a_bad_setting_is_refused_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        AttentionKindsSetting(**changes)


def test_the_cli_refuses_a_bad_flag_with_a_clear_message(tmp_path, capsys):
    code = main(["reproduce", "softmax-vs-linear", "--quick", "--capacity-heads", "1", "--out", str(tmp_path / "x"), "--quiet"])
    assert code == 2
    assert "--capacity-heads must be >= 2" in capsys.readouterr().err


def test_model_labels_read_as_words():
    assert attention_kinds.model_label("softmax-ln-K2") == "softmax, LayerNorm, K = 2"
    assert attention_kinds.model_label("softmax-h4-K1") == "softmax, 4 heads, K = 1"
