"""`iclgd llc`: the LLC of a run's checkpoints over training.  One result file per checkpoint,
the table and the figure; resuming (a rerun is a no-op, a removed file is recomputed the same,
an interrupted run leaves only whole files); other settings refused by name; one error line
for every bad input; the families' defaults (the paper's SGLD for the transformer)."""
import importlib.util
import inspect
import json
import math
import shutil

import numpy as np
import pytest

from iclgd import gd_models, plots, runio
from iclgd.analysis.llc import LLCDiverged, estimate_llc
from iclgd.cli import main
from iclgd.config import run_config_from_dict
from iclgd.experiments import llc_run
from iclgd.train import train

TRANSFORMER = {
    "task": {"d": 2, "n_examples": 3},
    "model": {"family": "transformer", "n_layers": 1, "n_heads": 1, "d_model": 8, "d_mlp": 8},
    "train": {"steps": 4, "batch_size": 16, "checkpoint_every": 2, "log_every": 2, "eval_size": 16},
}
LSA = {"task": {"d": 3, "n_context": 4}, "train": {"steps": 4, "batch_size": 16, "checkpoint_every": 2, "log_every": 2}}
GDPP = {**LSA, "model": {"family": "gdpp", "n_layers": 2}}
#: 2 chains x 10 draws after 5 burn-in steps, 64 sequences in minibatches of 16: milliseconds a checkpoint
SMALL = ["--chains", "2", "--draws", "10", "--burnin", "5", "--data-size", "64", "--batch-size", "16", "--backend", "numpy"]
STEPS = [0, 2, 4]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Run directories of a tiny transformer, LSA and GD++ model, 4 steps each, checkpoints at 0, 2, 4."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, table in (("transformer", TRANSFORMER), ("lsa", LSA), ("gdpp", GDPP)):
        train(root / name, run_config_from_dict(table), quiet=True)
        runs[name] = root / name
    return runs


@pytest.fixture
def run_dir(trained, tmp_path):
    """A fresh copy of the transformer run (its llc/ folder is the test's own)."""
    return shutil.copytree(trained["transformer"], tmp_path / "run")


def llc(run, *flags):
    return main(["llc", "--run", str(run), *SMALL, *flags])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line]


def results(out) -> dict:
    return {step: json.loads(path.read_text()) for step, path in llc_run.list_results(out).items()}


def snapshot(folder) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# --- what a run writes ------------------------------------------------------------------------------


def test_one_result_file_per_checkpoint_the_table_and_the_figure(run_dir, capsys):
    assert llc(run_dir) == 0
    out = run_dir / "llc"
    found = results(out)
    assert sorted(found) == STEPS and sorted(p.name for p in out.iterdir()) == [
        "llc.json", "llc.png", "step_00000000.json", "step_00000002.json", "step_00000004.json"]
    for step, record in found.items():
        assert record["step"] == step and math.isfinite(record["llc_mean"]) and record["diverged"] is None
        assert record["backend"] == "numpy" and record["wall_time_s"] > 0
        assert record["data"]["stream"] == "iclgd.streams.purpose_rng(seed, 'llc/data')" and record["data"]["size"] == 64
        assert record["llc_settings"]["chains"] == 2 and record["llc_settings"]["per_position"] is True
        assert record["settings"]["num_draws"] == 10 and record["settings"]["batch_size"] == 16
        assert len(record["per_position"]["llc_mean"]) == 3  # K = 3 positions
        assert 0 <= record["diagnostics"]["mala_acceptance"] <= 1
    table = json.loads((out / "llc.json").read_text())
    assert [row["step"] for row in table["table"]] == STEPS and table["figure"] == "llc.png"
    assert [row["llc_mean"] for row in table["table"]] == [found[s]["llc_mean"] for s in STEPS]
    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert [line.split(":")[0] for line in progress] == ["[1/3] step 0", "[2/3] step 2", "[3/3] step 4"]
    assert all(" +- " in line and "MALA" in line for line in progress)
    assert "llc.json and llc.png" in captured.out


def test_a_rerun_is_a_no_op_that_says_it_resumed(run_dir, capsys):
    assert llc(run_dir) == 0
    before = snapshot(run_dir / "llc")
    capsys.readouterr()
    assert llc(run_dir) == 0
    assert snapshot(run_dir / "llc") == before
    assert "resuming: all 3 checkpoints" in capsys.readouterr().err


def test_a_removed_result_is_recomputed_equal_to_before(run_dir, capsys):
    assert llc(run_dir) == 0
    path = llc_run.step_path(run_dir / "llc", 2)
    before = json.loads(path.read_text())
    path.unlink()
    capsys.readouterr()
    assert llc(run_dir) == 0
    after = json.loads(path.read_text())
    before.pop("wall_time_s"), after.pop("wall_time_s")
    assert after == before
    assert "resuming: 2 of 3 already estimated" in capsys.readouterr().err


