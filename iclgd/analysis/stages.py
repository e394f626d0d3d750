r"""Developmental stages from a curve sampled at training checkpoints (the LLC, the loss, ...).

Hoogland et al. ("The Developmental Landscape of In-Context Learning") plot the LLC against
log(step) and place the stage boundaries at its *critical points*: where the slope of the curve
over log(step) has a local minimum in magnitude and is (near) zero, i.e. at plateaus and turning
points.  Each stage is typed by whether the LLC rises or falls in it; the same slope analysis
applies to the loss.  This module makes that criterion a definite computation.

1. Smoothing (``smooth_curve``).  x = log10(step).  Step 0 has no logarithm and is dropped
   (``SmoothFit.dropped_steps`` says so); log10(1 + step) would bend the axis at the small
   steps.  The curve is fitted by *local linear regression with a Gaussian kernel* in x (Fan &
   Gijbels 1996, "Local Polynomial Modelling and Its Applications", ch. 2): at each x0

       f(x0) = a,   (a, b) = argmin  sum_i  w_i K((x_i - x0) / h(x0)) (y_i - a - b (x_i - x0))^2,

   K(u) = exp(-u^2 / 2), w_i = 1 / se_i^2 when standard errors are given (the LLC has them),
   else 1.  The bandwidth h is fixed in decades of step: default 0.1, because the paper's last
   boundaries (126k, 320k, 500k steps) are 0.2-0.4 decades apart and a Gaussian kernel blurs a
   kink over about +-2 h, while on the paper's grid (17 log-spaced checkpoints a decade early
   on) a smaller h leaves the slope noisy.  Where checkpoints are sparse (the first decades of
   a log grid: steps 1, 2, 3, ...) it is widened smoothly so that ``min_neighbours`` (3) of them
   lie within about 2 h(x0):  h(x0) = (h^4 + (d_3(x0) / 2)^4)^(1/4), d_3 the distance to the
   third-nearest checkpoint.  Local *linear* (rather than local constant) regression keeps the
   fit unbiased at the two ends of the run and on uneven grids (the paper's grid is log-spaced
   early and linear-spaced late, so its density in x grows ~50-fold over the last decade).  The
   fit is a linear smoother, f = L y, whose rows sum to 1: adding a constant to the values adds
   it to f and scaling the values scales f, so everything below is invariant to shifts and
   positive scalings of the values.  (A Gaussian-process fit, the other usual choice, is the
   same kind of linear smoother with its length scale set by marginal likelihood; here it is
   set by hand, and stated.)  The slope
   f'(x) = d value / d log10(step) and the curvature f''(x) are central differences of f on a
   dense uniform grid in x (2001 points; relative error ~(spacing / h)^2 / 6, about 1e-4 on the
   paper's 5.7 decades).

   Noise: with w the weights and nu = 2 tr(L) - tr(L^T L) the fit's degrees of freedom
   (Hastie & Tibshirani 1990, "Generalized Additive Models", sec. 3.5), the residuals give
   k^2 = sum_i w_i r_i^2 / (n - nu) (w scaled to w_i = 1 / se_i^2).  Without errors the noise is
   sigma_i = k (the residual standard deviation); with errors sigma_i = se_i max(1, k): the given
   errors are trusted unless the scatter around the fit shows them too small.  The standard
   error of any linear functional of f (a value, the change across a stage) follows from L.

2. Critical points (``critical_points``).  The typical slope is S = mean |f'| over the grid
   (the total variation of f per decade).  A point is on a plateau where

       |f'(x)| < tau(x) = max(p S, 2 se(f'(x))),      p = ``plateau_fraction`` (default 0.2):

   its slope is small next to the curve's typical slope, or not distinguishable from zero (se
   from L and sigma, as above; on clean data p S is the larger).  Noise cuts plateaus into
   pieces, so two runs of plateau points are joined when |f'| between them stays below 2 tau
   (hysteresis, as in Canny's edge detector) or the fitted change between them is within
   ``significance`` (3) standard errors.  Each joined run gives one critical point at its
   minimum of |f'| (a local minimum of |slope|: the paper's criterion), with the slope and
   curvature there; it is a "maximum" or "minimum" when f' has opposite signs on the two sides
   of the run, else a "plateau".  A sign change of f' always makes a run (|f'| passes 0 < tau).

3. Stages (``stages``).  A run narrower than ``min_plateau_width`` (default 2 h: the kernel
   cannot tell it from a point) is one boundary, at its critical point.  A wider run, or one
   that reaches an end of the curve, is a flat stage of its own, bounded by its edges; each edge
   is moved outward from where |f'| crosses tau to where |f'| reaches half the largest |f'|
   within 4 h beyond it (stopping at the next run): for a kink between a plateau and a ramp a
   symmetric kernel puts the smoothed slope at exactly half the ramp's slope at the kink, so
   this edge is unbiased, while the crossing of tau lies ~1-2 h inside the plateau.
   Boundaries closer to an end of the curve than the kernel's width there, h(x_end), are
   dropped.  A stage from x_a to x_b has the change Delta = f(x_b) - f(x_a) and its standard
   error.  A plateau's stage is "flat"; any other stage is "flat" when |Delta| is within
   ``significance`` standard errors or its mean slope |Delta| / (x_b - x_a) is below p S, else
   "rising" or "falling" by the sign of Delta.  Neighbouring flat stages are merged into one
   flat stage (a stretch with no significant rise or fall in any of its parts; its change is
   still reported).  A constant curve is one flat stage.

   Resolution: features closer than ~2 h blur together, and the slope is noisiest within 2 h of
   the ends (the local line is one-sided there), so a final stage as short as the paper's LR5
   (320k-500k steps: 0.2 decades = 2 h) is at the limit of what the default h resolves.

Input: steps strictly increasing, finite, >= 0; values (and errors, > 0) finite, one per step;
at least ``MIN_POINTS`` (6) checkpoints with step > 0.  Anything else raises ValueError.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from iclgd._checks import finite_array, finite_float, positive_int

#: The fewest checkpoints (with step > 0) a curve may have.
MIN_POINTS = 6
DEFAULT_BANDWIDTH = 0.1
DEFAULT_MIN_NEIGHBOURS = 3
DEFAULT_GRID_POINTS = 2001
DEFAULT_PLATEAU_FRACTION = 0.2
DEFAULT_SIGNIFICANCE = 3.0
#: Two plateau runs are joined when |slope| between them stays below this multiple of tau.
HYSTERESIS = 2.0
#: A slope within this many standard errors of zero counts as flat, whatever p S is.
SLOPE_NOISE_Z = 2.0
#: How far (in bandwidths) a flat stage's edge may move outward from where |slope| crosses tau.
EDGE_REACH = 4.0
STAGE_TYPES = ("rising", "falling", "flat")


def _step_value(step: float) -> int | float:
    """A step as an int when it is a whole number (checkpoint steps), else a float."""
    return int(step) if float(step).is_integer() else float(step)


# --- the smooth fit ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SmoothFit:
    """A kernel fit of values against x = log10(step) (see the module docstring).

    At the checkpoints used (step > 0): ``steps``, ``values``, ``errors`` (None when not given),
    ``log_steps``, ``fitted``, ``slope`` (d value / d log10 step) and ``curvature``.  On the
    dense grid: ``grid_log_steps``, ``grid_fitted``, ``grid_slope``, ``grid_curvature`` and the
    slope's standard error ``grid_slope_std_error``.
    ``noise`` is sigma_i per checkpoint and ``noise_factor`` k (see the module docstring)."""

    steps: np.ndarray
    values: np.ndarray
    errors: np.ndarray | None
    log_steps: np.ndarray
    fitted: np.ndarray
    slope: np.ndarray
    curvature: np.ndarray
    grid_log_steps: np.ndarray
    grid_fitted: np.ndarray
    grid_slope: np.ndarray
    grid_curvature: np.ndarray
    grid_slope_std_error: np.ndarray
    noise: np.ndarray
    noise_factor: float
    degrees_of_freedom: float
    bandwidth: float
    min_neighbours: int
    dropped_steps: tuple[float, ...] = ()
    weights: np.ndarray | None = field(default=None, repr=False)

    def smoother_weights(self, log_steps) -> np.ndarray:
        """The rows l(x) with f(x) = l(x) . values at the given log10 steps, shape (m, n)."""
        x_eval = np.atleast_1d(np.asarray(log_steps, dtype=np.float64))
        return _local_linear_weights(x_eval, self.log_steps, self.weights, self.bandwidth, self.min_neighbours)

    def bandwidth_at(self, log_step: float) -> float:
        """The kernel's width h(x0) at ``log_step`` (wider than ``bandwidth`` where checkpoints are sparse)."""
        return float(_bandwidths(np.array([float(log_step)]), self.log_steps, self.bandwidth, self.min_neighbours)[0])

    def value_at(self, log_steps) -> np.ndarray:
        """f at the given log10 steps (computed, not interpolated from the grid)."""
        return self.smoother_weights(log_steps) @ self.values

    def std_error_of(self, rows) -> np.ndarray:
        """The standard errors of the linear functionals rows . values (rows: (m, n))."""
        return np.sqrt(np.sum((np.atleast_2d(rows) * self.noise) ** 2, axis=1))

    def nearest_checkpoint(self, log_step: float) -> int | float:
        """The step of the checkpoint nearest to ``log_step`` in log10 step."""
        return _step_value(self.steps[int(np.argmin(np.abs(self.log_steps - log_step)))])


