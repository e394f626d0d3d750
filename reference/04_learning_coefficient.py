#!/usr/bin/env python
r"""Walkthrough 04: the local learning coefficient, measured where it is known, then on a trained LSA layer.

Claim (Lau et al. 2023, "The local learning coefficient"; used by Hoogland et al., "The
Developmental Landscape of In-Context Learning"): the learning coefficient lambda(w*) counts the
effective number of parameters at a minimum w* (half of them: a regular model with d parameters has
lambda = d/2; a degenerate one less), and SGLD localised at w* estimates it as

    lambda-hat = nbeta (E_p[L] - L(w*)),   p(w) ∝ exp(-nbeta L(w) - (gamma/2) ||w - w*||^2).

The walkthrough, top to bottom:

1. a one-parameter potential w^(2k): lambda = 1/(2k), and the estimator's finite-nbeta target by quadrature;
2. a regular model (linear regression, d parameters): lambda = d/2, and the exact target at a finite step;
3. degenerate models: the normal crossing w1^2 w2^2 (lambda 1/2) and reduced-rank regression (Aoyagi &
   Watanabe 2005), and the ordering of the estimates by degeneracy;
4. can I trust the number? ``calibrate``: the MALA acceptance of the steps against the step size;
5. the one-layer LSA of walkthrough 01: the GD construction and a trained layer on the same data
   (is the trained layer as degenerate as the construction?).

Run it (from the repository root):

    python reference/04_learning_coefficient.py            # full: long chains, a 5000-step layer
    python reference/04_learning_coefficient.py --quick    # every step, shorter chains (under a minute)
    python reference/04_learning_coefficient.py --out DIR  # keep the training run (and, with --quick, the results) in DIR

A full run records what it printed in reference/results/04_learning_coefficient.txt and its numbers
in reference/results/04_learning_coefficient.json.  Every number comes from the code below, from
explicit seeds; the script exits with status 1 if any check it narrates fails.  The models are
``iclgd.analysis.known_lc``; the estimator ``iclgd.analysis.llc.estimate_llc``; the sweep
``iclgd.analysis.calibrate``.  Tolerances: 3 standard errors (over chains) plus a stated allowance.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import iclgd
from iclgd import baselines
from iclgd.analysis.calibrate import calibrate, calibrate_of
from iclgd.analysis.known_lc import LinearRegression, NormalCrossing, PowerPotential, ReducedRankRegression, tempered_llc
from iclgd.analysis.llc import estimate_llc, estimate_llc_of
from iclgd.backends import fastest_backend
from iclgd.experiments.one_layer import OneLayerSetting
from iclgd.streams import purpose_rng
from walkthrough import Session, Table, train_run

NAME = "04_learning_coefficient"
Z = 3.0


@dataclass(frozen=True)
class Settings:
    chains: int  # chains of every toy-model estimate
    draws: int  # draws of the one-parameter and linear-regression estimates
    crossing_draws: int  # the normal crossing and reduced-rank regression mix slowly along their flat valleys
    crossing_burnin: int
    lsa_steps: int  # training steps of the LSA layer
    lsa_chains: int
    lsa_draws: int
    lsa_burnin: int
    lsa_data: int  # tasks in the LSA's data set
    sweep_draws: int

    def record(self) -> dict:
        return asdict(self)


FULL = Settings(chains=16, draws=8_000, crossing_draws=40_000, crossing_burnin=4000, lsa_steps=5000, lsa_chains=4, lsa_draws=2000,
                lsa_burnin=4000, lsa_data=8192, sweep_draws=200)
QUICK = Settings(chains=12, draws=1_500, crossing_draws=4_000, crossing_burnin=2000, lsa_steps=300, lsa_chains=2, lsa_draws=200,
                 lsa_burnin=400, lsa_data=2048, sweep_draws=100)


def within(result, expected: float, allowance: float = 0.0) -> bool:
    return abs(result.llc_mean - expected) <= Z * result.llc_std_error + allowance


def shown(result) -> str:
    return f"{result.llc_mean:.4f} +- {result.llc_std_error:.4f}"


def toy(objective, s: Settings, *, step_size: float, localization: float, draws: int, nbeta=None, seed=0, burnin=None):
    """A full-batch estimate at the model's w*, burn-in two localization times (or ``burnin``)."""
    if burnin is None:
        burnin = int(math.ceil(2 / (step_size * localization))) if localization > 0 else 1000
    return estimate_llc_of(objective, objective.initial_params(), step_size=step_size, nbeta=nbeta, localization=localization,
                           num_chains=s.chains, num_draws=draws, num_burnin_steps=burnin, batch_size=None, seed=seed,
                           mala_every=10)


