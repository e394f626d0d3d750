"""The `iclgd` command line as researchers expect it: --version, defaults in --help, --set,
--x-scale and the backend rule on every reproduce command, errors in the flags' own words,
smoke runs in their own folders, provenance in results.json, and one line with a documented
exit code for every failure."""
import argparse
import contextlib
import datetime
import errno
import io
import json
import os
import re

import numpy as np
import pytest

import iclgd
from iclgd import provenance, runio
from iclgd.backends import fastest_backend
from iclgd.cli import build_parser, main
from iclgd.config import ConfigError, apply_overrides
from iclgd.experiments import multi_layer, one_layer, ood
from iclgd.experiments.multi_layer import MultiLayerSetting
from iclgd.experiments.one_layer import OneLayerSetting
from iclgd.experiments.ood import OODSetting
from iclgd.train import RunInterrupted

TINY = """
[task]
d = 3
n_context = 4
[train]
steps = 6
batch_size = 8
checkpoint_every = 3
log_every = 1
backend = "numpy"
"""
REPRODUCE = {"one-layer": one_layer, "multi-layer": multi_layer, "ood": ood}


def tiny_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def subparsers(parser: argparse.ArgumentParser):
    """Every parser of the command, the root first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from subparsers(child)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


# --- version and help ------------------------------------------------------------------------------


def test_version_prints_iclgd_and_its_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"iclgd {iclgd.__version__}"


def test_every_option_of_every_command_shows_its_default_in_help():
    for parser in subparsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.required:  # positionals, -h, --version, flags
                continue
            said = "default" in (action.help or "")
            shown = f"(default: {action.default})" in text
            assert said or shown, f"{parser.prog} {action.option_strings[0]}"


def test_reproduce_help_shows_the_full_and_the_quick_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "one-layer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 5000; 300 with --quick)" in text
    assert "(default: runs/one-layer, or runs/quick/one-layer with --quick)" in text
    assert f"the fastest installed, here {fastest_backend()}" in text


def test_the_exit_codes_are_documented_in_the_help_epilog():
    text = build_parser().format_help()
    for code in ("0", "1", "2", "74", "130", "143"):
        assert re.search(rf"^  {code} ", text, re.MULTILINE), code


# --- train --set -----------------------------------------------------------------------------------


def test_set_overrides_reach_the_written_config_toml(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--config", str(tiny_config(tmp_path)), "--out", str(out), "--quiet",
                 "--set", "train.lr=0.002", "--set", "model.n_layers=2"])
    assert code == 0
    written = (out / "config.toml").read_text()
    assert "lr = 0.002\n" in written and "n_layers = 2\n" in written


def test_set_values_are_read_as_toml_values_and_bare_words_as_strings():
    data = apply_overrides({"train": {"steps": 5}}, ["train.lr=0.002", "train.steps=2", "model.tied=true",
                                                     'train.schedule="cosine"', "train.backend=numba"])
    assert data == {"train": {"steps": 2, "lr": 0.002, "schedule": "cosine", "backend": "numba"}, "model": {"tied": True}}
    assert type(data["train"]["lr"]) is float and type(data["train"]["steps"]) is int


def test_a_later_set_of_the_same_key_wins():
    assert apply_overrides({}, ["train.lr=0.1", "train.lr=0.2"]) == {"train": {"lr": 0.2}}


def test_set_leaves_the_config_it_was_given_unchanged():
    data = {"train": {"lr": 0.1}}
    apply_overrides(data, ["train.lr=0.2"])
    assert data == {"train": {"lr": 0.1}}


def test_set_accepts_the_keys_of_the_model_family_it_names():
    data = apply_overrides({}, ["model.family=gdpp", "model.n_layers=3"])
    assert data == {"model": {"family": "gdpp", "n_layers": 3}}
    with pytest.raises(ConfigError, match="--set model.n_heads=2: unknown key 'n_heads'"):
        apply_overrides({"model": {"family": "gd"}}, ["model.n_heads=2"])


@pytest.mark.parametrize("assignment", ["lr=0.1", "train.lr", "train.=1", ".lr=1", "train.lr.x=1", "training.lr=1", "train.lrr=1"])
def test_a_bad_set_is_refused_naming_set_and_the_assignment_before_anything_is_written(tmp_path, capsys, assignment):
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config(tmp_path)), "--out", str(out), "--quiet", "--set", assignment]) == 2
    err = capsys.readouterr().err
    assert "--set" in err and assignment in err
    assert not out.exists()


def test_a_set_value_is_validated_as_the_file_is(tmp_path, capsys):
    config = tiny_config(tmp_path)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--set", "train.lr=-1"]) == 2
    assert f"{config}: [train]: lr must be > 0" in capsys.readouterr().err


def test_the_backend_flag_still_overrides_the_config(tmp_path, capsys):
    config = tiny_config(tmp_path)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--backend", "tpu9000"]) == 2
    assert "--backend must be one of" in capsys.readouterr().err


def test_train_ends_by_printing_each_runs_final_loss(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config(tmp_path)), "--out", str(out), "--quiet"]) == 0
    last = runio.read_jsonl(out / "metrics.jsonl")[-1]
    assert f"final loss {last['loss']:.6g}" in capsys.readouterr().out


# --- reproduce: flags, backend rule, errors in flags' words ----------------------------------------


@pytest.mark.parametrize("claim", REPRODUCE)
def test_every_reproduce_command_takes_x_scale(claim):
    args = build_parser().parse_args(["reproduce", claim, "--x-scale", "authors_code"])
    assert args.x_scale == 0.5


def test_the_default_x_scale_of_every_experiment_is_the_papers():
    assert OneLayerSetting().x_scale == MultiLayerSetting().x_scale == OODSetting().x_scale == 1.0


def test_the_multi_layer_task_uses_its_x_scale():
    assert MultiLayerSetting(x_scale="authors_code", backend="numpy").task.x_scale == 0.5


def test_every_experiment_defaults_to_the_fastest_installed_backend():
    assert OneLayerSetting().backend == MultiLayerSetting().backend == OODSetting().backend == fastest_backend()


@pytest.mark.parametrize("argv, flag", [
    (["one-layer", "--val-tasks", "0"], "--val-tasks must be"),
    (["one-layer", "--steps", "0"], "--steps must be a positive integer"),
    (["multi-layer", "--val-tasks", "1"], "--val-tasks must be >= 2"),
    (["multi-layer", "--baseline-steps", "0"], "--baseline-steps must be a positive integer"),
    (["ood", "--steps", "0"], "--steps must be a positive integer"),
    (["ood", "--backend", "cuda"], "--backend must be one of"),
])
def test_errors_name_the_flag_not_the_settings_field(tmp_path, capsys, argv, flag):
    assert main(["reproduce", *argv, "--quick", "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert flag in err and "_" not in err.split("must")[0]


def test_a_bad_x_scale_is_a_usage_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["reproduce", "ood", "--x-scale", "-1"])
    assert stop.value.code == 2
    assert "--x-scale" in capsys.readouterr().err


def test_bench_writes_to_a_run_folder_by_default_not_over_the_recorded_results():
    assert build_parser().parse_args(["bench"]).out == "runs/bench"
    assert build_parser().parse_args(["bench", "--out", "benchmarks/results"]).out == "benchmarks/results"


# --- quick runs: their own folder, smoke wording, provenance ----------------------------------------


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Every reproduce command with --quick on numpy, from an empty working folder, without --out:
    claim -> (exit code, stdout, stderr, results folder)."""
    cwd = tmp_path_factory.mktemp("cwd")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        for claim in REPRODUCE:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["reproduce", claim, "--quick", "--backend", "numpy"])
            runs[claim] = code, out.getvalue(), err.getvalue(), cwd / "runs" / "quick" / claim
    return cwd, runs


