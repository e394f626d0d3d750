"""What the reference walkthroughs share: their command line and run (``Session``: --quick and
--out, where the results go, the opening lines, the summary), a transcript that prints and keeps
every line, the list of checks each walkthrough narrates, and small formatting helpers (matrices,
vectors, tables of right-aligned columns).

Every walkthrough runs from the repository root as ``python reference/NAME.py`` (the full run),
with ``--quick`` (every step, smaller: seconds) and ``--out DIR`` (keep its training runs, and
with --quick its results, in DIR; default: a new temporary directory).  A full run records what
it printed in reference/results/NAME.txt and its numbers in reference/results/NAME.json; --quick
writes those two files into the --out folder instead.  Every number printed comes from the
walkthrough's code, from explicit seeds, and it exits with status 1 if any check it narrates fails.

The walkthroughs run as scripts, so this file is imported from the script's own folder:
``from walkthrough import Session``.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import iclgd
from iclgd.config import run_config_to_toml
from iclgd.runio import atomic_write_text, list_checkpoints
from iclgd.train import TrainState, train

#: where a full run records what it printed and its numbers
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: the task of every walkthrough, as the results record it
SETTING = {"d": 10, "n_context": 10, "x_scale": "a = 1 (paper)"}


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
        """Verbatim lines (numbers, tables, matrices), one per "\n"-separated piece: a text
        ending in "\n" ends with a blank line."""
        for line in text.split("\n"):
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

    def __call__(self, name: str, measured: str, criterion: str, ok, end: str = "") -> bool:
        """Record the check and print it, followed by ``end`` (as print's: "\n" adds a blank line)."""
        check = Check(name, measured, criterion, bool(ok))
        self.items.append(check)
        self.transcript.out(f"  [{'pass' if check.ok else 'FAIL'}] {name}: {measured}   (criterion: {criterion}){end}")
        return check.ok

    def small(self, name: str, value: float, bound: str, end: str = "") -> bool:
        """The check that a discrepancy ``value`` is at most ``bound`` (written as the criterion
        says it, e.g. "1e-12"), its value printed as '1.234e-16'."""
        return self(name, f"{value:.3e}", f"<= {bound}", value <= float(bound), end)

    @property
    def all_passed(self) -> bool:
        return all(check.ok for check in self.items)


def matrix_lines(matrix: np.ndarray, row_labels, col_labels=None, decimals: int = 2) -> str:
    """A matrix rounded to ``decimals``, entries that round to zero shown as '.', its rows and
    columns labelled (the columns by ``row_labels`` too unless ``col_labels`` are given)."""
    col_labels = row_labels if col_labels is None else col_labels
    width = decimals + 6
    lines = [" " * 5 + "".join(label.rjust(width) for label in col_labels)]
    for label, row in zip(row_labels, np.asarray(matrix, dtype=np.float64)):
        cells = []
        for value in row:
            rounded = round(float(value), decimals)
            cells.append(".".rjust(width) if rounded == 0 else f"{rounded:{width}.{decimals}f}")
        lines.append(label.rjust(5) + "".join(cells))
    return "\n".join(lines)


def config_block(config) -> str:
    """A RunConfig as config.toml holds it (iclgd.config.run_config_to_toml), indented four spaces
    and followed by a blank line."""
    return textwrap.indent(run_config_to_toml(config).rstrip(), "    ") + "\n"


def percent(part: float, whole: float, decimals: int = 2) -> str:
    """``part`` as a signed percentage of ``whole``: 100 part / whole, e.g. '+1.23%'."""
    return f"{100 * part / whole:+.{decimals}f}%"


def vector_line(vector, decimals: int = 4) -> str:
    """A vector as '[v1, v2, ...]', each entry with ``decimals`` decimals."""
    return "[" + ", ".join(f"{float(v):.{decimals}f}" for v in vector) + "]"


class Table:
    """Columns of fixed widths: ``line(*cells)`` indents by two spaces and right-aligns each cell
    (its ``str``) in its column, one space between columns, so a header and its rows line up
    (``block``: all of them).  Fewer cells than columns leave the last columns off; more are an
    error."""

    def __init__(self, *widths: int):
        self.widths = widths

    def line(self, *cells) -> str:
        if len(cells) > len(self.widths):
            raise ValueError(f"{len(cells)} cells for {len(self.widths)} columns")
        return "  " + " ".join(str(cell).rjust(width) for cell, width in zip(cells, self.widths))

    def block(self, header, rows) -> str:
        """The header line, a line per row (each a sequence of cells) and a blank line."""
        return "\n".join([self.line(*header), *(self.line(*row) for row in rows)]) + "\n"


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def train_run(t: Transcript, run_dir: Path, config) -> tuple[TrainState, float, int | None]:
    """Train (or resume, or find finished) one run, saying so when ``run_dir`` already holds a
    checkpoint: (the final state, the seconds it took, the step it resumed from or None)."""
    checkpoints = list_checkpoints(run_dir)
    resumed_from = checkpoints[-1][0] if checkpoints else None
    if resumed_from is not None:
        t.out(f"  ({run_dir} already holds a checkpoint at step {resumed_from}; train() resumes from it)")
    started = time.perf_counter()
    state = train(run_dir, config, quiet=False)
    return state, time.perf_counter() - started, resumed_from


def train_runs(t: Transcript, run_dir: Path, configs: dict) -> tuple[dict, dict]:
    """Train (or resume, or find finished) every run of ``configs`` (name -> RunConfig) in
    ``run_dir``/name, then print how long each took: ({name: (model config, final params)},
    {name: seconds})."""
    trained, seconds = {}, {}
    for name, config in configs.items():
        state, seconds[name], _ = train_run(t, run_dir / name, config)
        trained[name] = (config.model, state.params)
    t.out("  trained in " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()) + "\n")
    return trained, seconds


