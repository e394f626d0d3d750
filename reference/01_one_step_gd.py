#!/usr/bin/env python
r"""Walkthrough 01: a trained one-layer linear self-attention layer does one step of gradient descent.

Claim (von Oswald et al., "Transformers Learn In-Context by Gradient Descent", ICML 2023, Sec. 3): a single linear
self-attention layer trained on in-context linear regression computes one step of gradient descent on its context, with
the best learning rate. Setting: d = N = 10, x ~ U(-1, 1)^d (the paper's text; the authors' code uses U(-0.5, 0.5)),
w ~ N(0, I), no label noise, one layer, one head, half-MSE loss.

Steps: the LSA weights of one GD step built by hand, against ``iclgd.gd_construction`` and GD computed directly; the
best rate of one GD step in closed form and by Monte Carlo; a layer trained from a small random start; the trained
layer against GD (losses, predictions, sensitivities) and its weights.  Run
``python reference/01_one_step_gd.py [--quick] [--out DIR]`` (full: 5000 steps, 10^4 validation tasks, about a minute;
outputs: reference/walkthrough.py): the setting of ``iclgd reproduce one-layer`` (iclgd.experiments.one_layer) on the
NumPy oracle; closed forms come from iclgd.baselines and iclgd.theory; conventions: docs/conventions.md.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import iclgd
from iclgd import baselines, theory
from iclgd.config import RunConfig, run_config_to_toml
from iclgd.experiments.one_layer import LayerEvaluation, OneLayerSetting, evaluate_layer
from iclgd.interpolate import effective_matrices
from iclgd.runio import read_jsonl
from walkthrough import Checks, Session, Table, Transcript, config_block, matrix_lines, max_abs_diff, train_run, vector_line

NAME = "01_one_step_gd"
D_IN = 10  # d, the input dimension
N_CONTEXT = 10  # N, the number of (x_i, y_i) pairs in a context
TOKEN_LABELS = [f"x{i + 1}" for i in range(D_IN)] + ["y"]


@dataclass(frozen=True)
class Settings:
    """The experiment's setting as this walkthrough runs it (``iclgd reproduce one-layer``'s, on the
    NumPy oracle, with GD's rate line-searched on fewer tasks and a checkpoint every tenth of the
    run) and the sizes and seeds only the walkthrough uses."""

    experiment: OneLayerSetting
    mc_tasks: int  # Monte Carlo tasks for checking the closed-form optimum
    demo_tasks: int = 1000  # tasks for the construction checks of step 1
    demo_eta: float = 0.7  # any rate works for the construction; 0.7 is just not special
    demo_seed: int = 1  # step 1's tasks
    w0_seed: int = 2  # step 1's nonzero initial guess W0
    mc_seed: int = 3  # step 2's Monte Carlo tasks

    def run_config(self) -> RunConfig:
        """The experiment's training run, logged every 50th of the run (for step 3's table)."""
        config = self.experiment.run_config()
        return dataclasses.replace(config, train=dataclasses.replace(config.train, log_every=max(1, config.train.steps // 50)))

    def record(self) -> dict:
        """The sizes and seeds as the results record them."""
        e, train_cfg = self.experiment, self.run_config().train
        return {"quick": e.smoke, "steps": e.steps, "val_tasks": e.val_tasks, "line_search_tasks": e.tune_tasks,
                "mc_tasks": self.mc_tasks, "demo_tasks": self.demo_tasks, "batch_size": train_cfg.batch_size, "lr": train_cfg.lr,
                "schedule": train_cfg.schedule, "demo_eta": self.demo_eta, "train_seed": e.seed, "eval_seed": e.seed,
                "demo_seed": self.demo_seed, "w0_seed": self.w0_seed, "mc_seed": self.mc_seed}


FULL = Settings(OneLayerSetting(backend="numpy", tune_tasks=10_000, n_curve_points=10), mc_tasks=200_000)
QUICK = Settings(OneLayerSetting.quick(backend="numpy", tune_tasks=2_000, n_curve_points=10), mc_tasks=20_000)


def hand_built_weights(d: int, n_context: int, eta: float, w0: np.ndarray) -> dict[str, np.ndarray]:
    """The LSA layer that does one GD step with rate ``eta`` from ``w0``, written out entry by entry.

    One head (H = 1), key and value size D = d + 1, in the library's layout: W_q, W_k, W_v have
    shape (H, D, k) and act on row-vector tokens (Q = E W_q); W_o has shape (H, v, D).
    """
    dim = d + 1
    w_q = np.zeros((1, dim, dim))
    w_q[0, :d, :d] = np.eye(d)  # query of a token (x, y) is (x, 0)
    w_k = np.zeros((1, dim, dim))
    w_k[0, :d, :d] = np.eye(d)  # key of a context token (x_i, y_i) is (x_i, 0): q . k_i = x_q . x_i
    w_v = np.zeros((1, dim, dim))
    w_v[0, :d, 0] = w0  # value of (x_i, y_i), first entry: w0 . x_i - y_i, the residual of W0 on pair i
    w_v[0, d, 0] = -1.0
    w_o = np.zeros((1, dim, dim))
    w_o[0, 0, d] = eta / n_context  # write (eta / N) * (first value entry) into the y-slot
    return {"layer0.w_q": w_q, "layer0.w_k": w_k, "layer0.w_v": w_v, "layer0.w_o": w_o}


def step1_construction(t: Transcript, checks: Checks, s: Settings) -> dict:
    d, n, eta = D_IN, N_CONTEXT, s.demo_eta
    t.heading("Step 1. One GD step, written as a linear self-attention layer (by hand)")
    t.prose(f"""A task is a hidden weight vector w and {n} examples (x_i, y_i = w . x_i) with x_i in R^{d}. The model
        sees them as {n} tokens e_i = (x_i, y_i) followed by a query token (x_q, 0), and must predict y_q = w . x_q.

        One step of gradient descent on the context loss L(W) = 1/(2N) sum_i (W x_i - y_i)^2, from W0 with learning rate
        eta, gives W1 = W0 - (eta/N) sum_i (W0 x_i - y_i) x_i^T and the prediction W1 x_q. From W0 = 0 that is yhat =
        (eta/N) sum_i y_i (x_i . x_q).

        A linear self-attention layer (no softmax) adds to every token the sum over context tokens of (query . key_i) *
        value_i, passed through W_o. So we choose: query = (x_q, 0) and key_i = (x_i, 0), so that query . key_i = x_q .
        x_i; value_i = W0 x_i - y_i; and W_o writes eta/N times that value into the y-slot. The query's y-slot, 0 before
        the layer, becomes -(eta/N) sum_i (x_q . x_i)(y_i - W0 x_i) = -(W1 - W0) x_q; reading out yhat = -(y-slot) gives
        (W1 - W0) x_q, which is W1 x_q for W0 = 0.

        Here are those weights for d = N = {d}, eta = {eta}, W0 = 0, written entry by entry in hand_built_weights() (the
        library's layout: one head, W_q, W_k, W_v of shape (1, {d + 1}, {d + 1}) acting on row-vector tokens, W_o of
        shape (1, {d + 1}, {d + 1}); '.' is zero):""")
    by_hand = hand_built_weights(d, n, eta, np.zeros(d))
    key_labels = [f"k{j + 1}" for j in range(d + 1)]
    value_labels = [f"v{j + 1}" for j in range(d + 1)]
    t.out("W_q = W_k (rows: token entries, columns: query/key entries)\n"
          + matrix_lines(by_hand["layer0.w_q"][0], TOKEN_LABELS, key_labels, decimals=0) + "\n")
    t.out("W_v (rows: token entries, columns: value entries)\n"
          + matrix_lines(by_hand["layer0.w_v"][0], TOKEN_LABELS, value_labels, decimals=0) + "\n")
    t.out(f"W_o (rows: value entries, columns: token entries); the one entry is eta/N = {eta / n:g}\n"
          + matrix_lines(by_hand["layer0.w_o"][0], value_labels, TOKEN_LABELS, decimals=2) + "\n")

    t.prose("""The library builds the same weights with iclgd.gd_construction(cfg, eta). They should agree exactly (the
        same names, the same shapes, the same numbers):""")
    cfg = iclgd.LSAConfig(d=d, n_layers=1, n_heads=1, n_context=n)
    library = iclgd.gd_construction(cfg, eta)
    same_layout = sorted(library) == sorted(by_hand) and all(library[k].shape == by_hand[k].shape for k in library)
    weight_diff = max(max_abs_diff(library[k], by_hand[k]) for k in library) if same_layout else float("inf")
    t.out(f"  parameter names: {sorted(library)}\n  shapes:          {[library[k].shape for k in sorted(library)]}\n"
          f"  max |by hand - gd_construction| = {weight_diff:.3e}")
    checks("hand-built weights = iclgd.gd_construction", f"{weight_diff:.3e}", "== 0, same names and shapes",
           same_layout and weight_diff == 0.0)
    t.out("")

    task = iclgd.LinearRegressionTask(d=d, n_context=n, x_scale="paper")
    batch = task.sample(s.demo_tasks, seed=s.demo_seed)
    backend = iclgd.get_backend("numpy")
    t.prose(f"""Now run the layer. We draw {s.demo_tasks} tasks (seed {s.demo_seed}), feed their tokens, shape
        {batch.tokens.shape}, to the NumPy oracle's forward pass (iclgd.get_backend("numpy").predict) and compare with
        one GD step computed directly on each context (iclgd.baselines.gd_predict). First, task 0 in full, with the GD
        step also written out in two lines of NumPy:""")
    lsa_prediction = backend.predict(cfg, by_hand, batch.tokens)
    gd_prediction = baselines.gd_predict(batch.tokens, eta, steps=1)
    x0, y0, xq0 = batch.tokens[0, :n, :d], batch.tokens[0, :n, d], batch.tokens[0, n, :d]
    w1_task0 = (eta / n) * (y0 @ x0)  # W1 = W0 - (eta/N) sum_i (W0 x_i - y_i) x_i with W0 = 0
    t.out(f"  task 0: LSA prediction              {lsa_prediction[0]: .15f}\n          W1 . x_q (two lines above)  {float(w1_task0 @ xq0): .15f}\n"
          f"          baselines.gd_predict        {gd_prediction[0]: .15f}\n          the target y_q              {batch.targets[0]: .15f}\n")
    prediction_diff = max_abs_diff(lsa_prediction, gd_prediction)
    t.out(f"  all {s.demo_tasks} tasks: max |LSA prediction - GD prediction| = {prediction_diff:.3e}")
    checks.small("LSA(construction) prediction = one GD step", prediction_diff, "1e-12", end="\n")

    t.prose("""A prediction is one number; the paper also compares how the prediction responds to the query input, the
        "sensitivity" d yhat / d x_q. For GD the prediction is W1 x_q with W1 fixed by the context, so its sensitivity
        is W1 itself. backend.sensitivity computes d yhat / d x_q for the LSA by a backward pass;
        iclgd.baselines.gd_weights gives W1:""")
    sensitivity = backend.sensitivity(cfg, by_hand, batch.tokens)
    gd_weight = baselines.gd_weights(batch.tokens, eta, steps=1)
    sensitivity_diff = max_abs_diff(sensitivity, gd_weight)
    t.out(f"  task 0: LSA sensitivity d yhat/d x_q = {vector_line(sensitivity[0])}\n          GD weight W1                 = "
          f"{vector_line(gd_weight[0])}\n  all {s.demo_tasks} tasks: max |sensitivity - W1| = {sensitivity_diff:.3e}")
    checks.small("LSA(construction) sensitivity = GD-updated weight W1", sensitivity_diff, "1e-12", end="\n")

    w0 = np.random.default_rng(s.w0_seed).standard_normal(d)
    t.prose(f"""The same layer works from any start W0: the value becomes W0 x_i - y_i (the residual of W0 on pair i),
        and the query must enter with its y-slot set to -W0 x_q (iclgd.with_initial_guess), because a layer without that
        start cannot add a term linear in x_q alone. With W0 drawn from N(0, I) (seed {s.w0_seed}):""")
    by_hand_w0 = hand_built_weights(d, n, eta, w0)
    library_w0 = iclgd.gd_construction(cfg, eta, w0=w0)
    weight_diff_w0 = max(max_abs_diff(library_w0[k], by_hand_w0[k]) for k in library_w0)
    prediction_w0 = backend.predict(cfg, by_hand_w0, iclgd.with_initial_guess(batch.tokens, w0))
    gd_prediction_w0 = baselines.gd_predict(batch.tokens, eta, steps=1, w0=w0)
    prediction_diff_w0 = max_abs_diff(prediction_w0, gd_prediction_w0)
    t.out(f"  max |by hand - gd_construction(cfg, eta, w0=W0)|   = {weight_diff_w0:.3e}\n"
          f"  max |LSA prediction - GD prediction from W0|      = {prediction_diff_w0:.3e}")
    checks("construction from W0 != 0 = one GD step from W0", f"{max(weight_diff_w0, prediction_diff_w0):.3e}",
           "<= 1e-12", weight_diff_w0 == 0.0 and prediction_diff_w0 <= 1e-12)
    t.out("")

    qk, ov = effective_matrices(cfg, by_hand)["layer0"]
    t.prose(f"""A layer's output depends on its four matrices only through two products, W_q W_k^T (which pairs of token
        entries are compared) and W_v W_o (which entries are moved where). For the construction W_q W_k^T is the
        identity on the x-block, and W_v W_o has a single entry, in the (y, y) corner, equal to -eta/N = {-eta / n:g}:""")
    t.out("W_v W_o of the construction\n" + matrix_lines(ov[0], TOKEN_LABELS) + "\n")
    t.prose("""Only these products are determined: multiplying W_q W_k^T by any c and W_v W_o by 1/c gives the same
        layer. So a trained layer need not look like the construction entry by entry; what it must match is W_q W_k^T =
        c I (x-block) and (W_v W_o)[y, y] = -g with c * g = eta / N. We come back to this in step 4.""")
    return {"eta": eta, "tasks": s.demo_tasks, "seed": s.demo_seed, "max_abs_weight_diff_vs_gd_construction": weight_diff,
            "max_abs_prediction_diff_vs_gd": prediction_diff, "max_abs_sensitivity_diff_vs_gd_weight": sensitivity_diff,
            "w0_seed": s.w0_seed, "w0_max_abs_weight_diff": weight_diff_w0, "w0_max_abs_prediction_diff": prediction_diff_w0,
            "task0": {"lsa": float(lsa_prediction[0]), "gd": float(gd_prediction[0]), "target": float(batch.targets[0])}}


def step2_optimum(t: Transcript, checks: Checks, s: Settings) -> dict:
    d, n, a = D_IN, N_CONTEXT, 1.0
    t.heading("Step 2. The best learning rate of one GD step, in closed form and by Monte Carlo")
    t.prose(f"""Which eta should one GD step use? Averaged over tasks (w ~ N(0, I), x ~ U(-a, a)^d with a = {a:g}), the
        squared error of the one-step prediction is a parabola in eta: MSE(eta) = A eta^2 - 2 B eta + C, with s2 = E x^2
        = a^2/3 and m4 = E x^4 = a^4/5 per coordinate, A = (d/N) s2 (m4 + (N+d-2) s2^2), B = d s2^2 and C = d s2 (= E
        y_q^2). So eta* = B / A and MSE* = C - B^2 / A. We compute that here by hand and compare with
        iclgd.baselines.one_step_optimum, which also reports the loss in the paper's half-MSE:""")
    s2, m4 = a**2 / 3.0, a**4 / 5.0
    curvature = (d / n) * s2 * (m4 + (n + d - 2) * s2**2)  # A
    slope = d * s2**2  # B
    offset = d * s2  # C
    eta_by_hand = slope / curvature
    half_mse_by_hand = 0.5 * (offset - slope**2 / curvature)
    optimum = baselines.one_step_optimum(d, n, x_scale=a)
    t.out(f"  by hand:         eta* = {eta_by_hand:.10f}   half-MSE* = {half_mse_by_hand:.10f}\n"
          f"  library:         eta* = {optimum.eta:.10f}   half-MSE* = {optimum.half_mse:.10f}\n"
          f"  (50/33 = {50 / 33:.10f}; the loss of predicting 0, C/2 = {0.5 * offset:.10f})")
    closed_form_diff = max(abs(eta_by_hand - optimum.eta), abs(half_mse_by_hand - optimum.half_mse))
    checks.small("closed form by hand = baselines.one_step_optimum", closed_form_diff, "1e-12", end="\n")

    task = iclgd.LinearRegressionTask(d=d, n_context=n, x_scale=a)
    t.prose(f"""Monte Carlo check. From W0 = 0 one GD step's prediction is linear in eta: yhat(eta) = eta * p with p =
        gd_predict(tokens, eta=1). So on {s.mc_tasks} fresh tasks (seed {s.mc_seed}) we compute p and y_q once and get
        the loss at any eta. The sample's best eta has a closed form too, eta_hat = sum_b p_b y_b / sum_b p_b^2 (this is
        what iclgd.evaluate.tune_gd_eta computes); its standard error comes from the delta method.""")
    sample = theory.OneStepSample.draw(task, s.mc_tasks, np.random.default_rng(s.mc_seed))
    parabola = theory.one_step_parabola(d, n, s2, m4)
    table, rows = Table(8, 12, 20), []
    t.out(table.line("eta", "closed form", "Monte Carlo") + "  half-MSE")
    for eta in (0.5, 1.0, optimum.eta, 2.0, 2.5):
        mc = sample.half_mse(eta)
        rows.append({"eta": eta, "closed_form": parabola.half_mse(eta), "monte_carlo": mc.to_dict()})
        t.out(table.line(f"{eta:.4f}", f"{parabola.half_mse(eta):.4f}", f"{mc:.4f}") + ("  <- eta*" if eta == optimum.eta else ""))
    at_optimum = sample.half_mse(optimum.eta)
    z_loss = (at_optimum.mean - optimum.half_mse) / at_optimum.stderr
    best = sample.best_eta()
    z_eta = (best.mean - optimum.eta) / best.stderr
    t.out(f"\n  Monte Carlo half-MSE at eta*: {at_optimum:.4f}  vs closed form {optimum.half_mse:.4f}  ({z_loss:+.2f} s.e.)\n"
          f"  Monte Carlo best eta:         {best:.4f}  vs closed form {optimum.eta:.4f}  ({z_eta:+.2f} s.e.)")
    checks("Monte Carlo half-MSE at eta* = closed form", f"{z_loss:+.2f} s.e.", "within 4 s.e.", abs(z_loss) <= 4)
    checks("Monte Carlo best eta = closed-form eta*", f"{z_eta:+.2f} s.e.", "within 4 s.e.", abs(z_eta) <= 4)
    t.out("")
    t.prose(f"""So the best one GD step has eta* = {optimum.eta:.4f} and half-MSE {optimum.half_mse:.4f}. An LSA layer
        can compute more than GD steps (other W_q W_k^T, W_v W_o), but in this setting none of them does better on
        average; the claim is that training finds this optimum.""")
    return {"x_scale": a, "optimal_eta": optimum.eta, "optimal_half_mse": optimum.half_mse, "by_hand_minus_library": closed_form_diff,
            "monte_carlo": {"tasks": s.mc_tasks, "seed": s.mc_seed, "table": rows, "half_mse_at_optimal_eta": at_optimum.to_dict(),
                            "half_mse_z": z_loss, "best_eta": best.to_dict(), "best_eta_z": z_eta}}


