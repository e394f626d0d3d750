#!/usr/bin/env python
r"""Walkthrough 03: out of distribution, a trained linear self-attention layer fails the way GD fails.

Claim (von Oswald et al., "Transformers Learn In-Context by Gradient Descent", ICML 2023, Sec. 3):
a one-layer linear self-attention (LSA) model trained on in-context linear regression does one
step of gradient descent (GD) on its context (walkthrough 01).  If so, it must also degrade as
GD degrades when the test tasks differ from the training tasks: larger or smaller inputs, inputs
of another law, noisy labels.

The walkthrough, top to bottom:

1. four input laws with the same norm (uniform, gaussian, exponential, laplace), and how they differ;
2. what one GD step does out of distribution, in closed form, checked by Monte Carlo;
3. train two layers: one on the standard task, one on tasks with distractor labels;
4. shift the test tasks (input scale, input law, distractor count) and compare each layer with
   GD at the rate tuned on that layer's training tasks, on the same tasks;
5. the two layers head to head on distractor tasks, next to the same duel between their GDs.

Run it (from the repository root):

    python reference/03_out_of_distribution.py            # full: 5000 steps, 10^4 validation tasks
    python reference/03_out_of_distribution.py --quick    # every step, smaller (seconds)
    python reference/03_out_of_distribution.py --out DIR  # keep the training runs (and, with --quick, the results) in DIR

The full run records what it printed in reference/results/03_out_of_distribution.txt and its
numbers in reference/results/03_out_of_distribution.json; --quick writes those two files to
--out (or to a fresh temporary directory) instead.  Every number printed comes from the code
below, from explicit seeds.  The script exits with status 1 if any check it narrates fails.
The same experiment, without the narration, is `iclgd reproduce ood` (iclgd.experiments.ood).

Conventions (DESIGN.md): tokens e_i = (x_i, y_i), the query token (x_q, 0) last; a = 1, i.e.
x ~ U(-1, 1)^d in distribution; w ~ N(0, I_d), no label noise; the loss is half the mean squared
error ("half-MSE").
"""
from __future__ import annotations

import dataclasses
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import iclgd
from iclgd import baselines, metrics
from iclgd.backends import fastest_backend
from iclgd.config import run_config_to_toml
from iclgd.evaluate import DEFAULT_ALPHAS, compare_with_gd, stream, tune_gd_eta, validation_batch
from iclgd.experiments.ood import IN_DISTRIBUTION_GAP, OOD_GAP, Z, OODSetting
from iclgd.tasks import X_DISTRIBUTIONS
from iclgd.train import train
from walkthrough import Checks, finish, parse_args, Transcript

NAME = "03_out_of_distribution"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
D_IN, N_CONTEXT, A = 10, 10, 1.0
MODELS = ("clean", "distractors")


@dataclass(frozen=True)
class Settings:
    """Sizes and seeds of one run of the walkthrough (full or --quick)."""

    quick: bool
    steps: int  # training steps of each layer
    val_tasks: int  # validation tasks per test distribution, shared by every comparison on it (paired)
    tune_tasks: int  # tasks on which each GD rate is tuned
    duel_tasks: int  # tasks per distractor count in the head to head
    moment_tasks: int  # tasks whose inputs step 1 measures
    n_train_distractors: int = 2
    max_test_distractors: int = 5
    seed: int = 0  # training (data and init) and evaluation streams
    moment_seed: int = 4  # step 1's tasks


FULL = Settings(quick=False, steps=5000, val_tasks=10_000, tune_tasks=100_000, duel_tasks=100_000, moment_tasks=100_000)
QUICK = Settings(quick=True, steps=300, val_tasks=2_000, tune_tasks=10_000, duel_tasks=2_000, moment_tasks=5_000)
QUICK_GAP = 0.5  # a 300-step layer is not yet GD; the quick run checks that it is on the way


# --------------------------------------------------------------------------------------------
# Printing: a transcript that is printed as it goes and kept for the results file
# --------------------------------------------------------------------------------------------


def pct(value: float, digits: int = 2) -> str:
    return f"{100 * value:+.{digits}f}%"


def est(entry, digits: int = 4) -> str:
    """'mean ± stderr' of an Estimate or its dict."""
    mean, stderr = (entry["mean"], entry["stderr"]) if isinstance(entry, dict) else (entry.mean, entry.stderr)
    return f"{mean:.{digits}f} ± {stderr:.{digits}f}"


