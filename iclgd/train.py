"""The training loop: fresh tasks every step, clipped Adam, resumable run directories.

``train(run_dir, config)`` talks to the model only through the backend: ``backend.trainer(config)``
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iclgd import runio
from iclgd._checks import finite_float, nonnegative_int, positive_int
from iclgd.backends import available_backends, get_backend
from iclgd.backends.training import StepRecord, TrainState, batch_rng, initial_state  # noqa: F401 (re-exported)
from iclgd.optim import SCHEDULES, AdamConfig, AdamState


SAMPLERS = ("numpy", "jax")
ADVANCE_CHUNK = 100  # steps per trainer call: few host round trips, a live progress bar


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the run directory keeps its last good checkpoint."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train. lr 1e-3 and batch 2048 are the paper's settings for < 3 layers
    (it used 5e-4 for deeper models). clip_norm = 0 turns clipping off.

    sampler: "numpy" - batch t is ``task.sample(batch_size, batch_rng(seed, t))`` on the host, the
    same numbers on every backend; "jax" - drawn inside the jax backend's jitted step from
    ``jax.random.fold_in(PRNGKey(seed), t)`` (another stream: fast, for full-scale runs)."""

    steps: int = 5000
    batch_size: int = 2048
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    backend: str = "numpy"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 10.0
    schedule: str = "constant"
    warmup_steps: int = 0
    init_scale: float = 0.002
    sampler: str = "numpy"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            set_(self, name, positive_int(name, getattr(self, name)))
        for name in ("seed", "warmup_steps"):
            set_(self, name, nonnegative_int(name, getattr(self, name)))
        if self.seed >= 2**63:
            raise ValueError(f"seed must be < 2**63; got {self.seed}")
        set_(self, "lr", finite_float("lr", self.lr, positive=True))
        for name in ("beta1", "beta2"):
            value = finite_float(name, getattr(self, name))
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {value}")
            set_(self, name, value)
        set_(self, "eps", finite_float("eps", self.eps, positive=True))
        set_(self, "clip_norm", finite_float("clip_norm", self.clip_norm, nonnegative=True))
        set_(self, "init_scale", finite_float("init_scale", self.init_scale, nonnegative=True))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}; got {self.schedule!r}")
        if self.backend not in available_backends():
            raise ValueError(f"backend must be one of {available_backends()}; got {self.backend!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}; got {self.sampler!r}")
        if self.sampler == "jax" and self.backend != "jax":
            raise ValueError(f"sampler 'jax' draws batches inside the jax backend's compiled step; got backend {self.backend!r}")

    def adam(self) -> AdamConfig:
        return AdamConfig(
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            clip_norm=self.clip_norm or None,
            schedule=self.schedule,
            warmup_steps=self.warmup_steps,
            total_steps=self.steps,
        )


DATA_STREAMS = {"numpy": "batch_rng(seed, t)", "jax": "jax.random.fold_in(PRNGKey(seed), t)"}


def save_checkpoint(run_dir: Path, state: TrainState, train_cfg: "TrainConfig") -> Path:
    arrays = {f"params/{k}": v for k, v in state.params.items()}
    arrays |= {f"adam_m/{k}": v for k, v in state.adam.m.items()}
    arrays |= {f"adam_v/{k}": v for k, v in state.adam.v.items()}
    arrays["adam_count"] = np.array(state.adam.count)
    arrays["step"] = np.array(state.step)
    # the data stream's position, for readers: the stream is stateless, batch t = f(seed, t)
    stream = {"stream": DATA_STREAMS[train_cfg.sampler], "seed": train_cfg.seed, "next_batch": state.step}
    arrays["rng_state"] = np.array(json.dumps(stream))
    path = runio.checkpoint_path(run_dir, state.step)
    runio.save_npz(path, arrays)
    return path


def load_checkpoint(path: Path, dtype: str) -> TrainState:
    data = runio.load_npz(path)

    def group(prefix):
        return {k[len(prefix) :]: v.astype(dtype, copy=False) for k, v in data.items() if k.startswith(prefix)}

    adam = AdamState(group("adam_m/"), group("adam_v/"), int(data["adam_count"]))
    return TrainState(int(data["step"]), group("params/"), adam)