def test_quick_runs_write_to_their_own_default_folder(quick_runs):
    cwd, runs = quick_runs
    assert sorted(p.name for p in (cwd / "runs").iterdir()) == ["quick"]
    for claim, (_, _, _, folder) in runs.items():
        assert (folder / "results.json").is_file() and (folder / "report.md").is_file(), claim


def test_quick_runs_exit_0_when_their_smoke_checks_hold(quick_runs):
    for claim, (code, _, _, folder) in quick_runs[1].items():
        results = json.loads((folder / "results.json").read_text())
        assert results["smoke_checks"] and all(check["holds"] for check in results["smoke_checks"]), claim
        assert code == 0, claim


def test_quick_runs_say_plainly_in_table_and_report_that_they_are_smoke_runs(quick_runs):
    for claim, (_, out, _, folder) in quick_runs[1].items():
        report = (folder / "report.md").read_text()
        for text in (out, report):
            assert "SMOKE RUN (--quick)" in text and "| smoke-run check |" in text, claim
        results = json.loads((folder / "results.json").read_text())
        for check in results["smoke_checks"]:
            assert check["claim"] in out and check["claim"] in report


def test_each_run_names_its_backend_on_stderr_first(quick_runs):
    for claim, (_, _, err, _) in quick_runs[1].items():
        assert err.splitlines()[0] == "backend: numpy", claim


