#!/usr/bin/env python
r"""Walkthrough 02: a trained recurrent linear self-attention model does GD++, not just GD.

Claim (von Oswald et al., "Transformers Learn In-Context by Gradient Descent", ICML 2023, its multi-layer and recurrent
models and GD++): deeper linear self-attention models beat as many steps of gradient descent; a recurrent (weight-tied)
one does GD++, gradient descent whose steps also move the inputs, and matches it with the rates GD++ learns. Setting:
d = N = 10, x ~ U(-1, 1)^d (the paper's text; the authors' code uses U(-0.5, 0.5)), w ~ N(0, I), no label noise, one
head, half-MSE loss.

Steps: GD++ by hand and as a tied LSA; tuned K-step GD and the spectrum; learned rates; a trained recurrent LSA against
both; its weights read as GD++'s construction (closed forms: iclgd.theory; scores: iclgd.scoring).  Run
``python reference/02_multi_layer.py [--quick] [--out DIR]`` (full: minutes, the runs of ``iclgd reproduce multi-layer
--tied --layers 2,3``; outputs: reference/walkthrough.py; conventions: docs/conventions.md).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields

import numpy as np

import iclgd
from iclgd import baselines, metrics, theory
from iclgd.backends import fastest_backend
from iclgd.evaluate import stream, tune_gd_eta, validation_batch
from iclgd.experiments.multi_layer import QUOTED_TUNED_GD, MultiLayerSetting, layer_readouts
from iclgd.gd_models import as_lsa, rates
from iclgd.interpolate import effective_matrices
from iclgd.scoring import Scores, checkpoint_curve
from walkthrough import Checks, Session, Table, Transcript, config_block, matrix_lines, max_abs_diff, percent, train_runs

NAME = "02_multi_layer"
D_IN, N_CONTEXT, X_SCALE = 10, 10, 1.0  # d, N and a: x ~ U(-a, a)^d, so E x x^T = (a^2 / 3) I
GD_DEPTHS, DEPTHS, HAND_DEPTHS = (1, 2, 3, 4, 5), (2, 3), (1, 2, 3)  # K of step 2; of the trained models (steps 3-5); of step 1
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)  # of the context covariance's eigenvalues
TOKEN_LABELS = [f"x{i + 1}" for i in range(D_IN)] + ["y"]
MODEL_LABELS = {"lsa": "recurrent LSA", "tuned_gd": "tuned GD", "gd": "learned GD", "gdpp": "learned GD++"}


@dataclass(frozen=True)
class Settings:
    """``iclgd reproduce multi-layer --tied --layers 2,3``'s setting (--quick: shorter runs) and the walkthrough's own sizes and seeds."""

    experiment: MultiLayerSetting
    demo_tasks: int = 1000  # step 1: tasks for the library-against-LSA checks
    hand_tasks: int = 4  # step 1: tasks done by hand, token by token
    demo_seed: int = 1  # step 1's tasks
    demo_eta: float = 0.9  # step 1: any rates work for the construction; these are just not special
    demo_gamma: float = 0.4

    @classmethod
    def of(cls, quick: bool, backend: str) -> "Settings":
        """The full setting on ``backend``, or with ``quick`` shorter runs on fewer tasks."""
        shorter = dict(steps_base=100, steps_per_layer=150, batch_size=512, baseline_steps=200, val_tasks=5_000, tune_tasks=5_000)
        return cls(MultiLayerSetting(layers=DEPTHS, tied=True, backend=backend, smoke=quick, **(shorter if quick else {})))

    def record(self) -> dict:
        """The sizes and seeds as the results record them."""
        e = self.experiment
        return {"quick": e.smoke, "lsa_steps_base": e.steps_base, "lsa_steps_per_layer": e.steps_per_layer, "lsa_batch_size": e.batch_size,
                "rate_steps": e.baseline_steps, "rate_batch_size": e.baseline_batch_size, "val_tasks": e.val_tasks, "tune_tasks": e.tune_tasks,
                "lsa_lr": e.lr, "rate_lr": e.baseline_lr, "schedule": e.run_config(DEPTHS[0], "lsa").train.schedule, "seed": e.seed,
                **{f.name: getattr(self, f.name) for f in fields(self)[1:]}}


def factor_table(t: Transcript, lam: np.ndarray, columns: list[tuple[str, tuple[float, float, int]]], width: int) -> np.ndarray:
    """Print at the QUANTILES of ``lam`` the fraction of w each column's (eta, gamma, steps) leaves unlearnt; return the quantiles."""
    quantiles = np.quantile(lam, QUANTILES)
    t.out(Table(8, 7, *(width for _ in columns)).block(("quantile", "lam", *(name for name, _ in columns)), [
        (f"{level:.2f}", f"{value:.4f}", *(f"{float(theory.error_factors(np.array(value), *c)):.4f}" for _, c in columns))
        for level, value in zip(QUANTILES, quantiles)]))
    return quantiles