# --------------------------------------------------------------------------------------------
# Step 1: four input laws with the same norm
# --------------------------------------------------------------------------------------------


def step1_laws(t: Transcript, checks: Checks, s: Settings) -> dict:
    t.heading("Step 1. Four input laws with the same norm")
    t.prose(f"""
        In distribution every input coordinate is uniform on [-a, a] (a = {A:g}), so E[x_k^2] =
        a^2/3. iclgd.LinearRegressionTask(x_distribution=...) offers three other laws, each scaled
        "to the same norm", i.e. to the same second moment a^2/3 per coordinate: gaussian
        N(0, a^2/3); laplace with scale b, 2 b^2 = a^2/3; and exponential s Exp(1) with
        2 s^2 = a^2/3, which is not centred: its inputs are all >= 0, a one-sided shift of the
        inputs. The table shows, over the inputs of {s.moment_tasks} tasks (seed {s.moment_seed}),
        each law's mean, second and fourth moment per coordinate (± one standard error) and its
        smallest value:
    """)
    t.out(f"  {'law':<12} {'definition':<31} {'E x':>17} {'E x^2':>17} {'E x^4':>17} {'min':>8}")
    rows = {}
    for name, law in X_DISTRIBUTIONS.items():
        task = iclgd.LinearRegressionTask(d=D_IN, n_context=N_CONTEXT, x_scale=A, x_distribution=name)
        x = task.sample(s.moment_tasks, s.moment_seed).tokens[:, :, :-1].ravel()
        moments = {k: metrics.estimate(x**k) for k in (1, 2, 4)}
        rows[name] = {f"E_x{k}": m.to_dict() for k, m in moments.items()} | {"min": float(x.min())}
        t.out(f"  {name:<12} {law:<31} {est(moments[1]):>17} {est(moments[2]):>17} {est(moments[4]):>17} {x.min():8.3f}")
    t.out("")
    z = {name: (row["E_x2"]["mean"] - A**2 / 3) / row["E_x2"]["stderr"] for name, row in rows.items()}
    worst = max(z, key=lambda name: abs(z[name]))
    checks("every law has E x^2 = a^2/3", f"largest |z| = {abs(z[worst]):.2f} ({worst})", "<= 4 s.e.",
           all(abs(v) <= 4 for v in z.values()))
    checks("exponential inputs are one-sided", f"min {rows['exponential']['min']:.3g}", ">= 0", rows["exponential"]["min"] >= 0)
    t.out("")
    s2_exp = A**2 / 6  # s^2 of the exponential law
    top = (D_IN + 1) * s2_exp
    t.prose(f"""
        Same second moments, different shapes: the fourth moment (how heavy the tails are)
        grows from uniform (a^4/5) to gaussian (a^4/3) to laplace and exponential (2a^4/3).
        And the exponential law moves the inputs' second-moment matrix E[x x^T] itself: its
        coordinates have mean s = a/sqrt(6), so E[x x^T] = s^2 (I + 1 1^T), whose largest
        eigenvalue (along the all-ones direction) is (d + 1) s^2 = {top:.4f}, against a^2/3 =
        {A**2 / 3:.4f} in every direction for the three centred laws.
    """)
    return {"laws": dict(X_DISTRIBUTIONS), "moment_tasks": s.moment_tasks, "seed": s.moment_seed, "moments": rows,
            "second_moment_z": z, "exponential_top_eigenvalue": top}


# --------------------------------------------------------------------------------------------
# Step 2: one GD step out of distribution, in closed form
# --------------------------------------------------------------------------------------------


def gd_half_mse(eta: float, d: int, n: int, s2: float, m4: float) -> float:
    """Expected half-MSE of one GD step from 0 with rate eta, for i.i.d. centred input coordinates
    with E x^2 = s2 and E x^4 = m4, w ~ N(0, I): 0.5 (A eta^2 - 2 B eta + C) with
    A = (d/N) s2 (m4 + (N + d - 2) s2^2), B = d s2^2, C = d s2 (walkthrough 01, step 2)."""
    return 0.5 * ((d / n) * s2 * (m4 + (n + d - 2) * s2**2) * eta**2 - 2 * d * s2**2 * eta + d * s2)