def test_quiet_runs_print_no_backend_line(tmp_path, capsys):
    main(["reproduce", "one-layer", "--quick", "--quiet", "--backend", "numpy", "--val-tasks", "1", "--out", str(tmp_path)])
    assert "backend:" not in capsys.readouterr().err


def test_results_json_carries_provenance(quick_runs):
    for claim, (_, _, _, folder) in quick_runs[1].items():
        found = json.loads((folder / "results.json").read_text())["provenance"]
        assert found["iclgd_version"] == iclgd.__version__
        assert found["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", found["git_commit"])
        assert found["python"].count(".") == 2
        assert found["packages"]["numpy"] == np.__version__
        assert found["backend"] == "numpy"
        assert isinstance(found["command_line"], list) and all(isinstance(arg, str) for arg in found["command_line"])
        date = datetime.datetime.fromisoformat(found["date"])
        assert date.utcoffset() == datetime.timedelta(0)
        assert isinstance(found["machine"]["platform"], str) and found["machine"]["cpu_count"] >= 1


def test_results_json_carries_every_claims_verdict(quick_runs):
    for claim, (_, _, _, folder) in quick_runs[1].items():
        results = json.loads((folder / "results.json").read_text())
        rows = REPRODUCE[claim].comparison_rows(results)
        assert results["verdicts"] == [{"claim": c, "ours": o, "criterion": k, "holds": bool(h)} for c, o, k, h in rows]


def test_git_commit_is_null_outside_a_git_checkout(tmp_path):
    assert provenance.git_commit(tmp_path) is None


def test_git_commit_is_null_when_git_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert provenance.git_commit() is None


# --- failures: one line, a documented exit code ------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["reproduce", "one-layer", "--quick", "--quiet", "--backend", "numpy"],
    ["reproduce", "multi-layer", "--quick", "--quiet", "--backend", "numpy"],
    ["reproduce", "ood", "--quick", "--quiet", "--backend", "numpy"],
    ["train", "--config", "CONFIG", "--quiet"],
])
def test_out_naming_an_existing_file_is_one_error_line_and_exit_74(tmp_path, capsys, argv):
    in_the_way = tmp_path / "results.txt"
    in_the_way.write_text("keep me\n")
    argv = [str(tiny_config(tmp_path)) if arg == "CONFIG" else arg for arg in argv]
    assert main([*argv, "--out", str(in_the_way)]) == 74
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("iclgd: error: ") and str(in_the_way) in lines[0]
    assert in_the_way.read_text() == "keep me\n"


def test_a_read_only_directory_is_one_error_line_and_exit_74(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user (root) can write to a read-only directory")
        code = main(["reproduce", "one-layer", "--quick", "--quiet", "--backend", "numpy", "--out", str(locked / "run")])
    finally:
        locked.chmod(0o700)
    assert code == 74
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("iclgd: error: Permission denied: ")


def failing_check(monkeypatch, error: BaseException) -> None:
    """Make `iclgd check` raise ``error``."""
    def raise_it(args):
        raise error

    monkeypatch.setattr("iclgd.cli._check", raise_it)


def test_a_full_disk_is_reported_with_what_failed_and_the_path(monkeypatch, capsys):
    failing_check(monkeypatch, OSError(errno.ENOSPC, "No space left on device", "runs/x/results.json"))
    assert main(["check"]) == 74
    assert capsys.readouterr().err == "iclgd: error: No space left on device: runs/x/results.json\n"


def test_a_signal_stopped_run_prints_its_message_and_exits_with_its_code(monkeypatch, capsys):
    failing_check(monkeypatch, RunInterrupted(15, "stopped by SIGTERM at step 40; rerun to resume"))
    assert main(["check"]) == 143
    assert capsys.readouterr().err == "iclgd: stopped by SIGTERM at step 40; rerun to resume\n"


def test_ctrl_c_outside_training_prints_interrupted_and_exits_130(monkeypatch, capsys):
    failing_check(monkeypatch, KeyboardInterrupt())
    assert main(["check"]) == 130
    assert capsys.readouterr().err == "iclgd: interrupted; rerun the same command to resume\n"


def test_sigterm_outside_training_stops_the_command_with_one_line_and_exit_143(monkeypatch, capsys):
    import os
    import signal
    import time

    from iclgd import checks

    def terminated_midway(**_):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(checks, "run_checks", terminated_midway)
    assert main(["check"]) == 143
    assert capsys.readouterr().err == "iclgd: terminated; rerun the same command to resume\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed afterwards