def _bandwidths(x_eval: np.ndarray, x: np.ndarray, bandwidth: float, min_neighbours: int) -> np.ndarray:
    """h(x0) = (h^4 + (d_k(x0) / 2)^4)^(1/4), d_k the distance to the k-th nearest checkpoint."""
    k = min(min_neighbours, x.size) - 1
    kth = np.partition(np.abs(x[None, :] - x_eval[:, None]), k, axis=1)[:, k]
    return (bandwidth**4 + (kth / 2.0) ** 4) ** 0.25


def _local_linear_weights(x_eval: np.ndarray, x: np.ndarray, w: np.ndarray, bandwidth: float,
                          min_neighbours: int) -> np.ndarray:
    """The local linear smoother's weights l_i(x0): rows over x_eval, columns over x."""
    d = x[None, :] - x_eval[:, None]  # (m, n)
    u = d / _bandwidths(x_eval, x, bandwidth, min_neighbours)[:, None]
    log_kernel = -0.5 * u**2
    # relative to each row's nearest checkpoint, so that no row underflows to zeros
    kernel = np.exp(log_kernel - log_kernel.max(axis=1, keepdims=True)) * w[None, :]
    s0 = kernel.sum(axis=1, keepdims=True)
    s1 = (kernel * u).sum(axis=1, keepdims=True)
    s2 = (kernel * u**2).sum(axis=1, keepdims=True)
    return kernel * (s2 - s1 * u) / (s0 * s2 - s1**2)


