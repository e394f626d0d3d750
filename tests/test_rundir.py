"""Run directories cannot mix or rot: one writer at a time, checkpoints that belong to their run,
nothing non-finite saved, damage reported and never silently restarted, bounded reads."""
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from runs import SMALL, cli_config_toml, small_config, snapshot, start_cli, truncate_after

import iclgd
from iclgd import runio
from iclgd.config import run_config_from_dict
from iclgd.train import CheckpointMismatch, RunDirectory, TrainingDiverged, load_checkpoint, train

def installed_backends():
    import importlib.util

    engines = {"numpy": (), "numba": ("numba",), "jax": ("jax", "optax")}
    return [name for name, needs in engines.items() if all(importlib.util.find_spec(n) for n in needs)]


# --- one writer at a time ---------------------------------------------------------------------------


def test_a_second_writer_in_the_same_process_is_refused_naming_the_holder(tmp_path):
    config = small_config()
    first = RunDirectory(tmp_path, config, quiet=True)
    try:
        with pytest.raises(runio.RunLocked, match=rf"being written by another process \(pid {os.getpid()} on "):
            RunDirectory(tmp_path, config, quiet=True)
    finally:
        first.close()
    RunDirectory(tmp_path, config, quiet=True).close()  # released: the next writer gets it


def test_the_lock_file_is_gone_after_a_run(tmp_path):
    train(tmp_path, small_config(steps=10))
    assert not (tmp_path / runio.LOCK_FILE).exists()


