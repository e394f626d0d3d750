"""What every `iclgd reproduce` experiment writes and prints the same way: the claims table,
estimates as "mean ± stderr", and the run folder's results.json, report.md and figures."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from iclgd import plots, runio

#: (paper's statement, our number, our criterion, holds?)
ClaimRow = tuple[str, str, str, bool]


def fmt(entry: dict, digits: int = 4) -> str:
    """An estimate dict {"mean", "stderr"} as "mean ± stderr"."""
    return f"{entry['mean']:.{digits}f} ± {entry['stderr']:.{digits}f}"


def cell(text: str) -> str:
    """Text for a markdown table cell: a literal | (as in |LSA/GD - 1|) escaped."""
    return text.replace("|", "\\|")


def claims_table(rows: list[ClaimRow]) -> str:
    """The markdown table of a run's claims, one row per claim."""
    lines = ["| paper's statement | ours | criterion | holds |", "|---|---|---|---|"]
    lines += [f"| {cell(claim)} | {cell(ours)} | {cell(criterion)} | {'yes' if ok else 'NO'} |" for claim, ours, criterion, ok in rows]
    return "\n".join(lines)


def write_outputs(out_dir: Path, results: dict, figures: dict[str, Callable[[Path], None]], report: Callable[[dict], str]) -> dict:
    """Draw every figure (``figures``: file name -> function drawing it to a path) if matplotlib is
    installed and list them in ``results["figures"]``; then write results.json and report.md
    (atomically, the report last).  Returns ``results``."""
    results["figures"] = list(figures) if plots.matplotlib_available() else []
    for name in results["figures"]:
        figures[name](out_dir / name)
    runio.write_json(out_dir / "results.json", results)
    runio.atomic_write_text(out_dir / "report.md", report(results))
    return results