def _check_curve(steps, values, errors):
    """steps, values, errors (or None) as float64 arrays with step 0 dropped, and the dropped steps."""
    steps = finite_array("steps", steps, ndim=1).astype(np.float64)
    values = finite_array("values", values, ndim=1).astype(np.float64)
    if values.size != steps.size:
        raise ValueError(f"values must have one entry per step ({steps.size} steps); got {values.size} values")
    if errors is not None:
        errors = finite_array("errors", errors, ndim=1).astype(np.float64)
        if errors.size != steps.size:
            raise ValueError(f"errors must have one entry per step ({steps.size} steps); got {errors.size} errors")
        if errors.size and np.min(errors) <= 0:
            i = int(np.argmin(errors))
            raise ValueError(f"errors must be > 0 (standard errors); got {errors[i]:g} at index {i}")
    if steps.size and np.min(steps) < 0:
        i = int(np.argmin(steps))
        raise ValueError(f"steps must be >= 0; got {steps[i]:g} at index {i}")
    if steps.size > 1 and not np.all(np.diff(steps) > 0):
        i = int(np.argmin(np.diff(steps) > 0))
        raise ValueError(f"steps must be strictly increasing; got steps[{i}] = {steps[i]:g} "
                         f"then steps[{i + 1}] = {steps[i + 1]:g}")
    keep = steps > 0
    dropped = tuple(float(s) for s in steps[~keep])
    steps, values = steps[keep], values[keep]
    errors = errors[keep] if errors is not None else None
    if steps.size < MIN_POINTS:
        raise ValueError(f"need at least {MIN_POINTS} checkpoints with step > 0 (step 0 has no log10 and "
                         f"is dropped); got {steps.size}")
    return steps, values, errors, dropped


