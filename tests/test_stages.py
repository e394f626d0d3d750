"""Stage boundaries from a curve over training checkpoints (iclgd.analysis.stages): the slope
analysis of the developmental-landscape paper on synthetic curves of known shape, sampled on
the paper's checkpoint grid (100 log- + 100 linear-spaced steps of 500k: 190 steps, 0 among
them)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

from iclgd.analysis.stages import (
    MIN_POINTS,
    critical_points,
    smooth_curve,
    stages,
)
from iclgd.config import CheckpointGrid

STEPS = np.array(CheckpointGrid(log=100, linear=100).steps(500_000), dtype=np.int64)
X = np.log10(np.maximum(STEPS, 1))  # step 0 is dropped by the module; its x here is never used

#: The synthetic LLC: 20 until 10^2.5, rises to 170 by 10^4, flat to 10^4.6, falls to 120 by
#: 10^5.5, flat after (the paper's LLC rises to ~170 at 40k and falls to ~123 by 320k).
BREAKS = (2.5, 4.0, 4.6, 5.5)
LLC_TYPES = ["flat", "rising", "flat", "falling", "flat"]
#: Boundaries found on it lie within this many decades of the true breakpoints (noise <= 1:
#: the paper's LLC standard errors are about 1).  Measured: within 0.03 at noise 1 over 20 seeds.
TOLERANCE = 0.1


def llc_curve(x):
    return np.interp(x, [0.0, *BREAKS, 6.0], [20.0, 20.0, 170.0, 170.0, 120.0, 120.0])


def noisy(curve, noise, seed):
    return curve + noise * np.random.default_rng(seed).standard_normal(curve.shape)


# --- plateaus of a piecewise-linear curve ---------------------------------------------------------


@settings(max_examples=8)
@given(seed=seeds, noise=st.floats(0.0, 1.0), with_errors=st.booleans())
def test_plateaus_of_a_piecewise_linear_llc_are_found_and_typed(seed, noise, with_errors):
    errors = np.full(STEPS.size, max(noise, 0.05)) * np.linspace(0.5, 1.5, STEPS.size) if with_errors else None
    result = stages(STEPS, noisy(llc_curve(X), noise, seed), errors=errors)
    assert result.types == LLC_TYPES
    found = [b.log_step for b in result.boundaries]
    assert np.max(np.abs(np.array(found) - BREAKS)) < TOLERANCE, found
    assert [b.source for b in result.boundaries] == ["plateau end", "plateau start", "plateau end", "plateau start"]
    # the fitted change between the kinks: the kernel rounds each kink by ~0.4 h |slope change|
    # (h = 0.1: 4 at each end of the rise, 2 at each end of the fall)
    rise, fall = result.stages[1], result.stages[3]
    assert rise.change == pytest.approx(150 - 8, abs=5) and fall.change == pytest.approx(-50 + 4, abs=4)


def test_boundaries_are_reported_as_steps_and_their_nearest_checkpoints():
    result = stages(STEPS, noisy(llc_curve(X), 0.5, 0))
    for boundary in result.boundaries:
        assert boundary.step == pytest.approx(10**boundary.log_step)
        assert boundary.checkpoint in STEPS
        distance = np.abs(X[1:] - boundary.log_step)
        assert np.log10(boundary.checkpoint) == pytest.approx(X[1:][np.argmin(distance)])
    for stage, after in zip(result.stages, result.stages[1:]):
        assert stage.end_step == after.start_step
    assert result.stages[0].start_step == 1 and result.stages[-1].end_step == pytest.approx(499_999)


def test_a_loss_curve_falls_between_its_plateaus():
    loss = np.interp(X, [0.0, 2.7, 3.5, 6.0], [4.2, 4.2, 1.9, 1.9])
    result = stages(STEPS, noisy(loss, 0.01, 1))
    assert result.types == ["flat", "falling", "flat"]
    assert np.allclose([b.log_step for b in result.boundaries], [2.7, 3.5], atol=TOLERANCE)


def test_a_peak_is_one_boundary_at_a_maximum_where_the_slope_is_zero():
    peak = 170.0 - 60.0 * np.abs(X - 4.6)  # rises until 40k steps, falls after: no plateau
    result = stages(STEPS, noisy(peak, 0.3, 2))
    assert result.types == ["rising", "falling"]
    (boundary,) = result.boundaries
    assert boundary.source == "critical point" and abs(boundary.log_step - 4.6) < TOLERANCE
    (point,) = result.critical_points
    assert point.kind == "maximum" and point.curvature < 0
    assert abs(point.slope) < 0.05 * result.typical_slope


def test_a_slowdown_without_a_sign_change_is_a_critical_point_between_two_rising_stages():
    # the paper's LR1 | LR2 boundary: the LLC rises, nearly stops around 1k steps, rises again
    # (slopes 30, 1, 100, 30 per decade).  The slow stretch, 0.32 decades, leaves a run of
    # |slope| < tau of ~0.1 decades after smoothing, narrower than min_plateau_width = 2 h, so it
    # is one boundary at the least |slope|, not a flat stage (so in 100 of 100 seeds measured)
    slowdown = np.interp(X, [0.0, 2.74, 3.06, 4.6, 5.7], [0.0, 82.2, 82.52, 236.52, 269.52])
    result = stages(STEPS, noisy(slowdown, 0.3, 3))
    assert result.types == ["rising", "rising"]
    (boundary,) = result.boundaries
    assert boundary.source == "critical point" and abs(boundary.log_step - 2.9) < TOLERANCE
    (point,) = result.critical_points
    assert point.kind == "plateau" and not point.flat_stage and point.slope > 0


# --- curves without plateaus ----------------------------------------------------------------------


@settings(max_examples=10)
@given(offset=st.floats(-100, 100), slope=st.floats(5, 50), bend=st.floats(-1, 1), sign=st.sampled_from([1, -1]),
       seed=seeds)
def test_a_monotone_curve_without_plateaus_has_no_interior_boundary(offset, slope, bend, sign, seed):
    # slope (1 + bend (x - 2.85) / 5.7) stays within [0.5, 1.5] times its mean: nowhere a plateau
    values = sign * (offset + slope * (X + bend * (X - 2.85) ** 2 / 11.4))
    result = stages(STEPS, noisy(values, 0.01 * slope, seed))
    assert result.boundaries == [] and result.critical_points == []
    assert result.types == ["rising" if sign > 0 else "falling"]


@pytest.mark.parametrize("level", [0.0, -3.5, 170.0])
def test_a_constant_curve_is_one_flat_stage(level):
    result = stages(STEPS, np.full(STEPS.size, level))
    assert result.types == ["flat"] and result.boundaries == [] and result.critical_points == []
    assert result.stages[0].change == pytest.approx(0.0, abs=1e-9 * (1 + abs(level)))


def test_pure_noise_is_one_flat_stage_for_nearly_every_seed():
    # boundaries are placed where the smoothed noise turns, so a stage's change is selected to
    # be large: 3 of 400 seeds were measured to make a stage; 60 seeds may show at most 3
    splits = sum(len(stages(STEPS, noisy(np.full(STEPS.size, 5.0), 1.0, seed)).stages) > 1 for seed in range(60))
    assert splits <= 3


# --- invariances -----------------------------------------------------------------------------------


@settings(max_examples=10)
@given(shift=st.floats(-1e3, 1e3), scale=st.floats(1e-3, 1e3), seed=seeds)
def test_stages_do_not_depend_on_a_shift_or_a_positive_scale_of_the_values(shift, scale, seed):
    values = noisy(llc_curve(X), 1.0, seed)
    errors = np.full(STEPS.size, 1.0)
    base = stages(STEPS, values, errors=errors)
    moved = stages(STEPS, scale * values + shift, errors=scale * errors)
    assert moved.types == base.types
    np.testing.assert_allclose([b.log_step for b in moved.boundaries], [b.log_step for b in base.boundaries],
                               atol=1e-9)
    round_off = 1e-10 * (abs(shift) + scale * 200)  # float64 round-off of sums over the shifted values
    np.testing.assert_allclose([s.change for s in moved.stages], [scale * s.change for s in base.stages],
                               rtol=1e-6, atol=round_off)
    assert [p.kind for p in moved.critical_points] == [p.kind for p in base.critical_points]
    np.testing.assert_allclose(moved.fit.slope, scale * base.fit.slope, rtol=1e-6, atol=round_off)


@settings(max_examples=10)
@given(intercept=st.floats(-1e3, 1e3), slope=st.floats(-1e3, 1e3))
def test_the_smoother_reproduces_a_straight_line_in_log_step(intercept, slope):
    values = intercept + slope * X
    fit = smooth_curve(STEPS, values)
    scale = 1 + abs(intercept) + abs(slope)
    np.testing.assert_allclose(fit.fitted, values[1:], atol=1e-9 * scale)
    np.testing.assert_allclose(fit.grid_slope, slope, atol=1e-7 * scale)
    np.testing.assert_allclose(fit.grid_fitted, intercept + slope * fit.grid_log_steps, atol=1e-9 * scale)


def test_errors_weight_the_fit():
    values = 10.0 + 5.0 * X
    values[100] += 100.0  # an outlier ...
    errors = np.ones(STEPS.size)
    errors[100] = 1e6  # ... that its standard error says to ignore
    fit = smooth_curve(STEPS, values, errors=errors)
    assert np.max(np.abs(fit.fitted - (10.0 + 5.0 * X[1:]))) < 1e-6
    unweighted = smooth_curve(STEPS, values)
    assert np.max(np.abs(unweighted.fitted - (10.0 + 5.0 * X[1:]))) > 1.0


def test_step_zero_is_dropped_and_changes_nothing():
    values = noisy(llc_curve(X), 0.5, 4)
    with_zero = stages(STEPS, values)
    other_value = values.copy()
    other_value[0] = -1e6
    assert STEPS[0] == 0 and with_zero.fit.dropped_steps == (0.0,)
    without = stages(STEPS[1:], values[1:])
    assert stages(STEPS, other_value).boundary_steps == with_zero.boundary_steps == without.boundary_steps
    assert without.fit.dropped_steps == ()


def test_the_summary_is_json_ready_and_names_the_smoother():
    result = stages(STEPS, noisy(llc_curve(X), 0.5, 5), errors=np.full(STEPS.size, 0.5))
    summary = json.loads(json.dumps(result.summary()))
    assert summary["smoother"]["bandwidth_decades"] == 0.1 and summary["smoother"]["weights"] == "1/errors^2"
    assert [s["type"] for s in summary["stages"]] == LLC_TYPES
    assert summary["dropped_steps"] == [0] and summary["n_checkpoints"] == STEPS.size - 1
    assert all(isinstance(b["checkpoint"], int) for b in summary["boundaries"])
    points = critical_points(STEPS, noisy(llc_curve(X), 0.5, 5), errors=np.full(STEPS.size, 0.5))
    assert [p["log_step"] for p in summary["critical_points"]] == [p.log_step for p in points]


# --- bad input -------------------------------------------------------------------------------------

GOOD = np.arange(1, 11) * 100


@pytest.mark.parametrize("steps, values, errors, message", [
    (GOOD[::-1], np.ones(10), None, r"steps must be strictly increasing; got steps\[0\] = 1000 then steps\[1\] = 900"),
    (np.r_[GOOD[:5], GOOD[4:9]], np.ones(10), None, "strictly increasing; got steps.4. = 500 then steps.5. = 500"),
    (GOOD, np.ones(9), None, r"values must have one entry per step \(10 steps\); got 9 values"),
    (GOOD, np.ones(10), np.ones(11), r"errors must have one entry per step \(10 steps\); got 11 errors"),
    (GOOD, np.r_[np.ones(9), np.nan], None, r"values must hold only finite values; got 1 NaN/inf entries"),
    (GOOD, np.r_[np.inf, np.ones(9)], None, r"values must hold only finite values; got 1 NaN/inf"),
    (np.r_[GOOD[:9], np.inf], np.ones(10), None, r"steps must hold only finite values"),
    (GOOD, np.ones(10), np.r_[np.ones(9), 0.0], r"errors must be > 0 \(standard errors\); got 0 at index 9"),
    (np.r_[-1, GOOD[1:]], np.ones(10), None, r"steps must be >= 0; got -1 at index 0"),
    (GOOD[:MIN_POINTS - 1], np.ones(MIN_POINTS - 1), None, rf"at least {MIN_POINTS} checkpoints with step > 0 .*got {MIN_POINTS - 1}"),
    (np.r_[0, GOOD[:MIN_POINTS - 1]], np.ones(MIN_POINTS), None, rf"at least {MIN_POINTS} .*got {MIN_POINTS - 1}"),
    (GOOD.reshape(2, 5), np.ones(10), None, r"steps must be a 1-d array; got shape \(2, 5\)"),
    (GOOD, ["a"] * 10, None, "values must be a real-valued array"),
])
def test_bad_curves_are_refused_naming_what_was_expected_and_given(steps, values, errors, message):
    with pytest.raises(ValueError, match=message):
        stages(steps, values, errors=errors)


@pytest.mark.parametrize("keyword, value, message", [
    ("bandwidth", 0.0, "bandwidth must be > 0; got 0.0"),
    ("bandwidth", float("nan"), "bandwidth must be finite"),
    ("plateau_fraction", 1.5, r"plateau_fraction must be in \(0, 1\).*got 1.5"),
    ("significance", -1.0, "significance must be >= 0; got -1.0"),
    ("min_neighbours", 1, "min_neighbours must be >= 2.*got 1"),
])
def test_bad_settings_are_refused_naming_what_was_expected_and_given(keyword, value, message):
    with pytest.raises(ValueError, match=message):
        stages(GOOD, np.arange(10.0), **{keyword: value})