def step1_power(t, checks, s: Settings) -> dict:
    t.heading("Step 1. One parameter, L(w) = w^(2k): lambda = 1/(2k)")
    t.prose("""Near w* = 0 the set {L < epsilon} of w^(2k) has volume ~ epsilon^(1/(2k)): the flatter the minimum
        (larger k), the smaller lambda. Without localization (gamma = 0) the tempered posterior exp(-nbeta w^(2k)) gives
        nbeta E[w^(2k)] = 1/(2k) exactly at every nbeta (a Gamma integral), so the estimator's target is lambda itself.
        Quadrature (iclgd.analysis.known_lc.tempered_llc) confirms it, and SGLD at nbeta = n / log n (n = 1000: 144.8)
        estimates it:""")
    table, rows = Table(3, 10, 12, 20, 7), []
    for k in (1, 2, 3):
        model = PowerPotential(k)
        nbeta = model.n_samples / math.log(model.n_samples)
        step = 0.05 / (nbeta * k)  # a small step against the curvature scale: MALA acceptance ~1
        quadrature = tempered_llc(model, nbeta, 0.0, (30 / nbeta) ** (1 / (2 * k)), 4001)  # the density at the edge: e^-30
        result = toy(model, s, step_size=step, localization=0.0, draws=s.draws, seed=k)
        rows.append({"k": k, "lambda": 1 / (2 * k), "quadrature": quadrature, "llc": result.llc_mean,
                     "se": result.llc_std_error, "mala": result.diagnostics["mala_acceptance"]})
    t.out(table.block(("k", "1/(2k)", "quadrature", "SGLD estimate", "MALA"),
                      [(r["k"], f"{r['lambda']:.4f}", f"{r['quadrature']:.4f}", f"{r['llc']:.4f} +- {r['se']:.4f}",
                        f"{r['mala']:.3f}") for r in rows]))
    checks("quadrature = 1/(2k) for k = 1, 2, 3", f"largest gap {max(abs(r['quadrature'] - r['lambda']) for r in rows):.1e}",
           "<= 1e-4", all(abs(r["quadrature"] - r["lambda"]) <= 1e-4 for r in rows))
    checks("SGLD = 1/(2k) within 3 s.e. + 5 %", ", ".join(f"{(r['llc'] - r['lambda']) / r['se']:+.1f} s.e." for r in rows),
           "|gap| <= 3 s.e. + 0.05 lambda", all(abs(r["llc"] - r["lambda"]) <= Z * r["se"] + 0.05 * r["lambda"] for r in rows), "\n")
    return {"rows": rows}