def smooth_curve(steps, values, *, errors=None, bandwidth: float = DEFAULT_BANDWIDTH,
                 min_neighbours: int = DEFAULT_MIN_NEIGHBOURS, grid_points: int = DEFAULT_GRID_POINTS) -> SmoothFit:
    """Fit ``values`` against log10(``steps``) by Gaussian-kernel local linear regression
    (``bandwidth`` in decades), weighted by 1 / errors^2 when ``errors`` are given; step 0 is
    dropped.  Returns the fit, its slope d value / d log10(step) and curvature, on a dense grid of
    ``grid_points`` and at the checkpoints (see the module docstring)."""
    steps, values, errors, dropped = _check_curve(steps, values, errors)
    bandwidth = finite_float("bandwidth", bandwidth, positive=True)
    min_neighbours = positive_int("min_neighbours", min_neighbours, maximum=10**6)
    if min_neighbours < 2:
        raise ValueError(f"min_neighbours must be >= 2 (a local line needs two points); got {min_neighbours}")
    grid_points = positive_int("grid_points", grid_points, maximum=10**6)
    if grid_points < 3:
        raise ValueError(f"grid_points must be >= 3; got {grid_points}")
    x = np.log10(steps)
    # weights scaled so that the smallest error has weight 1 (the smoother only sees their ratios)
    w = np.ones_like(values) if errors is None else (errors.min() / errors) ** 2
    grid = np.linspace(x[0], x[-1], grid_points)
    grid_rows = _local_linear_weights(grid, x, w, bandwidth, min_neighbours)  # (grid_points, n)
    slope_rows = np.gradient(grid_rows, grid, axis=0)  # the slope is a linear smoother too
    grid_fitted = grid_rows @ values
    grid_slope = slope_rows @ values
    grid_curvature = np.gradient(grid_slope, grid)
    at = _local_linear_weights(x, x, w, bandwidth, min_neighbours)  # L at the checkpoints, (n, n)
    fitted = at @ values
    n = values.size
    dof = float(2.0 * np.trace(at) - np.sum(at**2))
    chi2 = float(np.sum(w * (values - fitted) ** 2) / max(n - dof, 1.0))
    if errors is None:
        noise_factor = float(np.sqrt(chi2))
        noise = np.full(n, noise_factor)
    else:  # w_i = (se_min / se_i)^2, so chi2 is in units of se_min^2
        noise_factor = float(np.sqrt(chi2) / errors.min())
        noise = errors * max(1.0, noise_factor)
    grid_slope_std_error = np.sqrt((slope_rows**2) @ noise**2)
    return SmoothFit(
        steps=steps, values=values, errors=errors, log_steps=x, fitted=fitted,
        slope=np.interp(x, grid, grid_slope), curvature=np.interp(x, grid, grid_curvature),
        grid_log_steps=grid, grid_fitted=grid_fitted, grid_slope=grid_slope, grid_curvature=grid_curvature,
        grid_slope_std_error=grid_slope_std_error, noise=noise, noise_factor=noise_factor, degrees_of_freedom=dof, bandwidth=bandwidth,
        min_neighbours=min_neighbours, dropped_steps=dropped, weights=w,
    )


