"""The training loop: checkpoints that resume bit-for-bit, divergence handling (the optimiser: test_optim.py)."""
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from runs import SMALL, assert_same_state, cli_config_toml, small_config, start_cli

from iclgd import runio
from iclgd.backends.numpy_backend import NumpyBackend
from iclgd.config import load_run_config, run_config_from_dict
from iclgd.train import StepRecord, TrainingDiverged, load_checkpoint, train

# --- the loop and its run directory -------------------------------------------------------------


def test_training_lowers_the_loss_and_writes_the_run_directory(tmp_path):
    config = small_config(steps=200, lr=0.01, init_scale=0.5)
    state = train(tmp_path, config)
    assert state.step == 200
    assert load_run_config(tmp_path / "config.toml") == config
    records = runio.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(0, 200, 5))
    assert set(records[0]) == {"step", "loss", "lr", "grad_norm", "wall_time"}
    assert np.mean([r["loss"] for r in records[-5:]]) < 0.7 * records[0]["loss"]
    assert [s for s, _ in runio.list_checkpoints(tmp_path)] == list(range(0, 201, 10))


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    config = small_config()
    first = train(tmp_path, config)
    before = (tmp_path / "metrics.jsonl").read_text()
    again = train(tmp_path, config)
    assert_same_state(first, again)
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_resume_from_an_intermediate_checkpoint_is_bit_for_bit(tmp_path):
    config = small_config()
    whole = train(tmp_path / "whole", config)
    partial = tmp_path / "partial"
    train(partial, config)
    for step, path in runio.list_checkpoints(partial):
        if step > 20:
            path.unlink()  # as if the run had stopped after step 20
    resumed = train(partial, config)
    assert_same_state(whole, resumed)
    assert [r["step"] for r in runio.read_jsonl(partial / "metrics.jsonl")] == list(range(0, 40, 5))


def test_a_run_directory_refuses_a_different_config(tmp_path):
    train(tmp_path, small_config())
    with pytest.raises(ValueError, match="different configuration"):
        train(tmp_path, small_config(lr=0.5))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    config = run_config_from_dict(
        {**SMALL, "model": {"dtype": "float32"},
         "train": {"steps": 50, "batch_size": 32, "lr": 1e12, "clip_norm": 0.0, "checkpoint_every": 1, "init_scale": 1.0}}
    )
    with pytest.raises(TrainingDiverged, match=r"non-finite.*last good checkpoint is .*step_\d+\.npz"):
        train(tmp_path, config)
    step, path = runio.list_checkpoints(tmp_path)[-1]
    state = load_checkpoint(path, "float32")
    assert state.step == step
    assert all(np.isfinite(v).all() for v in state.params.values())


# --- a killed process resumes bit-for-bit ---------------------------------------------------------

CONFIG_TOML = cli_config_toml(steps=400, checkpoint_every=20, log_every=5)


def _final_state(run_dir: Path):
    step, path = runio.list_checkpoints(run_dir)[-1]
    assert step == 400
    return load_checkpoint(path, "float64")


def test_a_run_killed_with_sigkill_resumes_bit_for_bit(tmp_path):
    config_path = tmp_path / "run.toml"
    config_path.write_text(CONFIG_TOML)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert start_cli(["train", "--config", str(config_path), "--out", str(whole), "--quiet"]).wait(120) == 0

    process = start_cli(["train", "--config", str(config_path), "--out", str(killed), "--quiet"])
    deadline = time.time() + 60
    while len(runio.list_checkpoints(killed)) < 4 and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert len(runio.list_checkpoints(killed)) < 21, "the run finished before it was killed"

    assert start_cli(["train", "--config", str(config_path), "--out", str(killed), "--quiet"]).wait(120) == 0
    assert_same_state(_final_state(whole), _final_state(killed))


