"""How a training run stops early: divergence, or a signal."""
from __future__ import annotations


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