# --- critical points -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CriticalPoint:
    """A local minimum of |slope| on a plateau (a run where |slope| < tau) of the fitted curve.

    ``log_step`` / ``step`` are interpolated (on the dense grid), ``checkpoint`` is the nearest
    checkpoint's step; ``value``, ``slope`` and ``curvature`` are the fit's there.  ``kind``:
    "maximum" or "minimum" (the slope changes sign across the run) or "plateau".  The run spans
    ``plateau_start`` .. ``plateau_end`` (steps), ``plateau_width`` decades; ``flat_stage`` says
    whether it is reported as a flat stage of its own (it is at least min_plateau_width wide or
    reaches an end of the curve) rather than as one boundary."""

    log_step: float
    step: float
    checkpoint: int | float
    value: float
    slope: float
    curvature: float
    kind: str
    plateau_start: float
    plateau_end: float
    plateau_width: float
    flat_stage: bool


@dataclass(frozen=True)
class _Run:
    """A joined plateau run on the dense grid: indices i0..i1 (inclusive), its critical point c,
    and its edges in x (None at an end of the curve)."""

    i0: int
    i1: int
    c: int
    left: float | None
    right: float | None


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The maximal runs [i0, i1] (inclusive) where mask is True."""
    padded = np.concatenate([[0], mask.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def _crossing(grid: np.ndarray, level: np.ndarray, start: int, stop: int, target: float) -> float:
    """Walk from grid index ``start`` to ``stop`` (inclusive, either direction) and return the x
    where ``level`` first reaches ``target`` (linear interpolation from the previous point);
    the x at ``stop`` if it never does."""
    direction = 1 if stop >= start else -1
    previous = start - direction
    for i in range(start, stop + direction, direction):
        if level[i] >= target:
            a, b = level[previous], level[i]
            t = 1.0 if b == a else min(max((target - a) / (b - a), 0.0), 1.0)
            return float(grid[previous] + t * (grid[i] - grid[previous]))
        previous = i
    return float(grid[stop])


@dataclass(frozen=True)
class _Settings:
    plateau_fraction: float
    min_plateau_width: float
    significance: float
    typical_slope: float
    threshold: float


def _settings(fit, plateau_fraction, min_plateau_width, significance) -> _Settings:
    if not isinstance(fit, SmoothFit):
        raise ValueError(f"fit must be a SmoothFit (from smooth_curve); got {type(fit).__name__}")
    plateau_fraction = finite_float("plateau_fraction", plateau_fraction, positive=True)
    if plateau_fraction >= 1:
        raise ValueError(f"plateau_fraction must be in (0, 1) (a fraction of the mean |slope|); got {plateau_fraction}")
    if min_plateau_width is None:
        min_plateau_width = 2.0 * fit.bandwidth
    min_plateau_width = finite_float("min_plateau_width", min_plateau_width, nonnegative=True)
    significance = finite_float("significance", significance, nonnegative=True)
    typical = float(np.mean(np.abs(fit.grid_slope)))
    return _Settings(plateau_fraction, min_plateau_width, significance, typical, plateau_fraction * typical)


def _significant(fit: SmoothFit, x_a: float, x_b: float, significance: float) -> bool:
    """Whether f(x_b) - f(x_a) exceeds ``significance`` standard errors."""
    rows = fit.smoother_weights([x_a, x_b])
    change = float((rows[1] - rows[0]) @ fit.values)
    return abs(change) > significance * float(fit.std_error_of(rows[1] - rows[0])[0])


def _plateau_runs(fit: SmoothFit, s: _Settings) -> list[_Run]:
    """The plateau runs of the fit, joined across insignificant gaps, with their critical points
    and (outward-moved) edges."""
    if s.threshold == 0.0 or np.ptp(fit.values) == 0.0:  # a constant curve: no critical points
        return []
    grid, level = fit.grid_log_steps, np.abs(fit.grid_slope)
    local = np.maximum(s.threshold, SLOPE_NOISE_Z * fit.grid_slope_std_error)  # tau, or the slope's noise
    joined: list[list[int]] = []
    for i0, i1 in _runs(level < local):
        if joined:
            gap = slice(joined[-1][1] + 1, i0)
            if np.all(level[gap] < HYSTERESIS * local[gap]) or not _significant(
                    fit, grid[joined[-1][1]], grid[i0], s.significance):
                joined[-1][1] = i1
                continue
        joined.append([i0, i1])
    last = grid.size - 1
    reach = int(np.ceil(EDGE_REACH * fit.bandwidth / (grid[1] - grid[0])))  # in grid points
    runs = []
    for r, (i0, i1) in enumerate(joined):
        c = i0 + int(np.argmin(level[i0 : i1 + 1]))
        left = right = None
        if i0 > 0:  # the segment on the left: back to the previous run, the start, or the reach
            lo = max(joined[r - 1][1] + 1 if r > 0 else 0, i0 - reach)
            target = max(float(local[i0 - 1]), 0.5 * float(level[lo:i0].max()))
            left = _crossing(grid, level, i0 - 1, lo, target)
        if i1 < last:
            hi = min(joined[r + 1][0] - 1 if r + 1 < len(joined) else last, i1 + reach)
            target = max(float(local[i1 + 1]), 0.5 * float(level[i1 + 1 : hi + 1].max()))
            right = _crossing(grid, level, i1 + 1, hi, target)
        if runs and runs[-1].right is not None and left is not None and runs[-1].right > left:
            # a gap too short for both edges: they meet where |slope| peaks between the runs
            middle = float(grid[runs[-1].i1 + 1 + int(np.argmax(level[runs[-1].i1 + 1 : i0]))])
            runs[-1] = _Run(runs[-1].i0, runs[-1].i1, runs[-1].c, runs[-1].left, middle)
            left = middle
        runs.append(_Run(i0, i1, c, left, right))
    return runs


def _is_flat_stage(fit: SmoothFit, run: _Run, s: _Settings) -> bool:
    grid = fit.grid_log_steps
    if run.left is None or run.right is None:  # reaches an end: flat if it leaves a stage >= h
        edge = run.right if run.left is None else run.left
        return edge is None or (fit.bandwidth_at(grid[0]) <= edge - grid[0]
                                and edge <= grid[-1] - fit.bandwidth_at(grid[-1]))
    return grid[run.i1] - grid[run.i0] >= s.min_plateau_width


def _critical_point(fit: SmoothFit, run: _Run, s: _Settings) -> CriticalPoint:
    grid, slope = fit.grid_log_steps, fit.grid_slope
    before = slope[run.i0 - 1] if run.i0 > 0 else 0.0
    after = slope[run.i1 + 1] if run.i1 < grid.size - 1 else 0.0
    kind = "maximum" if before > 0 > after else "minimum" if before < 0 < after else "plateau"
    x = float(grid[run.c])
    return CriticalPoint(
        log_step=x, step=float(10**x), checkpoint=fit.nearest_checkpoint(x), value=float(fit.grid_fitted[run.c]),
        slope=float(slope[run.c]), curvature=float(fit.grid_curvature[run.c]), kind=kind,
        plateau_start=float(10 ** grid[run.i0]), plateau_end=float(10 ** grid[run.i1]),
        plateau_width=float(grid[run.i1] - grid[run.i0]), flat_stage=bool(_is_flat_stage(fit, run, s)),
    )


def critical_points_of(fit: SmoothFit, *, plateau_fraction: float = DEFAULT_PLATEAU_FRACTION,
                       min_plateau_width: float | None = None,
                       significance: float = DEFAULT_SIGNIFICANCE) -> list[CriticalPoint]:
    """The critical points of a fit: one per (joined) plateau run, at its minimum of |slope|."""
    s = _settings(fit, plateau_fraction, min_plateau_width, significance)
    return [_critical_point(fit, run, s) for run in _plateau_runs(fit, s)]


def critical_points(steps, values, *, errors=None, bandwidth: float = DEFAULT_BANDWIDTH,
                    min_neighbours: int = DEFAULT_MIN_NEIGHBOURS, plateau_fraction: float = DEFAULT_PLATEAU_FRACTION,
                    min_plateau_width: float | None = None, significance: float = DEFAULT_SIGNIFICANCE) -> list[CriticalPoint]:
    """``smooth_curve`` then ``critical_points_of``: the curve's plateaus and turning points."""
    fit = smooth_curve(steps, values, errors=errors, bandwidth=bandwidth, min_neighbours=min_neighbours)
    return critical_points_of(fit, plateau_fraction=plateau_fraction, min_plateau_width=min_plateau_width,
                              significance=significance)


