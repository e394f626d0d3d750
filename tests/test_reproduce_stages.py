"""`iclgd reproduce stages`, run short (--quick): every file and section is written, a rerun
resumes without recomputing, a run interrupted after training completes on rerun, bad flags are
one-line errors naming the flag.  The quick run trains a tiny model for seconds: these tests
check the pipeline's bookkeeping, not the paper's claims (the laptop run's numbers are recorded
separately)."""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

from iclgd import cli, runio
from iclgd.experiments import stages
from iclgd.experiments.stages import PROTOCOLS, StagesSetting


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("stages")
    code = cli.main(["reproduce", "stages", "--quick", "--out", str(out), "--quiet"])
    return out, code


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".json", ".npz")
            and p.name not in ("results.json", "llc.json")}


def test_quick_run_writes_results_report_and_figures_and_passes_its_smoke_checks(quick_out):
    out, code = quick_out
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["setting"]["smoke"] is True and results["setting"]["backend"] == "numpy"
    assert set(results["provenance"]) and results["smoke_checks"] and all(row["holds"] for row in results["smoke_checks"])
    seed = results["seeds"]["0"]
    n = len(seed["checkpoints"])
    assert n >= 8
    for protocol in PROTOCOLS:
        table = seed["llc"][protocol]["table"]
        assert [row["step"] for row in table] == seed["checkpoints"]
        assert all(math.isfinite(row["llc_mean"]) and len(row["llc_per_position"]) == 4 for row in table)
    assert seed["llc"]["paper"]["settings"]["burnin"] == 0 and seed["llc"]["settled"]["settings"]["burnin"] > 0
    assert set(seed["stages"]) == {"llc_settled", "llc_paper", "loss"}
    assert len(seed["ed"]["explained_variance_ratio"]) == 3 and len(seed["ed"]["trajectory"]["steps"]) == n
    assert [row["step"] for row in seed["behaviour"]] == seed["checkpoints"]
    assert [row["paper"]["stage"] for row in seed["stage_ends"][:5]] == ["LR1", "LR2", "LR3", "LR4", "LR5"]
    judged = [r for r in seed["ed_sensitivity"] if (r["features"], r["method"], r["sigma"], r["time"]) ==
              ("all", "local_quadratic", results["setting"]["ed_sigma"], "index")]
    assert len(seed["ed_sensitivity"]) == 2 * len(StagesSetting.quick().sensitivity_smoothers()) and judged
    assert judged[0]["milestones"] == seed["ed"]["milestone_steps"]  # the judged smoother is one of the table's rows
    claims = [row["claim"] for row in results["verdicts"]]
    for words in ("plateau", "ICL score", "LLC rises", "two stage boundaries", "ED milestone", "protocol 'settled'", "protocol 'paper'"):
        assert any(words in claim for claim in claims), words
    report = (out / "report.md").read_text()
    assert "smoke run" in report.lower() and "SMOKE RUN (--quick)" in report
    for words in ("## The LLC after its peak", "What this scale can and cannot show", "## Seed 0", "LR2 | 40292 | 170",
                  "| paper's statement |", "Every checkpoint"):
        assert words in report, words
    if stages.plots.matplotlib_available():
        assert results["figures"] == list(stages.FIGURES.values())
        for name in results["figures"]:
            assert (out / name).read_bytes().startswith(b"\x89PNG"), name
            assert f"]({name})" in report
    else:
        assert results["figures"] == []


def test_the_summary_across_seeds_is_each_numbers_mean_and_sample_sd(quick_out):
    import copy

    out, _ = quick_out
    results = json.loads((out / "results.json").read_text())
    seed = results["seeds"]["0"]
    other = copy.deepcopy(seed)
    other["llc"]["settled"]["fall"]["peak"] = seed["llc"]["settled"]["fall"]["peak"] + 10.0
    summary = stages.across_seeds({"0": seed, "1": other}, results["setting"]["steps"])
    peak = summary["peak_llc"]
    assert peak["values"] == {"0": seed["llc"]["settled"]["fall"]["peak"], "1": seed["llc"]["settled"]["fall"]["peak"] + 10.0}
    assert peak["mean"] == pytest.approx(seed["llc"]["settled"]["fall"]["peak"] + 5.0)
    assert peak["sd"] == pytest.approx(10.0 / math.sqrt(2.0))
    assert summary["final_mse"]["sd"] == 0.0
    assert results["across_seeds"]["peak_llc"]["sd"] is None  # one seed: no spread
    assert "## Across seeds" in (out / "report.md").read_text()