def step1_construction(t: Transcript, checks: Checks, s: Settings) -> dict:
    d, n, eta, gamma = D_IN, N_CONTEXT, s.demo_eta, s.demo_gamma
    t.heading("Step 1. GD++ by hand, by the library, and as a linear self-attention layer")
    t.prose(f"""Walkthrough 01 showed that one LSA layer, given the tokens e_i = (x_i, y_i = w . x_i) of {n} examples with x_i in R^{d} and
        a query token (x_q, 0), can do one step of GD from W0 = 0: it adds -(eta/N) sum_i (x_i . x_j) y_i to the y-slot of every token j, so
        the query's y-slot becomes -W1 x_q. Stacked, layer t leaves the residuals y_i - W_t x_i in the context y-slots and the next layer
        does the next GD step on them: K layers, K steps of GD. GD++ lets every layer also move the inputs; one GD++ step updates every
        token j, context and query alike, from the step's old tokens (sums over the N context tokens i):""")
    t.out("    x_j <- x_j - (gamma/N) sum_i (x_i . x_j) x_i   = (I - gamma Sigma) x_j\n    y_j <- y_j - (eta/N)   sum_i (x_i . x_j) y_i\n")
    t.prose(f"""with Sigma = (1/N) sum_i x_i x_i^T, the context's input covariance. With gamma = 0 the inputs never move and K steps are K
        GD steps. iclgd.theory.gdpp_token_by_token writes a GD++ step out token by token and sum by sum, as above. Here it runs on
        {s.hand_tasks} tasks (seed {s.demo_seed}) with eta = {eta}, gamma = {gamma} for K = {', '.join(map(str, HAND_DEPTHS))} steps,
        against iclgd.baselines.gdpp_predict (vectorised over tasks) and, with gamma = 0, against iclgd.baselines.gd_predict:""")
    batch, oracle = s.experiment.task.sample(s.demo_tasks, seed=s.demo_seed), iclgd.get_backend("numpy")
    hand, table, per_depth = batch.tokens[: s.hand_tasks], Table(2, 4, 19, 19, 19, 19), {}
    t.out(table.line("K", "task", "by hand", "gdpp_predict", "by hand, gamma 0", "gd_predict"))
    for k in HAND_DEPTHS:
        columns = [np.array([theory.gdpp_token_by_token(x, eta, gamma, k) for x in hand]), baselines.gdpp_predict(hand, eta, gamma, steps=k),
                   np.array([theory.gdpp_token_by_token(x, eta, 0.0, k) for x in hand]), baselines.gd_predict(hand, eta, steps=k)]
        t.out("\n".join(table.line(k, b, *(f"{column[b]:.15f}" for column in columns)) for b in range(s.hand_tasks)))
        per_depth.setdefault("by_hand_vs_gdpp_predict", []).append(max_abs_diff(columns[0], columns[1]))
        per_depth.setdefault("by_hand_gamma0_vs_gd_predict", []).append(max_abs_diff(columns[2], columns[3]))
    t.out(f"  targets y_q of these tasks: {', '.join(f'{y:.4f}' for y in batch.targets[: s.hand_tasks])}\n")
    checks.small("GD++ by hand = baselines.gdpp_predict (K = 1..3)", max(per_depth["by_hand_vs_gdpp_predict"]), "1e-12")
    checks.small("GD++ by hand with gamma = 0 = baselines.gd_predict (K = 1..3)", max(per_depth["by_hand_gamma0_vs_gd_predict"]), "1e-12", end="\n")
    cfg1 = iclgd.LSAConfig(d=d, n_layers=1, n_heads=1, n_context=n)
    qk, ov = (m[0] for m in effective_matrices(cfg1, iclgd.gdpp_construction(cfg1, eta, gamma))["layer0"])
    t.prose(f"""As an LSA layer (row-vector tokens, E <- E + (E W_q)(C W_k)^T (C W_v) W_o with C the context rows), a GD++ step needs, in
        one head: W_q W_k^T = the identity on the x-block, so that query . key_i = x_j . x_i; and W_v W_o = blockdiag(-(gamma/N) I_d,
        -eta/N), so that what token i sends is -(1/N)(gamma x_i, eta y_i) (these products are iclgd.theory.gdpp_products). The GD
        construction of walkthrough 01 is the same without the x-block. iclgd.gdpp_construction(cfg, eta, gamma) builds it (value columns
        1..d copy x_i; column 0 carries -y_i); its products for eta = {eta}, gamma = {gamma} ('.' is zero):""")
    t.out(f"W_v W_o of iclgd.gdpp_construction (x-diagonal -gamma/N = {-gamma / n:g}, (y, y) entry -eta/N = {-eta / n:g})\n"
          + matrix_lines(ov, TOKEN_LABELS) + "\n")
    expected_qk, expected_ov = theory.gdpp_products(d, n, eta, gamma)
    product_diff = max(max_abs_diff(ov, expected_ov), max_abs_diff(qk, expected_qk))
    checks("gdpp_construction: W_q W_k^T = I (x-block), W_v W_o = blockdiag(-gamma/N I, -eta/N)", f"{product_diff:.3e}", "== 0",
           product_diff == 0.0, end="\n")
    t.prose(f"""A recurrent (weight-tied) model applies one layer K times: LSAConfig(tied=True) has a single weight set, named "shared.*".
        Build it with gdpp_construction and run it with the NumPy oracle's forward pass on all {s.demo_tasks} tasks; it must predict what K
        GD++ steps predict, and with gamma = 0 what K GD steps (the GD construction) predict:""")
    table = Table(2, 40, 25, 26)
    t.out(table.line("K", "params", "max |LSA - gdpp_predict|", "gamma = 0: max |LSA - GD|"))
    for k in HAND_DEPTHS:
        cfg = iclgd.LSAConfig(d=d, n_layers=k, n_heads=1, tied=True, n_context=n)
        construction, gd = iclgd.gdpp_construction(cfg, eta, gamma), baselines.gd_predict(batch.tokens, eta, steps=k)
        lsa = [oracle.predict(cfg, p, batch.tokens) for p in (construction, iclgd.gdpp_construction(cfg, eta, 0.0), iclgd.gd_construction(cfg, eta))]
        diffs = {"lsa_vs_gdpp_predict": max_abs_diff(lsa[0], baselines.gdpp_predict(batch.tokens, eta, gamma, steps=k)),
                 "gamma0_lsa_vs_gd_predict": max(max_abs_diff(lsa[1], gd), max_abs_diff(lsa[2], gd)),
                 "gamma0_gdpp_predict_vs_gd_predict": max_abs_diff(baselines.gdpp_predict(batch.tokens, eta, 0.0, steps=k), gd)}
        t.out(table.line(k, ", ".join(sorted(construction)), f"{diffs['lsa_vs_gdpp_predict']:.3e}", f"{diffs['gamma0_lsa_vs_gd_predict']:.3e}"))
        for key, diff in diffs.items():
            per_depth.setdefault(key, []).append(diff)
    worst = {key: max(values) for key, values in per_depth.items()}
    t.out(f"  gdpp_predict with gamma = 0 against gd_predict, K = 1..3: {worst['gamma0_gdpp_predict_vs_gd_predict']:.3e}\n")
    worst_gamma0 = max(worst["gamma0_lsa_vs_gd_predict"], worst["gamma0_gdpp_predict_vs_gd_predict"])
    checks.small("tied LSA(gdpp_construction) = K GD++ steps (K = 1..3)", worst["lsa_vs_gdpp_predict"], "1e-12")
    checks.small("gamma = 0: GD++ (LSA and gdpp_predict) = K GD steps", worst_gamma0, "1e-12", end="\n")
    return {"eta": eta, "gamma": gamma, "depths": list(HAND_DEPTHS), "hand_tasks": s.hand_tasks, "tasks": s.demo_tasks, "seed": s.demo_seed,
            "max_abs_by_hand_vs_gdpp_predict": worst["by_hand_vs_gdpp_predict"],
            "max_abs_by_hand_gamma0_vs_gd_predict": worst["by_hand_gamma0_vs_gd_predict"], "max_abs_construction_products_vs_structure": product_diff,
            "max_abs_lsa_vs_gdpp_predict": worst["lsa_vs_gdpp_predict"], "max_abs_gamma0_vs_gd": worst_gamma0, "per_depth": per_depth}