def test_a_subset_of_checkpoints_then_all_of_them_resumes(run_dir, capsys):
    assert llc(run_dir, "--checkpoints", "4,0") == 0
    assert sorted(results(run_dir / "llc")) == [0, 4]
    assert llc(run_dir, "--checkpoints", "all") == 0
    assert sorted(results(run_dir / "llc")) == STEPS
    assert "resuming: 2 of 3" in capsys.readouterr().err


def test_other_settings_in_the_same_folder_are_refused_naming_them(run_dir, capsys):
    assert llc(run_dir) == 0
    before = snapshot(run_dir / "llc")
    capsys.readouterr()
    assert llc(run_dir, "--draws", "11", "--seed", "3") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("iclgd: error: ")
    assert "--draws 10 there, 11 now" in lines[0] and "--seed 0 there, 3 now" in lines[0] and "--out" in lines[0]
    assert snapshot(run_dir / "llc") == before
    assert llc(run_dir, "--draws", "11", "--out", str(run_dir / "llc-11")) == 0  # elsewhere: fine


def test_a_folder_being_written_by_another_process_is_refused(run_dir, capsys):
    with runio.RunLock(run_dir / "llc"):
        assert llc(run_dir) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "being written by another process" in lines[0]


# --- interruption and divergence ---------------------------------------------------------------------


def test_an_interrupted_run_leaves_only_whole_files_and_a_rerun_completes(run_dir, trained, tmp_path, monkeypatch, capsys):
    calls = []
    real = llc_run.estimate

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(llc_run, "estimate", interrupted_on_the_second)
    assert llc(run_dir) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "iclgd: interrupted; rerun the same command to resume"
    out = run_dir / "llc"
    assert sorted(p.name for p in out.iterdir()) == ["step_00000000.json"]  # no temp file, no lock, no table
    json.loads((out / "step_00000000.json").read_text())
    monkeypatch.setattr(llc_run, "estimate", real)
    assert llc(run_dir) == 0
    assert "resuming: 1 of 3" in capsys.readouterr().err
    uninterrupted = shutil.copytree(trained["transformer"], tmp_path / "whole")
    assert llc(uninterrupted) == 0
    got, expected = results(out), results(uninterrupted / "llc")
    assert {s: r["llc_per_chain"] for s, r in got.items()} == {s: r["llc_per_chain"] for s, r in expected.items()}


def test_a_killed_writers_temp_file_is_removed_and_its_checkpoint_estimated(run_dir, capsys):
    assert llc(run_dir, "--checkpoints", "0") == 0
    left = run_dir / "llc" / ".step_00000002.json.k1ll3d.tmp"  # what a SIGKILL mid-write leaves
    left.write_text('{"step": 2, "llc_me')
    assert llc(run_dir) == 0
    assert not left.exists() and sorted(results(run_dir / "llc")) == STEPS
    assert f"iclgd: warning: removed {left}, left by a writer that was killed" in capsys.readouterr().err


def test_diverged_chains_are_recorded_skipped_on_rerun_and_exit_1(run_dir, monkeypatch, capsys):
    real, calls = llc_run.estimate, []

    def diverge_at_step_2(*args, **kwargs):  # checkpoints are estimated in step order: 0, 2, 4
        calls.append(1)
        if len(calls) == 2:
            raise LLCDiverged("chain 0, draw 3: the loss became nan; lower step_size")
        return real(*args, **kwargs)

    monkeypatch.setattr(llc_run, "estimate", diverge_at_step_2)
    assert llc(run_dir) == 1
    err = capsys.readouterr().err
    assert "[2/3] step 2: diverged (chain 0, draw 3" in err and "diverged at step 2" in err
    record = json.loads(llc_run.step_path(run_dir / "llc", 2).read_text())
    assert record["llc_mean"] is None and "chain 0, draw 3" in record["diverged"]
    before = snapshot(run_dir / "llc")
    assert llc(run_dir) == 1  # the same settings diverge the same way: not estimated again
    assert snapshot(run_dir / "llc") == before


def test_without_matplotlib_the_table_is_written_and_a_note_says_why_there_is_no_figure(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    assert llc(run_dir) == 0
    captured = capsys.readouterr()
    assert not (run_dir / "llc" / "llc.png").exists()
    assert json.loads((run_dir / "llc" / "llc.json").read_text())["figure"] is None
    assert "iclgd: note: llc.png not drawn: matplotlib is not installed" in captured.err
    assert "no figure: matplotlib is not installed" in captured.out


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--checkpoints", "3"], "--checkpoints names step 3, which is not a checkpoint of"),
    (["--checkpoints", "0,two"], "--checkpoints must be 'all' or comma-separated training steps"),
    (["--chains", "0"], "--chains must be a positive integer (>= 1); got 0"),
    (["--draws", "-5"], "--draws must be a positive integer (>= 1); got -5"),
    (["--burnin", "-1"], "--burnin must be a non-negative integer (>= 0); got -1"),
    (["--step-size", "-0.1"], "--step-size must be > 0; got -0.1"),
    (["--nbeta", "inf"], "--nbeta must be finite"),
    (["--localization", "-1"], "--localization must be >= 0"),
    (["--data-size", "0"], "--data-size must be a positive integer (>= 1); got 0"),
    (["--score", "best"], "--score must be one of ['minibatch', 'paired', 'full']; got 'best'"),
    (["--backend", "numba"], "--backend numba does not compute the 'transformer' family; use numpy or jax"),
    (["--backend", "gpu"], "--backend: unknown backend 'gpu'"),
])
def test_bad_flags_are_one_error_line_and_exit_2_before_anything_is_written(run_dir, capsys, flags, message):
    assert llc(run_dir, *flags) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("iclgd: error: ") and message in lines[0], lines
    assert not (run_dir / "llc").exists()


