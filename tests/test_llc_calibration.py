"""Calibration of the LLC estimator (iclgd.analysis.llc.estimate_llc_of) on models whose learning
coefficient is known (iclgd.analysis.known_lc).

Each test compares an estimate to an exact answer with a tolerance stated beside it, always
z = 3 standard errors of the estimate (llc_std_error: over chains) plus a stated allowance:

- the estimator's own finite-nbeta target nbeta (E_p[L] - L(w*)) of the localised tempered
  posterior p ∝ exp(-nbeta L - (gamma/2)||w - w*||^2): by quadrature (``tempered_llc``) for models
  of 1 or 2 parameters, in closed form for linear regression, by a radial quadrature for reduced
  rank regression with one hidden unit at zero.  SGLD at step eps is the unadjusted Langevin
  algorithm, which samples p only as eps -> 0: its bias is removed to first order in eps
  (``tempered_llc(..., step_size=eps)``) and the allowance is half of that correction again, for
  the higher orders; for linear regression it is removed exactly, with no allowance;
- the asymptotic lambda (nbeta -> infinity), where the tempered target's distance from lambda at
  the nbeta used is known (quadrature) or, for the many-parameter models, stated (10 %).

Every run uses the full batch (batch_size=None: these models have no data, or a small one),
checks the Metropolis-adjusted acceptance of its steps (mala_every=10: on every 10th draw), and
runs a burn-in of a few localization times 1/(eps gamma) so the chains, started at w*, have
spread over the posterior before they are counted.  The quick versions run in the default suite
(about 25 s together on 2 cores); the slow ones (pytest -m slow, about 6 minutes) run longer
chains and the full ranges.  Run with -rP to see the measured numbers (one CALIBRATION line per case).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from iclgd.analysis.known_lc import (
    LinearRegression,
    NormalCrossing,
    PowerPotential,
    ReducedRankRegression,
    tempered_llc,
)
from iclgd.analysis.llc import LLCResult, estimate_llc_of
from iclgd.sgld import default_nbeta

Z = 3.0  # standard errors allowed on every comparison
NBETA_1000 = default_nbeta(1000)  # n / log n at n = 1000: 144.76


def estimate(objective, *, step_size: float, localization: float, num_chains: int, num_draws: int,
             burnin_times: float, nbeta: float | None = None, seed: int = 0) -> LLCResult:
    """estimate_llc_of at w* = objective.initial_params(), full batch, burn-in = burnin_times
    localization times 1 / (eps gamma) (or that many steps where gamma = 0)."""
    scale = 1.0 / (step_size * localization) if localization > 0 else 1.0
    return estimate_llc_of(objective, objective.initial_params(), step_size=step_size, nbeta=nbeta,
                           localization=localization, num_chains=num_chains, num_draws=num_draws,
                           num_burnin_steps=int(math.ceil(burnin_times * scale)), batch_size=None, seed=seed,
                           mala_every=10)


def check(name: str, result: LLCResult, expected: float, allowance: float, min_acceptance: float = 0.99) -> None:
    """|lambda-hat - expected| <= Z s.e. + allowance, and the MALA acceptance at least min_acceptance."""
    mean, se = result.llc_mean, result.llc_std_error
    acceptance = result.diagnostics["mala_acceptance"]
    print(f"CALIBRATION {name}: {mean:.4f} +- {se:.4f} vs {expected:.4f} (tolerance {Z:g} s.e. + {allowance:.4f}; "
          f"off by {(mean - expected) / se:+.2f} s.e.; MALA acceptance {acceptance:.4f})")
    assert abs(mean - expected) <= Z * se + allowance, (name, mean, se, expected, allowance)
    assert acceptance >= min_acceptance, (name, acceptance)


def first_order_target(objective, nbeta: float, localization: float, half_width: float, n_grid: int,
                       step_size: float) -> tuple[float, float]:
    """(the tempered target corrected to first order in the step, half the correction): the
    expected value and the allowance of a comparison."""
    exact = tempered_llc(objective, nbeta, localization, half_width, n_grid)
    corrected = tempered_llc(objective, nbeta, localization, half_width, n_grid, step_size=step_size)
    return corrected, 0.5 * abs(corrected - exact)


# --- the normal crossing w1^2 w2^2: the tight check ------------------------------------------------


@pytest.mark.parametrize(("localization", "step_size", "num_chains", "num_draws"), [
    pytest.param(1.0, 1e-3, 16, 15_000, id="quick"),
    # the setting: tempered target 0.3799 at nbeta = 144.76, gamma = 0.4
    pytest.param(0.4, 2.5e-4, 16, 100_000, id="slow-issue", marks=pytest.mark.slow),
])
def test_normal_crossing_1_1_estimate_is_its_tempered_target(localization, step_size, num_chains, num_draws):
    # L = (1/2) w1^2 w2^2 at the default nbeta (n = 1000), its tempered target by quadrature on a grid;
    # the ULA's first-order bias (+9.4 eps at gamma = 1, +19 eps at gamma = 0.4) corrected, half of
    # it allowed again; the step keeps the MALA acceptance >= 0.99
    model = NormalCrossing((1, 1))
    expected, allowance = first_order_target(model, NBETA_1000, localization, 7 / math.sqrt(localization), 801, step_size)
    result = estimate(model, step_size=step_size, localization=localization, num_chains=num_chains,
                      num_draws=num_draws, burnin_times=3, seed=11)
    assert result.settings.nbeta == pytest.approx(144.76, abs=0.01)
    check(f"NormalCrossing(1,1) gamma={localization} eps={step_size}", result, expected, allowance)


# --- towards lambda as nbeta grows ----------------------------------------------------------------


@pytest.mark.parametrize(("nbetas", "num_draws"), [
    pytest.param((1e2, 1e3, 1e4), 8_000, id="quick"),
    pytest.param((1e2, 1e3, 1e4, 1e5), 40_000, id="slow", marks=pytest.mark.slow),
])
def test_estimate_follows_the_tempered_target_to_lambda_as_nbeta_grows(nbetas, num_draws):
    # w^4 with localization 10: the tempered target rises to lambda = 1/4 (0.180, 0.225, 0.242,
    # 0.247 at nbeta = 1e2 .. 1e5) and the estimate follows it (step 1e-2 / sqrt(nbeta): the same
    # MALA acceptance at every nbeta, first-order ULA bias corrected); at the largest nbeta the
    # estimate is within Z s.e. + the target's own gap (+ allowance) of 1/4, at the smallest it is
    # below 1/4 by more than Z s.e.: it moves towards lambda.  (Burn-in: half a localization time,
    # at least 6 of the quartic well's own relaxation times 1/(eps nbeta L''(w)) at the typical w.)
    model, gamma, lam = PowerPotential(2), 10.0, 0.25
    results, targets = [], []
    for nbeta in nbetas:
        step = 1e-2 / math.sqrt(nbeta)
        expected, allowance = first_order_target(model, nbeta, gamma, 3 * nbeta**-0.25 + 1.0, 2001, step)
        result = estimate(model, nbeta=nbeta, step_size=step, localization=gamma, num_chains=8, num_draws=num_draws,
                          burnin_times=0.5, seed=int(math.log10(nbeta)))
        check(f"PowerPotential(2) gamma=10 nbeta={nbeta:g}", result, expected, allowance)
        results.append(result)
        targets.append((expected, allowance))
    assert all(a[0] < b[0] < lam for a, b in zip(targets, targets[1:]))
    last, (last_target, last_allowance) = results[-1], targets[-1]
    assert abs(last.llc_mean - lam) <= Z * last.llc_std_error + (lam - last_target) + 2 * last_allowance
    assert lam - results[0].llc_mean > Z * results[0].llc_std_error


# --- linear regression: the step-size-exact target and d / 2 ------------------------------------------

# (d, draws per chain): quick d = 3; slow d = 2..10 with longer chains
DIMENSIONS = [pytest.param(3, 5_000, id="quick-3"),
              *[pytest.param(d, 10_000, id=f"slow-{d}", marks=pytest.mark.slow) for d in range(2, 11)]]


@pytest.mark.parametrize(("d", "num_draws"), DIMENSIONS)
def test_linear_regression_estimate_is_the_step_size_exact_target(d, num_draws):
    # full-batch SGLD on the quadratic loss is a Gaussian AR(1) chain whose stationary mean of
    # nbeta (L - L*) is exact_tempered_llc(nbeta, gamma, eps); eps (nbeta h_max + gamma) ~ 0.3, so it
    # sits ~8 % above the eps -> 0 target, which this estimate resolves; burn-in 100 steps leaves
    # a transient below e^-20; no allowance.  (The MALA acceptance, ~0.95-0.98 at this step, is
    # not needed here: the step's effect is computed exactly.)
    model = LinearRegression(d, 1000, seed=d)
    gamma, step = 1.0, 2e-3
    result = estimate(model, step_size=step, localization=gamma, num_chains=16, num_draws=num_draws, burnin_times=0.2,
                      seed=20 + d)
    expected = model.exact_tempered_llc(result.settings.nbeta, gamma, step)
    check(f"LinearRegression d={d} eps={step} (step-exact)", result, expected, 0.0, min_acceptance=0.95)
    # the step-size correction is what makes it agree: the eps -> 0 target is more than Z s.e. off
    assert abs(result.llc_mean - model.exact_tempered_llc(result.settings.nbeta, gamma)) > Z * result.llc_std_error


@pytest.mark.parametrize(("d", "num_draws"), DIMENSIONS)
def test_linear_regression_estimate_is_half_the_dimension(d, num_draws):
    # a small step (eps a_max ~ 0.04) and nbeta = 1000: the exact target at that step is within 1 %
    # of d/2 (asserted), and the estimate within Z s.e. + 2 % of d/2
    model = LinearRegression(d, 1000, seed=d)
    gamma, step, nbeta = 1.0, 3e-5, 1000.0
    assert abs(model.exact_tempered_llc(nbeta, gamma, step) - d / 2) <= 0.01 * d / 2
    result = estimate(model, nbeta=nbeta, step_size=step, localization=gamma, num_chains=16, num_draws=num_draws,
                      burnin_times=0.01, seed=30 + d)
    check(f"LinearRegression d={d} vs d/2", result, d / 2, 0.02 * d / 2)


# --- the power potentials w^(2k): 1/(2k) ---------------------------------------------------------------


def power_step(k: int) -> float:
    """A tenth of 1 / (nbeta L''(w)) at the typical |w| = nbeta^(-1/(2k)), nbeta = 144.76."""
    return 0.1 / (2 * k * (2 * k - 1) * NBETA_1000 ** (1 / k))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("num_draws", [pytest.param(2_500, id="quick"),
                                       pytest.param(25_000, id="slow", marks=pytest.mark.slow)])
def test_power_potential_estimate_is_1_over_2k(k, num_draws):
    # without localization the tempered target of w^(2k) is exactly 1/(2k) at every nbeta (a Gamma
    # integral); nbeta = 144.76 and a step of a tenth of the inverse curvature 2k(2k-1) nbeta^(1/k)
    # at the typical |w| = nbeta^(-1/(2k)); the ULA's first-order bias (from tempered_llc) corrected,
    # half of it allowed again
    model, step = PowerPotential(k), power_step(k)
    half_width = (40 / NBETA_1000) ** (1 / (2 * k))
    expected, allowance = first_order_target(model, NBETA_1000, 0.0, half_width, 4001, step)
    assert tempered_llc(model, NBETA_1000, 0.0, half_width, 4001) == pytest.approx(1 / (2 * k), rel=1e-6)
    result = estimate(model, step_size=step, localization=0.0, num_chains=16, num_draws=num_draws, burnin_times=500, seed=k)
    check(f"PowerPotential({k}) eps={step:.2g} vs 1/(2k) (step-corrected {expected:.4f})", result, expected, allowance)


# --- normal crossings with unequal powers: the tempered target, and its stated gap to 1/(2 max p) -----


@pytest.mark.parametrize("powers", [(1, 2), pytest.param((1, 3), marks=pytest.mark.slow), pytest.param((2, 3), marks=pytest.mark.slow)])
@pytest.mark.parametrize("relaxations", [pytest.param(20, id="quick"), pytest.param(75, id="slow", marks=pytest.mark.slow)])
def test_normal_crossing_estimate_is_its_tempered_target_below_1_over_2_max_p(powers, relaxations):
    # nbeta = 144.76, gamma = 3: the tempered target of a normal crossing approaches 1/(2 max p)
    # only as a small power of nbeta (its zeta function's next pole is close: 1/2 - 1/4 for (1, 2)),
    # so at this nbeta it sits 40-65 % below lambda, by a gap computed here; the estimate matches
    # the target (first-order step correction, half of it allowed), and so lambda within Z s.e. +
    # that gap.  The chains wander along the axes, where the loss is flat, and the score is
    # heavy-tailed: the draws span many localization times 1/(eps gamma)
    model = NormalCrossing(powers)
    gamma, step = 3.0, 1e-3
    expected, allowance = first_order_target(model, NBETA_1000, gamma, 7 / math.sqrt(gamma), 801, step)
    result = estimate(model, step_size=step, localization=gamma, num_chains=16, num_draws=int(relaxations / (step * gamma)),
                      burnin_times=2, seed=40 + 10 * powers[0] + powers[1])
    check(f"NormalCrossing{powers} gamma=3 (lambda {model.learning_coefficient:.4f})", result, expected, allowance)
    gap = model.learning_coefficient - tempered_llc(model, NBETA_1000, gamma, 7 / math.sqrt(gamma), 801)
    assert 0 < gap and abs(result.llc_mean - model.learning_coefficient) <= Z * result.llc_std_error + gap + 2 * allowance


# --- reduced rank regression --------------------------------------------------------------------------


def one_unit_radial_target(n_in: int, n_out: int, nbeta: float, gamma: float, step_size: float,
                           n_grid: int = 2000) -> tuple[float, float]:
    """(target corrected to first order in the step, half the correction) for
    ReducedRankRegression(n_in, n_out, 1, 0): L = (1/2)|a|^2 |b|^2, w* = 0 and an isotropic
    localization, so with s = |a|, t = |b| the posterior is s^(M-1) t^(N-1) exp(-U) ds dt,
    U = nbeta s^2 t^2 / 2 + gamma (s^2 + t^2) / 2, and |grad U|^2 = (nbeta t^2 + gamma)^2 s^2 +
    (nbeta s^2 + gamma)^2 t^2, Lap U = M (nbeta t^2 + gamma) + N (nbeta s^2 + gamma): a 2-D
    midpoint rule on (0, 10/sqrt(gamma)]^2."""
    r = (np.arange(n_grid) + 0.5) * (10 / math.sqrt(gamma)) / n_grid
    s, t = np.meshgrid(r, r, indexing="ij")
    excess = 0.5 * nbeta * s**2 * t**2
    log_weight = (n_in - 1) * np.log(s) + (n_out - 1) * np.log(t) - excess - 0.5 * gamma * (s**2 + t**2)
    weight = np.exp(log_weight - log_weight.max())
    weight /= weight.sum()
    grad_sq = (nbeta * t**2 + gamma) ** 2 * s**2 + (nbeta * s**2 + gamma) ** 2 * t**2
    correction = (n_in * (nbeta * t**2 + gamma) + n_out * (nbeta * s**2 + gamma)) / 4 - grad_sq / 8
    mean = float(np.sum(weight * excess))
    slope = -(float(np.sum(weight * excess * correction)) - mean * float(np.sum(weight * correction)))
    return mean + step_size * slope, 0.5 * abs(step_size * slope)


def test_radial_target_of_one_unit_rrr_is_the_normal_crossings_quadrature():
    # M = N = 1: a = +-s, b = +-t, so the radial target is tempered_llc of NormalCrossing((1, 1)) (to 1e-3)
    for step in (0.0, 1e-3):
        radial, _ = one_unit_radial_target(1, 1, NBETA_1000, 1.0, step)
        grid = tempered_llc(NormalCrossing((1, 1)), NBETA_1000, 1.0, 7.0, 801, step_size=step)
        assert radial == pytest.approx(grid, rel=1e-3)


@pytest.mark.parametrize(("step_size", "num_draws"), [
    # slow only (the default suite's reduced-rank check is the Aoyagi-Watanabe quick case below)
    pytest.param(1e-4, 15_000, id="shorter", marks=pytest.mark.slow),
    pytest.param(3e-5, 120_000, id="slow", marks=pytest.mark.slow),
])
def test_rrr_with_one_unit_at_zero_estimate_is_its_radial_target(step_size, num_draws):
    # ReducedRankRegression(3, 2, 1, 0), 5 parameters: lambda = 1; at nbeta = 1000, gamma = 3 its
    # tempered target is 0.9424 (radial quadrature), +96 eps for the step to first order
    model = ReducedRankRegression(3, 2, 1, 0)
    expected, allowance = one_unit_radial_target(3, 2, 1000.0, 3.0, step_size)
    result = estimate(model, nbeta=1000.0, step_size=step_size, localization=3.0, num_chains=8, num_draws=num_draws,
                      burnin_times=2, seed=60)
    check(f"RRR(3,2,1,0) eps={step_size} (radial target)", result, expected, allowance)


# (n_in, n_out, n_hidden, true_rank), localization, step, draws in localization times 1/(eps gamma),
# chains: nbeta = 1000 throughout; every case has multiplicity 1 (the approach to lambda is then a
# power of nbeta, not 1 / log nbeta)
RRR_CASES = [
    pytest.param((1, 4, 2, 1), 3.0, 5e-5, 2, 6, id="quick-case2-M+H<N+r-lambda2"),
    pytest.param((1, 4, 2, 1), 3.0, 3e-5, 8, 6, id="case2-M+H<N+r-lambda2", marks=pytest.mark.slow),
    pytest.param((2, 3, 2, 1), 3.0, 3e-5, 8, 6, id="case1-even-lambda2.5", marks=pytest.mark.slow),
    pytest.param((3, 3, 3, 1), 3.0, 3e-5, 8, 6, id="case1-even-lambda4", marks=pytest.mark.slow),
    pytest.param((1, 1, 3, 1), 3.0, 1e-5, 4, 6, id="case4-M+N<H+r-lambda0.5", marks=pytest.mark.slow),
    pytest.param((2, 2, 2, 0), 1.0, 5e-5, 6, 6, id="case1-r0-lambda1.5", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("shape", "localization", "step_size", "relaxations", "num_chains"), RRR_CASES)
def test_rrr_estimate_is_the_aoyagi_watanabe_learning_coefficient(shape, localization, step_size, relaxations, num_chains):
    # no quadrature in 6-18 dimensions: nbeta = 1000 and gamma small enough (gamma / sqrt(nbeta) <=
    # 0.1) that the tempered target is within a few % of lambda, a step with MALA acceptance >=
    # 0.99, 2 localization times 1/(eps gamma) of burn-in and `relaxations` of draws; tolerance
    # Z s.e. + 10 % of lambda
    model = ReducedRankRegression(*shape)
    assert model.multiplicity == 1
    result = estimate(model, nbeta=1000.0, step_size=step_size, localization=localization, num_chains=num_chains,
                      num_draws=int(relaxations / (step_size * localization)), burnin_times=2, seed=sum(shape))
    check(f"RRR{shape} gamma={localization} eps={step_size}", result, model.learning_coefficient,
          0.1 * model.learning_coefficient)


# --- ordinality: a more degenerate point gets a smaller estimate ---------------------------------------


@pytest.mark.slow
def test_a_lower_true_rank_gets_a_smaller_estimate():
    # ReducedRankRegression(2, 3, 2, r): lambda = 2, 5/2, 3 for r = 0, 1, 2 (r = 2 is regular modulo
    # GL(2)); at the default nbeta (144.76) and gamma = 1 each estimate exceeds the one of the rank
    # below by more than Z combined s.e.
    results = []
    for r in (0, 1, 2):
        model = ReducedRankRegression(2, 3, 2, r)
        results.append(estimate(model, step_size=5e-4, localization=1.0, num_chains=6, num_draws=40_000, burnin_times=2,
                                seed=70 + r))
        print(f"CALIBRATION RRR(2,3,2,{r}) at nbeta 144.76: {results[-1].llc_mean:.4f} +- {results[-1].llc_std_error:.4f} "
              f"(lambda {model.learning_coefficient})")
    for low, high in zip(results, results[1:]):
        assert high.llc_mean - low.llc_mean > Z * math.hypot(low.llc_std_error, high.llc_std_error)


def test_w2_w4_and_a_regular_pair_are_ordered_by_their_learning_coefficients():
    # one-parameter w^4 (1/4) < w^2 (1/2) < two regular parameters (linear regression, d/2 = 1), at
    # the default nbeta: each estimate exceeds the one before by more than Z combined s.e.
    quartic = estimate(PowerPotential(2), step_size=power_step(2), localization=0.0, num_chains=6, num_draws=4_000,
                       burnin_times=500, seed=1)
    square = estimate(PowerPotential(1), step_size=power_step(1), localization=0.0, num_chains=6, num_draws=4_000,
                      burnin_times=500, seed=2)
    regular = estimate(LinearRegression(2, 1000), step_size=1e-3, localization=1.0, num_chains=6, num_draws=4_000,
                       burnin_times=0.2, seed=3)
    for low, high in ((quartic, square), (square, regular)):
        assert high.llc_mean - low.llc_mean > Z * math.hypot(low.llc_std_error, high.llc_std_error)
