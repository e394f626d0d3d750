r"""One skeleton for every `iclgd reproduce` experiment: an experiment states its science, the
skeleton runs it, judges it and writes it up the same way for all.

An experiment module states

* its setting: a frozen dataclass that mixes in ``Setting`` (a ``smoke`` flag, a ``quick()``
  variant of seconds, the task counts that need a standard error);
* ``measure(out_dir, setting, backend, quiet) -> Measured``: which models it trains (resumable run
  directories under out_dir) and what it measures (the results' numbers, the figures to draw);
* its claims: rows (paper's statement, ours, criterion, holds) computed from the results, and the
  weaker checks a smoke run is judged by instead (iclgd.experiments.output);
* its report's own text: the setting paragraph and the sections after the claims table;

as an ``Experiment``, whose methods are what the command line calls:

    run(out_dir, setting, quiet)  results = {"claim", "setting", **measured, "figures", "provenance",
                                  "verdicts"[, "smoke_checks"]}, written to out_dir/results.json and
                                  out_dir/report.md with every figure (matplotlib installed)
    table(results)                the claims table; a smoke run's checks first
    exit_code(results)            0 when every deciding row holds (a smoke run: its checks), else 1
    report(results)               "# title", the claim, the setting, the table, the sections
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from iclgd import plots, runio
from iclgd._checks import positive_int
from iclgd.backends import get_backend
from iclgd.experiments.output import ClaimRow, Rows, claims_table, is_smoke, smoke_note, verdicts
from iclgd.provenance import provenance


class Setting:
    """What every experiment's setting has, mixed into its frozen dataclass: a ``smoke: bool``
    field (a smoke run, judged by the weaker checks), ``quick()``, the setting with ``QUICK``'s
    changes and ``smoke = True``, and ``check_common()`` for ``__post_init__``."""

    #: the changes from the full setting that make a smoke run of seconds
    QUICK: ClassVar[dict[str, Any]] = {}
    #: the fields that count tasks behind an estimate (each needs two or more for a standard error)
    TASK_COUNTS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def quick(cls, **changes):
        """The smoke-run setting: ``QUICK``, then ``changes``, with ``smoke = True``."""
        return cls(**({**cls.QUICK, "smoke": True} | changes))

    def check_common(self) -> None:
        """ValueError unless ``smoke`` is a bool and every task count is an integer >= 2."""
        if not isinstance(self.smoke, bool):
            raise ValueError(f"smoke must be True or False; got {self.smoke!r}")
        for name in self.TASK_COUNTS:
            if positive_int(name, getattr(self, name)) < 2:
                raise ValueError(f"{name} must be >= 2 (a standard error needs two tasks); got {getattr(self, name)}")


@dataclass(frozen=True)
class Measured:
    """What an experiment measured: its numbers (results.json after "claim" and "setting", in
    order) and its figures (file name -> a function drawing it to a path)."""

    results: dict
    figures: dict[str, Callable[[Path], None]]


@dataclass(frozen=True)
class Experiment:
    """One experiment's science (module doc) and the skeleton that runs, judges and writes it.

    claim:        the paper's claim, as results.json and the report state it
    title:        the report's heading
    source:       where the paper makes the claim ("von Oswald et al. 2023, Sec. 3")
    measure:      (out_dir, setting, backend, quiet) -> Measured
    claims:       results -> the claim rows
    checks:       results -> the smoke-run check rows
    setting_text: results -> the report's setting paragraph
    sections:     results -> the report after the claims table
    figures_inline: whether ``sections`` places the figures itself; else the report ends with them
    lsa_backend:  whether ``measure`` gets the LSA backend named by ``setting.backend``; False for
                  the attention-stack experiments, which train through iclgd.train.stack_training
                  with ``setting.backend`` as its engine and get None (building the jax backend
                  would switch jax to float64 process-wide)
    """

    claim: str
    title: str
    source: str
    measure: Callable[[Path, Any, Any, bool], Measured]
    claims: Rows
    checks: Rows
    setting_text: Callable[[dict], str]
    sections: Callable[[dict], str]
    figures_inline: bool = False
    lsa_backend: bool = True

    def run(self, out_dir: str | Path, setting, quiet: bool = False) -> dict:
        """Measure in ``out_dir`` (training resumes there), then write the outputs; the results."""
        out_dir = Path(out_dir)
        measured = self.measure(out_dir, setting, get_backend(setting.backend) if self.lsa_backend else None, quiet)
        results = {"claim": self.claim, "setting": asdict(setting), **measured.results}
        return self.write(out_dir, results, measured.figures)

    def write(self, out_dir: Path, results: dict, figures: dict[str, Callable[[Path], None]]) -> dict:
        """Draw every figure if matplotlib is installed (listed in ``results["figures"]``), add the
        provenance (iclgd.provenance), the verdict of every claim and, for a smoke run, of every
        check; write results.json, then report.md (atomically, the report last).  Returns ``results``."""
        results["figures"] = list(figures) if plots.matplotlib_available() else []
        for name in results["figures"]:
            figures[name](out_dir / name)
        results["provenance"] = provenance(results["setting"]["backend"])
        results["verdicts"] = verdicts(self.claims(results))
        if is_smoke(results):
            results["smoke_checks"] = verdicts(self.checks(results))
        runio.write_json(out_dir / "results.json", results)
        runio.atomic_write_text(out_dir / "report.md", self.report(results))
        return results

    def deciding_rows(self, results: dict) -> list[ClaimRow]:
        """The rows the exit code follows: the smoke checks of a smoke run, else the claims."""
        return self.checks(results) if is_smoke(results) else self.claims(results)

    def exit_code(self, results: dict) -> int:
        """0 when every deciding row holds, else 1: what `iclgd reproduce` returns."""
        return 0 if all(row[3] for row in self.deciding_rows(results)) else 1

    def table(self, results: dict) -> str:
        """The claims table; for a smoke run, the smoke note and the checks first, and the claims
        below them for information."""
        if not is_smoke(results):
            return claims_table(self.claims(results))
        checks = self.checks(results)
        return "\n\n".join([smoke_note(checks), claims_table(checks, heading="smoke-run check"),
                             "The paper's claims at this run length (for information: not expected to hold, and not "
                             "what the exit code follows):", claims_table(self.claims(results))])

    def report(self, results: dict) -> str:
        """report.md: the title (marked for a smoke run), the claim, the setting, the table, the
        sections and (unless the sections place them) every drawn figure, one markdown image a line."""
        title = self.title + (" (smoke run, --quick)" if is_smoke(results) else "")
        figures = "" if self.figures_inline else "\n" + "".join(f"\n![{name}]({name})" for name in results["figures"]) + "\n"
        return (f"# {title}\n\nClaim ({self.source}): {results['claim']}.\n\n{self.setting_text(results)}\n\n"
                f"{self.table(results)}\n\n{self.sections(results)}{figures}")