# --- stages --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boundary:
    """A stage boundary: a narrow plateau's critical point, or an edge of a flat stage."""

    log_step: float
    step: float
    checkpoint: int | float
    source: str  # "critical point", "plateau start", "plateau end"
    slope: float
    curvature: float


@dataclass(frozen=True)
class Stage:
    """The fitted curve between two boundaries (or an end of the curve)."""

    start_step: float
    end_step: float
    start_checkpoint: int | float
    end_checkpoint: int | float
    type: str  # "rising", "falling", "flat"
    start_value: float
    end_value: float
    change: float
    change_std_error: float
    mean_slope: float  # change per decade of step


@dataclass(eq=False)
class StageResult:
    """The stages of a curve, with its boundaries, critical points, fit and settings."""

    stages: list[Stage]
    boundaries: list[Boundary]
    critical_points: list[CriticalPoint]
    fit: SmoothFit
    typical_slope: float
    plateau_threshold: float
    plateau_fraction: float
    min_plateau_width: float
    significance: float

    @property
    def boundary_steps(self) -> list[float]:
        return [b.step for b in self.boundaries]

    @property
    def types(self) -> list[str]:
        return [stage.type for stage in self.stages]

    def summary(self) -> dict:
        """A JSON-ready dict: the smoother and thresholds, boundaries, stages, critical points."""
        fit = self.fit
        return {
            "x": "log10(step)",
            "smoother": {
                "method": "Gaussian-kernel local linear regression in log10(step)",
                "bandwidth_decades": fit.bandwidth,
                "min_neighbours": fit.min_neighbours,
                "weights": "1/errors^2" if fit.errors is not None else "uniform",
                "grid_points": int(fit.grid_log_steps.size),
                "degrees_of_freedom": fit.degrees_of_freedom,
                "noise_factor": fit.noise_factor,
            },
            "n_checkpoints": int(fit.steps.size),
            "dropped_steps": [_step_value(step) for step in fit.dropped_steps],
            "typical_slope": self.typical_slope,
            "plateau_fraction": self.plateau_fraction,
            "plateau_threshold": self.plateau_threshold,
            "min_plateau_width_decades": self.min_plateau_width,
            "significance": self.significance,
            "boundaries": [asdict(b) for b in self.boundaries],
            "stages": [asdict(stage) for stage in self.stages],
            "critical_points": [asdict(c) for c in self.critical_points],
        }