def step2_deeper_gd(t: Transcript, checks: Checks, s: Settings, batch) -> dict:
    t.heading("Step 2. More GD steps: the tuned K-step GD loss for K = 1..5")
    e = s.experiment
    t.prose(f"""Before training anything: how good are K steps of plain GD from W0 = 0, one rate eta for all K steps? As the paper did, eta
        is tuned by a line search on {e.tune_tasks} tasks from the training distribution (iclgd.evaluate.tune_gd_eta: exact for K = 1, a
        grid then golden-section search for K > 1), and the loss is measured on {e.val_tasks} other, validation tasks
        (iclgd.evaluate.validation_batch, seed {e.seed}), the same tasks every later comparison uses. "K vs K-1" is the paired difference on
        those tasks, which cancels most of the task-to-task noise:""")
    tune_batch, (lam, _) = e.task.sample(e.tune_tasks, stream(e.seed, "line_search")), theory.context_spectrum(batch.tokens)
    rows, previous, table = [], None, Table(2, 10, 18, 22, 20)
    t.out(table.line("K", "tuned eta", "half-MSE", "K vs K-1 (paired)", "from the spectrum"))
    for k in GD_DEPTHS:
        eta = tune_gd_eta(tune_batch, steps=k)
        losses = metrics.half_squared_errors(baselines.gd_predict(batch.tokens, eta, k), batch.targets)
        spectral = theory.spectral_half_mse(lam, eta, 0.0, k, X_SCALE**2 / 3)
        loss, gain = metrics.estimate(losses), metrics.paired_difference(losses, previous) if previous is not None else None
        rows.append({"k": k, "eta": eta, "loss": loss.to_dict(), "minus_previous": gain.to_dict() if gain else None,
                     "spectral": metrics.estimate(spectral).to_dict(), "minus_spectral": metrics.paired_difference(losses, spectral).to_dict()})
        t.out(table.line(k, f"{eta:.4f}", f"{loss:.4f}", f"{gain:.4f}" if gain else "-", f"{metrics.estimate(spectral):.4f}"))
        previous = losses
    t.out("")
    checks("tuned K-step GD loss falls with every extra step (K = 1..5)", ", ".join(f"{row['minus_previous']['mean']:+.4f}" for row in rows[1:]),
           "every paired (K - (K-1)) below 0 by > 3 s.e.", all(r["minus_previous"]["mean"] + 3 * r["minus_previous"]["stderr"] < 0 for r in rows[1:]))
    for k, quoted in QUOTED_TUNED_GD.items():
        z = (rows[k - 1]["loss"]["mean"] - quoted) / rows[k - 1]["loss"]["stderr"]
        checks(f"tuned {k}-step GD loss = the quoted {quoted}", f"{rows[k - 1]['loss']['mean']:.4f} ({z:+.2f} s.e.)", "within 3 s.e.", abs(z) <= 3)
    t.out("")
    least_squares = float(np.mean(metrics.half_squared_errors(baselines.least_squares_predict(batch.tokens), batch.targets)))
    t.prose(f"""Why so slowly? The tasks have no noise, so y_i = w . x_i and the context determines w exactly when its {N_CONTEXT} inputs
        span R^{D_IN} (least squares on the context, iclgd.baselines.least_squares_predict, has half-MSE {least_squares:.2e} on these
        tasks). GD gets there slowly. With b = (1/N) sum_i y_i x_i = Sigma w, a step is W_{{t+1}} - w = (I - eta Sigma)(W_t - w), so from W0
        = 0 the error after K steps is W_K - w = -(I - eta Sigma)^K w: along an eigenvector of Sigma with eigenvalue lam, a fraction (1 -
        eta lam)^K of w is still missing. Averaged over w ~ N(0, I) and x_q (E x_q x_q^T = I/3), a context with eigenvalues lam_k has
        expected half-MSE (1/6) sum_k (1 - eta lam_k)^(2K) (iclgd.theory.spectral_half_mse): the column "from the spectrum" above, computed
        from the inputs alone; it agrees with the measured loss, so this is the whole story.""")
    spectral_z = [row["minus_spectral"]["mean"] / row["minus_spectral"]["stderr"] for row in rows]
    checks("measured GD loss = (1/6) sum_k (1 - eta lam_k)^(2K) on the same tasks (K = 1..5)", ", ".join(f"{z:+.2f}" for z in spectral_z) + " s.e.",
           "every paired difference within 4 s.e.", all(abs(z) <= 4 for z in spectral_z), end="\n")
    t.prose(f"""Sigma's eigenvalues on the validation tasks have mean {float(lam.mean()):.4f} (E Sigma = I/3), but with N = d they spread
        from nearly 0 (smallest per task: median {float(np.median(lam[:, 0])):.4f}) to about 4/3 (largest per task: median
        {float(np.median(lam[:, -1])):.4f}). The fraction of w that K tuned GD steps still miss along an eigenvector, at quantiles of the
        eigenvalues pooled over tasks:""")
    quantiles = factor_table(t, lam, [(f"K={row['k']}", (row["eta"], 0.0, row["k"])) for row in rows], width=8)
    low_factor = float(theory.error_factors(np.array(quantiles[0]), rows[-1]["eta"], 0.0, rows[-1]["k"]))
    t.prose(f"""A rate above 2 / lam_max would blow up the top of the spectrum, so eta stays near {rows[0]['eta']:.2f}, and with it the
        small eigenvalues are learned slowly: at the 5% quantile, K = {rows[-1]['k']} steps still miss {100 * low_factor:.0f}% of w's
        component. That is the room GD++ uses.""")
    return {"tune_tasks": e.tune_tasks, "rows": rows, "quoted": {str(k): v for k, v in QUOTED_TUNED_GD.items()},
            "eigenvalue_quantiles": dict(zip(map(str, QUANTILES), quantiles.tolist())), "least_squares_half_mse": least_squares}