def step2_gd_theory(t: Transcript, checks: Checks, s: Settings) -> dict:
    t.heading("Step 2. One GD step out of distribution, in closed form")
    optimum = baselines.one_step_optimum(D_IN, N_CONTEXT, A)
    eta = optimum.eta
    t.prose(f"""
        From W0 = 0, one GD step with rate eta predicts yhat = eta x_q^T C w with C = (1/N) sum_i
        x_i x_i^T, the context's second-moment matrix. For many context points C is about
        E[x x^T], so each eigendirection of E[x x^T] with eigenvalue lambda is learnt with the
        factor eta lambda: too small a factor under-learns, a factor above 2 overshoots and
        does worse than not learning at all (yhat = 0, half-MSE E[y_q^2]/2). The rate is tuned
        in distribution (eta* = {eta:.4f} for a = 1, walkthrough 01) and then kept; a shift changes
        lambda and GD pays for it.

        Walkthrough 01's closed form of the expected loss needs only E x^2 = s2 and E x^4 = m4 of
        centred i.i.d. coordinates, so it covers every shift below except the exponential law:
        scaling the inputs by alpha (s2 = alpha^2 a^2/3, m4 = alpha^4 a^4/5), and the gaussian
        (m4 = 3 s2^2) and laplace (m4 = 6 s2^2) laws. Below: that closed form against Monte
        Carlo on {s.val_tasks} validation tasks per shift (the same tasks the trained layers
        see in step 4), with the loss of predicting 0 for scale.
    """)
    base = iclgd.LinearRegressionTask(d=D_IN, n_context=N_CONTEXT, x_scale=A)
    shifts = [(f"alpha = {alpha:g}", dataclasses.replace(base, x_scale=A * alpha), (alpha * A) ** 2 / 3, (alpha * A) ** 4 / 5)
              for alpha in DEFAULT_ALPHAS]
    shifts += [(f"{name}", dataclasses.replace(base, x_distribution=name), A**2 / 3, factor * (A**2 / 3) ** 2)
               for name, factor in (("gaussian", 3.0), ("laplace", 6.0))]
    t.out(f"  {'shift':<14} {'closed form':>12} {'Monte Carlo':>22} {'z':>7} {'predict 0':>10}")
    rows = []
    for label, task, s2, m4 in shifts:
        batch = validation_batch(task, s.val_tasks, s.seed)
        mc = metrics.estimate(metrics.half_squared_errors(baselines.gd_predict(batch.tokens, eta, 1), batch.targets))
        closed = gd_half_mse(eta, D_IN, N_CONTEXT, s2, m4)
        z = (mc.mean - closed) / mc.stderr
        rows.append({"shift": label, "closed_form": closed, "monte_carlo": mc.to_dict(), "z": z, "predict_zero": 0.5 * D_IN * s2})
        t.out(f"  {label:<14} {closed:12.4f} {est(mc):>22} {z:+7.2f} {0.5 * D_IN * s2:10.4f}")
    t.out("")
    worst = max(rows, key=lambda row: abs(row["z"]))
    checks("Monte Carlo GD loss = closed form under every centred shift", f"largest |z| = {abs(worst['z']):.2f} ({worst['shift']})",
           "<= 4 s.e.", abs(worst["z"]) <= 4)
    exp_batch = validation_batch(dataclasses.replace(base, x_distribution="exponential"), s.val_tasks, s.seed)
    exp_gd = metrics.estimate(metrics.half_squared_errors(baselines.gd_predict(exp_batch.tokens, eta, 1), exp_batch.targets))
    exp_zero = metrics.estimate(metrics.half_squared_errors(np.zeros_like(exp_batch.targets), exp_batch.targets))
    top = (D_IN + 1) * A**2 / 6
    t.prose(f"""
        Exponential inputs: E[x x^T] has the eigenvalue {top:.4f} along the all-ones direction, so
        there eta* lambda = {eta * top:.2f} > 2: one GD step overshoots along it. On the same
        validation tasks GD's half-MSE is {est(exp_gd)}, against {est(exp_zero)} for predicting 0.
    """)
    checks("with exponential inputs GD at eta* is worse than predicting 0", f"{exp_gd.mean:.4f} vs {exp_zero.mean:.4f}",
           "GD > zero predictor", exp_gd.mean > exp_zero.mean)
    large = rows[len(DEFAULT_ALPHAS) - 1]
    checks(f"at {large['shift']} GD at eta* is worse than predicting 0", f"{large['monte_carlo']['mean']:.4f} vs {large['predict_zero']:.4f}",
           "GD > zero predictor", large["monte_carlo"]["mean"] > large["predict_zero"])
    t.out("")
    return {"eta": eta, "rows": rows, "exponential": {"gd": exp_gd.to_dict(), "predict_zero": exp_zero.to_dict(), "eta_lambda_max": eta * top}}