def _stage_list(fit: SmoothFit, cuts: list[float], plateau: list[bool], s: _Settings) -> list[Stage]:
    """The stages between consecutive cuts; ``plateau[j]`` says stage j is a plateau's (flat)."""
    edges = np.array([fit.log_steps[0], *cuts, fit.log_steps[-1]])
    rows = fit.smoother_weights(edges)
    ends = rows @ fit.values
    errors = fit.std_error_of(rows[1:] - rows[:-1])
    result = []
    for j in range(edges.size - 1):
        change = float(ends[j + 1] - ends[j])
        mean_slope = change / float(edges[j + 1] - edges[j])
        flat = plateau[j] or abs(change) <= s.significance * errors[j] or abs(mean_slope) < s.threshold
        result.append(Stage(
            start_step=float(10 ** edges[j]), end_step=float(10 ** edges[j + 1]),
            start_checkpoint=fit.nearest_checkpoint(edges[j]), end_checkpoint=fit.nearest_checkpoint(edges[j + 1]),
            type="flat" if flat else ("rising" if change > 0 else "falling"), start_value=float(ends[j]),
            end_value=float(ends[j + 1]), change=change, change_std_error=float(errors[j]), mean_slope=mean_slope,
        ))
    return result


def stages_of(fit: SmoothFit, *, plateau_fraction: float = DEFAULT_PLATEAU_FRACTION,
              min_plateau_width: float | None = None, significance: float = DEFAULT_SIGNIFICANCE) -> StageResult:
    """The stages of a fit (see the module docstring)."""
    s = _settings(fit, plateau_fraction, min_plateau_width, significance)
    runs = _plateau_runs(fit, s)
    points = [_critical_point(fit, run, s) for run in runs]
    grid = fit.grid_log_steps
    start, end = grid[0] + fit.bandwidth_at(grid[0]), grid[-1] - fit.bandwidth_at(grid[-1])
    found = []  # (x, source, the stage after it is a plateau's)
    for run, point in zip(runs, points):
        if not point.flat_stage:
            found.append((point.log_step, "critical point", False))
            continue
        if run.left is not None:
            found.append((run.left, "plateau start", True))
        if run.right is not None:
            found.append((run.right, "plateau end", False))
    first_is_plateau = bool(runs) and runs[0].left is None and points[0].flat_stage
    cuts, sources, plateau = [], [], [first_is_plateau]
    for x, source, next_is_plateau in sorted(found):
        too_close = cuts and x <= cuts[-1] + (grid[1] - grid[0])
        if too_close or x < start or x > end:  # too close to an end or the previous cut to bound a stage
            plateau[-1] = plateau[-1] or next_is_plateau  # the current stage goes on
            continue
        cuts.append(x)
        sources.append(source)
        plateau.append(next_is_plateau)
    stage_list = _stage_list(fit, cuts, plateau, s)
    for j in reversed(range(len(stage_list) - 1)):  # neighbouring flat stages are one flat stage
        if stage_list[j].type == stage_list[j + 1].type == "flat":
            del cuts[j], sources[j]
            plateau[j : j + 2] = [True]
    stage_list = _stage_list(fit, cuts, plateau, s)
    boundaries = [
        Boundary(log_step=float(x), step=float(10**x), checkpoint=fit.nearest_checkpoint(x), source=source,
                 slope=float(np.interp(x, grid, fit.grid_slope)), curvature=float(np.interp(x, grid, fit.grid_curvature)))
        for x, source in zip(cuts, sources)
    ]
    return StageResult(stages=stage_list, boundaries=boundaries, critical_points=points, fit=fit,
                       typical_slope=s.typical_slope, plateau_threshold=s.threshold,
                       plateau_fraction=s.plateau_fraction, min_plateau_width=s.min_plateau_width,
                       significance=s.significance)


def stages(steps, values, *, errors=None, bandwidth: float = DEFAULT_BANDWIDTH,
           min_neighbours: int = DEFAULT_MIN_NEIGHBOURS, plateau_fraction: float = DEFAULT_PLATEAU_FRACTION,
           min_plateau_width: float | None = None, significance: float = DEFAULT_SIGNIFICANCE) -> StageResult:
    """Developmental stages of a curve over training checkpoints: ``smooth_curve`` then
    ``stages_of``.  Works for the LLC (pass its standard errors) and for the loss."""
    fit = smooth_curve(steps, values, errors=errors, bandwidth=bandwidth, min_neighbours=min_neighbours)
    return stages_of(fit, plateau_fraction=plateau_fraction, min_plateau_width=min_plateau_width,
                     significance=significance)