def step2_regular(t, checks, s: Settings) -> dict:
    t.heading("Step 2. A regular model: linear regression with d parameters, lambda = d/2")
    t.prose("""y = X w0 + noise, L(w) = (1/2) mean_i (y_i - x_i . w)^2, w* the least-squares fit on n = 1000 rows. The
        loss is exactly quadratic, so the localised tempered posterior is Gaussian and its target is (1/2) sum_i nbeta h_i /
        (nbeta h_i + gamma) (h_i the eigenvalues of X^T X / n); full-batch SGLD at step eps samples a Gaussian of variance
        1/(a_i (1 - eps a_i / 4)) along each eigenvector (a_i = nbeta h_i + gamma), which makes the target exact at that
        step (LinearRegression.exact_tempered_llc). The gap to d/2 is gamma's pull, ~ gamma / (2 h nbeta) per parameter:""")
    table, rows = Table(3, 5, 17, 19, 18, 7), []
    for d in (2, 5, 10):
        model = LinearRegression(d, 1000, seed=d)
        nbeta, gamma, step = model.n_samples / math.log(model.n_samples), 1.0, 5e-4
        result = toy(model, s, step_size=step, localization=gamma, draws=s.draws, seed=d, burnin=500)
        rows.append({"d": d, "target": model.exact_tempered_llc(nbeta, gamma), "exact": model.exact_tempered_llc(nbeta, gamma, step),
                     "llc": result.llc_mean, "se": result.llc_std_error, "mala": result.diagnostics["mala_acceptance"]})
    t.out(table.block(("d", "d/2", "target (eps -> 0)", "exact at eps = 5e-4", "SGLD estimate", "MALA"),
                      [(r["d"], r["d"] / 2, f"{r['target']:.4f}", f"{r['exact']:.4f}", f"{r['llc']:.4f} +- {r['se']:.4f}",
                        f"{r['mala']:.3f}") for r in rows]))
    checks("linear regression: SGLD = the exact target at its step", ", ".join(f"{(r['llc'] - r['exact']) / r['se']:+.1f} s.e." for r in rows),
           "|gap| <= 3 s.e.", all(abs(r["llc"] - r["exact"]) <= Z * r["se"] for r in rows))
    checks("the target at eps -> 0 is within 2 % of d/2", f"{max(abs(r['target'] / (r['d'] / 2) - 1) for r in rows):.2%}",
           "<= 2 %", all(abs(r["target"] / (r["d"] / 2) - 1) <= 0.02 for r in rows), "\n")
    return {"rows": rows}


def step3_degenerate(t, checks, s: Settings) -> dict:
    t.heading("Step 3. Degenerate models: the normal crossing and reduced-rank regression")
    crossing = NormalCrossing((1, 1))
    nbeta, gamma, step = crossing.n_samples / math.log(crossing.n_samples), 1.0, 1e-3
    quadrature = tempered_llc(crossing, nbeta, gamma, 7.0, 801)
    corrected = tempered_llc(crossing, nbeta, gamma, 7.0, 801, step_size=step)
    result = toy(crossing, s, step_size=step, localization=gamma, draws=s.crossing_draws, seed=11, burnin=s.crossing_burnin)
    t.prose(f"""L(w) = (1/2) w1^2 w2^2 (y = x w1 w2 + noise): its zero set is the two axes, crossing at w* = 0, and lambda
        = 1/2 with multiplicity 2 (two parameters, yet the count of a single one). At finite nbeta the target sits below
        lambda, approaching it only like 1/log nbeta: at nbeta = {nbeta:.1f}, gamma = {gamma:g} the quadrature gives
        {quadrature:.4f}, and {corrected:.4f} with the first-order bias of SGLD at eps = {step:g} (the allowance below is
        half that correction). SGLD, {s.chains} chains x {s.crossing_draws} draws: {shown(result)} (MALA
        {result.diagnostics['mala_acceptance']:.3f}).""")
    allowance = 0.5 * abs(corrected - quadrature)
    checks("normal crossing (1, 1): SGLD = its tempered target", f"{shown(result)} vs {corrected:.4f}",
           f"<= 3 s.e. + {allowance:.4f}", within(result, corrected, allowance))
    rrr_rows = []
    for shape in ((2, 3, 2, 0), (2, 3, 2, 1), (2, 3, 2, 2)):
        model = ReducedRankRegression(*shape)
        estimate = toy(model, s, step_size=5e-4, localization=1.0, draws=s.crossing_draws, seed=70 + shape[3], burnin=s.crossing_burnin)
        rrr_rows.append({"shape": shape, "lambda": model.learning_coefficient, "llc": estimate.llc_mean, "se": estimate.llc_std_error,
                         "mala": estimate.diagnostics["mala_acceptance"]})
    t.prose("""Reduced-rank regression y = B A x (A: 2 x 2, B: 3 x 2, 10 parameters) at a true map of rank r, with the
        other 2 - r hidden units at zero: the Aoyagi-Watanabe closed form gives lambda = 2, 5/2, 3 for r = 0, 1, 2 (r = 2 is
        regular up to the GL(2) symmetry: 10 - 4 = 6 effective parameters). At nbeta = 144.8 with eps = 5e-4 an estimate
        is not lambda itself (the finite nbeta and gamma pull it down, the step's bias pushes it up; the calibration
        tests separate the two, tests/test_llc_calibration.py), but the estimates come in lambda's order:""")
    t.out(Table(14, 8, 20, 7).block(("(M, N, H, r)", "lambda", "SGLD estimate", "MALA"),
                                    [(str(r["shape"]), r["lambda"], f"{r['llc']:.3f} +- {r['se']:.3f}", f"{r['mala']:.3f}") for r in rrr_rows]))
    ordered = all(b["llc"] - a["llc"] > Z * math.hypot(a["se"], b["se"]) for a, b in zip(rrr_rows, rrr_rows[1:]))
    checks("ordinality: a lower true rank gets a smaller estimate", " < ".join(f"{r['llc']:.3f}" for r in rrr_rows),
           "each gap > 3 combined s.e.", ordered, "\n")
    return {"normal_crossing": {"quadrature": quadrature, "step_corrected": corrected, "llc": result.llc_mean,
                                "se": result.llc_std_error}, "rrr": rrr_rows}


