r"""Choosing the SGLD step size and nbeta of an LLC estimate by measurement.

A step size eps is usable at inverse temperature nbeta when the discretised chain still samples
the localised tempered posterior p(w) ∝ exp(-nbeta L(w) - (gamma / 2) ||w - w*||^2): the
Metropolis-adjusted Langevin (MALA) acceptance of its proposals, scored on one minibatch at both
ends of each step, stays near 1 (Furman & Lau 2024 use it the same way), and each chain's
trace is flat over its last half (the chain has settled).  Larger steps mix faster, so
``calibrate`` runs a short estimate for every (step size, nbeta) of a grid, prints the table,
and recommends, for each nbeta, the *largest* step size whose MALA acceptance is at least
``min_acceptance`` (0.9) and whose traces are flat.  A diverged chain (``LLCDiverged``) is a
row too, never usable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from iclgd.analysis.llc import LLCDiverged, default_burnin, default_nbeta, estimate_llc_of
from iclgd.analysis.objective import BackendObjective

#: The step sizes swept by default: 1e-6 .. 1e-2, three per decade.
DEFAULT_STEP_SIZES = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


@dataclass(frozen=True)
class CalibrationRow:
    """One short estimate of the sweep (llc_mean etc. are NaN when it diverged)."""

    step_size: float
    nbeta: float
    llc_mean: float
    llc_std_error: float
    mala_acceptance: float
    flat: bool
    settled_in_burnin: bool
    diverged: str | None = None

    def usable(self, min_acceptance: float) -> bool:
        return self.diverged is None and self.flat and self.mala_acceptance >= min_acceptance


@dataclass
class Calibration:
    """The sweep's rows and, per nbeta, the recommended (largest usable) step size or None."""

    rows: list[CalibrationRow]
    min_acceptance: float
    recommended: dict[float, float | None] = field(default_factory=dict)

    def table(self) -> str:
        """The rows as an aligned text table, the recommended ones marked with '<-'."""
        lines = [f"{'step_size':>10} {'nbeta':>10} {'llc':>11} {'s.e.':>9} {'MALA':>6} {'flat':>5} {'settled':>7}"]
        for row in self.rows:
            if row.diverged:
                lines.append(f"{row.step_size:>10.3g} {row.nbeta:>10.4g}   diverged: {row.diverged}")
                continue
            mark = "  <- recommended" if self.recommended.get(row.nbeta) == row.step_size else ""
            lines.append(f"{row.step_size:>10.3g} {row.nbeta:>10.4g} {row.llc_mean:>11.4g} {row.llc_std_error:>9.3g} "
                         f"{row.mala_acceptance:>6.3f} {'yes' if row.flat else 'no':>5} "
                         f"{'yes' if row.settled_in_burnin else 'no':>7}{mark}")
        return "\n".join(lines)

    def recommendation(self) -> str:
        """One sentence per nbeta."""
        out = []
        for nbeta, step in self.recommended.items():
            if step is None:
                out.append(f"nbeta {nbeta:.4g}: no step size had MALA acceptance >= {self.min_acceptance} and flat "
                           "traces; sweep smaller steps or run longer chains")
            else:
                out.append(f"nbeta {nbeta:.4g}: step_size {step:.3g} (the largest with MALA acceptance >= "
                           f"{self.min_acceptance} and flat traces)")
        return "\n".join(out)


def recommend(rows: list[CalibrationRow], min_acceptance: float) -> dict[float, float | None]:
    """nbeta -> the largest step size of its rows with MALA acceptance >= min_acceptance and flat
    traces (None when no row qualifies), in the rows' order of nbeta."""
    out = {}
    for nbeta in dict.fromkeys(row.nbeta for row in rows):
        usable = [row.step_size for row in rows if row.nbeta == nbeta and row.usable(min_acceptance)]
        out[nbeta] = max(usable) if usable else None
    return out


def calibrate(backend, cfg, params: dict, data, **options) -> Calibration:
    """``calibrate_of`` on the model ``cfg`` computed by ``backend`` (or its name) over ``data``,
    as ``iclgd.analysis.llc.estimate_llc`` takes them; the compiled chains of the backend are used."""
    from iclgd.backends import get_backend

    if isinstance(backend, str):
        backend = get_backend(backend)
    objective = BackendObjective(backend, cfg, data)
    return calibrate_of(objective, objective.check_params(params), runner=getattr(backend, "sgld_chains", None), **options)


def calibrate_of(objective, params: dict, *, step_sizes=DEFAULT_STEP_SIZES, nbetas=(None,), localization: float = 100.0,
                 num_chains: int = 2, num_draws: int = 200, num_burnin_steps: int | None = None,
                 batch_size: int | None = 1024, seed: int = 0, restrict=None, score: str = "minibatch",
                 min_acceptance: float = 0.9, runner=None, echo=print) -> Calibration:
    """Sweep ``step_sizes`` x ``nbetas`` (None: n / log n) with short estimates of ``num_chains``
    chains x ``num_draws`` draws (MALA on every draw) and recommend, per nbeta, the largest step
    size whose MALA acceptance is >= ``min_acceptance`` and whose traces are flat.  Burn-in: the
    estimator's default ceil(2 / (eps gamma)), capped at 2 num_draws so that the smallest steps
    stay affordable (their traces may then not be flat: that is reported, not hidden).  ``echo``
    (default print; None for silence) gets each row as it is measured, then the table."""
    if not step_sizes or not nbetas:
        raise ValueError(f"calibrate needs at least one step size and one nbeta; got step_sizes={step_sizes!r}, nbetas={nbetas!r}")
    if not 0 < min_acceptance <= 1:
        raise ValueError(f"min_acceptance must be in (0, 1]; got {min_acceptance}")
    calibration = Calibration([], min_acceptance)
    for nbeta in nbetas:
        for step_size in sorted(step_sizes):
            burn_in = num_burnin_steps
            if burn_in is None:
                burn_in = min(default_burnin(step_size, localization), 2 * num_draws)
            try:
                result = estimate_llc_of(objective, params, step_size=step_size, nbeta=nbeta, localization=localization,
                                         num_chains=num_chains, num_draws=num_draws, num_burnin_steps=burn_in,
                                         batch_size=batch_size, seed=seed, restrict=restrict, score=score, mala_every=1,
                                         runner=runner)
            except LLCDiverged as error:
                used_nbeta = nbeta if nbeta is not None else default_nbeta(objective.n_samples)
                row = CalibrationRow(step_size, used_nbeta, math.nan, math.nan, 0.0, False, False, str(error).split(":")[0])
            else:
                d = result.diagnostics
                row = CalibrationRow(step_size, result.settings.nbeta, result.llc_mean, result.llc_std_error,
                                     d["mala_acceptance"], d["flat"], d["settled_in_burnin"])
            calibration.rows.append(row)
            if echo:
                echo(f"  step_size {row.step_size:.3g}, nbeta {row.nbeta:.4g}: "
                     + (f"diverged ({row.diverged})" if row.diverged else
                        f"llc {row.llc_mean:.4g} +- {row.llc_std_error:.2g}, MALA {row.mala_acceptance:.3f}, "
                        f"{'flat' if row.flat else 'drifting'}"))
    calibration.recommended = recommend(calibration.rows, min_acceptance)
    if echo:
        echo(calibration.table())
        echo(calibration.recommendation())
    return calibration