def step3_learned_rates(t: Transcript, checks: Checks, s: Settings, ctx: dict) -> dict:
    t.heading("Step 3. Learn the rates: K-step GD and GD++ trained by the library's loop")
    e, batch, tuned_eta = s.experiment, ctx["batch"], ctx["tuned_eta"]
    t.prose(f"""Instead of a line search, make the rates parameters and train them like any model:
        iclgd.gd_models.LearnedGDConfig(variant="gd" or "gdpp", tied=True) is K steps of GD (one rate eta) or GD++ (one eta, one gamma)
        shared by all steps. It is a constrained LSA: its layers carry the weights of gdpp_construction, affine in the rates, so the
        backend's LSA gradient gives the rates' gradient by the chain rule, and iclgd.train.train runs it on the same task stream, with the
        same Adam and checkpoints, as any LSA. The rates start near 0 (N(0, 0.002)). Adam, lr {e.baseline_lr:g} with {ctx['schedule']}
        decay, {e.baseline_steps} steps of {e.baseline_batch_size} fresh tasks, backend {e.backend}. The configuration of K = 3, GD++:""")
    t.out(config_block(e.run_config(3, "gdpp")))
    trained, seconds = train_runs(t, ctx["run_dir"], {f"K{k}/{model}": e.run_config(k, model) for k in DEPTHS for model in ("gd", "gdpp")})
    rows, predictions, table = {}, {}, Table(2, 13, 8, 7, 18, 20)
    t.out(table.line("K", "model", "eta", "gamma", "half-MSE", "paired vs tuned GD"))
    for k in DEPTHS:
        learned = {model: tuple(float(r[0]) for r in rates(*trained[f"K{k}/{model}"])) for model in ("gd", "gdpp")}  # (eta, gamma)
        predictions[k] = {"tuned_gd": baselines.gd_predict(batch.tokens, tuned_eta[k], k),
                          **{model: baselines.gdpp_predict(batch.tokens, eta, gamma, k) for model, (eta, gamma) in learned.items()}}
        scores = Scores(batch.targets, predictions[k])
        t.out(table.line(k, "tuned GD", f"{tuned_eta[k]:.4f}", "-", f"{scores.loss('tuned_gd'):.4f}"))
        rows[k] = {"tuned_gd_eta": tuned_eta[k], "tuned_gd_loss": scores.loss("tuned_gd").to_dict()}
        for model, (eta, gamma) in learned.items():
            paired = scores.paired(model, "tuned_gd")
            t.out(table.line(k, MODEL_LABELS[model], f"{eta:.4f}", f"{gamma:.4f}", f"{scores.loss(model):.4f}", f"{paired:.5f}")
                  + f" ({percent(paired.mean, scores.losses['tuned_gd'].mean())})")
            rows[k][model] = {"eta": eta, "gamma": gamma, "loss": scores.loss(model).to_dict(), "minus_tuned_gd": paired.to_dict()}
        rows[k]["gdpp_minus_gd"] = scores.paired("gdpp", "gd").to_dict()
    t.out("")
    for k, row in rows.items():
        excess, gain, gd_loss = row["gd"]["minus_tuned_gd"]["mean"] / row["tuned_gd_loss"]["mean"], row["gdpp_minus_gd"], row["gd"]["loss"]["mean"]
        checks(f"K = {k}: learned GD = tuned GD (paired)", f"{100 * excess:+.3f}%", "|diff| <= 1% of tuned GD's loss", abs(excess) <= 0.01)
        if not e.smoke:
            eta_off = row["gd"]["eta"] / row["tuned_gd_eta"] - 1
            checks(f"K = {k}: learned GD rate = line-searched rate", f"{100 * eta_off:+.2f}%", "within 2%", abs(eta_off) <= 0.02)
        checks(f"K = {k}: learned GD++ clearly beats learned GD (paired)",
               f"{gain['mean']:+.4f} ± {gain['stderr']:.4f} ({percent(gain['mean'], gd_loss)})",
               "< -5% of GD's loss and below 0 by > 3 s.e.", gain["mean"] <= -0.05 * gd_loss and gain["mean"] + 3 * gain["stderr"] < 0)
    t.out("")
    k_show, gdpp_rates = DEPTHS[-1], {k: (rows[k]["gdpp"]["eta"], rows[k]["gdpp"]["gamma"]) for k in DEPTHS}
    t.prose(f"""Why GD++ wins, in the eigenbasis of Sigma. One GD++ step maps the inputs to x' = (I - gamma Sigma) x, so the next step sees
        Sigma' = (I - gamma Sigma) Sigma (I - gamma Sigma): the same eigenvectors, each eigenvalue lam moved to lam (1 - gamma lam)^2, which
        squeezes the top of the spectrum down. The labels stay consistent with the moved inputs (the context still holds a noise-free
        regression problem), so, as for GD in step 2, a fraction prod_t (1 - eta lam_t) of w is missed along an eigenvector, with lam_0 =
        lam and lam_(t+1) = lam_t (1 - gamma lam_t)^2: the prediction is w . x_q - x_q^T V diag(prod_t (1 - eta lam_t)) V^T w, V the
        eigenvectors of Sigma (iclgd.theory.gdpp_eigenbasis_predict). Checked against gdpp_predict with the learned K = {k_show} rates (eta
        {gdpp_rates[k_show][0]:.4f}, gamma {gdpp_rates[k_show][1]:.4f}) on the validation tasks:""")
    eigen_diff = max_abs_diff(theory.gdpp_eigenbasis_predict(batch.tokens, batch.weights, *gdpp_rates[k_show], k_show),
                              baselines.gdpp_predict(batch.tokens, *gdpp_rates[k_show], k_show))
    t.out(f"  max |eigenbasis formula - gdpp_predict| over {batch.tokens.shape[0]} tasks = {eigen_diff:.3e}")
    checks.small("GD++ in the eigenbasis of Sigma = gdpp_predict", eigen_diff, "1e-9", end="\n")
    t.prose("""So, exactly as for GD, the expected half-MSE of a context is (1/6) sum_k m(lam_k)^2 with m = prod_t (1 - eta lam_t). The
        fraction of w missed, at the same eigenvalue quantiles as in step 2, by K tuned GD steps, by the first GD++ step alone and by all K
        GD++ steps (learned rates):""")
    factor_table(t, ctx["lam"], [column for k in DEPTHS for column in ((f"GD K={k}", (tuned_eta[k], 0.0, k)), ("GD++ t=1", (*gdpp_rates[k], 1)),
                                                                       (f"GD++ K={k}", (*gdpp_rates[k], k)))], width=9)
    t.prose(f"""GD++'s learned eta is {gdpp_rates[DEPTHS[0]][0] / tuned_eta[DEPTHS[0]]:.1f}x (K = {DEPTHS[0]}) and
        {gdpp_rates[DEPTHS[-1]][0] / tuned_eta[DEPTHS[-1]]:.1f}x (K = {DEPTHS[-1]}) GD's. Its first step alone overshoots the top of the
        spectrum badly (|1 - eta lam| > 1: worse than not moving), but it also squeezes those eigenvalues, and the later steps with the same
        large eta then remove the overshoot while making good progress on the small eigenvalues, which GD's cautious eta barely touches.
        Only the last read-out is trained; the loss read out after the first step is poor (step 4 shows it).""")
    return {"seconds": seconds, "rows": {str(k): v for k, v in rows.items()}, "trained": trained, "predictions": predictions,
            "gdpp_rates": gdpp_rates, "eigenbasis_max_abs_diff": eigen_diff}