def step4_trust(t, checks, s: Settings) -> dict:
    t.heading("Step 4. Can I trust the number? calibrate")
    t.prose("""A step size is usable when the discretised chain still samples the tempered posterior: its proposals,
        checked by a Metropolis-adjusted Langevin (MALA) test on one batch at both ends, are almost always accepted, and
        each chain's trace is flat over its last half. iclgd.analysis.calibrate sweeps step sizes (and nbeta) with short
        estimates and recommends the largest usable step. On the 10-parameter regression of step 2 (lambda 5):""")
    lines = []
    calibration = calibrate_of(LinearRegression(10, 1000, seed=10), LinearRegression(10, 1000, seed=10).initial_params(),
                               step_sizes=(1e-4, 1e-3, 3e-3, 1e-2, 3e-2), localization=1.0, num_draws=s.sweep_draws,
                               batch_size=None, echo=lines.append)
    t.out(calibration.table() + "\n" + calibration.recommendation() + "\n")
    acceptance = [r.mala_acceptance for r in calibration.rows if r.diverged is None]
    chosen = next(iter(calibration.recommended.values()))
    checks("MALA acceptance falls as the step grows", " > ".join(f"{a:.3f}" for a in acceptance), "non-increasing",
           all(a >= b - 1e-3 for a, b in zip(acceptance, acceptance[1:])))
    checks("calibrate recommends a step below the one that breaks the chain", f"{chosen}", "a swept step < the largest",
           chosen is not None and chosen < max(r.step_size for r in calibration.rows), "\n")
    return {"rows": [asdict(r) for r in calibration.rows], "recommended": chosen}