# --------------------------------------------------------------------------------------------
# Step 3: two trained layers
# --------------------------------------------------------------------------------------------


def step3_train(t: Transcript, checks: Checks, s: Settings, out_dir: Path) -> dict:
    t.heading("Step 3. Two layers: one trained on the standard task, one with distractor labels")
    setting = OODSetting(steps=s.steps, seed=s.seed, n_train_distractors=s.n_train_distractors, val_tasks=s.val_tasks,
                         tune_tasks=s.tune_tasks, duel_tasks=s.duel_tasks, max_test_distractors=s.max_test_distractors)
    t.prose(f"""
        Both layers are trained as in walkthrough 01 (one layer, one head, Adam lr 1e-3 with
        cosine decay, batch 2048, {s.steps} steps of fresh tasks, seed {s.seed}) with the
        library's loop, iclgd.train.train, on the fastest installed backend
        ("{setting.backend}"). "clean" sees the standard task; "distractors" sees tasks in which
        {s.n_train_distractors} of the {N_CONTEXT} context labels, at random positions, are
        replaced by N(0, 1) noise (LinearRegressionTask(n_distractors={s.n_train_distractors})). The
        configurations (iclgd.experiments.ood.OODSetting.run_config) differ only there:
    """)
    configs = {name: setting.run_config(name) for name in MODELS}
    clean_toml, distractor_toml = (run_config_to_toml(configs[name]).splitlines() for name in MODELS)
    for before, after in zip(clean_toml, distractor_toml):
        if before != after:
            t.out(f"    clean: {before}    distractors: {after}")
    t.out("")
    params, out = {}, {}
    for name, config in configs.items():
        started = time.perf_counter()
        state = train(out_dir / name, config, quiet=True)
        seconds = time.perf_counter() - started
        params[name] = state.params
        eta = tune_gd_eta(config.task.sample(s.tune_tasks, stream(s.seed, "line_search")))
        out[name] = {"steps": state.step, "train_seconds": seconds, "gd_eta": eta, "run_dir": str(out_dir / name)}
        t.out(f"  {name:<12} trained {state.step} steps in {seconds:6.1f} s; GD rate tuned on its training tasks: {eta:.4f}")
    t.out("")
    optimum = baselines.one_step_optimum(D_IN, N_CONTEXT, A)
    t.prose(f"""
        Each layer's GD baseline is one GD step with the rate tuned on that layer's own training
        tasks (the exact line search of iclgd.evaluate.tune_gd_eta on {s.tune_tasks} tasks): for
        the clean task that is the closed-form eta* = {optimum.eta:.4f} up to sampling; for the
        distractor task the best rate is {100 * (out['distractors']['gd_eta'] / out['clean']['gd_eta'] - 1):+.1f}% higher. Both
        rates stay fixed under every shift in step 4.
    """)
    return {"setting": setting, "configs": configs, "params": params, "models": out}


# --------------------------------------------------------------------------------------------
# Step 4: shifts, each layer against its GD on the same tasks
# --------------------------------------------------------------------------------------------