def step4_recurrent_lsa(t: Transcript, checks: Checks, s: Settings, ctx: dict) -> dict:
    t.heading("Step 4. A trained recurrent LSA against tuned GD and learned GD++, on the same tasks")
    e, batch, run_dir, learned, oracle = s.experiment, ctx["batch"], ctx["run_dir"], ctx["learned"], iclgd.get_backend("numpy")
    t.prose(f"""Now forget the constructions. A recurrent LSA, LSAConfig(tied=True): one layer (one head, key and value size {D_IN + 1})
        applied K times, from small random weights (every entry ~ N(0, 0.002 / fan_in)), trained to minimise the half-MSE of its final
        read-out: Adam, lr {e.lr:g} with {ctx['schedule']} decay, {e.steps_base} + {e.steps_per_layer} K steps (deeper models converge more
        slowly: {', '.join(f'{e.lsa_steps(k)} for K = {k}' for k in DEPTHS)}) of {e.batch_size} fresh tasks, backend {e.backend}
        (iclgd.backends.fastest_backend()), for K = {' and '.join(map(str, DEPTHS))}. The configuration of K = 3:""")
    t.out(config_block(e.run_config(3, "lsa")))
    runs, seconds = train_runs(t, run_dir, {f"K{k}/lsa": e.run_config(k, "lsa") for k in DEPTHS})
    trained, scores, tuned_eta = {k: runs[f"K{k}/lsa"] for k in DEPTHS}, {}, ctx["tuned_eta"]
    for k in DEPTHS:  # every model's predictions, sensitivities d yhat / d x_q and read-outs after every layer, on the same tasks
        lsa, gdpp = trained[k], learned["trained"][f"K{k}/gdpp"]
        scores[k] = Scores(batch.targets, {"lsa": oracle.predict(*lsa, batch.tokens), **learned["predictions"][k]},
                           sensitivities={"lsa": oracle.sensitivity(*lsa, batch.tokens), "gdpp": oracle.sensitivity(*as_lsa(*gdpp), batch.tokens),
                                          "tuned_gd": baselines.gd_weights(batch.tokens, tuned_eta[k], k)},
                           readouts={"lsa": layer_readouts(oracle, *lsa, batch.tokens), "gdpp": layer_readouts(oracle, *gdpp, batch.tokens),
                                     "tuned_gd": [baselines.gd_predict(batch.tokens, tuned_eta[k], layer) for layer in range(1, k + 1)]})
    paired = {k: {other: scores[k].paired("lsa", other) for other in ("tuned_gd", "gd", "gdpp")} for k in DEPTHS}
    t.prose(f"""The models are evaluated with the NumPy oracle on the {e.val_tasks} validation tasks of step 2. First, how training went:
        the LSA's validation half-MSE at each checkpoint (iclgd.scoring.checkpoint_curve), next to the final loss of tuned GD and learned
        GD++ with the same K (the start predicts ~0: loss about d/6 = {D_IN / 6:.3f}):""")
    curves, table = {}, Table(6, 9, 11)
    for k in DEPTHS:
        curves[str(k)] = checkpoint_curve(oracle, trained[k][0], run_dir / f"K{k}" / "lsa", batch)
        t.out(f"  K = {k} (tuned GD {scores[k].loss('tuned_gd').mean:.4f}, learned GD++ {scores[k].loss('gdpp').mean:.4f}); train loss: the mean "
              "of the\n  losses logged in metrics.jsonl since the previous checkpoint (each on its step's fresh batch)\n"
              + table.block(("step", "val loss", "train loss"), [(p["step"], f"{p['val_loss']:.4f}", "-" if p["train_loss"] is None
                                                                   else f"{p['train_loss']:.4f}") for p in curves[str(k)]]))
    t.prose("""Every model on the same tasks, with standard errors over tasks (±). The paired differences (LSA - other, the mean of per-task
        differences) are the sharp comparison:""")
    for k in DEPTHS:
        t.out(f"  K = {k}\n    {MODEL_LABELS['lsa']:>14}  half-MSE {scores[k].loss('lsa'):.4f}")
        for name, diff in paired[k].items():
            t.out(f"    {MODEL_LABELS[name]:>14}  half-MSE {scores[k].loss(name):.4f}   LSA - {MODEL_LABELS[name]}: {diff:.5f} "
                  f"({percent(diff.mean, scores[k].losses[name].mean())})")
    t.out("")
    t.prose("""Inside the models: the prediction read out after every layer l = 1..K, -(query's y-slot after layer l)
        (iclgd.experiments.multi_layer.layer_readouts, which runs the backend's forward pass; the learned-rate models through their LSA
        form). For tuned GD, l steps with the K-step rate:""")
    per_layer = {str(k): {name: [entry.to_dict() for entry in scores[k].layer_losses(name)] for name in scores[k].readouts} for k in DEPTHS}
    for k, losses in per_layer.items():
        t.out(Table(24, *[8] * int(k)).block((f"K = {k}: after layer", *range(1, int(k) + 1)),
                                             [(MODEL_LABELS[name], *(f"{e['mean']:.4f}" for e in values)) for name, values in losses.items()]))
    first = {name: values[0]["mean"] for name, values in per_layer[str(DEPTHS[-1])].items()}
    t.prose(f"""(Quick run: the LSA has trained for {e.lsa_steps(DEPTHS[-1])} steps only and is still on its way; in the full run,
        reference/results/{NAME}.txt, its read-outs follow GD++'s layer by layer.)""" if e.smoke else f"""After the first of K = {DEPTHS[-1]}
        layers the recurrent LSA's read-out has half-MSE {first['lsa']:.2f} and GD++'s {first['gdpp']:.2f} (predicting 0 scores
        {D_IN / 6:.2f}), while tuned GD's is {first['tuned_gd']:.2f}. Both were trained on the final read-out only, and the LSA found
        GD++'s trade: an intermediate prediction given up (step 3's overshoot) for a better final one.""")
    t.prose("""Alignment, by the paper's metrics of walkthrough 01 (iclgd.metrics.alignment: preds diff, model cos, model diff) on the same
        tasks; the sensitivities d yhat / d x_q are backend.sensitivity's for the LSA and the GD++ model's LSA form, and W_K for GD:""")
    alignment, table = {k: {other: scores[k].alignment("lsa", other) for other in ("gdpp", "tuned_gd")} for k in DEPTHS}, Table(2, 13, 16, 20, 16)
    t.out(table.line("K", "with", "preds diff", "model cos", "model diff") + "  (other's RMS error)")
    t.out("\n".join(table.line(k, MODEL_LABELS[other], f"{a['preds_diff']:.4f}", f"{a['model_cos']:.6f}", f"{a['model_diff']:.4f}")
                    + f"  ({scores[k].rms_error(other):.4f})" for k, others in alignment.items() for other, a in others.items()) + "\n")
    for k in DEPTHS:
        align, vs_gd, vs_gdpp, rms = alignment[k]["gdpp"], paired[k]["tuned_gd"], paired[k]["gdpp"], scores[k].rms_error("gdpp")
        gd_loss, gdpp_loss, lsa_loss = (scores[k].losses[name].mean() for name in ("tuned_gd", "gdpp", "lsa"))
        if e.smoke:
            checks(f"K = {k}: recurrent LSA below the zero predictor's loss (quick run)", f"{lsa_loss:.4f}", f"< d/6 = {D_IN / 6:.4f}",
                   lsa_loss < D_IN / 6)
            continue
        checks(f"K = {k}: recurrent LSA clearly beats tuned GD (paired)", f"{vs_gd:.4f} ({percent(vs_gd.mean, gd_loss)})",
               "< -5% of GD's loss and below 0 by > 3 s.e.", vs_gd.mean <= -0.05 * gd_loss and vs_gd.mean + 3 * vs_gd.stderr < 0)
        checks(f"K = {k}: recurrent LSA = learned GD++ (paired)", f"{vs_gdpp:.5f} ({percent(vs_gdpp.mean, gdpp_loss)})",
               "|diff| <= 5% of GD++'s loss", abs(vs_gdpp.mean) <= 0.05 * gdpp_loss)
        checks(f"K = {k}: model cos with GD++", f"{align['model_cos'].mean:.6f}", ">= 0.99", align["model_cos"].mean >= 0.99)
        checks(f"K = {k}: preds diff with GD++", f"{align['preds_diff'].mean:.4f}", f"< 5% of GD++'s RMS error ({0.05 * rms:.4f})",
               align["preds_diff"].mean < 0.05 * rms)
    t.out("")
    depths = {str(k): {"tuned_gd_eta": tuned_eta[k], "loss": {name: scores[k].loss(name).to_dict() for name in scores[k].losses},
                       "paired": {f"lsa_minus_{other}": value.to_dict() for other, value in paired[k].items()}, "loss_per_layer": per_layer[str(k)],
                       "alignment": {other: {"rms_error": scores[k].rms_error(other), **{n: v.to_dict() for n, v in a.items()}}
                                     for other, a in alignment[k].items()}} for k in DEPTHS}
    return {"seconds": seconds, "curves": curves, "trained": trained, "depths": depths}


