"""The training loop: fresh tasks every step, clipped Adam, resumable run directories.

``train(run_dir, config)`` talks to the model only through the backend: ``trainer_for(backend, config)``
returns an object whose ``advance(state, n)`` does n updates (HostTrainer below for numpy and
numba; the jax backend fuses sampling, gradient and optax Adam into one compiled step).
Batch t is drawn from a generator keyed by (seed, t) and the init from an independent stream
of the same seed, so a checkpoint (params, Adam's moments and count, the step, and the data
stream's position) is all a run needs to continue bit-for-bit.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from iclgd import runio
from iclgd.backends import get_backend
from iclgd.backends.training import StepRecord, TrainState, batch_rng, initial_state, trainer_for  # noqa: F401 (re-exported)
from iclgd.config import TrainConfig, load_run_config, run_config_to_toml  # noqa: F401 (TrainConfig re-exported)
from iclgd.optim import AdamState


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


DATA_STREAMS = {"numpy": "iclgd.train.batch_rng(seed, t)", "jax": "jax.random.fold_in(PRNGKey(seed), t)"}


def save_checkpoint(run_dir: Path, state: TrainState, train_cfg: "TrainConfig") -> Path:
    arrays = {f"params/{k}": v for k, v in state.params.items()}
    arrays |= {f"adam_m/{k}": v for k, v in state.adam.m.items()}
    arrays |= {f"adam_v/{k}": v for k, v in state.adam.v.items()}
    arrays["adam_count"] = np.array(state.adam.count)
    arrays["step"] = np.array(state.step)
    # the data stream is stateless (batch t = f(seed, t)); its whole state is (seed, next batch)
    stream = {"stream": DATA_STREAMS[train_cfg.sampler], "seed": train_cfg.seed, "next_batch": state.step}
    arrays["data_stream"] = np.array(json.dumps(stream))
    path = runio.checkpoint_path(run_dir, state.step)
    runio.save_npz(path, arrays)
    return path


def load_checkpoint(path: Path, dtype: str) -> TrainState:
    data = runio.load_npz(path)

    def group(prefix):
        return {k[len(prefix) :]: v.astype(dtype, copy=False) for k, v in data.items() if k.startswith(prefix)}

    adam = AdamState(group("adam_m/"), group("adam_v/"), int(data["adam_count"]))
    return TrainState(int(data["step"]), group("params/"), adam)


def latest_checkpoint(run_dir: Path, dtype: str) -> tuple[TrainState | None, Path | None]:
    """The newest checkpoint that loads and its path (a damaged file, which atomic writes
    should prevent, is skipped); (None, None) if there is none."""
    for _, path in reversed(runio.list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, dtype), path
        except Exception:  # noqa: BLE001 - any unreadable file: fall back to an older one
            continue
    return None, None


class Progress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second; silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.last_draw, self.start = total, enabled, 0.0, time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last_draw < 0.1 and step < self.total):
            return
        self.last_draw = now
        width = 30
        filled = int(width * step / self.total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total} loss {loss:.4f} ({now - self.start:.0f}s)")
        if step >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def check_run_dir(run_dir: Path, config) -> None:
    """Raise ValueError if ``run_dir`` holds a run of another configuration (the backend aside:
    it is how a run is computed, not what it is, so any backend may resume any run). Writes nothing."""
    config_path = Path(run_dir) / "config.toml"
    if config_path.exists():
        existing = load_run_config(config_path)
        existing = dataclasses.replace(existing, train=dataclasses.replace(existing.train, backend=config.train.backend))
        if existing != config:
            raise ValueError(
                f"{run_dir} holds a run with a different configuration ({config_path}); "
                "resume it with the same config or choose another output directory"
            )


class RunDirectory:
    """One run's directory during training: opens (or resumes) it, logs records, checkpoints."""

    def __init__(self, run_dir: str | Path, config, quiet: bool):
        self.path, self.config = Path(run_dir), config
        check_run_dir(self.path, config)
        if not (self.path / "config.toml").exists():
            runio.atomic_write_text(self.path / "config.toml", run_config_to_toml(config))
        self.metrics = self.path / "metrics.jsonl"
        self.state, self.last_checkpoint = latest_checkpoint(self.path, config.model.dtype)
        self.elapsed_before = 0.0
        if self.state is None:
            self.state = initial_state(config)
            self.last_checkpoint = save_checkpoint(self.path, self.state, config.train)
            runio.atomic_write_text(self.metrics, "")
        else:  # keep the metrics logged before the checkpoint (steps < its step); later lines are redone
            kept = [r for r in runio.read_jsonl(self.metrics) if r.get("step", 0) < self.state.step]
            runio.atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))
            self.elapsed_before = kept[-1]["wall_time"] if kept else 0.0
            if not quiet:
                done = "finished" if self.state.step >= config.train.steps else "resuming"
                print(f"{self.path}: {done} at step {self.state.step} of {config.train.steps}", file=sys.stderr)
        self.start = time.perf_counter()

    def record(self, new_state: TrainState, records: list[StepRecord]) -> None:
        """Log the records (raising TrainingDiverged at a non-finite one), then checkpoint if due."""
        train_cfg = self.config.train
        for record in records:
            if not record.finite:
                raise TrainingDiverged(
                    f"{self.path}: training stopped at step {record.step}: the loss is {record.loss} and the gradient "
                    f"norm {record.grad_norm} (non-finite); the last good checkpoint is {self.last_checkpoint}. "
                    "Try a smaller lr or clip_norm."
                )
            if record.step % train_cfg.log_every == 0:
                row = {"step": record.step, "loss": record.loss, "lr": record.lr, "grad_norm": record.grad_norm}
                row["wall_time"] = self.elapsed_before + time.perf_counter() - self.start
                runio.append_jsonl(self.metrics, row)
        self.state = new_state
        if new_state.step % train_cfg.checkpoint_every == 0 or new_state.step == train_cfg.steps:
            self.last_checkpoint = save_checkpoint(self.path, new_state, train_cfg)


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
    if len(runs) > 1 and hasattr(backend, "seeds_trainer") and runs[0].config.model.family == "lsa":
        return backend.seeds_trainer(runs[0].config, [run.config.train.seed for run in runs])
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
    runs = [RunDirectory(run_dir, config, quiet) for run_dir, config in zip(run_dirs, configs)]
    train_cfg = configs[0].train
    diverged = []
    for group in _groups_by_step(runs):
        trainer = _trainer_for(backend, group)
        progress = Progress(train_cfg.steps, enabled=not quiet and sys.stderr.isatty())
        step = group[0].state.step
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
            progress.update(step, float(np.mean([r[-1].loss for r in records])))
    if diverged:
        raise TrainingDiverged("\n".join(diverged))
    return [run.state for run in runs]


def _groups_by_step(runs: list[RunDirectory]) -> list[list[RunDirectory]]:
    """Runs resumed at the same step train together."""
    groups: dict[int, list[RunDirectory]] = {}
    for run in runs:
        groups.setdefault(run.state.step, []).append(run)
    return list(groups.values())


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every