def test_a_run_killed_in_the_middle_of_a_checkpoint_write_resumes_bit_for_bit(tmp_path):
    """The real atomic writer is stopped between writing the third checkpoint's temp file and
    renaming it: the temp file is cut to half its bytes and the process SIGKILLed."""
    config_path = tmp_path / "run.toml"
    config_path.write_text(CONFIG_TOML)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert start_cli(["train", "--config", str(config_path), "--out", str(whole), "--quiet"]).wait(120) == 0
    die_mid_write = """
        import os, signal
        real_replace, renames = os.replace, []
        def dying_replace(src, dst):
            if str(dst).endswith(".npz"):
                renames.append(dst)
                if len(renames) == 3:
                    with open(src, "r+b") as f:
                        f.truncate(os.path.getsize(src) // 2)
                    os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
        os.replace = dying_replace
    """
    process = start_cli(["train", "--config", str(config_path), "--out", str(killed), "--quiet"], die_mid_write)
    assert process.wait(60) == -signal.SIGKILL
    assert [s for s, _ in runio.list_checkpoints(killed)] == [0, 20]
    assert list((killed / "checkpoints").glob(".step_00000040.npz.*.tmp")), "the torn temp file is left behind"
    assert start_cli(["train", "--config", str(config_path), "--out", str(killed), "--quiet"]).wait(120) == 0
    assert_same_state(_final_state(whole), _final_state(killed))


def test_a_damaged_newest_checkpoint_is_skipped_on_resume(tmp_path):
    config = small_config()
    whole = train(tmp_path / "whole", config)
    damaged = tmp_path / "damaged"
    train(damaged, config)
    for step, path in runio.list_checkpoints(damaged):
        if step > 30:
            path.unlink()
    newest = runio.list_checkpoints(damaged)[-1][1]
    newest.write_bytes(newest.read_bytes()[:100])  # as a failing disk might leave it
    resumed = train(damaged, config)
    assert_same_state(whole, resumed)


def test_run_files_get_the_usual_permissions(tmp_path):
    train(tmp_path, small_config(steps=10))
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.toml", "metrics.jsonl", "checkpoints/step_00000010.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_train_with_seeds_writes_one_run_per_seed_equal_to_single_runs(tmp_path):
    from iclgd.cli import main

    config = tmp_path / "run.toml"
    config.write_text("[task]\nd = 3\nn_context = 4\n[train]\nsteps = 20\nbatch_size = 16\ncheckpoint_every = 10\nseed = 5\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "many"), "--seeds", "3", "--quiet"]) == 0
    for seed in (5, 6, 7):
        single = config.with_name(f"single{seed}.toml")
        single.write_text(config.read_text().replace("seed = 5", f"seed = {seed}"))
        assert main(["train", "--config", str(single), "--out", str(tmp_path / f"one{seed}"), "--quiet"]) == 0
        many = (tmp_path / "many" / f"seed_{seed}" / "checkpoints" / "step_00000020.npz").read_bytes()
        one = (tmp_path / f"one{seed}" / "checkpoints" / "step_00000020.npz").read_bytes()
        assert many == one


class PoisonedSeed(NumpyBackend):
    """The numpy backend, except that one seed's trainer reports a NaN loss from step 10 on."""

    def __init__(self, bad_seed):
        self.bad_seed = bad_seed

    def trainer(self, config):
        trainer = super().trainer(config)
        if config.train.seed != self.bad_seed:
            return trainer

        class Poisoned:
            def advance(self, state, n_steps):
                new_state, records = trainer.advance(state, n_steps)
                if state.step >= 10:
                    last = records[-1]
                    records[-1] = StepRecord(last.step, float("nan"), last.lr, last.grad_norm)
                return new_state, records

        return Poisoned()


def test_a_diverging_seed_stops_alone_and_the_others_finish(tmp_path):
    from iclgd.train import train_seeds

    configs = [small_config(seed=s, steps=30) for s in (0, 1, 2)]
    dirs = [tmp_path / f"s{s}" for s in (0, 1, 2)]
    with pytest.raises(TrainingDiverged, match=r"s1: training stopped at step 1\d.*last good checkpoint is .*step_00000010\.npz"):
        train_seeds(dirs, configs, backend=PoisonedSeed(bad_seed=1))
    assert [s for s, _ in runio.list_checkpoints(dirs[1])][-1] == 10
    for healthy in (dirs[0], dirs[2]):
        assert runio.list_checkpoints(healthy)[-1][0] == 30


def test_train_seeds_rejects_mismatched_or_repeated_inputs(tmp_path):
    from iclgd.train import train_seeds

    config = small_config()
    with pytest.raises(ValueError, match="one run directory per config"):
        train_seeds([tmp_path / "a"], [config, config])
    with pytest.raises(ValueError, match="distinct seeds"):
        train_seeds([tmp_path / "a", tmp_path / "b"], [config, config])
    assert not (tmp_path / "a").exists()