def step4_shifts(t: Transcript, checks: Checks, s: Settings, trained: dict) -> dict:
    t.heading("Step 4. Shifting the test tasks: each layer against its GD, on the same tasks")
    backend = iclgd.get_backend(trained["setting"].backend)
    t.prose(f"""
        For every shifted test distribution we draw {s.val_tasks} validation tasks
        (iclgd.evaluate.validation_batch, seed {s.seed}) and run a layer and its GD on the very
        same tasks (iclgd.evaluate.compare_with_gd). "LSA/GD - 1" is the mean of the per-task
        loss differences relative to GD's mean loss, with its standard error. The shifts: every
        input scaled by alpha; the input law changed at the same norm (step 1); k distractor
        labels at test time. Each layer is shifted from its own training tasks.
    """)
    sweeps = {"input scale (alpha)": [("alpha", alpha, lambda task, v: dataclasses.replace(task, x_scale=task.x_scale * v)) for alpha in DEFAULT_ALPHAS],
              "input law": [("law", name, lambda task, v: dataclasses.replace(task, x_distribution=v)) for name in X_DISTRIBUTIONS],
              "test distractors (k)": [("k", k, lambda task, v: dataclasses.replace(task, n_distractors=v)) for k in range(s.max_test_distractors + 1)]}
    results, worst = {}, {}
    for sweep_name, shifts in sweeps.items():
        t.out(f"  {sweep_name}")
        t.out(f"  {'':>12}" + "".join(f" {'LSA (' + name + ')':>17} {'GD':>9} {'LSA/GD - 1':>17}" for name in MODELS))
        rows = []
        for key, value, shift in shifts:
            row = {key: value}
            line = f"  {str(value):>12}"
            for name in MODELS:
                config = trained["configs"][name]
                batch = validation_batch(shift(config.task, value), s.val_tasks, s.seed)
                c = compare_with_gd(backend, config.model, trained["params"][name], batch, trained["models"][name]["gd_eta"])
                gap, gap_err = c.model_minus_gd.mean / c.gd_loss.mean, c.model_minus_gd.stderr / c.gd_loss.mean
                row[name] = c.to_dict() | {"relative_gap": {"mean": gap, "stderr": gap_err}}
                line += f" {c.model_loss.mean:17.4f} {c.gd_loss.mean:9.4f} {pct(gap):>9} ± {100 * gap_err:4.2f}%"
            rows.append(row)
            t.out(line)
        t.out("")
        results[sweep_name] = rows
        worst[sweep_name] = max((abs(row[name]["relative_gap"]["mean"]), f"{name}, {list(row)[0]} = {list(row.values())[0]}")
                                for row in rows for name in MODELS)
    own = {}
    for name in MODELS:
        config = trained["configs"][name]
        c = compare_with_gd(backend, config.model, trained["params"][name], validation_batch(config.task, s.val_tasks, s.seed),
                            trained["models"][name]["gd_eta"])
        own[name] = c.model_minus_gd.mean / c.gd_loss.mean
    bound = QUICK_GAP if s.quick else OOD_GAP
    suffix = " (quick run)" if s.quick else ""
    for name in MODELS:
        checks(f"in distribution the {name} layer = its GD{suffix}", pct(own[name]),
               f"|LSA/GD - 1| <= {100 * (QUICK_GAP if s.quick else IN_DISTRIBUTION_GAP):g}%",
               abs(own[name]) <= (QUICK_GAP if s.quick else IN_DISTRIBUTION_GAP))
    for sweep_name, (gap, where) in worst.items():
        checks(f"under the {sweep_name} shift the layers degrade like GD{suffix}", f"largest |LSA/GD - 1| {100 * gap:.2f}% ({where})",
               f"<= {100 * bound:g}%", gap <= bound)
    t.out("")
    t.prose("""
        Where GD does badly (large alpha, exponential inputs: the overshoot of step 2), the
        trained layers do just as badly; where the distractor layer's larger rate helps GD, it
        helps the layer. Nothing in training told the layers about these test distributions:
        they follow GD because they compute GD.
    """)
    return {"sweeps": results, "in_distribution_relative_gap": own,
            "worst_relative_gap": {k: {"value": v[0], "where": v[1]} for k, v in worst.items()}}


# --------------------------------------------------------------------------------------------
# Step 5: the two layers head to head
# --------------------------------------------------------------------------------------------


