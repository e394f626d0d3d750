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
The same experiment, without the narration, is `iclgd reproduce ood` (iclgd.experiments.ood): steps 3-5
narrate what its ``measure`` trains and measures, in its setting; the closed forms of step 2 come
from iclgd.theory.

Conventions (docs/conventions.md): tokens e_i = (x_i, y_i), the query token (x_q, 0) last; a = 1, i.e.
x ~ U(-1, 1)^d in distribution; w ~ N(0, I_d), no label noise; the loss is half the mean squared
error ("half-MSE").
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

import iclgd
from iclgd import baselines, metrics, theory
from iclgd.backends import fastest_backend, get_backend
from iclgd.config import run_config_to_toml
from iclgd.evaluate import validation_batch
from iclgd.experiments import ood
from iclgd.experiments.ood import IN_DISTRIBUTION_GAP, MODELS, OOD_GAP, Z, OODSetting
from iclgd.tasks import X_DISTRIBUTIONS
from walkthrough import Checks, Session, Transcript

NAME = "03_out_of_distribution"
D_IN, N_CONTEXT, A = 10, 10, 1.0
QUICK_GAP = 0.5  # a 300-step layer is not yet GD; the quick run checks that it is on the way
#: each shift of step 4 (iclgd.experiments.ood.SWEEPS) as this walkthrough names it, and its row key
SWEEP_NAMES = {"input_scale": ("input scale (alpha)", "alpha"), "input_distribution": ("input law", "law"),
               "test_distractors": ("test distractors (k)", "k")}


@dataclass(frozen=True)
class Settings:
    """The experiment's setting (``iclgd reproduce ood``'s, or its ``--quick`` one) and the sizes
    and seeds only the walkthrough uses."""

    experiment: OODSetting
    moment_tasks: int  # tasks whose inputs step 1 measures
    moment_seed: int = 4  # step 1's tasks

    def record(self) -> dict:
        """The sizes and seeds as the results record them."""
        e = self.experiment
        return {"quick": e.smoke, "steps": e.steps, "val_tasks": e.val_tasks, "tune_tasks": e.tune_tasks, "duel_tasks": e.duel_tasks,
                "moment_tasks": self.moment_tasks, "n_train_distractors": e.n_train_distractors,
                "max_test_distractors": e.max_test_distractors, "seed": e.seed, "moment_seed": self.moment_seed}


