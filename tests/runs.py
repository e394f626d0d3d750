"""Helpers shared by the tests of training runs: small configs, state comparison, run folders
on disk and the `iclgd` command in a child process."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from iclgd import runio
from iclgd.config import RunConfig, run_config_from_dict

SMALL = {"task": {"d": 3, "n_context": 5}, "model": {"n_layers": 2, "n_heads": 2}}


def cli_config_toml(steps: int, checkpoint_every: int, log_every: int) -> str:
    """A run config file for `iclgd train` in a child process: a 2-layer LSA on d = 4, N = 6, batch 256."""
    return (f"[task]\nd = 4\nn_context = 6\n[model]\nn_layers = 2\n[train]\nsteps = {steps}\nbatch_size = 256\n"
            f"checkpoint_every = {checkpoint_every}\nlog_every = {log_every}\n")


def small_config(**train) -> RunConfig:
    """A two-layer, two-head LSA on d = 3, N = 5 for 40 steps of batch 64, checkpoints every 10."""
    return run_config_from_dict({**SMALL, "train": {"steps": 40, "batch_size": 64, "checkpoint_every": 10, "log_every": 5, **train}})


def assert_same_state(a, b) -> None:
    """Two TrainStates are equal to the bit: step, Adam's count, params and both moments."""
    assert a.step == b.step and a.adam.count == b.adam.count
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
        np.testing.assert_array_equal(a.adam.m[name], b.adam.m[name])
        np.testing.assert_array_equal(a.adam.v[name], b.adam.v[name])


def truncate_after(run_dir: Path, step: int) -> None:
    """Delete the checkpoints after ``step``, as if the run had stopped there."""
    for s, path in runio.list_checkpoints(run_dir):
        if s > step:
            path.unlink()


def snapshot(run_dir: Path) -> dict:
    """Every file below run_dir: bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(run_dir).rglob("*")) if p.is_file()}


def start_cli(args: list[str], env_code: str = "", text: bool = False) -> subprocess.Popen:
    """`iclgd ARGS` in a child Python process (after running ``env_code`` there), pipes for output.

    The child takes SIGINT as an interactive command does (KeyboardInterrupt), even when the tests
    run as a background job, whose children inherit SIGINT ignored (POSIX shells' rule)."""
    code = ("import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n" + textwrap.dedent(env_code)
            + "\nimport sys\nfrom iclgd.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text)