CONFIG_TOML = cli_config_toml(steps=1500, checkpoint_every=50, log_every=50)
FINAL_STEP = 1500


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The config file and the final checkpoint of one uninterrupted run of it."""
    folder = tmp_path_factory.mktemp("whole")
    config = folder / "run.toml"
    config.write_text(CONFIG_TOML)
    assert _start(["train", "--config", str(config), "--out", str(folder / "run"), "--quiet"]).wait(300) == 0
    return config, _final_checkpoint_bytes(folder / "run")


def _start(args):
    return start_cli(args, text=True)


def _wait_for(condition, seconds=60.0):
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def _final_checkpoint_bytes(run_dir: Path) -> bytes:
    step, path = runio.list_checkpoints(run_dir)[-1]
    assert step == FINAL_STEP
    return path.read_bytes()


@pytest.mark.parametrize("second_seed", [0, 1], ids=["same-config", "other-seed"])
def test_two_concurrent_trains_on_one_directory_one_runs_the_other_is_refused(tmp_path, whole_run, second_seed):
    config, whole = whole_run
    other = tmp_path / "other.toml"
    other.write_text(CONFIG_TOML.replace("[train]\n", f"[train]\nseed = {second_seed}\n"))
    shared = tmp_path / "shared"
    first = _start(["train", "--config", str(config), "--out", str(shared), "--quiet"])
    _wait_for(lambda: (shared / runio.LOCK_FILE).exists() and len(runio.list_checkpoints(shared)) >= 1)
    second = _start(["train", "--config", str(other), "--out", str(shared), "--quiet"])
    _, refused = second.communicate(timeout=120)
    assert first.poll() is None, "the first run finished before the second started; make it longer"
    assert second.returncode == 2
    assert f"being written by another process (pid {first.pid}" in refused
    assert "Traceback" not in refused
    assert first.wait(300) == 0
    assert _final_checkpoint_bytes(shared) == whole


# --- checkpoints belong to their run ---------------------------------------------------------------


def test_every_checkpoint_carries_the_config_fingerprint_and_its_step(tmp_path):
    config = small_config(steps=20)
    train(tmp_path, config)
    for step, path in runio.list_checkpoints(tmp_path):
        state = load_checkpoint(path, "float64", config)
        assert state.step == step
        with np.load(path) as data:
            assert len(str(data["fingerprint"])) == 16
            assert json.loads(str(data["data_stream"]))["next_batch"] == step


def test_a_checkpoint_copied_from_another_run_is_refused(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    train(ours, small_config(seed=0))
    train(theirs, small_config(seed=1))
    truncate_after(ours, 20)
    shutil.copy(runio.checkpoint_path(theirs, 30), runio.checkpoint_path(ours, 30))
    with pytest.raises(CheckpointMismatch, match="checkpoint of another run"):
        train(ours, small_config(seed=0))


def test_a_renamed_checkpoint_is_refused(tmp_path):
    config = small_config()
    train(tmp_path, config)
    truncate_after(tmp_path, 20)
    runio.checkpoint_path(tmp_path, 20).rename(runio.checkpoint_path(tmp_path, 30))
    with pytest.raises(CheckpointMismatch, match="holds step 20, not the step 30"):
        train(tmp_path, config)


def test_a_checkpoint_whose_data_stream_position_differs_is_refused(tmp_path):
    config = small_config()
    train(tmp_path, config)
    truncate_after(tmp_path, 20)
    path = runio.checkpoint_path(tmp_path, 20)
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    stream = json.loads(str(arrays["data_stream"]))
    arrays["data_stream"] = np.array(json.dumps({**stream, "next_batch": 19}))
    runio.save_npz(path, arrays)
    with pytest.raises(CheckpointMismatch, match="data stream position"):
        train(tmp_path, config)


def test_a_directory_with_checkpoints_but_no_config_is_refused(tmp_path):
    config = small_config()
    train(tmp_path, config)
    (tmp_path / "config.toml").unlink()
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="checkpoints but no config.toml"):
        train(tmp_path, config)
    assert snapshot(tmp_path) == before


def test_a_refused_directory_names_the_fields_that_differ(tmp_path):
    train(tmp_path, small_config())
    with pytest.raises(ValueError, match=r"train\.lr, train\.seed differ"):
        train(tmp_path, small_config(lr=0.5, seed=3))


# --- nothing non-finite is saved ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", installed_backends())
def test_a_float32_run_with_a_huge_rate_stops_naming_a_finite_checkpoint(tmp_path, backend):
    config = run_config_from_dict(
        {**SMALL, "model": {**SMALL["model"], "dtype": "float32"},
         "train": {"steps": 20, "batch_size": 32, "lr": 1e300, "checkpoint_every": 1, "backend": backend}}
    )
    with pytest.raises(TrainingDiverged) as stopped:
        train(tmp_path, config)
    named = Path(str(stopped.value).split("last good checkpoint is ")[1].split(". ")[0])
    assert named.exists()
    for _, path in runio.list_checkpoints(tmp_path):
        state = load_checkpoint(path, "float32", config)
        arrays = [*state.params.values(), *state.adam.m.values(), *state.adam.v.values()]
        assert all(np.isfinite(a).all() for a in arrays), path
    assert runio.list_checkpoints(tmp_path)[-1][1] == named


# --- damage is reported, never silently restarted ---------------------------------------------------


def test_a_damaged_checkpoint_is_reported_by_name_and_skipped(tmp_path, capsys):
    config = small_config()
    whole = train(tmp_path / "whole", config)
    run = tmp_path / "run"
    train(run, config)
    truncate_after(run, 30)
    damaged = runio.checkpoint_path(run, 30)
    damaged.write_bytes(damaged.read_bytes()[:100])
    resumed = train(run, config)
    assert f"skipping damaged checkpoint: {damaged}" in capsys.readouterr().err
    for name in whole.params:
        np.testing.assert_array_equal(whole.params[name], resumed.params[name])


def test_a_run_whose_checkpoints_are_all_damaged_is_refused(tmp_path):
    config = small_config()
    train(tmp_path, config)
    for _, path in runio.list_checkpoints(tmp_path):
        path.write_bytes(b"not a zip file")
    before = snapshot(tmp_path)
    with pytest.raises(runio.RunFileError, match="every checkpoint is damaged"):
        train(tmp_path, config)
    assert snapshot(tmp_path) == before


def test_temp_files_of_killed_writers_are_removed_on_resume(tmp_path, capsys):
    config = small_config()
    train(tmp_path, config)
    truncate_after(tmp_path, 20)
    leftovers = [tmp_path / "checkpoints" / ".step_00000030.npz.abc123.tmp", tmp_path / ".metrics.jsonl.x1.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    train(tmp_path, config)
    assert not any(path.exists() for path in leftovers)
    assert "left by a writer that was killed" in capsys.readouterr().err


def test_opening_a_finished_run_changes_no_file(tmp_path):
    config = small_config()
    train(tmp_path, config)
    before = snapshot(tmp_path)
    train(tmp_path, config)
    assert snapshot(tmp_path) == before


def test_a_corrupt_metrics_line_is_reported_with_its_line_number(tmp_path, capsys):
    config = small_config()
    train(tmp_path, config)
    truncate_after(tmp_path, 20)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines[1] = '{"step": 5, "loss'  # damage in the middle of the file
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    train(tmp_path, config)
    assert "metrics.jsonl: line 2 is not a JSON record" in capsys.readouterr().err


# --- bounded reads ----------------------------------------------------------------------------------


def _npy_bytes(shape, dtype="<f8", payload=b"") -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    return header.getvalue() + payload


def _crafted_checkpoint(path: Path, config, huge_name: str) -> None:
    """A real checkpoint of ``config`` in which one array's header claims 10^12 entries, deflated."""
    good = runio.load_npz(runio.checkpoint_path(path.parent.parent, 0))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in good.items():
            if name == huge_name:
                archive.writestr(name + ".npy", _npy_bytes((10**6, 10**6), payload=bytes(64 * 1024)))
            else:
                buffer = io.BytesIO()
                np.save(buffer, array)
                archive.writestr(name + ".npy", buffer.getvalue())