def step5_weights(t: Transcript, checks: Checks, s: Settings, trained: dict, gdpp_rates: dict) -> dict:
    t.heading("Step 5. Open the trained recurrent layer: the GD++ construction, with GD++'s rates")
    t.prose(f"""As in walkthrough 01, a layer depends on its matrices only through W_q W_k^T and W_v W_o, up to (c W_q W_k^T, W_v W_o / c).
        The GD++ construction (step 1) has W_q W_k^T = c I on the x-block and W_v W_o = blockdiag(-g_x I, -g_y), zero elsewhere: GD++ with
        gamma = N c g_x and eta = N c g_y (iclgd.theory.read_gdpp_layer reads the scales off a layer). The trained recurrent layer for K =
        {DEPTHS[-1]}, rounded to two decimals ('.' marks an entry that rounds to 0.00):""")
    summary, readings = {}, {}
    for k, (eta_pp, gamma_pp) in gdpp_rates.items():
        qk, ov = (m[0] for m in effective_matrices(*trained[k])["shared"])
        if k == DEPTHS[-1]:
            t.out("\n\n".join(f"trained {name}\n{matrix_lines(m, TOKEN_LABELS)}" for name, m in (("W_q W_k^T", qk), ("W_v W_o", ov))) + "\n")
        r = readings[str(k)] = theory.read_gdpp_layer(qk, ov)
        summary[str(k)] = {"w_qk": np.round(qk, 6).tolist(), "w_ov": np.round(ov, 6).tolist(), "c": r.c, "g_x": r.g_x, "g_y": r.g_y,
                           "eta": r.eta(N_CONTEXT), "gamma": r.gamma(N_CONTEXT), "learned_gdpp_eta": eta_pp, "learned_gdpp_gamma": gamma_pp,
                           "max_abs_other_qk": r.other_qk, "max_abs_other_ov_x_columns": r.other_ov_x, "max_abs_other_ov_y_column": r.other_ov_y}
    t.out(Table(2, 8, 8, 8, 9, 9, 9, 11, 10, 12, 12).block(
        ("K", "c", "g_x", "g_y", "N c g_y", "GD++ eta", "N c g_x", "GD++ gamma", "other QK", "other OV->x", "other OV->y"),
        [(k, *(f"{e[key]:.4f}" for key in ("c", "g_x", "g_y", "eta", "learned_gdpp_eta", "gamma", "learned_gdpp_gamma")),
          *(f"{other:.2%}" for other in readings[k].relative_other)) for k, e in summary.items()]))
    t.prose("""("other": the largest entry outside the construction's pattern, as a fraction of the pattern's own scale: c for W_q W_k^T,
        g_x for what W_v W_o writes into the x-slots, g_y for what it writes into the y-slot.)\n\n""" + (f"""(Quick run: after
        {s.experiment.lsa_steps(DEPTHS[-1])} steps the layer is still on its way; in the full run, reference/results/{NAME}.txt, it is the
        GD++ construction.)""" if s.experiment.smoke else """Nothing told the layer about GD++. Training found the construction's pattern,
        including the x-block that moves the inputs, and the rates it implies are close to the ones the GD++ model learned directly (the
        checks below)."""))
    for k, e in summary.items():
        if s.experiment.smoke:
            c_g = e["c"] * e["g_y"]
            checks(f"K = {k}: the trained layer's scales have GD++'s signs (quick run)", f"c g_y = {c_g:.4f}", "> 0", c_g > 0)
            continue
        eta_off, gamma_off, worst = e["eta"] / e["learned_gdpp_eta"] - 1, e["gamma"] / e["learned_gdpp_gamma"] - 1, max(readings[k].relative_other)
        checks(f"K = {k}: N c g_y = learned GD++ eta", f"{100 * eta_off:+.2f}%", "within 5%", abs(eta_off) <= 0.05)
        checks(f"K = {k}: N c g_x = learned GD++ gamma", f"{100 * gamma_off:+.2f}%", "within 5%", abs(gamma_off) <= 0.05)
        checks(f"K = {k}: trained products have the GD++ construction's pattern", f"largest other entry {100 * worst:.2f}% of its scale", "<= 5%",
               worst <= 0.05)
    t.out("")
    return summary


