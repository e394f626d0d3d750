"""What every `iclgd reproduce` experiment writes and prints the same way: the claims table,
estimates as "mean ± stderr", the smoke-run checks of a ``--quick`` run, and the run folder's
results.json (with its provenance and verdicts), report.md and figures.

A smoke run (a setting with ``smoke = True``, what ``--quick`` builds) trains far too briefly for
the paper's claims; it checks weaker criteria instead (every estimate finite, the baselines as
theory says, training moved each model well below predicting 0), its table and report say so,
and its exit code follows those checks."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from iclgd import metrics, plots, runio
from iclgd.provenance import provenance

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


Rows = Callable[[dict], list[ClaimRow]]

#: the margin by which a smoke run's trained models must beat predicting 0
SMOKE_MARGIN = 0.10


def is_smoke(results: dict) -> bool:
    """Whether ``results`` come from a smoke run (``--quick``)."""
    return bool(results["setting"].get("smoke", False))


def smoke_note(checks: list[ClaimRow]) -> str:
    """The paragraph that heads a smoke run's table and report: what it is and what it checks."""
    return ("SMOKE RUN (--quick): training far too short for the paper's claims; this run checks that the "
            "pipeline works end to end, by these weaker criteria only: " + "; ".join(row[0] for row in checks)
            + ". It exits 0 when they hold.")


def checks_table(rows: list[ClaimRow]) -> str:
    """The markdown table of a smoke run's checks, one row per check."""
    lines = ["| smoke-run check | ours | criterion | holds |", "|---|---|---|---|"]
    lines += [f"| {cell(check)} | {cell(ours)} | {cell(criterion)} | {'yes' if ok else 'NO'} |" for check, ours, criterion, ok in rows]
    return "\n".join(lines)


def results_tables(results: dict, claims: Rows, checks: Rows) -> str:
    """The claims table; for a smoke run, the smoke note and checks first, and the claims below
    them for information."""
    if not is_smoke(results):
        return claims_table(claims(results))
    smoke = checks(results)
    return "\n\n".join([smoke_note(smoke), checks_table(smoke),
                         "The paper's claims at this run length (for information: not expected to hold, and not "
                         "what the exit code follows):", claims_table(claims(results))])


def deciding_rows(results: dict, claims: Rows, checks: Rows) -> list[ClaimRow]:
    """The rows the exit code follows: the smoke checks of a smoke run, else the paper's claims."""
    return checks(results) if is_smoke(results) else claims(results)


def exit_code(results: dict, claims: Rows, checks: Rows) -> int:
    """0 when every deciding row holds, else 1."""
    return 0 if all(row[3] for row in deciding_rows(results, claims, checks)) else 1


def verdicts(rows: list[ClaimRow]) -> list[dict]:
    """The rows as results.json stores them."""
    return [{"claim": claim, "ours": ours, "criterion": criterion, "holds": bool(ok)} for claim, ours, criterion, ok in rows]


def estimates(node, where: str = "") -> Iterator[tuple[str, dict]]:
    """Every {"mean", "stderr", ...} entry of a results tree, with its path."""
    if isinstance(node, dict):
        if "mean" in node and "stderr" in node:
            yield where, node
            return
        for key, child in node.items():
            yield from estimates(child, f"{where}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from estimates(child, f"{where}[{i}]")


def finite_check(results: dict) -> ClaimRow:
    """Smoke check: every estimate of the results is a finite number."""
    found = list(estimates(results))
    bad = [where for where, entry in found if not (math.isfinite(entry["mean"]) and math.isfinite(entry["stderr"]))]
    ours = f"{len(found)} estimates, {len(bad)} not finite" + (f" (first: {bad[0]})" if bad else "")
    return ("every estimate is a finite number", ours, "all finite", bool(found) and not bad)


def zero_predictor_loss(targets: np.ndarray) -> dict:
    """The half-MSE of predicting 0 on every task: what an untrained model (small init) scores."""
    return metrics.estimate(metrics.half_squared_errors(np.zeros_like(targets), targets)).to_dict()


def beats_zero_check(what: str, losses: dict[str, dict], zero: dict) -> ClaimRow:
    """Smoke check: every trained model (``losses``: label -> estimate) is at least SMOKE_MARGIN
    below predicting 0 (``zero``), so training moved it."""
    ours = "; ".join(f"{label}: {fmt(loss)} ({100 * (loss['mean'] / zero['mean'] - 1):+.0f}%)" for label, loss in losses.items())
    return (f"training moved {what} well below predicting 0", f"{ours}; predicting 0: {fmt(zero)}",
            f"at least {100 * SMOKE_MARGIN:g}% below predicting 0",
            all(loss["mean"] <= (1 - SMOKE_MARGIN) * zero["mean"] for loss in losses.values()))


def write_outputs(out_dir: Path, results: dict, figures: dict[str, Callable[[Path], None]], report: Callable[[dict], str],
                  claims: Rows, checks: Rows) -> dict:
    """Draw every figure (``figures``: file name -> function drawing it to a path) if matplotlib is
    installed and list them in ``results["figures"]``; add the run's provenance (iclgd.provenance),
    the verdict of every claim (``claims``: results -> claim rows) and, for a smoke run, of every
    smoke check (``checks``); then write results.json and report.md (atomically, the report last).
    Returns ``results``."""
    results["figures"] = list(figures) if plots.matplotlib_available() else []
    for name in results["figures"]:
        figures[name](out_dir / name)
    results["provenance"] = provenance(results["setting"]["backend"])
    results["verdicts"] = verdicts(claims(results))
    if is_smoke(results):
        results["smoke_checks"] = verdicts(checks(results))
    runio.write_json(out_dir / "results.json", results)
    runio.atomic_write_text(out_dir / "report.md", report(results))
    return results
