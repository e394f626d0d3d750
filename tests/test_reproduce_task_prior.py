"""`iclgd reproduce task-prior`, run short (--quick): results.json, report.md and the figure with
the claims table; the measures agree with the runs' own final evaluation rows; a rerun resumes
without retraining; bad flags are one-line errors naming the flag (exit 2).  The quick run trains
a tiny model for seconds: these tests check the pipeline, not the papers' claims."""
from __future__ import annotations

import json
import math

import pytest

from iclgd import cli
from iclgd.experiments import task_prior
from iclgd.experiments.task_prior import SETS, TaskPriorSetting


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("task_prior")
    code = cli.main(["reproduce", "task-prior", "--quick", "--out", str(out), "--quiet"])
    return out, code


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in ("results.json", "report.md")
            and p.suffix != ".png"}


def test_quick_run_writes_results_report_and_figure_with_the_claims_table(quick_out):
    out, code = quick_out
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["setting"]["smoke"] is True and results["setting"]["backend"] == "numpy"
    assert results["pool_sizes"] == ["1", "2", "inf"]
    assert [row["n_tasks"] for row in results["rows"]] == [1, 2, None]
    assert results["smoke_checks"] and all(row["holds"] for row in results["smoke_checks"])
    assert set(results["provenance"]) and set(results["transition_m"]) == set(SETS)
    for row in results["rows"]:
        assert row["step"] == results["setting"]["steps"] and (out / task_prior.m_name(row["n_tasks"]) / "run" / "config.toml").is_file()
        for name in SETS:
            measured = row["sets"][name]
            keys = {"model_mse", "ridge_mse", "delta_ridge"} | ({"dmmse_mse", "delta_dmmse"} if row["n_tasks"] else set())
            assert set(measured) == keys
            assert all(math.isfinite(v["mean"]) and math.isfinite(v["stderr"]) and v["stderr"] > 0 for v in measured.values())
            # the per-sequence recomputation agrees with the run's own evaluation at its final checkpoint
            final = row["final_evaluation"][name]
            assert measured["model_mse"]["mean"] == pytest.approx(final["mse"], rel=1e-9)
            assert measured["delta_ridge"]["mean"] == pytest.approx(final["delta_ridge"], rel=1e-9)
            if row["n_tasks"]:
                assert measured["delta_dmmse"]["mean"] == pytest.approx(final["delta_dmmse"], rel=1e-9)
    claims = [row["claim"] for row in results["verdicts"]]
    assert any("small M (1, 2, 4)" in c for c in claims) and any("largest M run: 2" in c for c in claims)
    report = (out / "report.md").read_text()
    for words in ("SMOKE RUN (--quick)", "| paper's statement |", "| smoke-run check |", "## On the pretraining distribution",
                  "## On the Gaussian prior", "| M | model MSE |", "Transition M", "What this scale can and cannot show"):
        assert words in report, words
    if task_prior.plots.matplotlib_available():
        assert results["figures"] == [task_prior.FIGURE]
        assert (out / task_prior.FIGURE).read_bytes().startswith(b"\x89PNG")
        assert f"![{task_prior.FIGURE}]({task_prior.FIGURE})" in report


def test_a_rerun_resumes_without_retraining(quick_out, monkeypatch):
    out, _ = quick_out
    before = _mtimes(out)
    assert any(p.suffix == ".npz" for p in before)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished M was trained again")
    monkeypatch.setattr("iclgd.train.train", no_training)
    assert cli.main(["reproduce", "task-prior", "--quick", "--out", str(out), "--quiet"]) == 0
    assert _mtimes(out) == before
    results = json.loads((out / "results.json").read_text())
    assert [row["computed_now"] for row in results["rows"]] == [False, False, False]


def test_a_sweep_stopped_before_measuring_an_m_finishes_it_on_rerun(tmp_path):
    out = tmp_path / "out"
    setting = TaskPriorSetting.quick()
    task_prior.run(out, setting, quiet=True)
    (out / "M_2" / task_prior.MEASURES_FILE).unlink()  # as if killed after M = 2's training
    checkpoints = {p: p.stat().st_mtime_ns for p in (out / "M_2" / "run" / "checkpoints").iterdir()}
    results = task_prior.run(out, setting, quiet=True)
    assert [row["computed_now"] for row in results["rows"]] == [False, True, False]
    assert {p: p.stat().st_mtime_ns for p in (out / "M_2" / "run" / "checkpoints").iterdir()} == checkpoints  # not retrained
    assert (out / "M_2" / task_prior.MEASURES_FILE).is_file()


def test_transition_is_the_smallest_m_from_which_every_larger_m_is_ridge_like():
    def row(m, ridge, dmmse):
        return {"n_tasks": m, "sets": {"pretraining": {"delta_ridge": {"mean": ridge}, "delta_dmmse": {"mean": dmmse}}}}
    rows = [row(1, 1.0, 0.1), row(2, 0.1, 1.0), row(4, 1.0, 0.1), row(8, 0.1, 1.0), row(16, 0.1, 1.0), row(None, 0.1, None)]
    assert task_prior.transition(rows) == 8
    assert task_prior.transition(rows[:3]) is None


@pytest.mark.parametrize("flags, flag", [
    (["--max-log2-tasks", "-1"], "--max-log2-tasks"),
    (["--max-log2-tasks", "99"], "--max-log2-tasks"),
    (["--backend", "numba"], "--backend"),
    (["--seed", "-3"], "--seed"),
])
def test_bad_flags_are_one_line_errors_naming_the_flag(tmp_path, capsys, flags, flag):
    out = tmp_path / "out"
    assert cli.main(["reproduce", "task-prior", "--quick", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err
    assert not out.exists()


def test_a_non_integer_flag_is_refused_by_the_parser_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["reproduce", "task-prior", "--quick", "--max-log2-tasks", "many"])
    assert exit_info.value.code == 2 and "--max-log2-tasks" in capsys.readouterr().err


def test_the_laptop_setting_is_the_documented_sweep():
    laptop = TaskPriorSetting()
    assert laptop.pool_sizes == [1, 2, 4, 8, 16, 32, 64, 128, 256, None] and laptop.smoke is False
    assert (laptop.steps, laptop.batch_size, laptop.d, laptop.n_examples, laptop.noise_variance) == (16_000, 64, 4, 8, 0.125)
    config = laptop.run_config(4)
    assert config.task.n_tasks == 4 and laptop.run_config(None).task.n_tasks is None
