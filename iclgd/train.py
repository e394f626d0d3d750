"""The training loop: fresh tasks every step, clipped Adam, resumable run directories.

``train(run_dir, config)`` talks to the model only through the backend: ``trainer_for(backend, config)``
returns an object whose ``advance(state, n)`` does n updates (HostTrainer below for numpy and
numba; the jax backend fuses sampling, gradient and optax Adam into one compiled step).
Batch t is drawn from a generator keyed by (seed, t) and the init from an independent stream
of the same seed, so a checkpoint (params, Adam's moments and count, the step, and the data
stream's position) is all a run needs to continue bit-for-bit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from iclgd import gd_models, runio
from iclgd.backends import get_backend
from iclgd.backends.training import StepRecord, TrainState, batch_rng, initial_state, trainer_for  # noqa: F401 (re-exported)
from iclgd.config import TrainConfig, load_run_config, run_config_to_toml  # noqa: F401 (TrainConfig re-exported)
from iclgd.models import param_shapes
from iclgd.optim import AdamState
from iclgd.streams import DATA_STREAMS


ADVANCE_CHUNK = 100  # steps per trainer call: few host round trips, a live progress bar


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the run directory keeps its last good checkpoint."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped training between two updates; every file of the run directory is
    whole, and rerunning the same command resumes it.  ``exit_code`` is 128 + the signal number
    (130 for SIGINT, 143 for SIGTERM), the shell's convention."""

    def __init__(self, signal_number: int, message: str):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number


def config_fingerprint(config) -> str:
    """What a run *is*: the SHA-256 (first 16 hex digits) of its resolved config.toml with the
    backend left out (the backend is how a run is computed, not what it is: any backend may
    resume any run).  Every checkpoint carries it, so a checkpoint of another run is refused."""
    lines = [line for line in run_config_to_toml(config).splitlines() if not line.startswith("backend = ")]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]


def _param_shapes(model) -> dict[str, tuple[int, ...]]:
    if isinstance(model, gd_models.LearnedGDConfig):
        return gd_models.param_shapes(model)
    return param_shapes(model)


