"""Training progress on stderr: a bar on a terminal, periodic lines otherwise."""
from __future__ import annotations

import sys
import time


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