def step3_train(t: Transcript, checks: Checks, s: Settings, run_dir: Path) -> tuple[RunConfig, dict, dict]:
    t.heading("Step 3. Training one LSA layer from a small random start")
    config = s.run_config()
    train_cfg, e = config.train, s.experiment
    t.prose(f"""Now forget the construction. We start a layer from small random weights (every entry ~ N(0, 0.002 /
        fan_in), iclgd.init_params) and train it with Adam (lr {train_cfg.lr:g}, {train_cfg.schedule} decay, gradients
        clipped at global norm {train_cfg.clip_norm:g}) on fresh tasks every step, {train_cfg.batch_size} tasks per
        step, for {e.steps} steps, minimising the half-MSE of its read-out. The model sees only tokens and targets;
        nothing tells it about gradient descent.

        The library's loop takes a RunConfig with three parts (task, model, train) and a run directory:
        iclgd.train.train(run_dir, config) writes config.toml, metrics.jsonl and checkpoints there, resumes from the
        newest checkpoint if one exists, and returns the final state (step, params, optimiser state, data-stream
        position). The config as it is written to {run_dir / 'config.toml'}:""")
    t.out(config_block(config))
    state, train_seconds, resumed_from = train_run(t, run_dir, config)
    t.out(f"  trained {state.step} steps in {train_seconds:.1f} s (NumPy oracle backend, float64)\n")

    log = read_jsonl(run_dir / "metrics.jsonl")
    # about every tenth of the run, and the last logged step
    shown = {min(log, key=lambda r: abs(r["step"] - i * e.steps / 10))["step"] for i in range(10)} | {log[-1]["step"]}
    t.out("  the training loss (on each step's own fresh batch, so it is noisy), from metrics.jsonl:\n"
          + Table(6, 10, 8).block(("step", "lr", "loss"), [(r["step"], f"{r['lr']:.2e}", f"{r['loss']:.4f}") for r in log if r["step"] in shown]))

    t.prose(f"""To evaluate, GD gets the same treatment the paper gave it: its learning rate is tuned by a line search
        on {e.tune_tasks} tasks from the training distribution (iclgd.evaluate.tune_gd_eta), and the trained layer and
        GD are then compared on the same {e.val_tasks} held-out validation tasks (iclgd.evaluate.validation_batch; seed
        {e.seed}, streams that never overlap the training data or each other).""")
    # the line search, and every comparison of steps 3 and 4, as `iclgd reproduce one-layer` makes them
    evaluation = evaluate_layer(iclgd.get_backend("numpy"), config, state.params, e, run_dir)
    gd_eta, optimum = evaluation.gd_eta, evaluation.optimum
    t.out(f"  tuned GD learning rate: {gd_eta:.4f}   (closed-form eta* = {optimum.eta:.4f}, "
          f"{100 * (gd_eta / optimum.eta - 1):+.2f}%)")
    eta_tolerance = 0.15 if e.smoke else 0.05
    checks("line-searched GD eta = closed-form eta*", f"{100 * (gd_eta / optimum.eta - 1):+.2f}%",
           f"within {100 * eta_tolerance:.0f}% ({e.tune_tasks} tasks)", abs(gd_eta / optimum.eta - 1) <= eta_tolerance)
    t.out("")

    t.prose("""How did the layer get there? Its validation loss and the paper's "model cos" (the mean cosine between its
        sensitivity d yhat / d x_q and the tuned GD weight W1, see step 4) at each checkpoint. The start is ~ zero,
        predicting ~0 (loss about C/2 = d/6).""")
    curve = [{"step": row["step"], "val_loss": row["loss"], "model_cos": row["model_cos"]} for row in evaluation.curve]
    t.out(Table(6, 9, 10).block(("step", "val loss", "model cos"), [(r["step"], f"{r['val_loss']:.4f}", f"{r['model_cos']:.4f}") for r in curve]))
    training = {"config_toml": run_config_to_toml(config), "steps": state.step, "train_seconds": train_seconds,
                "resumed_from_step": resumed_from, "final_logged_train_loss": log[-1]["loss"], "gd_eta_line_search": gd_eta,
                "line_search_tasks": e.tune_tasks, "validation_tasks": e.val_tasks, "curve": curve}
    return config, state.params, {"training": training, "evaluation": evaluation}