def main(argv=None) -> int:
    backend = fastest_backend()
    quick = Settings.of(True, backend).experiment
    session = Session(argv, __doc__, NAME, f"{quick.lsa_steps(DEPTHS[-1])} LSA steps for K = {DEPTHS[-1]}, {quick.val_tasks} validation tasks",
                      "training runs")
    s, t, checks = Settings.of(session.quick, backend), session.t, session.checks
    results = session.open("a trained recurrent linear self-attention model does GD++ (curvature-corrected GD)",
                           "a trained recurrent LSA beats K steps of tuned GD and matches K steps of GD++ with learned rates",
                           s.record(), training_backend=backend, backend=backend)
    t.prose(__doc__.split("\n\n")[1])  # the claim
    if not session.quick:
        reproduce = MultiLayerSetting(layers=DEPTHS, tied=True, backend=backend)
        differ = [f"K{k}/{m}" for k in DEPTHS for m in ("lsa", "gd", "gdpp") if reproduce.run_config(k, m) != s.experiment.run_config(k, m)]
        results["runs_differing_from_iclgd_reproduce"] = differ
        t.out("the training runs are those of `iclgd reproduce multi-layer --tied --layers 2,3`: "
              + (f"except {', '.join(differ)}" if differ else "all of them") + "\n")
    results["step1_construction"] = step1_construction(t, checks, s)
    batch = validation_batch(s.experiment.task, s.experiment.val_tasks, s.experiment.seed)
    results["step2_deeper_gd"] = step2 = step2_deeper_gd(t, checks, s, batch)
    ctx = {"batch": batch, "run_dir": session.out_dir / "runs", "lam": theory.context_spectrum(batch.tokens)[0],
           "tuned_eta": {row["k"]: row["eta"] for row in step2["rows"]}, "schedule": s.experiment.run_config(DEPTHS[0], "lsa").train.schedule}
    ctx["learned"] = learned = step3_learned_rates(t, checks, s, ctx)
    results["step3_learned_rates"] = {key: value for key, value in learned.items() if key not in ("trained", "predictions", "gdpp_rates")}
    lsa = step4_recurrent_lsa(t, checks, s, ctx)
    results["step4_recurrent_lsa"] = {key: value for key, value in lsa.items() if key != "trained"}
    results["step5_weights"] = step5_weights(t, checks, s, lsa["trained"], learned["gdpp_rates"])
    return session.finish(results, f"training runs in {ctx['run_dir']}")


if __name__ == "__main__":
    sys.exit(main())