def test_a_crafted_compressed_checkpoint_is_refused_without_a_large_allocation(tmp_path):
    config = small_config()
    train(tmp_path, config)
    truncate_after(tmp_path, 0)
    crafted = runio.checkpoint_path(tmp_path, 10)
    _crafted_checkpoint(crafted, config, "params/layer0.w_q")
    assert crafted.stat().st_size < 20_000
    tracemalloc.start()
    try:
        with pytest.raises(runio.RunFileError, match=r"params/layer0\.w_q"):
            load_checkpoint(crafted, "float64", config)
        with pytest.raises(runio.RunFileError, match=r"params/layer0\.w_q"):
            load_checkpoint(crafted, "float64")  # no config: the size bound alone
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_an_npz_member_that_claims_more_than_deflate_can_expand_is_refused(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", _npy_bytes((4,), payload=np.zeros(4).tobytes()))
    raw = bytearray(path.read_bytes())
    # claim a 1 GB uncompressed size in both zip headers
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.index(signature)
        raw[at + offset : at + offset + 4] = (10**9).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(runio.RunFileError):
        runio.load_npz(path)


# --- signals --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signal_name, exit_code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_stops_the_run_cleanly_and_the_rerun_finishes_bit_for_bit(tmp_path, whole_run, signal_name, exit_code):
    import signal

    config, whole = whole_run
    stopped = tmp_path / "stopped"
    process = _start(["train", "--config", str(config), "--out", str(stopped), "--quiet"])
    _wait_for(lambda: len(runio.list_checkpoints(stopped)) >= 3)
    process.send_signal(getattr(signal, signal_name))
    _, err = process.communicate(timeout=60)
    assert process.returncode == exit_code
    assert err.strip().splitlines()[-1].endswith("; rerun the same command to resume")
    assert "interrupted at step" in err and "Traceback" not in err
    assert runio.list_checkpoints(stopped)[-1][0] < FINAL_STEP, "the run finished before the signal"
    assert not (stopped / runio.LOCK_FILE).exists()
    assert _start(["train", "--config", str(config), "--out", str(stopped), "--quiet"]).wait(300) == 0
    assert _final_checkpoint_bytes(stopped) == whole


# --- the disk fills up --------------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True).returncode == 0


def test_a_full_disk_ends_with_one_error_line_and_a_resumable_directory(tmp_path):
    disk = Path(tempfile.mkdtemp(prefix="iclgd-full-disk-"))
    if not _mount_tmpfs(disk, "256k"):
        pytest.skip("needs root and tmpfs to mount a small file system")
    try:
        config = tmp_path / "run.toml"
        config.write_text(CONFIG_TOML.replace("checkpoint_every = 50", "checkpoint_every = 10"))
        run = disk / "run"
        process = _start(["train", "--config", str(config), "--out", str(run), "--quiet"])
        _, err = process.communicate(timeout=300)
        assert process.returncode == 74
        assert err.strip().splitlines() == [err.strip().splitlines()[-1]], err
        assert err.startswith("iclgd: error: ") and "No space left on device" in err
        moved = tmp_path / "moved"
        shutil.copytree(run, moved)  # the run moves to a disk with room and resumes
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert not list(moved.rglob("*.tmp"))
    for _, path in runio.list_checkpoints(moved):
        load_checkpoint(path, "float64", iclgd.config.load_run_config(moved / "config.toml"))
    assert _start(["train", "--config", str(config), "--out", str(moved), "--quiet"]).wait(300) == 0
    assert runio.list_checkpoints(moved)[-1][0] == FINAL_STEP


# --- many kills at random moments ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_sigkilled_at_twenty_random_moments_resumes_to_the_bit_exact_final_state(tmp_path, whole_run):
    """SIGKILL at >= 20 moments drawn at random over a process's life (start-up, lock, config,
    training, checkpoint writes), each time rerunning the same command on the same directory."""
    import random
    import signal

    config, whole = whole_run
    run = tmp_path / "killed"
    moments = random.Random(20261201)
    kills = 0
    while kills < 20:
        process = _start(["train", "--config", str(config), "--out", str(run), "--quiet"])
        try:
            process.wait(timeout=moments.uniform(0.05, 2.5))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            kills += 1
            continue
        assert process.returncode == 0, process.stderr.read()
        if runio.list_checkpoints(run) and runio.list_checkpoints(run)[-1][0] == FINAL_STEP:
            shutil.rmtree(run)  # finished before the kill: start again, the kills must land mid-run
    assert _start(["train", "--config", str(config), "--out", str(run), "--quiet"]).wait(300) == 0
    assert _final_checkpoint_bytes(run) == whole


# --- found on review ------------------------------------------------------------------------------------


def test_a_checkpoint_of_a_model_of_other_shapes_is_refused_not_skipped_as_damage(tmp_path):
    from iclgd.config import run_config_from_dict as build

    deep = build({**SMALL, "model": {"n_layers": 3, "n_heads": 2}, "train": {"steps": 40, "batch_size": 64, "checkpoint_every": 10}})
    train(tmp_path / "deep", deep)
    config = small_config()
    train(tmp_path / "ours", config)
    truncate_after(tmp_path / "ours", 20)
    shutil.copy(runio.checkpoint_path(tmp_path / "deep", 30), runio.checkpoint_path(tmp_path / "ours", 30))
    with pytest.raises(CheckpointMismatch, match="checkpoint of another run"):
        train(tmp_path / "ours", config)


def test_a_zip_whose_stored_sizes_exceed_the_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "x.npz"
    runio.save_npz(path, {"a": np.zeros(8)})
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 18), (b"PK\x01\x02", 20)):  # compressed size fields
        at = raw.index(signature)
        raw[at + offset : at + offset + 4] = (10**6).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(runio.RunFileError):
        runio.load_npz(path)


