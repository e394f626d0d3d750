"""A run directory while it trains: locked, checked against its config, resumed, logged and
checkpointed; see iclgd.runio for the files and iclgd.train.checkpoints for the checkpoints."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from iclgd import runio
from iclgd.backends.training import StepRecord, TrainState, initial_state
from iclgd.config import load_run_config, run_config_to_toml
from iclgd.train.checkpoints import latest_checkpoint, save_checkpoint
from iclgd.train.errors import TrainingDiverged


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
    checkpoint it resumes from (they will be logged again) and the temp files of killed writers.

    ``evaluate`` (optional): a function of a TrainState returning a JSON-able dict, called at
    every checkpoint; its rows, with the step, go to ``evaluations.jsonl`` (a resumed run keeps
    the rows up to its checkpoint and evaluates that checkpoint if a kill came before its row)."""

    def __init__(self, run_dir: str | Path, config, quiet: bool, evaluate=None):
        self.path, self.config, self.evaluate = Path(run_dir), config, evaluate
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
        self.evaluations = self.path / "evaluations.jsonl"
        self.state, self.last_checkpoint = latest_checkpoint(self.path, config.model.dtype, config)
        self.saved_step = 0 if self.state is None else self.state.step
        self.elapsed_before = 0.0
        if self.state is None:
            if not (self.path / "config.toml").exists():
                runio.atomic_write_text(self.path / "config.toml", run_config_to_toml(config))
            self.state = initial_state(config)
            self.last_checkpoint = save_checkpoint(self.path, self.state, config)
            runio.atomic_write_text(self.metrics, "")
            if self.evaluate is not None:
                runio.atomic_write_text(self.evaluations, "")
                self._evaluate(self.state)
        else:  # keep the metrics logged before the checkpoint (steps < its step); later lines are redone
            logged = runio.read_jsonl(self.metrics)
            kept = [r for r in logged if isinstance(r.get("step"), int) and r["step"] < self.state.step]
            raw = self.metrics.read_text(encoding="utf-8", errors="replace") if self.metrics.exists() else None
            whole = raw is not None and raw.count("\n") == len(logged) and (raw == "" or raw.endswith("\n"))
            if kept != logged or not whole:  # later lines, or a torn or damaged line: rewrite without them
                runio.atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))
            if self.evaluate is not None:
                self._resume_evaluations()
            times = [r.get("wall_time") for r in kept if isinstance(r.get("wall_time"), (int, float))]
            self.elapsed_before = float(times[-1]) if times else 0.0
            if not quiet:
                done = "finished" if self.state.step >= config.train.steps else "resuming"
                print(f"{self.path}: {done} at step {self.state.step} of {config.train.steps}", file=sys.stderr)
        baselines = self.path / "baselines.json"
        if hasattr(self.evaluate, "baseline_losses") and not baselines.exists():
            runio.atomic_write_text(baselines, json.dumps(self.evaluate.baseline_losses(), indent=1) + "\n")
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
        if train_cfg.is_checkpoint(new_state.step):
            self.last_checkpoint = save_checkpoint(self.path, new_state, self.config)
            self.saved_step = new_state.step
            if self.evaluate is not None:
                self._evaluate(new_state)
        self.state = new_state

    def _evaluate(self, state: TrainState) -> None:
        runio.append_jsonl(self.evaluations, {"step": state.step, **self.evaluate(state)})

    def _resume_evaluations(self) -> None:
        """Keep the evaluation rows up to the resumed checkpoint (later ones are redone); evaluate
        that checkpoint if its row is missing (a kill between its save and its row)."""
        kept = [r for r in runio.read_jsonl(self.evaluations) if isinstance(r.get("step"), int) and r["step"] <= self.state.step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        raw = self.evaluations.read_text(encoding="utf-8", errors="replace") if self.evaluations.exists() else None
        if raw != text:  # later rows, or a torn or damaged line: rewrite (atomically) without them
            runio.atomic_write_text(self.evaluations, text)
        if not any(r["step"] == self.state.step for r in kept):
            self._evaluate(self.state)


def _all_finite(state: TrainState) -> bool:
    arrays = [*state.params.values(), *state.adam.m.values(), *state.adam.v.values()]
    return all(np.isfinite(array).all() for array in arrays)