def test_bad_run_directories_are_one_error_line_each(tmp_path, trained, capsys):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "untrained").mkdir()
    shutil.copy(trained["transformer"] / "config.toml", tmp_path / "untrained")
    cases = {"missing": "does not exist", "a_file": "is a file", "empty": "has none",
             "untrained": "holds no checkpoints (expected checkpoints/step_*.npz)"}
    for name, message in cases.items():
        assert llc(tmp_path / name) == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and lines[0].startswith("iclgd: error: --run ") and message in lines[0], lines
    assert not (tmp_path / "untrained" / "llc").exists()


def test_per_position_is_refused_for_a_model_with_one_query(trained, capsys):
    assert llc(trained["lsa"], "--per-position") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--per-position must be off: it needs a transformer run" in lines[0]


# --- the families and their defaults ------------------------------------------------------------------


def test_the_transformer_defaults_are_the_papers_sgld_with_fewer_draws():
    settings = llc_run.LLCSettings().resolved(run_config_from_dict(TRANSFORMER).model)
    assert settings.step_size == 3e-4
    assert settings.step_size * settings.nbeta / 2 == pytest.approx(0.01)  # the authors' gradient scale
    assert settings.step_size * settings.localization / 2 == pytest.approx(0.001)  # their localization scale
    assert (settings.batch_size, settings.score, settings.per_position, settings.mala_every) == (64, "minibatch", True, 10)
    assert (settings.chains, settings.draws, settings.burnin, settings.data_size) == (4, 500, 1000, 8192)


def test_the_default_backend_computes_the_family_and_is_the_fastest_installed():
    from iclgd.backends import fastest_backend

    transformer = run_config_from_dict(TRANSFORMER).model
    expected = "jax" if importlib.util.find_spec("jax") else "numpy"
    assert llc_run.default_backend(transformer) == expected
    assert llc_run.default_backend(run_config_from_dict(LSA).model) == fastest_backend()


def test_the_lsa_families_take_the_estimators_own_defaults():
    settings = llc_run.LLCSettings(data_size=4000).resolved(run_config_from_dict(LSA).model)
    defaults = {name: p.default for name, p in inspect.signature(estimate_llc).parameters.items()}
    assert settings.step_size == defaults["step_size"] and settings.localization == defaults["localization"]
    assert (settings.chains, settings.draws, settings.batch_size) == (defaults["num_chains"], defaults["num_draws"], defaults["batch_size"])
    assert settings.nbeta == pytest.approx(4000 / math.log(4000)) and settings.per_position is False
    assert settings.burnin == math.ceil(2 / (settings.step_size * settings.localization))


@pytest.mark.parametrize("family", ["lsa", "gdpp"])
def test_the_lsa_families_estimate_every_checkpoint(trained, tmp_path, family, capsys):
    run = shutil.copytree(trained[family], tmp_path / family)
    assert llc(run) == 0
    found = results(run / "llc")
    assert sorted(found) == STEPS and all(math.isfinite(r["llc_mean"]) and "per_position" not in r for r in found.values())


def test_a_learned_rate_models_objective_has_the_gradient_of_its_loss():
    config = run_config_from_dict(GDPP)
    backend = llc_run.check_backend("numpy", config.model)
    data = llc_run.build_data(config, llc_run.LLCSettings(data_size=32, seed=1).resolved(config.model))
    objective = llc_run.ThroughLSAObjective(backend, config.model, data)
    rng = np.random.default_rng(0)
    params = {name: rng.normal(size=shape) * 0.3 for name, shape in gd_models.param_shapes(config.model).items()}
    loss, grads = objective.loss_and_grad(params)
    assert loss == pytest.approx(objective.loss(params))
    h = 1e-6
    for name, p in params.items():
        for i in np.ndindex(p.shape):
            up, down = {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in params.items()}
            up[name][i] += h
            down[name][i] -= h
            assert grads[name][i] == pytest.approx((objective.loss(up) - objective.loss(down)) / (2 * h), rel=1e-6, abs=1e-9)