def checkpoint_layout(config) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every array a checkpoint of ``config`` holds: name -> (shape, dtype)."""
    layout = {}
    for group in ("params/", "adam_m/", "adam_v/"):
        layout |= {group + name: (shape, config.model.dtype) for name, shape in _param_shapes(config.model).items()}
    layout |= {"adam_count": ((), "int64"), "step": ((), "int64"), "data_stream": ((), "str"), "fingerprint": ((), "str")}
    return layout


def _data_stream(train_cfg: "TrainConfig", step: int) -> dict:
    # the data stream is stateless (batch t = f(seed, t)); its whole state is (seed, next batch)
    return {"stream": DATA_STREAMS[train_cfg.sampler], "seed": train_cfg.seed, "next_batch": step}


def save_checkpoint(run_dir: Path, state: TrainState, config) -> Path:
    """Write ``checkpoints/step_<step>.npz`` atomically: params, Adam's moments and count, the
    step, the data stream's position and the config's fingerprint."""
    if isinstance(config, TrainConfig):  # the older call save_checkpoint(run_dir, state, train_cfg)
        raise TypeError("save_checkpoint needs the whole RunConfig (its fingerprint goes into the checkpoint)")
    arrays = {f"params/{k}": v for k, v in state.params.items()}
    arrays |= {f"adam_m/{k}": v for k, v in state.adam.m.items()}
    arrays |= {f"adam_v/{k}": v for k, v in state.adam.v.items()}
    arrays["adam_count"] = np.array(state.adam.count, dtype=np.int64)
    arrays["step"] = np.array(state.step, dtype=np.int64)
    arrays["data_stream"] = np.array(json.dumps(_data_stream(config.train, state.step)))
    arrays["fingerprint"] = np.array(config_fingerprint(config))
    path = runio.checkpoint_path(run_dir, state.step)
    runio.save_npz(path, arrays)
    return path


def load_checkpoint(path: Path, dtype: str, config=None) -> TrainState:
    """The TrainState in a checkpoint file, in ``dtype``.

    With ``config`` (how resuming reads it) the file must be a checkpoint of that run: every
    array's shape and dtype is checked from the headers before anything is read, and the
    fingerprint, the step (against the file name too) and the data stream's position must
    match; otherwise RunFileError says what differs.  Without it, the headers are still checked
    for size, so a crafted file cannot make the reader allocate more than the file holds."""
    path = Path(path)
    data = runio.load_npz(path, checkpoint_layout(config) if config is not None else None)

    def group(prefix):
        return {k[len(prefix) :]: v.astype(dtype, copy=False) for k, v in data.items() if k.startswith(prefix)}

    try:
        adam = AdamState(group("adam_m/"), group("adam_v/"), int(data["adam_count"]))
        state = TrainState(int(data["step"]), group("params/"), adam)
    except KeyError as error:
        raise runio.RunFileError(f"{path}: not a checkpoint (no array {error})") from None
    if config is not None:
        _check_identity(path, data, state, config)
    return state


def _check_identity(path: Path, data: dict, state: TrainState, config) -> None:
    """Raise CheckpointMismatch unless the checkpoint belongs to ``config``'s run at the step its name says."""
    found, expected = str(data["fingerprint"]), config_fingerprint(config)
    if found != expected:
        raise CheckpointMismatch(f"{path} is a checkpoint of another run (config fingerprint {found}; this run's is {expected})")
    named_step = next((step for step, p in runio.list_checkpoints(path.parent.parent) if p.name == path.name), None)
    if named_step is not None and named_step != state.step:
        raise CheckpointMismatch(f"{path} holds step {state.step}, not the step {named_step} its name says (a renamed file?)")
    try:
        stream = json.loads(str(data["data_stream"]))
    except json.JSONDecodeError:
        stream = None
    if stream != _data_stream(config.train, state.step):
        raise CheckpointMismatch(
            f"{path}: its data stream position {stream} does not continue this run "
            f"(expected {_data_stream(config.train, state.step)})"
        )
    if state.adam.count != state.step:
        raise CheckpointMismatch(f"{path}: Adam's update count {state.adam.count} differs from its step {state.step}")


class CheckpointMismatch(runio.RunFileError):
    """A whole, readable checkpoint that does not belong to this run at this step: refused, never skipped."""


def latest_checkpoint(run_dir: Path, dtype: str, config=None) -> tuple[TrainState | None, Path | None]:
    """The newest checkpoint that loads, and its path; (None, None) if the run has none.

    A damaged file (unreadable, or its arrays not those of ``config``) is reported by name on
    stderr and skipped for an older one; a whole checkpoint of another run or step is refused
    (CheckpointMismatch), and so is a run whose checkpoints are all damaged."""
    found = runio.list_checkpoints(run_dir)
    for _, path in reversed(found):
        try:
            return load_checkpoint(path, dtype, config), path
        except CheckpointMismatch:
            raise
        except runio.RunFileError as error:
            runio.warn(f"skipping damaged checkpoint: {error}")
    if found:
        raise runio.RunFileError(
            f"{run_dir}: every checkpoint is damaged ({len(found)} files, newest {found[-1][1].name}); "
            "nothing to resume from. Move them away to start the run again."
        )
    return None, None