def parse_args(argv, doc: str, quick_help: str, runs: str):
    """The command line every walkthrough takes: --quick (``quick_help`` says how much smaller) and
    --out (the folder for its ``runs`` and, with --quick, its results)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"every step, smaller: {quick_help}")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"directory for the {runs} (and, with --quick, the results); default: a new temporary directory")
    return parser.parse_args(argv)


class Session:
    """One run of a walkthrough: its command line, its transcript and checks, where it writes.

    ``out_dir`` (--out, or a new temporary directory) holds the training runs; the results go to
    reference/results for a full run and to ``out_dir`` for a --quick one."""

    def __init__(self, argv, doc: str, name: str, quick_help: str, runs: str):
        args = parse_args(argv, doc, quick_help, runs)
        self.name, self.quick = name, bool(args.quick)
        self.mode = "quick" if self.quick else "full"
        self.out_dir = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix=f"iclgd_{name}_"))
        self.results_dir = self.out_dir if self.quick else RESULTS_DIR
        self.started = time.perf_counter()
        self.t = Transcript()
        self.checks = Checks(self.t)

    def open(self, headline: str, claim: str, settings: dict, training_backend: str | None = None, **extra) -> dict:
        """Print the opening lines (the headline, the mode and versions, and the training backend
        if one is named) and return the results' first entries: the claim, the script, the mode,
        ``settings``, any ``extra`` entries, the task and the versions."""
        versions = {"iclgd": iclgd.__version__, "numpy": np.__version__, "python": platform.python_version()}
        self.t.out(f"{self.name}: {headline}")
        self.t.out(f"mode: {self.mode}; iclgd {versions['iclgd']}, numpy {versions['numpy']}, python {versions['python']}"
                   + (f"; training backend {training_backend}" if training_backend else ""))
        self.t.out("")
        return {"claim": claim, "script": f"reference/{self.name}.py", "mode": self.mode, "settings": settings,
                **extra, "setting": dict(SETTING), "versions": versions}

    def finish(self, results: dict, runs_note: str) -> int:
        """The summary of every check, then NAME.json (``results`` with the checks and the total
        time) and NAME.txt (the transcript) written atomically into the results folder.  Returns
        the exit status: 0 when every check passed, else 1."""
        t, checks = self.t, self.checks
        t.heading("Summary")
        width = max(len(check.name) for check in checks.items)
        for check in checks.items:
            t.out(f"  [{'pass' if check.ok else 'FAIL'}] {check.name.ljust(width)}  {check.measured}")
        results["checks"] = [asdict(check) for check in checks.items]
        results["all_checks_passed"] = checks.all_passed
        results["total_seconds"] = time.perf_counter() - self.started
        json_path, text_path = self.results_dir / f"{self.name}.json", self.results_dir / f"{self.name}.txt"
        t.out("")
        t.out(f"total time {results['total_seconds']:.1f} s; {runs_note}")
        t.out(f"results: {json_path} and {text_path}")
        if checks.all_passed:
            t.out("all checks passed")
        else:
            failed = [check.name for check in checks.items if not check.ok]
            t.out(f"CHECKS FAILED ({len(failed)}): {'; '.join(failed)}")
        atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
        atomic_write_text(text_path, t.text())
        return 0 if checks.all_passed else 1
