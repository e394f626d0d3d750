"""The pieces every `iclgd reproduce` experiment words the same way: estimates as "mean ± stderr",
claim rows and their markdown tables, the verdicts results.json stores, and the checks of a smoke
run (iclgd.experiments.skeleton puts them together).

A smoke run (a setting with ``smoke = True``, what ``--quick`` builds) trains far too briefly for
the paper's claims; it checks weaker criteria instead (every estimate finite, the baselines as
theory says, training moved each model well below predicting 0), its table and report say so,
and its exit code follows those checks."""
from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from iclgd import metrics, runio
from iclgd.tasks import X_SCALES

#: (paper's statement, our number, our criterion, holds?)
ClaimRow = tuple[str, str, str, bool]


def fmt(entry: dict, digits: int = 4) -> str:
    """An estimate dict {"mean", "stderr"} as "mean ± stderr"."""
    return f"{entry['mean']:.{digits}f} ± {entry['stderr']:.{digits}f}"


def cell(text: str) -> str:
    """Text for a markdown table cell: a literal | (as in |LSA/GD - 1|) escaped."""
    return text.replace("|", "\\|")


def claims_table(rows: list[ClaimRow], heading: str = "paper's statement") -> str:
    """The markdown table of a run's claims (or, with ``heading="smoke-run check"``, of a smoke
    run's checks), one row per claim."""
    lines = [f"| {heading} | ours | criterion | holds |", "|---|---|---|---|"]
    lines += [f"| {cell(claim)} | {cell(ours)} | {cell(criterion)} | {'yes' if ok else 'NO'} |" for claim, ours, criterion, ok in rows]
    return "\n".join(lines)


Rows = Callable[[dict], list[ClaimRow]]

#: the margin by which a smoke run's trained models must beat predicting 0
SMOKE_MARGIN = 0.10


def is_smoke(results: dict) -> bool:
    """Whether ``results`` come from a smoke run (``--quick``)."""
    return bool(results["setting"].get("smoke", False))


def announce(quiet: bool, message: str) -> None:
    """Say on stderr which phase an experiment has reached (unless quiet): training shows its own
    progress, the evaluations between and after it would otherwise look like a hang."""
    if not quiet:
        print(f"iclgd: {message}", file=sys.stderr, flush=True)


def run_seconds(run_dir: Path) -> float:
    """The training time of a run directory, summed over every process that trained it (the
    wall_time of its last metrics line; 0 when nothing was logged)."""
    log = runio.read_jsonl(Path(run_dir) / "metrics.jsonl")
    return float(log[-1]["wall_time"]) if log else 0.0


def figure_title(what: str, x_scale: float, d: int, n_context: int) -> str:
    """A figure's heading: what it shows and the task it was measured on."""
    return f"{what}; x ~ U(-a, a)^d with {x_scale_name(x_scale)}, d = {d}, N = {n_context}"


def x_scale_name(x_scale: float) -> str:
    """The input range as reports name it: "a = 1 (paper)", "a = 0.5 (authors_code)", "a = 2"."""
    names = {value: name for name, value in X_SCALES.items()}
    return f"a = {x_scale:g} ({names[x_scale]})" if x_scale in names else f"a = {x_scale:g}"


def smoke_note(checks: list[ClaimRow]) -> str:
    """The paragraph that heads a smoke run's table and report: what it is and what it checks."""
    return ("SMOKE RUN (--quick): training far too short for the paper's claims; this run checks that the "
            "pipeline works end to end, by these weaker criteria only: " + "; ".join(row[0] for row in checks)
            + ". It exits 0 when they hold.")


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


def eta_check(statement: str, eta: float, optimum: float) -> ClaimRow:
    """A line-searched GD rate ``eta`` against the closed-form optimum: within 5% (a claim, and a
    smoke check: the line search is exact for one step, so short training does not matter)."""
    return (statement, f"line search {eta:.4f}, closed form {optimum:.4f}", "within 5%", abs(eta / optimum - 1) <= 0.05)


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