FULL = Settings(OODSetting(), moment_tasks=100_000)
QUICK = Settings(OODSetting.quick(), moment_tasks=5_000)


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
    top = theory.top_second_moment("exponential", D_IN, A)
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
        Carlo on {s.experiment.val_tasks} validation tasks per shift (the same tasks the trained layers
        see in step 4), with the loss of predicting 0 for scale.
    """)
    e = s.experiment
    shifted = ood.shifted_tasks(e, e.task())  # the test tasks of step 4, shifted from the standard task
    laws = dict(shifted["input_distribution"])
    shifts = [(f"alpha = {alpha:g}", task, "uniform") for alpha, task in shifted["input_scale"]]
    shifts += [(name, laws[name], name) for name in ("gaussian", "laplace")]
    t.out(f"  {'shift':<14} {'closed form':>12} {'Monte Carlo':>22} {'z':>7} {'predict 0':>10}")
    rows = []
    for label, task, law in shifts:
        s2, m4 = theory.centred_moments(law, task.x_scale)
        batch = validation_batch(task, e.val_tasks, e.seed)
        mc = metrics.estimate(metrics.half_squared_errors(baselines.gd_predict(batch.tokens, eta, 1), batch.targets))
        closed = theory.one_step_parabola(D_IN, N_CONTEXT, s2, m4).half_mse(eta)
        z = (mc.mean - closed) / mc.stderr
        rows.append({"shift": label, "closed_form": closed, "monte_carlo": mc.to_dict(), "z": z, "predict_zero": 0.5 * D_IN * s2})
        t.out(f"  {label:<14} {closed:12.4f} {est(mc):>22} {z:+7.2f} {0.5 * D_IN * s2:10.4f}")
    t.out("")
    worst = max(rows, key=lambda row: abs(row["z"]))
    checks("Monte Carlo GD loss = closed form under every centred shift", f"largest |z| = {abs(worst['z']):.2f} ({worst['shift']})",
           "<= 4 s.e.", abs(worst["z"]) <= 4)
    exp_batch = validation_batch(laws["exponential"], e.val_tasks, e.seed)
    exp_gd = metrics.estimate(metrics.half_squared_errors(baselines.gd_predict(exp_batch.tokens, eta, 1), exp_batch.targets))
    exp_zero = metrics.estimate(metrics.half_squared_errors(np.zeros_like(exp_batch.targets), exp_batch.targets))
    top = theory.top_second_moment("exponential", D_IN, A)
    t.prose(f"""
        Exponential inputs: E[x x^T] has the eigenvalue {top:.4f} along the all-ones direction, so
        there eta* lambda = {eta * top:.2f} > 2: one GD step overshoots along it. On the same
        validation tasks GD's half-MSE is {est(exp_gd)}, against {est(exp_zero)} for predicting 0.
    """)
    checks("with exponential inputs GD at eta* is worse than predicting 0", f"{exp_gd.mean:.4f} vs {exp_zero.mean:.4f}",
           "GD > zero predictor", exp_gd.mean > exp_zero.mean)
    large = rows[len(shifted["input_scale"]) - 1]
    checks(f"at {large['shift']} GD at eta* is worse than predicting 0", f"{large['monte_carlo']['mean']:.4f} vs {large['predict_zero']:.4f}",
           "GD > zero predictor", large["monte_carlo"]["mean"] > large["predict_zero"])
    t.out("")
    return {"eta": eta, "rows": rows, "exponential": {"gd": exp_gd.to_dict(), "predict_zero": exp_zero.to_dict(), "eta_lambda_max": eta * top}}


def step3_train(t: Transcript, checks: Checks, s: Settings, out_dir) -> dict:
    t.heading("Step 3. Two layers: one trained on the standard task, one with distractor labels")
    setting = s.experiment
    t.prose(f"""
        Both layers are trained as in walkthrough 01 (one layer, one head, Adam lr 1e-3 with
        cosine decay, batch 2048, {setting.steps} steps of fresh tasks, seed {setting.seed}) with the
        library's loop, iclgd.train.train, on the fastest installed backend
        ("{setting.backend}"). "clean" sees the standard task; "distractors" sees tasks in which
        {setting.n_train_distractors} of the {N_CONTEXT} context labels, at random positions, are
        replaced by N(0, 1) noise (LinearRegressionTask(n_distractors={setting.n_train_distractors})). The
        configurations (iclgd.experiments.ood.OODSetting.run_config) differ only there:
    """)
    clean_toml, distractor_toml = (run_config_to_toml(setting.run_config(name)).splitlines() for name in MODELS)
    for before, after in zip(clean_toml, distractor_toml):
        if before != after:
            t.out(f"    clean: {before}    distractors: {after}")
    t.out("")
    measured = ood.measure(out_dir, setting, get_backend(setting.backend), quiet=True).results  # trains, then evaluates
    models = {name: {"steps": setting.steps, "train_seconds": m["train_seconds"], "gd_eta": m["gd_eta"], "run_dir": str(out_dir / name)}
              for name, m in measured["models"].items()}
    for name, m in models.items():
        t.out(f"  {name:<12} trained {m['steps']} steps in {m['train_seconds']:6.1f} s; GD rate tuned on its training tasks: {m['gd_eta']:.4f}")
    t.out("")
    t.prose(f"""
        Each layer's GD baseline is one GD step with the rate tuned on that layer's own training
        tasks (the exact line search of iclgd.evaluate.tune_gd_eta on {setting.tune_tasks} tasks): for
        the clean task that is the closed-form eta* = {measured['optimal_eta_clean']:.4f} up to sampling; for the
        distractor task the best rate is {100 * (models['distractors']['gd_eta'] / models['clean']['gd_eta'] - 1):+.1f}% higher. Both
        rates stay fixed under every shift in step 4.
    """)
    return {"measured": measured, "models": models}


def step4_shifts(t: Transcript, checks: Checks, s: Settings, measured: dict) -> dict:
    t.heading("Step 4. Shifting the test tasks: each layer against its GD, on the same tasks")
    t.prose(f"""
        For every shifted test distribution we draw {s.experiment.val_tasks} validation tasks
        (iclgd.evaluate.validation_batch, seed {s.experiment.seed}) and run a layer and its GD on the very
        same tasks (iclgd.evaluate.compare_with_gd). "LSA/GD - 1" is the mean of the per-task
        loss differences relative to GD's mean loss, with its standard error. The shifts: every
        input scaled by alpha; the input law changed at the same norm (step 1); k distractor
        labels at test time. Each layer is shifted from its own training tasks.
    """)
    results, worst = {}, {}
    for key, (sweep_name, label) in SWEEP_NAMES.items():
        t.out(f"  {sweep_name}")
        t.out(f"  {'':>12}" + "".join(f" {'LSA (' + name + ')':>17} {'GD':>9} {'LSA/GD - 1':>17}" for name in MODELS))
        rows = []
        row_key = ood.SWEEPS[key][0]
        for per_model in zip(*(measured["sweeps"][key][name] for name in MODELS)):  # one shift: a row of each model
            value = per_model[0][row_key]
            row, line = {label: value}, f"  {str(value):>12}"
            for name, c in zip(MODELS, per_model):
                gap, gap_err = ood.relative_gap(c)
                row[name] = {k: v for k, v in c.items() if k != row_key} | {"relative_gap": {"mean": gap, "stderr": gap_err}}
                line += f" {c['model_loss']['mean']:17.4f} {c['gd_loss']['mean']:9.4f} {pct(gap):>9} ± {100 * gap_err:4.2f}%"
            rows.append(row)
            t.out(line)
        t.out("")
        results[sweep_name] = rows
        worst[sweep_name] = max((abs(row[name]["relative_gap"]["mean"]), f"{name}, {label} = {row[label]}") for row in rows for name in MODELS)
    own = {name: ood.relative_gap(measured["models"][name]["in_distribution"])[0] for name in MODELS}
    bound, suffix = (QUICK_GAP, " (quick run)") if s.experiment.smoke else (OOD_GAP, "")
    for name in MODELS:
        checks(f"in distribution the {name} layer = its GD{suffix}", pct(own[name]),
               f"|LSA/GD - 1| <= {100 * (QUICK_GAP if s.experiment.smoke else IN_DISTRIBUTION_GAP):g}%",
               abs(own[name]) <= (QUICK_GAP if s.experiment.smoke else IN_DISTRIBUTION_GAP))
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


def step5_duel(t: Transcript, checks: Checks, s: Settings, measured: dict) -> dict:
    t.heading("Step 5. The two layers head to head on distractor tasks")
    e, etas = s.experiment, {name: measured["models"][name]["gd_eta"] for name in MODELS}
    t.prose(f"""
        Is the layer trained with distractors better on distractor tasks than the clean one?
        If both are GD, the answer is GD's: the half-MSE of one GD step is a parabola in the
        rate, so the rate tuned for distractor tasks ({etas['distractors']:.4f}) beats the clean
        rate ({etas['clean']:.4f}) there, by an amount second order in their difference - small.
        Below, on {e.duel_tasks} tasks per k (the same tasks for both layers and both GDs), the
        paired difference of the layers' losses next to that of their GDs.
    """)
    t.out(f"  {'k':>3} {'LSA: distractors - clean':>26} {'GD: eta_distractors - eta_clean':>32}")
    rows = [{"k": duel["n_distractors"], "lsa_distractors_minus_clean": duel["distractors_minus_clean"],
             "gd_distractors_minus_clean": duel["gd_distractors_minus_clean"]} for duel in measured["head_to_head"]]
    for row in rows:
        t.out(f"  {row['k']:3d} {est(row['lsa_distractors_minus_clean'], 5):>26} {est(row['gd_distractors_minus_clean'], 5):>32}")
    t.out("")
    trained_k = next(row for row in rows if row["k"] == e.n_train_distractors)
    diff = trained_k["lsa_distractors_minus_clean"]
    if e.smoke:
        t.out("  (quick run: the layers are not yet GD, and the effect is far below the noise of the few tasks here)")
    else:
        checks(f"with {e.n_train_distractors} distractors the distractor-trained layer beats the clean one",
               f"paired diff {diff['mean']:.5f} ± {diff['stderr']:.5f} (z = {diff['mean'] / diff['stderr']:.1f})",
               f"< 0 by >= {Z:g} s.e.", diff["mean"] + Z * diff["stderr"] < 0)
        gd_diff = trained_k["gd_distractors_minus_clean"]
        z_match = (diff["mean"] - gd_diff["mean"]) / np.hypot(diff["stderr"], gd_diff["stderr"])
        checks("and by as much as GD at its rate beats GD at the clean rate", f"{diff['mean']:.5f} vs {gd_diff['mean']:.5f}",
               "within 4 s.e. of each other (conservative: the two are positively correlated)", abs(z_match) <= 4)
    t.out("")
    return {"rows": rows, "duel_tasks": e.duel_tasks}


def backend_description() -> str:
    """The fastest installed backend, with numba's thread count (timings depend on it, results do not)."""
    name = fastest_backend()
    if name == "numba":
        import numba

        threads = numba.get_num_threads()
        return f"numba ({threads} thread{'' if threads == 1 else 's'})"
    return name