def latest_state(run_dir: Path, dtype: str) -> TrainState | None:
    """The newest checkpoint that loads (a damaged file, which atomic writes should prevent, is skipped)."""
    for _, path in reversed(runio.list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, dtype)
        except Exception:  # noqa: BLE001 - any unreadable file: fall back to an older one
            continue
    return None


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


def prepare_run_dir(run_dir: Path, config) -> None:
    """Create DIR with config.toml, or check that an existing DIR was made by the same config."""
    from iclgd.config import load_run_config, run_config_to_toml

    run_dir = Path(run_dir)
    config_path = run_dir / "config.toml"
    if config_path.exists():
        existing = load_run_config(config_path)
        # the backend is how a run is computed, not what it is: any backend may resume it
        existing = dataclasses.replace(existing, train=dataclasses.replace(existing.train, backend=config.train.backend))
        if existing != config:
            raise ValueError(
                f"{run_dir} holds a run with a different configuration ({config_path}); "
                "resume it with the same config or choose another output directory"
            )
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    runio.atomic_write_text(config_path, run_config_to_toml(config))


class RunDirectory:
    """One run's directory during training: opens (or resumes) it, logs records, checkpoints."""

    def __init__(self, run_dir: str | Path, config, quiet: bool):
        self.path, self.config = Path(run_dir), config
        prepare_run_dir(self.path, config)
        self.metrics = self.path / "metrics.jsonl"
        self.state = latest_state(self.path, config.model.dtype)
        self.elapsed_before = 0.0
        if self.state is None:
            self.state = initial_state(config)
            save_checkpoint(self.path, self.state, config.train)
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
                last = runio.list_checkpoints(self.path)[-1][1]
                raise TrainingDiverged(
                    f"training stopped at step {record.step}: the loss is {record.loss} and the gradient norm "
                    f"{record.grad_norm} (non-finite); the last good checkpoint is {last}. Try a smaller lr or clip_norm."
                )
            if record.step % train_cfg.log_every == 0:
                row = {"step": record.step, "loss": record.loss, "lr": record.lr, "grad_norm": record.grad_norm}
                row["wall_time"] = self.elapsed_before + time.perf_counter() - self.start
                runio.append_jsonl(self.metrics, row)
        self.state = new_state
        if new_state.step % train_cfg.checkpoint_every == 0 or new_state.step == train_cfg.steps:
            save_checkpoint(self.path, new_state, train_cfg)


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


def train_seeds(run_dirs: list, configs: list, *, quiet: bool = True, backend=None) -> list[TrainState]:
    """Train several runs that differ only in their seed, in lockstep; with the jax backend's
    ``seeds_trainer`` (sampler "jax") all of them in one compiled, vmapped program.  Each run
    has its own directory, written as ``train`` writes one."""
    if len({dataclasses.replace(c, train=dataclasses.replace(c.train, seed=0)) for c in configs}) != 1:
        raise ValueError("train_seeds needs configs that differ only in [train] seed")
    backend = backend or get_backend(configs[0].train.backend)
    runs = [RunDirectory(run_dir, config, quiet) for run_dir, config in zip(run_dirs, configs)]
    if len({run.state.step for run in runs}) != 1:  # resumed at different steps: one by one
        return [train_seeds([run.path], [run.config], quiet=quiet, backend=backend)[0] for run in runs]
    train_cfg = configs[0].train
    if len(runs) > 1 and hasattr(backend, "seeds_trainer") and train_cfg.sampler == "jax":
        trainer = backend.seeds_trainer(configs[0], [c.train.seed for c in configs])
    else:
        trainer = _OneByOne([backend.trainer(config) for config in configs])
    progress = Progress(train_cfg.steps, enabled=not quiet and sys.stderr.isatty())
    step = runs[0].state.step
    while step < train_cfg.steps:
        # advance to the next checkpoint, at most ADVANCE_CHUNK steps at a time (records carry every step)
        boundary = min(train_cfg.steps, _next_multiple(step, train_cfg.checkpoint_every), _next_multiple(step, ADVANCE_CHUNK))
        new_states, records = trainer.advance([run.state for run in runs], boundary - step)
        for run, new_state, run_records in zip(runs, new_states, records):
            run.record(new_state, run_records)
        step = boundary
        progress.update(step, float(np.mean([r[-1].loss for r in records])))
    return [run.state for run in runs]


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every
