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
import signal
import threading
from pathlib import Path

import numpy as np

from iclgd.backends import get_backend
from iclgd.backends.training import TrainState, trainer_for
from iclgd.train.errors import RunInterrupted, TrainingDiverged
from iclgd.train.evaluation import checkpoint_evaluator
from iclgd.train.progress import Progress
from iclgd.train.rundir import RunDirectory, check_run_dir

ADVANCE_CHUNK = 100  # steps per trainer call: few host round trips, a live progress bar


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


def _trainer_for(backend, runs: list[RunDirectory], several: bool):
    """One vmapped program for the runs where the backend has one and the call trains several
    seeds (``several``: also for a group of one, so that seeds resumed at different steps compute
    exactly as an uninterrupted multi-seed run does), else a trainer per run."""
    if several and runs[0].config.model.family == "lsa":
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
                runs.append(RunDirectory(run_dir, config, quiet, evaluate=checkpoint_evaluator(backend, config)))
            diverged = _train_runs(backend, runs, quiet)
    except (KeyboardInterrupt, _Stopped) as stop:
        signal_number = stop.signal_number if isinstance(stop, _Stopped) else int(signal.SIGINT)
        done = min((run.saved_step for run in runs), default=0)  # what a rerun resumes from
        where = runs[0].path if len(runs) == 1 else f"{len(run_dirs)} runs"
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
    diverged, several = [], len(runs) > 1
    for group in _groups_by_step(runs):
        trainer = _trainer_for(backend, group, several)
        step = group[0].state.step
        progress = Progress(train_cfg.steps, enabled=not quiet, first_step=step)
        while step < train_cfg.steps and group:
            # advance to the next checkpoint, at most ADVANCE_CHUNK steps at a time (records carry every step)
            boundary = min(train_cfg.next_checkpoint(step), _next_multiple(step, ADVANCE_CHUNK))
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
                trainer = _trainer_for(backend, group, several) if group else None
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