def test_an_ed_cache_without_the_predictions_is_collected_again(tmp_path):
    from iclgd import get_backend

    setting = StagesSetting.quick()
    config = setting.run_config(0)
    run_dir = tmp_path / "seed_0" / "run"
    stages.train_stage(run_dir, config, get_backend("numpy"), quiet=True)
    steps, features, computed = stages.ed_features(run_dir, config, "numpy", 8, 0)
    assert computed and set(features) == {"all", "predictions"}
    assert features["predictions"].shape == (len(steps), 8 * setting.n_examples)
    runio.save_npz(run_dir.parent / "ed_features.npz", {"steps": steps, "features": features["all"],  # the older format
                                                        "n_sequences": np.array(8), "seed": np.array(0)})
    again_steps, again, computed = stages.ed_features(run_dir, config, "numpy", 8, 0)
    assert computed and np.array_equal(again_steps, steps)
    assert all(np.array_equal(again[kind], features[kind]) for kind in features)
    assert not stages.ed_features(run_dir, config, "numpy", 8, 0)[2]  # now cached


def test_rerun_resumes_without_recomputing_anything(quick_out, tmp_path):
    out, _ = quick_out
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copy2)
    before = _mtimes(copy)
    assert any("llc-settled" in str(p) for p in before) and any(p.name == "ed_features.npz" for p in before)
    results = stages.run(copy, StagesSetting.for_scale(quick=True), quiet=True)
    assert _mtimes(copy) == before  # llc step files, checkpoints' neighbours, ED cache untouched
    seed = results["seeds"]["0"]
    assert all(seed["llc"][p]["computed_now"] == [] for p in PROTOCOLS) and seed["ed"]["computed_now"] is False
    original = json.loads((out / "results.json").read_text())["seeds"]["0"]
    assert seed["llc"]["settled"]["table"] == original["llc"]["settled"]["table"]


def test_a_run_interrupted_after_training_completes_on_rerun(tmp_path, monkeypatch):
    setting = StagesSetting.for_scale(quick=True)
    real = stages.llc_stage

    def killed(run_dir, out_dir, settings, backend_name, quiet):
        if out_dir.name == "llc-paper":
            raise KeyboardInterrupt  # killed between the two protocols
        return real(run_dir, out_dir, settings, backend_name, quiet)

    monkeypatch.setattr(stages, "llc_stage", killed)
    with pytest.raises(KeyboardInterrupt):
        stages.run(tmp_path, setting, quiet=True)
    assert not (tmp_path / "results.json").exists()
    checkpoints = {p: p.stat().st_mtime_ns for _, p in runio.list_checkpoints(tmp_path / "seed_0" / "run")}
    settled = {p: p.stat().st_mtime_ns for p in (tmp_path / "seed_0" / "llc-settled").glob("step_*.json")}
    assert len(checkpoints) >= 8 and len(settled) == len(checkpoints)
    monkeypatch.setattr(stages, "llc_stage", real)
    results = stages.run(tmp_path, setting, quiet=True)
    seed = results["seeds"]["0"]
    assert seed["llc"]["settled"]["computed_now"] == [] and len(seed["llc"]["paper"]["computed_now"]) == len(checkpoints)
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints  # training was not redone
    assert {p: p.stat().st_mtime_ns for p in settled} == settled
    assert stages.exit_code(results) == 0 and (tmp_path / "report.md").is_file()


