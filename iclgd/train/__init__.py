"""Training: the loop, its run directories and their checkpoints.

    loop          train(run_dir, config), train_seeds(...): resumable, signal-safe training
    rundir        RunDirectory (lock, config check, resume, logging) and check_run_dir
    checkpoints   save / load / latest checkpoint, the config fingerprint
    progress      the progress bar or lines on stderr
    errors        TrainingDiverged, RunInterrupted

The optimiser transforms are iclgd.optim; the trainers that advance a state (HostTrainer, the
jax backend's) live with the backends (iclgd.backends.training), which the loop drives.
"""
from iclgd.backends.training import StepRecord, TrainState, initial_state, trainer_for
from iclgd.config import TrainConfig
from iclgd.streams import batch_rng
from iclgd.train.checkpoints import (
    CheckpointMismatch,
    checkpoint_layout,
    config_fingerprint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from iclgd.train.errors import RunInterrupted, TrainingDiverged
from iclgd.train.loop import ADVANCE_CHUNK, train, train_seeds
from iclgd.train.progress import Progress
from iclgd.train.rundir import RunDirectory, check_run_dir

__all__ = [
    "ADVANCE_CHUNK",
    "CheckpointMismatch",
    "Progress",
    "RunDirectory",
    "RunInterrupted",
    "StepRecord",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "batch_rng",
    "check_run_dir",
    "checkpoint_layout",
    "config_fingerprint",
    "initial_state",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "train_seeds",
    "trainer_for",
]