@pytest.mark.parametrize("method", [99, 12])
def test_a_checkpoint_with_an_unknown_compression_is_skipped_as_damaged(tmp_path, capsys, method):
    config = small_config()
    train(tmp_path, config)
    truncate_after(tmp_path, 30)
    path = runio.checkpoint_path(tmp_path, 30)
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = raw.index(signature)
        raw[at + offset : at + offset + 2] = method.to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    train(tmp_path, config)
    assert f"skipping damaged checkpoint: {path}" in capsys.readouterr().err


def test_a_torn_last_metrics_line_is_dropped_on_resume_not_glued_to_the_next(tmp_path):
    config = small_config()
    whole = tmp_path / "whole"
    train(whole, config)
    run = tmp_path / "run"
    train(run, config)
    truncate_after(run, 20)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] < 20]
    (run / "metrics.jsonl").write_text("\n".join(kept) + '\n{"step": 20, "lo')  # a crash mid-append
    train(run, config)
    steps = [r["step"] for r in runio.read_jsonl(run / "metrics.jsonl")]
    assert steps == [r["step"] for r in runio.read_jsonl(whole / "metrics.jsonl")]


def test_temp_files_of_other_writers_in_the_run_folder_are_left_alone(tmp_path):
    config = small_config()
    train(tmp_path, config)
    results_in_flight = tmp_path / ".results.json.k2j3h4.tmp"
    results_in_flight.write_text("{")
    train(tmp_path, config)
    assert results_in_flight.exists()


def test_an_interrupt_names_the_step_of_the_last_checkpoint_the_rerun_resumes_from(tmp_path, monkeypatch):
    from iclgd.train import RunInterrupted
    from iclgd.train import rundir as rundir_module

    config = small_config(steps=40, checkpoint_every=20)
    real_record, calls = rundir_module.RunDirectory.record, []

    def record_then_interrupt(self, new_state, records):
        real_record(self, new_state, records)
        calls.append(new_state.step)
        if new_state.step == 30:
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir_module.RunDirectory, "record", record_then_interrupt)
    monkeypatch.setattr("iclgd.train.loop.ADVANCE_CHUNK", 10)
    with pytest.raises(RunInterrupted, match="interrupted at step 20;"):
        train(tmp_path, config)
    assert runio.list_checkpoints(tmp_path)[-1][0] == 20


@pytest.mark.skipif("jax" not in installed_backends(), reason="jax is an optional extra")
def test_seeds_resumed_at_different_steps_end_where_an_uninterrupted_multi_seed_run_ends(tmp_path):
    from iclgd.train import train_seeds

    configs = [small_config(seed=s, backend="jax") for s in (0, 1)]
    train_seeds([tmp_path / "w0", tmp_path / "w1"], configs)
    split = [tmp_path / "s0", tmp_path / "s1"]
    train_seeds(split, configs)
    truncate_after(split[0], 10)
    truncate_after(split[1], 20)  # as a kill between the two runs' checkpoint saves leaves them
    train_seeds(split, configs)
    for one, other in zip((tmp_path / "w0", tmp_path / "w1"), split):
        assert runio.list_checkpoints(one)[-1][1].read_bytes() == runio.list_checkpoints(other)[-1][1].read_bytes()