@pytest.mark.parametrize("flags, flag", [
    (["--seeds", "0"], "--seeds"),
    (["--seed", "-1"], "--seed"),
    (["--backend", "numba"], "--backend"),
    (["--backend", "nope"], "--backend"),
])
def test_bad_flags_are_one_line_errors_naming_the_flag(tmp_path, capsys, flags, flag):
    out = tmp_path / "out"
    assert cli.main(["reproduce", "stages", "--quick", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err
    assert not out.exists()


def test_an_unknown_scale_is_refused_by_the_parser_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["reproduce", "stages", "--scale", "huge"])
    assert exit_info.value.code == 2 and "--scale" in capsys.readouterr().err


def test_scales_are_the_documented_settings():
    from iclgd.config import CheckpointGrid

    laptop, paper = StagesSetting.for_scale("laptop"), StagesSetting.for_scale("paper")
    assert (laptop.steps, laptop.batch_size, laptop.d, laptop.n_examples, laptop.noise_variance) == (40_000, 64, 4, 8, 0.125)
    assert len(CheckpointGrid(log=laptop.log_checkpoints, linear=laptop.linear_checkpoints).steps(laptop.steps)) == 26
    assert laptop.llc_settings("paper").burnin == 0 and laptop.llc_settings("settled").burnin is None  # llc_run's 1000
    assert (paper.steps, paper.batch_size, paper.seeds, paper.llc_chains, paper.llc_draws, paper.llc_batch_size) == \
        (500_000, 256, 5, 10, 5000, 1024)
    assert len(CheckpointGrid(log=paper.log_checkpoints, linear=paper.linear_checkpoints).steps(paper.steps)) == 190


def test_llc_fall_and_milestone_distances_are_measured():
    table = [{"step": s, "llc_mean": v, "llc_std_error": 1.0} for s, v in ((10, 20.0), (100, 170.0), (1000, 120.0))]
    fall = stages.llc_fall(table)
    assert fall["peak_step"] == 100 and fall["fall"] == pytest.approx(50.0) and fall["falls"]
    assert not stages.llc_fall(table[:2])["falls"]
    match = stages.milestone_matches([200, 5000], [100.0, 10_000.0])
    assert match[0]["boundary"] == 100.0 and match[0]["distance_decades"] == pytest.approx(math.log10(2))
    assert match[1]["boundary"] == 10_000.0


# --- the laptop run, full length (pytest -m slow: ~35 min on 2 cores with jax) ---------------------------


@pytest.fixture(scope="module")
def laptop_rows(tmp_path_factory):
    """The claim rows of one laptop-scale run of seed 0 (the setting reproduce stages runs by default),
    in a new folder, or resumed in $ICLGD_STAGES_LAPTOP_DIR: a kept ``iclgd reproduce stages`` run
    folder (with seed_0/run in it; a folder without one is trained into, ~35 min, and its
    results.json and report.md are rewritten for one seed)."""
    pytest.importorskip("jax")
    out = os.environ.get("ICLGD_STAGES_LAPTOP_DIR") or tmp_path_factory.mktemp("stages-laptop")
    results = stages.run(out, StagesSetting.for_scale("laptop"), quiet=True)
    return {row[0]: row for row in stages.claim_rows(results)}


def _row(rows: dict, prefix: str):
    """The one claim row whose statement starts with ``prefix``."""
    found = [row for key, row in rows.items() if key.startswith(prefix)]
    assert len(found) == 1, (prefix, list(rows))
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("claim", ["the loss leaves", "in-context learning appears", "the LLC rises",
                                   "the LLC reaches values", "at least two stage boundaries"])
def test_the_laptop_run_shows_the_early_stages(laptop_rows, claim):
    name, ours, criterion, holds = _row(laptop_rows, claim)
    assert holds, f"{name}: {ours} (criterion: {criterion})"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured (seed 0, reference/results/stages): the nearest ED milestone is 0.333 "
                                       "decades from an LLC boundary, against the stated 0.3; reported, not loosened")
def test_the_laptop_run_has_an_ed_milestone_near_an_llc_boundary(laptop_rows):
    name, ours, criterion, holds = _row(laptop_rows, "essential dynamics")
    assert holds, f"{name}: {ours} (criterion: {criterion})"