def step5_lsa(t, checks, s: Settings, out_dir, quick: bool) -> dict:
    t.heading("Step 5. The one-layer LSA: the GD construction and a trained layer")
    backend = fastest_backend()
    setting = OneLayerSetting(backend=backend, steps=s.lsa_steps)
    config = setting.run_config()
    cfg = config.model
    t.prose(f"""Walkthrough 01's setting (d = N = 10, one head, key and value size 11): 4 matrices of 11 x 11, 484
        parameters, so a regular model would have lambda = 242. But the prediction y_q = x_q^T P_x G R_y (P = W_q W_k^T
        restricted to the query's x-rows: 110 numbers, R = W_v W_o's y-column: 11, G the context's Gram matrix) sees the
        weights only through the rank-one tensor P_x (x) R_y: 110 + 11 - 1 = 120 effective parameters at most, lambda <=
        60, and the factorisations into W_q W_k^T and W_v W_o add more degeneracy. Two points with the same function
        class: the GD construction at the best rate eta* (closed form) and a layer trained {s.lsa_steps} steps
        ({backend}). Both are measured on the same {s.lsa_data} tasks, nbeta = n / log n, gamma = 100, minibatch 1024, at
        the step calibrate recommends at the construction:""")
    state, seconds, _ = train_run(t, out_dir / "lsa", config)
    engine = iclgd.get_backend(backend)
    data = config.task.sample(s.lsa_data, purpose_rng(0, "llc/data"))
    construction = iclgd.gd_construction(cfg, baselines.one_step_optimum(10, 10, 1.0).eta)
    calibration = calibrate(engine, cfg, construction, data, step_sizes=(3e-6, 1e-5, 3e-5, 1e-4), localization=100.0,
                            num_draws=s.sweep_draws, echo=None)
    t.out(calibration.table() + "\n")
    step = next(iter(calibration.recommended.values())) or 3e-6
    rows = {}
    for name, params in (("GD construction", construction), ("trained layer", state.params)):
        result = estimate_llc(engine, cfg, params, data, step_size=step, localization=100.0, num_chains=s.lsa_chains,
                              num_draws=s.lsa_draws, num_burnin_steps=s.lsa_burnin, batch_size=1024, seed=0)
        loss = engine.loss(cfg, params, data)
        rows[name] = {"loss": loss, "llc": result.llc_mean, "se": result.llc_std_error,
                      "mala": result.diagnostics["mala_acceptance"], "warnings": result.diagnostics["warnings"]}
    t.out(f"  step size {step:g}, {s.lsa_chains} chains x ({s.lsa_burnin} burn-in + {s.lsa_draws} draws)")
    t.out(Table(16, 10, 18, 7).block(("point", "half-MSE", "lambda-hat", "MALA"),
                                     [(k, f"{v['loss']:.4f}", f"{v['llc']:.1f} +- {v['se']:.1f}", f"{v['mala']:.3f}") for k, v in rows.items()]))
    for name, row in rows.items():
        for warning in row["warnings"]:
            t.out(f"  ({name}: {warning})")
    c, tr = rows["GD construction"], rows["trained layer"]
    t.prose(f"""The construction writes its function in the most degenerate way: exact zeros and rank-one factors
        (W_v and W_o each carry one nonzero column or row). Training reaches its loss from a generic start: lambda-hat
        {tr['llc']:.1f} +- {tr['se']:.1f} for the trained layer against {c['llc']:.1f} +- {c['se']:.1f} for the construction,
        both far below the regular count 242 and the 60 of the rank-one tensor.""")
    checks("both LSA points are far more degenerate than a regular model", f"{c['llc']:.1f}, {tr['llc']:.1f}",
           "< 60 (the rank-one bound), << 242", max(c["llc"], tr["llc"]) < 60)
    if not quick:  # a 300-step layer is not yet at the trained point
        checks("the trained layer is less degenerate than the construction", f"{tr['llc']:.1f} vs {c['llc']:.1f}",
               "gap > 3 combined s.e.", tr["llc"] - c["llc"] > Z * math.hypot(tr["se"], c["se"]), "\n")
    return {"backend": backend, "training_seconds": seconds, "calibration": [asdict(r) for r in calibration.rows],
            "step_size": step, "points": rows}


def main(argv=None) -> int:
    session = Session(argv, __doc__, NAME, "shorter chains, a 300-step layer", "training run")
    s, t, checks = (QUICK if session.quick else FULL), session.t, session.checks
    results = session.open("the local learning coefficient, measured where it is known, then on a trained LSA layer",
                           "SGLD's lambda-hat matches known learning coefficients; the LSA's trained layer and GD construction are degenerate",
                           s.record())
    results["step1_power"] = step1_power(t, checks, s)
    results["step2_regular"] = step2_regular(t, checks, s)
    results["step3_degenerate"] = step3_degenerate(t, checks, s)
    results["step4_trust"] = step4_trust(t, checks, s)
    results["step5_lsa"] = step5_lsa(t, checks, s, session.out_dir, session.quick)
    return session.finish(results, f"training run in {session.out_dir}")


if __name__ == "__main__":
    sys.exit(main())