def step5_duel(t: Transcript, checks: Checks, s: Settings, trained: dict) -> dict:
    t.heading("Step 5. The two layers head to head on distractor tasks")
    backend = iclgd.get_backend(trained["setting"].backend)
    etas = {name: trained["models"][name]["gd_eta"] for name in MODELS}
    t.prose(f"""
        Is the layer trained with distractors better on distractor tasks than the clean one?
        If both are GD, the answer is GD's: the half-MSE of one GD step is a parabola in the
        rate, so the rate tuned for distractor tasks ({etas['distractors']:.4f}) beats the clean
        rate ({etas['clean']:.4f}) there, by an amount second order in their difference - small.
        Below, on {s.duel_tasks} tasks per k (the same tasks for both layers and both GDs), the
        paired difference of the layers' losses next to that of their GDs.
    """)
    cfg = trained["configs"]["clean"].model
    base = trained["configs"]["clean"].task
    t.out(f"  {'k':>3} {'LSA: distractors - clean':>26} {'GD: eta_distractors - eta_clean':>32}")
    rows = []
    for k in range(s.max_test_distractors + 1):
        batch = validation_batch(dataclasses.replace(base, n_distractors=k), s.duel_tasks, s.seed)
        lsa = {n: metrics.half_squared_errors(backend.predict(cfg, trained["params"][n], batch.tokens), batch.targets) for n in MODELS}
        gd = {n: metrics.half_squared_errors(baselines.gd_predict(batch.tokens, etas[n], 1), batch.targets) for n in MODELS}
        lsa_diff = metrics.paired_difference(lsa["distractors"], lsa["clean"])
        gd_diff = metrics.paired_difference(gd["distractors"], gd["clean"])
        rows.append({"k": k, "lsa_distractors_minus_clean": lsa_diff.to_dict(), "gd_distractors_minus_clean": gd_diff.to_dict()})
        t.out(f"  {k:3d} {est(lsa_diff, 5):>26} {est(gd_diff, 5):>32}")
    t.out("")
    trained_k = next(row for row in rows if row["k"] == s.n_train_distractors)
    diff = trained_k["lsa_distractors_minus_clean"]
    if s.quick:
        t.out("  (quick run: the layers are not yet GD, and the effect is far below the noise of the few tasks here)")
    else:
        checks(f"with {s.n_train_distractors} distractors the distractor-trained layer beats the clean one",
               f"paired diff {diff['mean']:.5f} ± {diff['stderr']:.5f} (z = {diff['mean'] / diff['stderr']:.1f})",
               f"< 0 by >= {Z:g} s.e.", diff["mean"] + Z * diff["stderr"] < 0)
        gd_diff = trained_k["gd_distractors_minus_clean"]
        z_match = (diff["mean"] - gd_diff["mean"]) / np.hypot(diff["stderr"], gd_diff["stderr"])
        checks("and by as much as GD at its rate beats GD at the clean rate", f"{diff['mean']:.5f} vs {gd_diff['mean']:.5f}",
               "within 4 s.e. of each other (conservative: the two are positively correlated)", abs(z_match) <= 4)
    t.out("")
    return {"rows": rows, "duel_tasks": s.duel_tasks}


def backend_description() -> str:
    """The fastest installed backend, with numba's thread count (timings depend on it, results do not)."""
    name = fastest_backend()
    if name == "numba":
        import numba

        threads = numba.get_num_threads()
        return f"numba ({threads} thread{'' if threads == 1 else 's'})"
    return name


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv, __doc__, f"{QUICK.steps} training steps, {QUICK.val_tasks} validation tasks", "training runs")
    settings = QUICK if args.quick else FULL
    out_dir = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix=f"iclgd_{NAME}_"))
    results_dir = out_dir if settings.quick else RESULTS_DIR
    started = time.perf_counter()

    t = Transcript()
    checks = Checks(t)
    t.out(f"{NAME}: out of distribution, a trained linear self-attention layer fails the way GD fails")
    t.out(f"mode: {'quick' if settings.quick else 'full'}; iclgd {iclgd.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}; training backend {backend_description()}")
    t.out("")
    t.prose("""
        Claim (von Oswald et al., "Transformers Learn In-Context by Gradient Descent", ICML
        2023, Sec. 3): a linear self-attention layer trained on in-context linear regression
        computes one step of gradient descent, so out of distribution it degrades as that GD
        step does. Setting: d = N = 10, x ~ U(-1, 1)^d in distribution, w ~ N(0, I), no label
        noise, one layer, one head, half-MSE loss.
    """)
    results = {"claim": "out of distribution, a trained one-layer LSA degrades as one step of GD does",
               "script": f"reference/{NAME}.py", "mode": "quick" if settings.quick else "full",
               "settings": asdict(settings), "setting": {"d": D_IN, "n_context": N_CONTEXT, "x_scale": "a = 1 (paper)"},
               "versions": {"iclgd": iclgd.__version__, "numpy": np.__version__, "python": platform.python_version(),
                            "backend": backend_description()}}
    results["step1_laws"] = step1_laws(t, checks, settings)
    results["step2_gd_theory"] = step2_gd_theory(t, checks, settings)
    trained = step3_train(t, checks, settings, out_dir)
    results["step3_training"] = trained["models"]
    results["step4_shifts"] = step4_shifts(t, checks, settings, trained)
    results["step5_duel"] = step5_duel(t, checks, settings, trained)

    return finish(t, checks, results, started, f"training runs in {out_dir}", results_dir, NAME)


if __name__ == "__main__":
    sys.exit(main())