class Progress:
    """Progress on stderr while training.  On a terminal, a bar redrawn at most 10 times a second
    with step, loss and time left; otherwise (a log file, a pipe) a line every ~10 % of the run or
    every 30 s, whichever comes first.  Silent when disabled (``--quiet``)."""

    def __init__(self, total: int, enabled: bool, first_step: int = 0, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.enabled, self.first_step = total, enabled, first_step
        self.terminal = self.stream.isatty()
        self.start = self.last_draw = time.perf_counter()
        self.next_tenth = first_step + max(1, total // 10)

    def _time_left(self, step: int, now: float) -> str:
        done = step - self.first_step
        if done <= 0:
            return "?"
        return f"{(now - self.start) * (self.total - step) / done:.0f}s"

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = step >= self.total
        if self.terminal:
            if now - self.last_draw < 0.1 and not finished:
                return
            width = 30
            filled = int(width * step / self.total)
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total} loss {loss:.4f} "
                f"({now - self.start:.0f}s, {self._time_left(step, now)} left)" + ("\n" if finished else "")
            )
        else:
            if step < self.next_tenth and now - self.last_draw < 30.0 and not finished:
                return
            while self.next_tenth <= step:
                self.next_tenth += max(1, self.total // 10)
            self.stream.write(f"step {step}/{self.total} loss {loss:.4f} elapsed {now - self.start:.0f}s left {self._time_left(step, now)}\n")
        self.last_draw = now
        self.stream.flush()


def _differing_fields(existing, config) -> list[str]:
    """``table.key`` of every field in which two run configs differ."""
    names = []
    for table in ("task", "model", "train"):
        old, new = getattr(existing, table), getattr(config, table)
        if type(old) is not type(new):
            names.append(f"{table}.family")
            continue
        names += [f"{table}.{f.name}" for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]
    return names


def check_run_dir(run_dir: Path, config, *, check_lock: bool = True) -> None:
    """Raise ValueError if ``run_dir`` holds a run of another configuration (the backend aside:
    it is how a run is computed, not what it is, so any backend may resume any run), naming the
    fields that differ; if it holds checkpoints but no config.toml; or (RunLocked) if another
    process is writing it.  Writes nothing."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(20, "the run directory is a file", str(run_dir))
    if check_lock:  # a run being written is named as such, whatever its config
        runio.RunLock(run_dir).check_free()
    config_path = run_dir / "config.toml"
    if config_path.exists():
        existing = load_run_config(config_path)
        existing = dataclasses.replace(existing, train=dataclasses.replace(existing.train, backend=config.train.backend))
        if existing != config:
            raise ValueError(
                f"{run_dir} holds a run with a different configuration ({config_path}): "
                f"{', '.join(_differing_fields(existing, config))} differ; "
                "resume it with the same config or choose another output directory"
            )
    elif runio.list_checkpoints(run_dir):
        raise ValueError(
            f"{run_dir} holds checkpoints but no config.toml, so nothing says which run they belong to; "
            "refusing to resume or overwrite them (choose another output directory)"
        )


class RunDirectory:
    """One run's directory during training: locks it, opens (or resumes) it, logs records,
    checkpoints; ``close()`` releases the lock.

    Opening a finished run changes no file; resuming drops the metrics lines after the
    checkpoint it resumes from (they will be logged again) and the temp files of killed writers."""

    def __init__(self, run_dir: str | Path, config, quiet: bool):
        self.path, self.config = Path(run_dir), config
        check_run_dir(self.path, config)
        self.lock = runio.RunLock(self.path).acquire()
        try:
            self._open(quiet)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, quiet: bool) -> None:
        config = self.config
        check_run_dir(self.path, config, check_lock=False)  # again, now that no one else can write it
        for path in runio.remove_temp_files(self.path):
            runio.warn(f"removed {path}, left by a writer that was killed")
        self.metrics = self.path / "metrics.jsonl"
        self.state, self.last_checkpoint = latest_checkpoint(self.path, config.model.dtype, config)
        self.elapsed_before = 0.0
        if self.state is None:
            if not (self.path / "config.toml").exists():
                runio.atomic_write_text(self.path / "config.toml", run_config_to_toml(config))
            self.state = initial_state(config)
            self.last_checkpoint = save_checkpoint(self.path, self.state, config)
            runio.atomic_write_text(self.metrics, "")
        else:  # keep the metrics logged before the checkpoint (steps < its step); later lines are redone
            logged = runio.read_jsonl(self.metrics)
            kept = [r for r in logged if isinstance(r.get("step"), int) and r["step"] < self.state.step]
            if kept != logged or not self.metrics.exists():
                runio.atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))
            self.elapsed_before = kept[-1]["wall_time"] if kept else 0.0
            if not quiet:
                done = "finished" if self.state.step >= config.train.steps else "resuming"
                print(f"{self.path}: {done} at step {self.state.step} of {config.train.steps}", file=sys.stderr)
        self.start = time.perf_counter()

    def close(self) -> None:
        self.lock.release()

    def record(self, new_state: TrainState, records: list[StepRecord]) -> None:
        """Log the records (raising TrainingDiverged at a non-finite one), then checkpoint if due.
        A state holding a non-finite value is never written."""
        train_cfg = self.config.train
        for record in records:
            if not record.finite:
                raise TrainingDiverged(
                    f"{self.path}: training stopped at step {record.step}: the loss is {record.loss}, the gradient "
                    f"norm {record.grad_norm}{'' if getattr(record, 'params_finite', True) else ' and the updated parameters'} "
                    f"non-finite; nothing after it was saved, the last good checkpoint is {self.last_checkpoint}. "
                    "Try a smaller lr or clip_norm."
                )
            if record.step % train_cfg.log_every == 0:
                row = {"step": record.step, "loss": record.loss, "lr": record.lr, "grad_norm": record.grad_norm}
                row["wall_time"] = self.elapsed_before + time.perf_counter() - self.start
                runio.append_jsonl(self.metrics, row)
        if not _all_finite(new_state):
            raise TrainingDiverged(
                f"{self.path}: training stopped before step {new_state.step}: an update made a parameter or "
                f"Adam moment non-finite; nothing after it was saved, the last good checkpoint is {self.last_checkpoint}. "
                "Try a smaller lr or clip_norm."
            )
        self.state = new_state
        if new_state.step % train_cfg.checkpoint_every == 0 or new_state.step == train_cfg.steps:
            self.last_checkpoint = save_checkpoint(self.path, new_state, self.config)


def _all_finite(state: TrainState) -> bool:
    arrays = [*state.params.values(), *state.adam.m.values(), *state.adam.v.values()]
    return all(np.isfinite(array).all() for array in arrays)


def train(run_dir: str | Path, config, *, quiet: bool = True, backend=None) -> TrainState:
    """Train ``config.model`` on ``config.task`` as ``config.train`` says, writing to ``run_dir``.

    Resumes from the newest checkpoint if ``run_dir`` holds one (same config required; any
    backend may resume any other's run); returns the final state.  Raises TrainingDiverged on
    a NaN/inf loss, leaving the last good checkpoint as the newest.
    """
    return train_seeds([run_dir], [config], quiet=quiet, backend=backend)[0]


class _OneByOne:
    """Several runs advanced by their own trainers, one after the other."""

    def __init__(self, trainers):
        self.trainers = trainers

    def advance(self, states, n_steps):
        results = [trainer.advance(state, n_steps) for trainer, state in zip(self.trainers, states)]
        return [r[0] for r in results], [r[1] for r in results]


def _trainer_for(backend, runs: list[RunDirectory]):
    """One vmapped program for many seeds where the backend has one, else a trainer per run."""
    if len(runs) > 1 and runs[0].config.model.family == "lsa":
        program = backend.seeds_trainer(runs[0].config, [run.config.train.seed for run in runs])
        if program is not None:
            return program
    return _OneByOne([trainer_for(backend, run.config) for run in runs])


def train_seeds(run_dirs: list, configs: list, *, quiet: bool = True, backend=None) -> list[TrainState]:
    """Train several runs that differ only in their seed, in lockstep; with the jax backend's
    ``seeds_trainer`` all of them in one compiled, vmapped program.  Each run has its own
    directory, written as ``train`` writes one.  A run that diverges stops alone; the others
    go on, and TrainingDiverged is raised at the end naming every run that stopped."""
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    if not configs or len(run_dirs) != len(configs):
        raise ValueError(f"train_seeds needs one run directory per config; got {len(run_dirs)} and {len(configs)}")
    seeds = [config.train.seed for config in configs]
    if len(set(seeds)) != len(seeds) or len(set(run_dirs)) != len(run_dirs):
        raise ValueError(f"train_seeds needs distinct seeds and directories; got seeds {seeds}")
    if len({dataclasses.replace(c, train=dataclasses.replace(c.train, seed=0)) for c in configs}) != 1:
        raise ValueError("train_seeds needs configs that differ only in [train] seed")
    for run_dir, config in zip(run_dirs, configs):
        check_run_dir(run_dir, config)  # every directory checked before any is written
    backend = backend or get_backend(configs[0].train.backend)
    runs: list[RunDirectory] = []
    try:
        with _signals_stop_training():
            for run_dir, config in zip(run_dirs, configs):
                runs.append(RunDirectory(run_dir, config, quiet))
            diverged = _train_runs(backend, runs, quiet)
    except (KeyboardInterrupt, _Stopped) as stop:
        signal_number = stop.signal_number if isinstance(stop, _Stopped) else int(signal.SIGINT)
        done = min((run.state.step for run in runs), default=0)
        where = runs[0].path if len(runs) == 1 else f"{len(runs)} runs"
        raise RunInterrupted(
            signal_number,
            f"{where}: interrupted at step {done}; rerun the same command to resume",
        ) from None
    finally:
        for run in runs:
            run.close()
    if diverged:
        raise TrainingDiverged("\n".join(diverged))
    return [run.state for run in runs]


def _train_runs(backend, runs: list[RunDirectory], quiet: bool) -> list[str]:
    """Advance every run to its last step; returns the messages of the runs that diverged."""
    train_cfg = runs[0].config.train
    diverged = []
    for group in _groups_by_step(runs):
        trainer = _trainer_for(backend, group)
        step = group[0].state.step
        progress = Progress(train_cfg.steps, enabled=not quiet, first_step=step)
        while step < train_cfg.steps and group:
            # advance to the next checkpoint, at most ADVANCE_CHUNK steps at a time (records carry every step)
            boundary = min(train_cfg.steps, _next_multiple(step, train_cfg.checkpoint_every), _next_multiple(step, ADVANCE_CHUNK))
            new_states, records = trainer.advance([run.state for run in group], boundary - step)
            going_on = []
            for run, new_state, run_records in zip(group, new_states, records):
                try:
                    run.record(new_state, run_records)
                    going_on.append(run)
                except TrainingDiverged as error:
                    diverged.append(str(error))
            if len(going_on) != len(group):
                group = going_on
                trainer = _trainer_for(backend, group) if group else None
            step = boundary
            losses = [r[-1].loss for r in records if r]
            if group and losses:
                progress.update(step, float(np.mean(losses)))
    return diverged


class _Stopped(BaseException):
    """Raised in the main thread by the SIGTERM handler while training."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


@contextlib.contextmanager
def _signals_stop_training():
    """While training, SIGTERM raises _Stopped (SIGINT already raises KeyboardInterrupt), so both
    stop the run between two Python operations; atomic writes keep every file whole.  Only the
    main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signal_number, _frame):
        raise _Stopped(signal_number)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _groups_by_step(runs: list[RunDirectory]) -> list[list[RunDirectory]]:
    """Runs resumed at the same step train together."""
    groups: dict[int, list[RunDirectory]] = {}
    for run in runs:
        groups.setdefault(run.state.step, []).append(run)
    return list(groups.values())


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every