def main(argv=None) -> int:
    session = Session(argv, __doc__, NAME, f"{QUICK.experiment.steps} training steps, {QUICK.experiment.val_tasks} validation tasks",
                      "training runs")
    settings, t, checks = (QUICK if session.quick else FULL), session.t, session.checks
    backend = backend_description()
    results = session.open("out of distribution, a trained linear self-attention layer fails the way GD fails",
                           "out of distribution, a trained one-layer LSA degrades as one step of GD does", settings.record(),
                           training_backend=backend)
    results["versions"]["backend"] = backend
    t.prose("""
        Claim (von Oswald et al., "Transformers Learn In-Context by Gradient Descent", ICML
        2023, Sec. 3): a linear self-attention layer trained on in-context linear regression
        computes one step of gradient descent, so out of distribution it degrades as that GD
        step does. Setting: d = N = 10, x ~ U(-1, 1)^d in distribution, w ~ N(0, I), no label
        noise, one layer, one head, half-MSE loss.
    """)
    results["step1_laws"] = step1_laws(t, checks, settings)
    results["step2_gd_theory"] = step2_gd_theory(t, checks, settings)
    trained = step3_train(t, checks, settings, session.out_dir)
    results["step3_training"] = trained["models"]
    results["step4_shifts"] = step4_shifts(t, checks, settings, trained["measured"])
    results["step5_duel"] = step5_duel(t, checks, settings, trained["measured"])
    return session.finish(results, f"training runs in {session.out_dir}")


if __name__ == "__main__":
    sys.exit(main())
