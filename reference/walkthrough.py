"""What the reference walkthroughs share: a transcript that prints and keeps every line, the
list of checks each walkthrough narrates, and two small formatting helpers.

The walkthroughs run as scripts (``python reference/0N_*.py``), so this file is imported from
the script's own folder: ``from walkthrough import Transcript, Checks``.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np


class Transcript:
    """Prints prose (re-wrapped), headings and verbatim output, and keeps every line."""

    def __init__(self, width: int = 92):
        self.width = width
        self.lines: list[str] = []

    def _emit(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def heading(self, title: str) -> None:
        self._emit("")
        self._emit("=" * self.width)
        self._emit(title)
        self._emit("=" * self.width)
        self._emit("")

    def prose(self, text: str) -> None:
        """Paragraphs separated by blank lines, each re-wrapped to the transcript's width."""
        for i, paragraph in enumerate(textwrap.dedent(text).strip().split("\n\n")):
            if i:
                self._emit("")
            self._emit(textwrap.fill(" ".join(paragraph.split()), self.width))
        self._emit("")

    def out(self, text: str = "") -> None:
        """Verbatim lines (numbers, tables, matrices)."""
        for line in text.splitlines() or [""]:
            self._emit(line)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@dataclass(frozen=True)
class Check:
    name: str
    measured: str
    criterion: str
    ok: bool


class Checks:
    """Every claim the walkthrough makes, with its measured value and whether it holds."""

    def __init__(self, transcript: Transcript):
        self.transcript = transcript
        self.items: list[Check] = []

    def __call__(self, name: str, measured: str, criterion: str, ok) -> bool:
        check = Check(name, measured, criterion, bool(ok))
        self.items.append(check)
        self.transcript.out(f"  [{'pass' if check.ok else 'FAIL'}] {name}: {measured}   (criterion: {criterion})")
        return check.ok

    @property
    def all_passed(self) -> bool:
        return all(check.ok for check in self.items)


def matrix_lines(matrix: np.ndarray, row_labels, col_labels, decimals: int = 2) -> str:
    """A matrix rounded to ``decimals``, entries that round to zero shown as '.'."""
    width = decimals + 6
    lines = [" " * 5 + "".join(label.rjust(width) for label in col_labels)]
    for label, row in zip(row_labels, np.asarray(matrix, dtype=np.float64)):
        cells = []
        for value in row:
            rounded = round(float(value), decimals)
            cells.append(".".rjust(width) if rounded == 0 else f"{rounded:{width}.{decimals}f}")
        lines.append(label.rjust(5) + "".join(cells))
    return "\n".join(lines)


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))

