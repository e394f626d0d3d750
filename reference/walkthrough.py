"""What the reference walkthroughs share: a transcript that prints and keeps every line, the
list of checks each walkthrough narrates, and two small formatting helpers.

The walkthroughs run as scripts (``python reference/0N_*.py``), so this file is imported from
the script's own folder: ``from walkthrough import Transcript, Checks``.
"""
from __future__ import annotations

import argparse
import json
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from iclgd.runio import atomic_write_text


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



def finish(t: Transcript, checks: Checks, results: dict, started: float, runs_note: str, results_dir: Path, name: str) -> int:
    """The summary of every check, then ``name``.json (``results`` with the checks and the total
    time) and ``name``.txt (the transcript) written atomically into ``results_dir``.  Returns the
    exit status: 0 when every check passed, else 1."""
    t.heading("Summary")
    width = max(len(check.name) for check in checks.items)
    for check in checks.items:
        t.out(f"  [{'pass' if check.ok else 'FAIL'}] {check.name.ljust(width)}  {check.measured}")
    results["checks"] = [asdict(check) for check in checks.items]
    results["all_checks_passed"] = checks.all_passed
    results["total_seconds"] = time.perf_counter() - started
    t.out("")
    t.out(f"total time {results['total_seconds']:.1f} s; {runs_note}")
    t.out(f"results: {results_dir / (name + '.json')} and {results_dir / (name + '.txt')}")
    if checks.all_passed:
        t.out("all checks passed")
    else:
        failed = [check.name for check in checks.items if not check.ok]
        t.out(f"CHECKS FAILED ({len(failed)}): {'; '.join(failed)}")
    atomic_write_text(results_dir / f"{name}.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(results_dir / f"{name}.txt", t.text())
    return 0 if checks.all_passed else 1


def parse_args(argv, doc: str, quick_help: str, runs: str):
    """The command line every walkthrough takes: --quick (``quick_help`` says how much smaller) and
    --out (the folder for its ``runs`` and, with --quick, its results)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"every step, smaller: {quick_help}")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"directory for the {runs} (and, with --quick, the results); default: a new temporary directory")
    return parser.parse_args(argv)