def step4_compare(t: Transcript, checks: Checks, s: Settings, config: RunConfig, params: dict, evaluation: LayerEvaluation) -> dict:
    t.heading("Step 4. The trained layer against one step of GD, on the same tasks")
    batch, gd_eta, optimum, tuned, at_optimum = (evaluation.batch, evaluation.gd_eta, evaluation.optimum, evaluation.tuned,
                                                 evaluation.at_optimum)
    t.prose(f"""iclgd.evaluate.compare_with_gd runs both on the {s.experiment.val_tasks} validation tasks and reports,
        each with its standard error over tasks (±): the two half-MSE losses; their paired difference (the mean of
        per-task differences, which cancels most of the task-to-task noise); "preds diff", the mean |yhat_LSA -
        yhat_GD|; "model cos", the mean cosine between the sensitivities d yhat/d x_q of the two (GD's is W1); and
        "model diff", the mean length of the difference of the sensitivities.""")
    gd_rms = float(np.sqrt(2 * tuned.gd_loss.mean))
    mean_w1_norm = float(np.mean(np.linalg.norm(baselines.gd_weights(batch.tokens, gd_eta, 1), axis=1)))
    t.out(f"  half-MSE, trained LSA     {tuned.model_loss:.4f}\n  half-MSE, GD (eta {gd_eta:.4f}) {tuned.gd_loss:.4f}\n"
          f"  paired LSA - GD           {tuned.model_minus_gd:.5f}   ({100 * tuned.model_minus_gd.mean / tuned.gd_loss.mean:+.3f}% of GD's loss)\n"
          f"  preds diff                {tuned.preds_diff:.4f}   (GD's RMS error is {gd_rms:.4f})\n"
          f"  model cos                 {tuned.model_cos:.6f}\n"
          f"  model diff                {tuned.model_diff:.4f}   (the mean length of W1 is {mean_w1_norm:.4f})\n")
    expected, expected_stderr = evaluation.expected_loss.mean, evaluation.expected_loss.stderr
    excess = expected / optimum.half_mse - 1
    t.prose(f"""The raw validation loss carries sampling noise of ±{tuned.model_loss.stderr:.4f} from the particular
        tasks drawn. A sharper estimate of the trained layer's expected loss: GD at eta* has a known expected loss
        ({optimum.half_mse:.4f}, step 2), so add to it the paired difference between the layer and GD at eta* on the
        same tasks:""")
    t.out(f"  paired LSA - GD(eta*)     {at_optimum.model_minus_gd:.5f}\n"
          f"  expected LSA half-MSE     {expected:.4f} ± {expected_stderr:.4f}   vs the optimum {optimum.half_mse:.4f} ({100 * excess:+.2f}%)\n")
    if s.experiment.smoke:
        checks("trained loss below 1.5x the one-step optimum (quick run)", f"{tuned.model_loss.mean / optimum.half_mse:.3f}x",
               "< 1.5x", tuned.model_loss.mean < 1.5 * optimum.half_mse)
        checks("model cos (quick run)", f"{tuned.model_cos.mean:.4f}", "> 0.8", tuned.model_cos.mean > 0.8)
    else:
        checks("trained loss = GD loss (paired)", f"{100 * tuned.model_minus_gd.mean / tuned.gd_loss.mean:+.3f}%",
               "|diff| <= 1% of GD's loss", abs(tuned.model_minus_gd.mean) <= 0.01 * tuned.gd_loss.mean)
        checks("expected trained loss = one-step optimum", f"{100 * excess:+.3f}%", "within 1%", abs(excess) <= 0.01)
        checks("preds diff", f"{tuned.preds_diff.mean:.4f}", f"< 5% of GD's RMS error ({0.05 * gd_rms:.4f})",
               tuned.preds_diff.mean < 0.05 * gd_rms)
        checks("model cos", f"{tuned.model_cos.mean:.6f}", ">= 0.99", tuned.model_cos.mean >= 0.99)
        checks("model diff", f"{tuned.model_diff.mean:.4f}", "< 0.1", tuned.model_diff.mean < 0.1)
    t.out("")

    qk, ov = (m[0] for m in effective_matrices(config.model, params)["layer0"])
    d = D_IN
    t.prose("""Finally, open the layer. Its four trained matrices need not look like the construction's (see the end of
        step 1), but their products are what the layer computes. Here they are, rounded to two decimals ('.' marks an
        entry that rounds to 0.00):""")
    t.out(f"trained W_q W_k^T\n{matrix_lines(qk, TOKEN_LABELS)}\n\ntrained W_v W_o\n{matrix_lines(ov, TOKEN_LABELS)}\n")
    reading = theory.read_gd_layer(qk, ov)  # c: the scale of the identity block; g: minus the (y, y) entry
    c, g, product, other_qk, other_ov = reading.c, reading.g, reading.product, reading.other_qk, reading.other_ov
    off_tuned, off_optimum = 100 * (product * N_CONTEXT / gd_eta - 1), 100 * (product * N_CONTEXT / optimum.eta - 1)  # % off eta / N
    t.prose(f"""Read the prediction off the layer: the query token is (x_q, 0) and only its y-slot is read, so only the
        x-rows of W_q W_k^T (the query's zero y-entry multiplies the last row) and only the last column of W_v W_o (the
        y-slot it writes) can matter. The loss does not depend on the last row of W_q W_k^T or on the first {d} columns
        of W_v W_o, so nothing pulls them anywhere: they hold what is left of the random start (W_q's last row and W_o's
        first {d} columns never get a gradient). In the part that matters, W_q W_k^T is c times the identity on the
        x-block and W_v W_o has one entry, -g in the (y, y) corner; everything else there is small:""")
    t.out(f"  c = mean diagonal of the x-block of W_q W_k^T      = {c:.5f}\n"
          f"  largest other entry in the x-rows of W_q W_k^T     = {other_qk:.5f}  ({100 * other_qk / abs(c):.2f}% of |c|)\n"
          f"  g = -(W_v W_o)[y, y]                               = {g:.5f}\n"
          f"  largest x-entry in the y-column of W_v W_o         = {other_ov:.5f}  ({100 * other_ov / abs(g):.2f}% of |g|)\n"
          f"  c * g                                              = {product:.5f}\n"
          f"  tuned eta / N                                      = {gd_eta / N_CONTEXT:.5f}  (c*g is {off_tuned:+.2f}% off)\n"
          f"  eta* / N                                           = {optimum.eta / N_CONTEXT:.5f}  (c*g is {off_optimum:+.2f}% off)\n"
          f"  the layer's own learning rate N * c * g            = {reading.eta(N_CONTEXT):.4f}\n")
    if s.experiment.smoke:
        checks("trained product of scales c*g has the sign of eta/N (quick run)", f"{product:.4f}", "> 0", product > 0)
    else:
        checks("c * g = eta* / N", f"{off_optimum:+.2f}%", "within 5%", abs(product * N_CONTEXT / optimum.eta - 1) <= 0.05)
        checks("W_q W_k^T is a scaled identity on the x-rows", f"largest other entry {100 * other_qk / abs(c):.2f}% of |c|",
               "<= 5%", other_qk <= 0.05 * abs(c))
        checks("W_v W_o's y-column is a single (y, y) entry", f"largest other entry {100 * other_ov / abs(g):.2f}% of |g|",
               "<= 5%", other_ov <= 0.05 * abs(g))
    t.out("")
    return {"gd_eta": gd_eta, "tuned": tuned.to_dict(), "at_optimal_eta": at_optimum.to_dict(), "gd_rms_error": gd_rms,
            "mean_gd_weight_norm": mean_w1_norm,
            "expected_trained_half_mse": {"mean": expected, "stderr": expected_stderr,
                                          "method": "closed-form optimum + paired mean (trained - GD at eta*)"},
            "relative_excess_over_optimum": excess,
            "effective": {"w_qk": np.round(qk, 6).tolist(), "w_ov": np.round(ov, 6).tolist(), "c": c, "g": g, "c_times_g": product,
                          "layer_learning_rate": reading.eta(N_CONTEXT), "max_abs_other_qk_x_rows": other_qk,
                          "max_abs_other_ov_y_column": other_ov}}


def main(argv=None) -> int:
    quick_help = f"{QUICK.experiment.steps} training steps, {QUICK.experiment.val_tasks} validation tasks"
    session = Session(argv, __doc__, NAME, quick_help, "training run")
    settings, t, checks = (QUICK if session.quick else FULL), session.t, session.checks
    results = session.open("a trained one-layer linear self-attention layer does one step of gradient descent",
                           "a trained one-layer LSA does one step of GD with the best learning rate", settings.record())
    t.prose(__doc__.split("\n\n")[1])  # the claim
    run_dir = session.out_dir / "run"
    results["step1_construction"] = step1_construction(t, checks, settings)
    results["step2_optimum"] = step2_optimum(t, checks, settings)
    config, params, ctx = step3_train(t, checks, settings, run_dir)
    results["step3_training"] = ctx["training"]
    results["step4_comparison"] = step4_compare(t, checks, settings, config, params, ctx["evaluation"])
    return session.finish(results, f"training run in {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
