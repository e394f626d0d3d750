#!/usr/bin/env python
r"""Walkthrough 02: a trained recurrent linear self-attention model does GD++, not just GD.

Claim (von Oswald et al., "Transformers Learn In-Context by Gradient Descent", ICML 2023, the
multi-layer and recurrent models and GD++): stacking linear self-attention (LSA) layers buys
more than more steps of gradient descent (GD).  K steps of GD with the best rate lose to a
trained K-layer model.  A recurrent (weight-tied) LSA, one layer applied K times, implements
GD++, a GD variant whose every step also moves the inputs,
x_j <- x_j - (gamma/N) sum_i (x_i . x_j) x_i, a curvature correction that lets the following
steps take bigger strides; it matches K steps of GD++ with learned rates.

The walkthrough, top to bottom:

1. one GD++ step written out by hand, checked against ``iclgd.baselines.gdpp_predict`` and against
   the LSA built by ``iclgd.gdpp_construction`` (K = 1..3 tied layers); gamma = 0 is GD;
2. K steps of GD with the line-searched rate for K = 1..5: the loss falls with K, slowly, and
   the eigenvalues of the context covariance say why;
3. learn the rates instead: K-step GD (one eta) and GD++ (one eta, one gamma), for K = 2 and 3,
   trained by the library's loop; GD++ wins clearly, and the eigenvalues say why again;
4. train a recurrent LSA for K = 2 and 3 from a small random start and compare it, on the same
   tasks, with tuned GD and learned GD++: losses, the loss read out after every layer, alignment;
5. open the trained recurrent layer: its weights are the GD++ construction, with GD++'s rates.

Run it (from the repository root):

    python reference/02_multi_layer.py            # full: 3000-4000 LSA steps, 10^4 validation tasks (minutes)
    python reference/02_multi_layer.py --quick    # every step, smaller (seconds)
    python reference/02_multi_layer.py --out DIR  # keep the training runs (and, with --quick, the results) in DIR

The full run records what it printed in reference/results/02_multi_layer.txt and its numbers
in reference/results/02_multi_layer.json; --quick writes those two files to --out (or to a
fresh temporary directory) instead.  Every number printed comes from the code below, from
explicit seeds.  The script exits with status 1 if any check it narrates fails.  The setting
and the training runs of the full mode are those of ``iclgd reproduce multi-layer --tied --layers 2,3``
(iclgd.experiments.multi_layer.MultiLayerSetting), which reports the same comparison without the
narration; the spectral closed forms and the layer readings come from iclgd.theory.

Conventions (DESIGN.md): tokens e_i = (x_i, y_i) in R^(d+1), the query token (x_q, 0) last;
d = N = 10, x ~ U(-1, 1)^d (the paper's text, a = 1), w ~ N(0, I_d), no label noise; the
read-out is yhat = -(query's y-slot after the last layer); the loss is half the mean squared
error ("half-MSE").
"""
from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

import numpy as np

import iclgd
from iclgd import baselines, metrics, theory
from iclgd.backends import fastest_backend
from iclgd.config import run_config_to_toml
from iclgd.evaluate import stream, tune_gd_eta, validation_batch
from iclgd.experiments.multi_layer import QUOTED_TUNED_GD, MultiLayerSetting, layer_readouts
from iclgd.gd_models import as_lsa, rates
from iclgd.interpolate import effective_matrices
from iclgd.runio import list_checkpoints, read_jsonl
from iclgd.train import load_checkpoint
from walkthrough import Checks, Session, Transcript, matrix_lines, max_abs_diff, train_run

NAME = "02_multi_layer"
D_IN, N_CONTEXT, X_SCALE = 10, 10, 1.0  # d, N and a: x ~ U(-a, a)^d, so E x x^T = (a^2 / 3) I
GD_DEPTHS = (1, 2, 3, 4, 5)  # step 2: GD steps K
DEPTHS = (2, 3)  # steps 3-5: depths K of the learned-rate models and the recurrent LSA
HAND_DEPTHS = (1, 2, 3)  # step 1
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)  # of the context covariance's eigenvalues
TOKEN_LABELS = [f"x{i + 1}" for i in range(D_IN)] + ["y"]
MODEL_LABELS = {"lsa": "recurrent LSA", "tuned_gd": "tuned GD", "gd": "learned GD", "gdpp": "learned GD++"}


@dataclass(frozen=True)
class Settings:
    """The experiment's setting (full: ``iclgd reproduce multi-layer --tied --layers 2,3``'s;
    --quick: shorter runs on fewer tasks) and the sizes and seeds only the walkthrough uses."""

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
                "rate_steps": e.baseline_steps, "rate_batch_size": e.baseline_batch_size, "val_tasks": e.val_tasks,
                "tune_tasks": e.tune_tasks, "lsa_lr": e.lr, "rate_lr": e.baseline_lr, "schedule": e.run_config(DEPTHS[0], "lsa").train.schedule,
                "seed": e.seed, "demo_tasks": self.demo_tasks, "hand_tasks": self.hand_tasks, "demo_seed": self.demo_seed,
                "demo_eta": self.demo_eta, "demo_gamma": self.demo_gamma}


def est(estimate: metrics.Estimate, spec: str = ".4f", width: int = 0) -> str:
    """'mean ± stderr', right-aligned in ``width`` characters."""
    return f"{estimate:{spec}}".rjust(width)


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:+.2f}%"


def gdpp_by_hand(tokens: np.ndarray, eta: float, gamma: float, steps: int) -> float:
    """K = ``steps`` GD++ steps on one task's tokens (N + 1, d + 1), token by token, sum by sum.

    Every token j, the N context tokens and the query alike, moves by
    -(1/N) sum_i (x_i . x_j) (gamma x_i, eta y_i), the sum over the N context tokens i of the
    step's old tokens.  The prediction is minus the query's y-slot at the end."""
    e = np.array(tokens, dtype=np.float64)
    n_tokens, dim = e.shape
    n, d = n_tokens - 1, dim - 1
    for _ in range(steps):
        new = e.copy()
        for j in range(n_tokens):  # context tokens 0..N-1, the query N
            moved_x, moved_y = np.zeros(d), 0.0
            for i in range(n):  # keys and values: the context tokens only
                similarity = float(np.dot(e[i, :d], e[j, :d]))  # x_i . x_j
                moved_x += similarity * e[i, :d]
                moved_y += similarity * e[i, d]
            new[j, :d] = e[j, :d] - (gamma / n) * moved_x
            new[j, d] = e[j, d] - (eta / n) * moved_y
        e = new
    return -e[n, d]


def step1_construction(t: Transcript, checks: Checks, s: Settings) -> dict:
    d, n, eta, gamma = D_IN, N_CONTEXT, s.demo_eta, s.demo_gamma
    t.heading("Step 1. GD++ by hand, by the library, and as a linear self-attention layer")
    t.prose(f"""
        A task is a hidden weight vector w and {n} examples (x_i, y_i = w . x_i), x_i in R^{d};
        the model sees tokens e_i = (x_i, y_i) and a query token (x_q, 0), and must predict
        y_q = w . x_q. Walkthrough 01 showed that one LSA layer can do one step of GD from
        W0 = 0: it adds -(eta/N) sum_i (x_i . x_j) y_i to the y-slot of every token j, and the
        query's y-slot becomes -(eta/N) sum_i (x_i . x_q) y_i = -W1 x_q.

        Stack K such layers and the y-slots keep moving: after layer t the context y-slots hold
        the residuals y_i - W_t x_i, so the next layer does the next GD step on them, and the
        read-out -(query's y-slot) is K steps of GD. GD++ lets every layer also move the
        inputs. One GD++ step updates every token j, context and query alike, from the step's
        old tokens (sums over the N context tokens i):
    """)
    t.out("    x_j <- x_j - (gamma/N) sum_i (x_i . x_j) x_i   = (I - gamma Sigma) x_j\n"
          "    y_j <- y_j - (eta/N)   sum_i (x_i . x_j) y_i\n")
    t.prose(f"""
        with Sigma = (1/N) sum_i x_i x_i^T, the context's input covariance. With gamma = 0 the
        inputs never move and K steps are K GD steps. gdpp_by_hand() writes a GD++ step out
        token by token and sum by sum. Here it runs on {s.hand_tasks} tasks (seed
        {s.demo_seed}) with eta = {eta}, gamma = {gamma} for K = {', '.join(map(str, HAND_DEPTHS))}
        steps, against iclgd.baselines.gdpp_predict (vectorised over tasks) and, with gamma = 0,
        against iclgd.baselines.gd_predict:
    """)
    batch = s.experiment.task.sample(s.demo_tasks, seed=s.demo_seed)
    hand_tokens = batch.tokens[: s.hand_tasks]
    numpy_backend = iclgd.get_backend("numpy")
    t.out(f"  {'K':>2} {'task':>4} {'by hand':>19} {'gdpp_predict':>19} {'by hand, gamma 0':>19} {'gd_predict':>19}")
    hand_vs_library, hand_gamma0_vs_gd = [], []
    for k in HAND_DEPTHS:
        columns = [np.array([gdpp_by_hand(tokens, eta, gamma, k) for tokens in hand_tokens]),  # by hand, gdpp_predict, the same with
                   baselines.gdpp_predict(hand_tokens, eta, gamma, steps=k),  # gamma = 0, gd_predict
                   np.array([gdpp_by_hand(tokens, eta, 0.0, k) for tokens in hand_tokens]), baselines.gd_predict(hand_tokens, eta, steps=k)]
        for b in range(s.hand_tasks):
            t.out(f"  {k:2d} {b:4d} " + " ".join(f"{column[b]:19.15f}" for column in columns))
        hand_vs_library.append(max_abs_diff(columns[0], columns[1]))
        hand_gamma0_vs_gd.append(max_abs_diff(columns[2], columns[3]))
    t.out(f"  targets y_q of these tasks: {', '.join(f'{y:.4f}' for y in batch.targets[: s.hand_tasks])}\n")
    worst_hand, worst_hand_gd = max(hand_vs_library), max(hand_gamma0_vs_gd)
    checks("GD++ by hand = baselines.gdpp_predict (K = 1..3)", f"{worst_hand:.3e}", "<= 1e-12", worst_hand <= 1e-12)
    checks("GD++ by hand with gamma = 0 = baselines.gd_predict (K = 1..3)", f"{worst_hand_gd:.3e}", "<= 1e-12",
           worst_hand_gd <= 1e-12)
    t.out("")

    cfg1 = iclgd.LSAConfig(d=d, n_layers=1, n_heads=1, n_context=n)
    qk, ov = (m[0] for m in effective_matrices(cfg1, iclgd.gdpp_construction(cfg1, eta, gamma))["layer0"])
    t.prose(f"""
        As an LSA layer (row-vector tokens, E <- E + (E W_q)(C W_k)^T (C W_v) W_o with C the
        context rows), a GD++ step needs, in one head: W_q W_k^T = the identity on the x-block,
        so that query . key_i = x_j . x_i; and W_v W_o = blockdiag(-(gamma/N) I_d, -eta/N), so
        that what token i sends is -(1/N)(gamma x_i, eta y_i). The GD construction of
        walkthrough 01 is the same without the x-block. iclgd.gdpp_construction(cfg, eta,
        gamma) builds it (value columns 1..d copy x_i; column 0 carries -y_i); its products for
        eta = {eta}, gamma = {gamma} ('.' is zero):
    """)
    t.out(f"W_v W_o of iclgd.gdpp_construction (x-diagonal -gamma/N = {-gamma / n:g}, (y, y) entry -eta/N = {-eta / n:g})")
    t.out(matrix_lines(ov, TOKEN_LABELS, TOKEN_LABELS, decimals=2) + "\n")
    structure, qk_structure = np.zeros_like(ov), np.zeros_like(qk)
    structure[:d, :d], structure[d, d], qk_structure[:d, :d] = -(gamma / n) * np.eye(d), -eta / n, np.eye(d)
    product_diff = max(max_abs_diff(ov, structure), max_abs_diff(qk, qk_structure))
    checks("gdpp_construction: W_q W_k^T = I (x-block), W_v W_o = blockdiag(-gamma/N I, -eta/N)", f"{product_diff:.3e}",
           "== 0", product_diff == 0.0)
    t.out("")

    t.prose(f"""
        A recurrent (weight-tied) model applies one layer K times: LSAConfig(tied=True) has a
        single weight set, named "shared.*". Build it with gdpp_construction and run it with
        the NumPy oracle's forward pass on all {s.demo_tasks} tasks; it must predict what K GD++
        steps predict, and with gamma = 0 what K GD steps (the GD construction) predict:
    """)
    lsa_vs_library, gamma0_lsa_vs_gd, gamma0_library_vs_gd = [], [], []
    t.out(f"  {'K':>2} {'params':>40}  {'max |LSA - gdpp_predict|':>24}  {'gamma = 0: max |LSA - GD|':>25}")
    for k in HAND_DEPTHS:
        cfg = iclgd.LSAConfig(d=d, n_layers=k, n_heads=1, tied=True, n_context=n)
        construction = iclgd.gdpp_construction(cfg, eta, gamma)
        gd = baselines.gd_predict(batch.tokens, eta, steps=k)
        lsa_vs_library.append(max_abs_diff(numpy_backend.predict(cfg, construction, batch.tokens),
                                           baselines.gdpp_predict(batch.tokens, eta, gamma, steps=k)))
        gamma0_lsa_vs_gd.append(max(max_abs_diff(numpy_backend.predict(cfg, iclgd.gdpp_construction(cfg, eta, 0.0), batch.tokens), gd),
                                    max_abs_diff(numpy_backend.predict(cfg, iclgd.gd_construction(cfg, eta), batch.tokens), gd)))
        gamma0_library_vs_gd.append(max_abs_diff(baselines.gdpp_predict(batch.tokens, eta, 0.0, steps=k), gd))
        t.out(f"  {k:2d} {', '.join(sorted(construction)):>40}  {lsa_vs_library[-1]:24.3e}  {gamma0_lsa_vs_gd[-1]:25.3e}")
    t.out(f"  gdpp_predict with gamma = 0 against gd_predict, K = 1..3: {max(gamma0_library_vs_gd):.3e}\n")
    checks("tied LSA(gdpp_construction) = K GD++ steps (K = 1..3)", f"{max(lsa_vs_library):.3e}", "<= 1e-12",
           max(lsa_vs_library) <= 1e-12)
    worst_gamma0 = max(max(gamma0_lsa_vs_gd), max(gamma0_library_vs_gd))
    checks("gamma = 0: GD++ (LSA and gdpp_predict) = K GD steps", f"{worst_gamma0:.3e}", "<= 1e-12", worst_gamma0 <= 1e-12)
    t.out("")
    return {"eta": eta, "gamma": gamma, "depths": list(HAND_DEPTHS), "hand_tasks": s.hand_tasks, "tasks": s.demo_tasks,
            "seed": s.demo_seed, "max_abs_by_hand_vs_gdpp_predict": worst_hand, "max_abs_by_hand_gamma0_vs_gd_predict": worst_hand_gd,
            "max_abs_construction_products_vs_structure": product_diff, "max_abs_lsa_vs_gdpp_predict": max(lsa_vs_library),
            "max_abs_gamma0_vs_gd": worst_gamma0,
            "per_depth": {"by_hand_vs_gdpp_predict": hand_vs_library, "by_hand_gamma0_vs_gd_predict": hand_gamma0_vs_gd,
                          "lsa_vs_gdpp_predict": lsa_vs_library, "gamma0_lsa_vs_gd_predict": gamma0_lsa_vs_gd,
                          "gamma0_gdpp_predict_vs_gd_predict": gamma0_library_vs_gd}}


def step2_deeper_gd(t: Transcript, checks: Checks, s: Settings, batch) -> dict:
    t.heading("Step 2. More GD steps: the tuned K-step GD loss for K = 1..5")
    e = s.experiment
    t.prose(f"""
        Before training anything: how good are K steps of plain GD from W0 = 0, one rate eta
        for all K steps? As the paper did, eta is tuned by a line search on {e.tune_tasks} tasks
        from the training distribution (iclgd.evaluate.tune_gd_eta: exact for K = 1, a grid then
        golden-section search for K > 1), and the loss is measured on {e.val_tasks} other,
        validation tasks (iclgd.evaluate.validation_batch, seed {e.seed}), the same tasks every
        later comparison uses. "K vs K-1" is the paired difference on those tasks, which
        cancels most of the task-to-task noise:
    """)
    tune_batch = e.task.sample(e.tune_tasks, stream(e.seed, "line_search"))
    lam, _ = theory.context_spectrum(batch.tokens)
    rows, previous = [], None
    t.out(f"  {'K':>2} {'tuned eta':>10} {'half-MSE':>18} {'K vs K-1 (paired)':>22} {'from the spectrum':>20}")
    for k in GD_DEPTHS:
        eta = tune_gd_eta(tune_batch, steps=k)
        losses = metrics.half_squared_errors(baselines.gd_predict(batch.tokens, eta, k), batch.targets)
        spectral = theory.spectral_half_mse(lam, eta, 0.0, k, X_SCALE**2 / 3)
        loss = metrics.estimate(losses)
        step_gain = metrics.paired_difference(losses, previous) if previous is not None else None
        rows.append({"k": k, "eta": eta, "loss": loss.to_dict(), "minus_previous": step_gain.to_dict() if step_gain else None,
                     "spectral": metrics.estimate(spectral).to_dict(), "minus_spectral": metrics.paired_difference(losses, spectral).to_dict()})
        gain_text = f"{step_gain:.4f}" if step_gain else "-"
        t.out(f"  {k:2d} {eta:10.4f} {est(loss, width=18)} {gain_text:>22} {est(metrics.estimate(spectral), width=20)}")
        previous = losses
    t.out("")
    falls = all(row["minus_previous"]["mean"] + 3 * row["minus_previous"]["stderr"] < 0 for row in rows[1:])
    checks("tuned K-step GD loss falls with every extra step (K = 1..5)",
           ", ".join(f"{row['minus_previous']['mean']:+.4f}" for row in rows[1:]),
           "every paired (K - (K-1)) below 0 by > 3 s.e.", falls)
    for k, quoted in QUOTED_TUNED_GD.items():
        loss = rows[k - 1]["loss"]
        z = (loss["mean"] - quoted) / loss["stderr"]
        checks(f"tuned {k}-step GD loss = the quoted {quoted}", f"{loss['mean']:.4f} ({z:+.2f} s.e.)", "within 3 s.e.", abs(z) <= 3)
    t.out("")

    least_squares = float(np.mean(metrics.half_squared_errors(baselines.least_squares_predict(batch.tokens), batch.targets)))
    t.prose(f"""
        Why so slowly? The tasks have no noise, so y_i = w . x_i and the context determines w
        exactly when its {N_CONTEXT} inputs span R^{D_IN} (least squares on the context,
        iclgd.baselines.least_squares_predict, has half-MSE {least_squares:.2e} on these tasks).
        GD gets there slowly. With b = (1/N) sum_i y_i x_i = Sigma w, a step is
        W_{{t+1}} - w = (I - eta Sigma)(W_t - w), so from W0 = 0 the error after K steps is
        W_K - w = -(I - eta Sigma)^K w: along an eigenvector of Sigma with eigenvalue lam, a
        fraction (1 - eta lam)^K of w is still missing. Averaged over w ~ N(0, I) and x_q (E x_q
        x_q^T = I/3), a context with eigenvalues lam_k has expected half-MSE
        (1/6) sum_k (1 - eta lam_k)^(2K): the column "from the spectrum" above, computed from the
        inputs alone; it agrees with the measured loss, so this is the whole story.
    """)
    spectral_z = [row["minus_spectral"]["mean"] / row["minus_spectral"]["stderr"] for row in rows]
    checks("measured GD loss = (1/6) sum_k (1 - eta lam_k)^(2K) on the same tasks (K = 1..5)",
           ", ".join(f"{z:+.2f}" for z in spectral_z) + " s.e.", "every paired difference within 4 s.e.",
           all(abs(z) <= 4 for z in spectral_z))
    t.out("")
    quantiles = np.quantile(lam, QUANTILES)
    t.prose(f"""
        Sigma's eigenvalues on the validation tasks have mean {float(lam.mean()):.4f} (E Sigma =
        I/3), but with N = d they spread from nearly 0 (smallest per task: median
        {float(np.median(lam[:, 0])):.4f}) to about 4/3 (largest per task: median
        {float(np.median(lam[:, -1])):.4f}). The fraction of w that K tuned GD steps still miss
        along an eigenvector, at quantiles of the eigenvalues pooled over tasks:
    """)
    t.out(f"  {'quantile':>8} {'lam':>7} " + " ".join(f"{f'K={k}':>8}" for k in GD_DEPTHS))
    for level, value in zip(QUANTILES, quantiles):
        factors = [float(theory.error_factors(np.array(value), row["eta"], 0.0, row["k"])) for row in rows]
        t.out(f"  {level:8.2f} {value:7.4f} " + " ".join(f"{f:8.4f}" for f in factors))
    t.out("")
    low_factor = float(theory.error_factors(np.array(quantiles[0]), rows[-1]["eta"], 0.0, rows[-1]["k"]))
    t.prose(f"""
        A rate above 2 / lam_max would blow up the top of the spectrum, so eta stays near
        {rows[0]['eta']:.2f}, and with it the small eigenvalues are learned slowly: at the 5%
        quantile, K = {rows[-1]['k']} steps still miss {100 * low_factor:.0f}% of w's component. That
        is the room GD++ uses.
    """)
    return {"tune_tasks": e.tune_tasks, "rows": rows, "quoted": {str(k): v for k, v in QUOTED_TUNED_GD.items()},
            "eigenvalue_quantiles": dict(zip(map(str, QUANTILES), quantiles.tolist())), "least_squares_half_mse": least_squares}


def step3_learned_rates(t: Transcript, checks: Checks, s: Settings, ctx: dict) -> dict:
    t.heading("Step 3. Learn the rates: K-step GD and GD++ trained by the library's loop")
    e, batch, run_dir = s.experiment, ctx["batch"], ctx["run_dir"]
    t.prose(f"""
        Instead of a line search, make the rates parameters and train them like any model:
        iclgd.gd_models.LearnedGDConfig(variant="gd" or "gdpp", tied=True) is K steps of GD (one
        rate eta) or GD++ (one eta, one gamma) shared by all steps. It is a constrained LSA: its
        layers carry the weights of gdpp_construction, affine in the rates, so the backend's
        LSA gradient gives the rates' gradient by the chain rule, and iclgd.train.train runs it
        on the same task stream, with the same Adam and checkpoints, as any LSA. The rates start
        near 0 (N(0, 0.002)). Adam, lr {e.baseline_lr:g} with {ctx['schedule']} decay, {e.baseline_steps} steps of
        {e.baseline_batch_size} fresh tasks, backend {e.backend}. The configuration of K = 3, GD++:
    """)
    t.out(textwrap.indent(run_config_to_toml(e.run_config(3, "gdpp")).rstrip(), "    ") + "\n")
    trained, seconds = {}, {}
    for k in DEPTHS:
        for model in ("gd", "gdpp"):
            config = e.run_config(k, model)
            state, seconds[f"K{k}/{model}"], _ = train_run(t, run_dir / f"K{k}" / model, config)
            trained[(k, model)] = (config.model, state.params)
    t.out("  trained in " + ", ".join(f"{key} {value:.1f} s" for key, value in seconds.items()) + "\n")

    rows, predictions = {}, {}
    t.out(f"  {'K':>2} {'model':>13} {'eta':>8} {'gamma':>7} {'half-MSE':>18} {'paired vs tuned GD':>20}")
    for k in DEPTHS:
        predictions[k] = {"tuned_gd": baselines.gd_predict(batch.tokens, ctx["tuned_eta"][k], k)}
        tuned_losses = metrics.half_squared_errors(predictions[k]["tuned_gd"], batch.targets)
        t.out(f"  {k:2d} {'tuned GD':>13} {ctx['tuned_eta'][k]:8.4f} {'-':>7} {est(metrics.estimate(tuned_losses), width=18)}")
        row = {"tuned_gd_eta": ctx["tuned_eta"][k], "tuned_gd_loss": metrics.estimate(tuned_losses).to_dict()}
        for model in ("gd", "gdpp"):
            eta, gamma = (float(r[0]) for r in rates(*trained[(k, model)]))
            predictions[k][model] = baselines.gdpp_predict(batch.tokens, eta, gamma, k)
            losses = metrics.half_squared_errors(predictions[k][model], batch.targets)
            paired = metrics.paired_difference(losses, tuned_losses)
            t.out(f"  {k:2d} {MODEL_LABELS[model]:>13} {eta:8.4f} {gamma:7.4f} {est(metrics.estimate(losses), width=18)} "
                  f"{est(paired, '.5f', 20)} ({percent(paired.mean, tuned_losses.mean())})")
            row[model] = {"eta": eta, "gamma": gamma, "loss": metrics.estimate(losses).to_dict(), "minus_tuned_gd": paired.to_dict(),
                          "losses": losses}
        row["gdpp_minus_gd"] = metrics.paired_difference(row["gdpp"]["losses"], row["gd"]["losses"]).to_dict()
        rows[k] = row
    t.out("")
    for k in DEPTHS:
        row = rows[k]
        excess = row["gd"]["minus_tuned_gd"]["mean"] / row["tuned_gd_loss"]["mean"]
        checks(f"K = {k}: learned GD = tuned GD (paired)", f"{100 * excess:+.3f}%", "|diff| <= 1% of tuned GD's loss",
               abs(excess) <= 0.01)
        if not e.smoke:
            eta_off = row["gd"]["eta"] / row["tuned_gd_eta"] - 1
            checks(f"K = {k}: learned GD rate = line-searched rate", f"{100 * eta_off:+.2f}%", "within 2%", abs(eta_off) <= 0.02)
        gain = row["gdpp_minus_gd"]
        checks(f"K = {k}: learned GD++ clearly beats learned GD (paired)",
               f"{gain['mean']:+.4f} ± {gain['stderr']:.4f} ({percent(gain['mean'], row['gd']['loss']['mean'])})",
               "< -5% of GD's loss and below 0 by > 3 s.e.",
               gain["mean"] <= -0.05 * row["gd"]["loss"]["mean"] and gain["mean"] + 3 * gain["stderr"] < 0)
    t.out("")

    k_show = DEPTHS[-1]
    eta_pp, gamma_pp = rows[k_show]["gdpp"]["eta"], rows[k_show]["gdpp"]["gamma"]
    t.prose(f"""
        Why GD++ wins, in the eigenbasis of Sigma. One GD++ step maps the inputs to
        x' = (I - gamma Sigma) x, so the next step sees the covariance
        Sigma' = (I - gamma Sigma) Sigma (I - gamma Sigma): the same eigenvectors, each
        eigenvalue lam moved to lam (1 - gamma lam)^2, which squeezes the top of the spectrum
        down. The labels stay consistent with the moved inputs (by induction the context still
        holds a noise-free regression problem), and the error after K steps is
        -x_q^T prod_t (I - eta Sigma_t) w: along an eigenvector, a fraction prod_t (1 - eta lam_t)
        of w is missed, with lam_0 = lam and lam_(t+1) = lam_t (1 - gamma lam_t)^2. Written out
        with the eigenvectors V of each Sigma, the prediction is
        w . x_q - x_q^T V diag(prod_t (1 - eta lam_t)) V^T w. Checked against gdpp_predict with
        the learned K = {k_show} rates (eta {eta_pp:.4f}, gamma {gamma_pp:.4f}) on the validation tasks:
    """)
    eigen_prediction = theory.gdpp_eigenbasis_predict(batch.tokens, batch.weights, eta_pp, gamma_pp, k_show)
    eigen_diff = max_abs_diff(eigen_prediction, baselines.gdpp_predict(batch.tokens, eta_pp, gamma_pp, k_show))
    t.out(f"  max |eigenbasis formula - gdpp_predict| over {batch.tokens.shape[0]} tasks = {eigen_diff:.3e}")
    checks("GD++ in the eigenbasis of Sigma = gdpp_predict", f"{eigen_diff:.3e}", "<= 1e-9", eigen_diff <= 1e-9)
    t.out("")
    t.prose("""
        So, exactly as for GD, the expected half-MSE of a context is (1/6) sum_k m(lam_k)^2 with
        m = prod_t (1 - eta lam_t). The fraction of w missed, at the same eigenvalue quantiles
        as in step 2, by K tuned GD steps, by the first GD++ step alone and by all K GD++ steps
        (learned rates):
    """)
    t.out(f"  {'quantile':>8} {'lam':>7}" + "".join(f" {f'GD K={k}':>9} {'GD++ t=1':>9} {f'GD++ K={k}':>9}" for k in DEPTHS))
    learned_rates = {k: (rows[k]["gdpp"]["eta"], rows[k]["gdpp"]["gamma"]) for k in DEPTHS}
    columns = [rates_steps for k in DEPTHS  # (eta, gamma, steps) of each column
               for rates_steps in ((rows[k]["tuned_gd_eta"], 0.0, k), (*learned_rates[k], 1), (*learned_rates[k], k))]
    for level, value in zip(QUANTILES, np.quantile(ctx["lam"], QUANTILES)):
        t.out(f"  {level:8.2f} {value:7.4f}" + "".join(f" {float(theory.error_factors(np.array(value), *c)):9.4f}" for c in columns))
    t.out("")
    t.prose(f"""
        GD++'s learned eta is {rows[DEPTHS[0]]['gdpp']['eta'] / rows[DEPTHS[0]]['tuned_gd_eta']:.1f}x (K = {DEPTHS[0]}) and
        {rows[DEPTHS[-1]]['gdpp']['eta'] / rows[DEPTHS[-1]]['tuned_gd_eta']:.1f}x (K = {DEPTHS[-1]}) GD's. Its first
        step alone overshoots the top of the spectrum badly (|1 - eta lam| > 1: worse than
        not moving), but it also squeezes those eigenvalues, and the later steps with the same
        large eta then remove the overshoot while making good progress on the small eigenvalues,
        which GD's cautious eta barely touches. Only the last read-out is trained; the loss
        read out after the first step is poor (step 4 shows it).
    """)
    for row in rows.values():  # per-task losses are for the comparisons only
        for model in ("gd", "gdpp"):
            row[model].pop("losses")
    return {"seconds": seconds, "rows": {str(k): v for k, v in rows.items()}, "trained": trained, "predictions": predictions,
            "eigenbasis_max_abs_diff": eigen_diff}


def lsa_curve(backend, cfg, run_dir, batch) -> list[dict]:
    """The LSA's validation half-MSE at every checkpoint, and its training loss: the mean of the
    losses logged since the previous checkpoint (at step 0, the initial weights' loss on batch 0)."""
    log, curve, previous = read_jsonl(run_dir / "metrics.jsonl"), [], 0
    for step, path in list_checkpoints(run_dir):
        params = load_checkpoint(path, cfg.dtype).params
        val_loss = float(np.mean(metrics.half_squared_errors(backend.predict(cfg, params, batch.tokens), batch.targets)))
        window = [r["loss"] for r in log if (r["step"] == 0 if step == 0 else previous <= r["step"] < step)]
        curve.append({"step": step, "val_loss": val_loss, "train_loss": float(np.mean(window)) if window else None})
        previous = step
    return curve


def step4_recurrent_lsa(t: Transcript, checks: Checks, s: Settings, ctx: dict) -> dict:
    t.heading("Step 4. A trained recurrent LSA against tuned GD and learned GD++, on the same tasks")
    e, batch, run_dir, learned = s.experiment, ctx["batch"], ctx["run_dir"], ctx["learned"]
    numpy_backend = iclgd.get_backend("numpy")
    t.prose(f"""
        Now forget the constructions. A recurrent LSA, LSAConfig(tied=True): one layer (one
        head, key and value size {D_IN + 1}) applied K times, from small random weights (every
        entry ~ N(0, 0.002 / fan_in)), trained to minimise the half-MSE of its final read-out:
        Adam, lr {e.lr:g} with {ctx['schedule']} decay, {e.steps_base} + {e.steps_per_layer} K steps
        (deeper models converge more slowly: {', '.join(f'{e.lsa_steps(k)} for K = {k}' for k in DEPTHS)}) of {e.batch_size}
        fresh tasks, backend {e.backend} (iclgd.backends.fastest_backend()), for K = {' and '.join(map(str, DEPTHS))}.
        The configuration of K = 3:
    """)
    t.out(textwrap.indent(run_config_to_toml(e.run_config(3, "lsa")).rstrip(), "    ") + "\n")
    trained, seconds = {}, {}
    for k in DEPTHS:
        config = e.run_config(k, "lsa")
        state, seconds[f"K{k}/lsa"], _ = train_run(t, run_dir / f"K{k}" / "lsa", config)
        trained[k] = (config.model, state.params)
    t.out("  trained in " + ", ".join(f"{key} {value:.1f} s" for key, value in seconds.items()) + "\n")

    tuned_eta, rows = ctx["tuned_eta"], {}
    for k in DEPTHS:
        rows[k] = {"predictions": {"lsa": numpy_backend.predict(*trained[k], batch.tokens), **learned["predictions"][k]}}
        rows[k]["losses"] = {name: metrics.half_squared_errors(p, batch.targets) for name, p in rows[k]["predictions"].items()}
        rows[k]["paired"] = {other: metrics.paired_difference(rows[k]["losses"]["lsa"], rows[k]["losses"][other])
                             for other in ("tuned_gd", "gd", "gdpp")}
    gdpp_rates = {k: (learned["rows"][str(k)]["gdpp"]["eta"], learned["rows"][str(k)]["gdpp"]["gamma"]) for k in DEPTHS}
    t.prose(f"""
        The models are evaluated with the NumPy oracle on the {e.val_tasks} validation tasks of step 2.
        First, how training went: the LSA's validation half-MSE at each checkpoint, next to the
        final loss of tuned GD and learned GD++ with the same K (the start predicts ~0: loss
        about d/6 = {D_IN / 6:.3f}):
    """)
    curves = {}
    for k in DEPTHS:
        losses = rows[k]["losses"]
        t.out(f"  K = {k} (tuned GD {np.mean(losses['tuned_gd']):.4f}, learned GD++ {np.mean(losses['gdpp']):.4f}); train loss: the mean of the")
        t.out("  losses logged in metrics.jsonl since the previous checkpoint (each on its step's fresh batch)")
        t.out(f"  {'step':>6} {'val loss':>9} {'train loss':>11}")
        curves[str(k)] = lsa_curve(numpy_backend, trained[k][0], run_dir / f"K{k}" / "lsa", batch)
        for point in curves[str(k)]:
            logged = point["train_loss"]
            t.out(f"  {point['step']:6d} {point['val_loss']:9.4f} {'-' if logged is None else f'{logged:.4f}':>11}")
        t.out("")

    t.prose("""
        Every model on the same tasks, with standard errors over tasks (±). The paired
        differences (LSA - other, the mean of per-task differences) are the sharp comparison:
    """)
    for k in DEPTHS:
        losses, paired = rows[k]["losses"], rows[k]["paired"]
        t.out(f"  K = {k}")
        for name in ("lsa", "tuned_gd", "gd", "gdpp"):
            line = f"    {MODEL_LABELS[name]:>14}  half-MSE {metrics.estimate(losses[name]):.4f}"
            if name != "lsa":
                line += f"   LSA - {MODEL_LABELS[name]}: {paired[name]:.5f} ({percent(paired[name].mean, losses[name].mean())})"
            t.out(line)
    t.out("")

    t.prose("""
        Inside the models: the prediction read out after every layer l = 1..K, -(query's y-slot
        after layer l) (iclgd.experiments.multi_layer.layer_readouts, which runs the backend's
        forward pass; the learned-rate models through their LSA form). For tuned GD, l steps
        with the K-step rate:
    """)
    per_layer = {}
    for k in DEPTHS:
        readouts = {"lsa": layer_readouts(numpy_backend, *trained[k], batch.tokens),
                    "gdpp": layer_readouts(numpy_backend, *learned["trained"][(k, "gdpp")], batch.tokens),
                    "tuned_gd": [baselines.gd_predict(batch.tokens, tuned_eta[k], layer) for layer in range(1, k + 1)]}
        per_layer[str(k)] = {name: [metrics.estimate(metrics.half_squared_errors(r, batch.targets)).to_dict() for r in values]
                             for name, values in readouts.items()}
        t.out(f"  K = {k}: {'after layer':>14} " + " ".join(f"{layer:>8d}" for layer in range(1, k + 1)))
        for name in ("lsa", "gdpp", "tuned_gd"):
            t.out(f"  {MODEL_LABELS[name]:>24} " + " ".join(f"{entry['mean']:8.4f}" for entry in per_layer[str(k)][name]))
        t.out("")
    k_last = str(DEPTHS[-1])
    first = {name: per_layer[k_last][name][0]["mean"] for name in ("lsa", "gdpp", "tuned_gd")}
    if e.smoke:
        t.prose(f"""
            (Quick run: the LSA has trained for {e.lsa_steps(int(k_last))} steps only and is still on its
            way; in the full run, reference/results/{NAME}.txt, its read-outs follow GD++'s
            layer by layer.)
        """)
    else:
        t.prose(f"""
            After the first of K = {k_last} layers the recurrent LSA's read-out has half-MSE
            {first['lsa']:.2f} and GD++'s {first['gdpp']:.2f} (predicting 0 scores {D_IN / 6:.2f}),
            while tuned GD's is {first['tuned_gd']:.2f}. Both were
            trained on the final read-out only, and the LSA found GD++'s trade: an intermediate
            prediction given up (step 3's overshoot) for a better final one.
        """)

    t.prose("""
        Alignment (the paper's metrics, iclgd.metrics.alignment, on the same tasks): "preds
        diff", the mean |yhat_LSA - yhat_other|; "model cos", the mean cosine between the
        sensitivities d yhat / d x_q of the two (backend.sensitivity for the LSA and the GD++
        model's LSA form, W_K for GD); "model diff", the mean length of their difference:
    """)
    alignment = {}
    t.out(f"  {'K':>2} {'with':>13} {'preds diff':>16} {'model cos':>20} {'model diff':>16}  (other's RMS error)")
    for k in DEPTHS:
        sensitivity = numpy_backend.sensitivity(*trained[k], batch.tokens)
        others = {"gdpp": numpy_backend.sensitivity(*as_lsa(*learned["trained"][(k, "gdpp")]), batch.tokens),
                  "tuned_gd": baselines.gd_weights(batch.tokens, tuned_eta[k], k)}
        alignment[k] = {}
        for other, other_sensitivity in others.items():
            a = metrics.alignment(rows[k]["predictions"]["lsa"], sensitivity, rows[k]["predictions"][other], other_sensitivity)
            rms = float(np.sqrt(2 * rows[k]["losses"][other].mean()))
            alignment[k][other] = {"metrics": a, "rms_error": rms}
            t.out(f"  {k:2d} {MODEL_LABELS[other]:>13} {est(a['preds_diff'], '.4f', 16)} "
                  f"{est(a['model_cos'], '.6f', 20)} {est(a['model_diff'], '.4f', 16)}  ({rms:.4f})")
    t.out("")

    for k in DEPTHS:
        row, align = rows[k], alignment[k]["gdpp"]["metrics"]
        vs_gd, vs_gdpp = row["paired"]["tuned_gd"], row["paired"]["gdpp"]
        gd_loss, gdpp_loss, rms = row["losses"]["tuned_gd"].mean(), row["losses"]["gdpp"].mean(), alignment[k]["gdpp"]["rms_error"]
        if e.smoke:
            checks(f"K = {k}: recurrent LSA below the zero predictor's loss (quick run)",
                   f"{row['losses']['lsa'].mean():.4f}", f"< d/6 = {D_IN / 6:.4f}", row["losses"]["lsa"].mean() < D_IN / 6)
            continue
        checks(f"K = {k}: recurrent LSA clearly beats tuned GD (paired)", f"{vs_gd:.4f} ({percent(vs_gd.mean, gd_loss)})",
               "< -5% of GD's loss and below 0 by > 3 s.e.", vs_gd.mean <= -0.05 * gd_loss and vs_gd.mean + 3 * vs_gd.stderr < 0)
        checks(f"K = {k}: recurrent LSA = learned GD++ (paired)", f"{vs_gdpp:.5f} ({percent(vs_gdpp.mean, gdpp_loss)})",
               "|diff| <= 5% of GD++'s loss", abs(vs_gdpp.mean) <= 0.05 * gdpp_loss)
        checks(f"K = {k}: model cos with GD++", f"{align['model_cos'].mean:.6f}", ">= 0.99", align["model_cos"].mean >= 0.99)
        checks(f"K = {k}: preds diff with GD++", f"{align['preds_diff'].mean:.4f}", f"< 5% of GD++'s RMS error ({0.05 * rms:.4f})",
               align["preds_diff"].mean < 0.05 * rms)
    t.out("")
    depths = {str(k): {"tuned_gd_eta": tuned_eta[k],
                       "loss": {name: metrics.estimate(value).to_dict() for name, value in rows[k]["losses"].items()},
                       "paired": {f"lsa_minus_{other}": value.to_dict() for other, value in rows[k]["paired"].items()},
                       "loss_per_layer": per_layer[str(k)],
                       "alignment": {other: {"rms_error": entry["rms_error"], **{n: v.to_dict() for n, v in entry["metrics"].items()}}
                                     for other, entry in alignment[k].items()}} for k in DEPTHS}
    return {"seconds": seconds, "curves": curves, "trained": trained, "gdpp_rates": gdpp_rates, "depths": depths}


def step5_weights(t: Transcript, checks: Checks, s: Settings, lsa: dict) -> dict:
    t.heading("Step 5. Open the trained recurrent layer: the GD++ construction, with GD++'s rates")
    t.prose(f"""
        A layer depends on its four matrices only through W_q W_k^T and W_v W_o, and only up to
        (c W_q W_k^T, W_v W_o / c). The GD++ construction (step 1) has W_q W_k^T = c I on the
        x-block and W_v W_o = blockdiag(-g_x I, -g_y), zero elsewhere, and the layer it makes
        does GD++ with gamma = N c g_x and eta = N c g_y. The trained recurrent layer for
        K = {DEPTHS[-1]}, rounded to two decimals ('.' marks an entry that rounds to 0.00):
    """)
    summary = {}
    for k in DEPTHS:
        qk, ov = (m[0] for m in effective_matrices(*lsa["trained"][k])["shared"])
        if k == DEPTHS[-1]:
            t.out("trained W_q W_k^T\n" + matrix_lines(qk, TOKEN_LABELS, TOKEN_LABELS, decimals=2) + "\n")
            t.out("trained W_v W_o\n" + matrix_lines(ov, TOKEN_LABELS, TOKEN_LABELS, decimals=2) + "\n")
        r = theory.read_gdpp_layer(qk, ov)
        eta_pp, gamma_pp = lsa["gdpp_rates"][k]
        summary[str(k)] = {"w_qk": np.round(qk, 6).tolist(), "w_ov": np.round(ov, 6).tolist(), "c": r.c, "g_x": r.g_x, "g_y": r.g_y,
                           "eta": r.eta(N_CONTEXT), "gamma": r.gamma(N_CONTEXT), "learned_gdpp_eta": eta_pp, "learned_gdpp_gamma": gamma_pp,
                           "max_abs_other_qk": r.other_qk, "max_abs_other_ov_x_columns": r.other_ov_x, "max_abs_other_ov_y_column": r.other_ov_y}
    t.out(f"  {'K':>2} {'c':>8} {'g_x':>8} {'g_y':>8} {'N c g_y':>9} {'GD++ eta':>9} {'N c g_x':>9} {'GD++ gamma':>11}"
          f"  {'other QK':>9} {'other OV->x':>12} {'other OV->y':>12}")
    for k in DEPTHS:
        e = summary[str(k)]
        t.out(f"  {k:2d} {e['c']:8.4f} {e['g_x']:8.4f} {e['g_y']:8.4f} {e['eta']:9.4f} {e['learned_gdpp_eta']:9.4f} "
              f"{e['gamma']:9.4f} {e['learned_gdpp_gamma']:11.4f}  {e['max_abs_other_qk'] / abs(e['c']):8.2%} "
              f"{e['max_abs_other_ov_x_columns'] / abs(e['g_x']):11.2%} {e['max_abs_other_ov_y_column'] / abs(e['g_y']):11.2%}")
    t.out("")
    t.prose("""
        ("other": the largest entry outside the construction's pattern, as a fraction of the
        pattern's own scale: c for W_q W_k^T, g_x for what W_v W_o writes into the x-slots, g_y
        for what it writes into the y-slot.)
    """)
    if s.experiment.smoke:
        t.prose(f"""
            (Quick run: after {s.experiment.lsa_steps(DEPTHS[-1])} steps the layer is still on its way; in the full
            run, reference/results/{NAME}.txt, it is the GD++ construction.)
        """)
    else:
        t.prose("""
            Nothing told the layer about GD++. Training found the construction's pattern,
            including the x-block that moves the inputs, and the rates it implies are close to
            the ones the GD++ model learned directly (the checks below).
        """)
    for k in DEPTHS:
        e = summary[str(k)]
        eta_off, gamma_off = e["eta"] / e["learned_gdpp_eta"] - 1, e["gamma"] / e["learned_gdpp_gamma"] - 1
        if s.experiment.smoke:
            checks(f"K = {k}: the trained layer's scales have GD++'s signs (quick run)",
                   f"c g_y = {e['c'] * e['g_y']:.4f}", "> 0", e["c"] * e["g_y"] > 0)
            continue
        checks(f"K = {k}: N c g_y = learned GD++ eta", f"{100 * eta_off:+.2f}%", "within 5%", abs(eta_off) <= 0.05)
        checks(f"K = {k}: N c g_x = learned GD++ gamma", f"{100 * gamma_off:+.2f}%", "within 5%", abs(gamma_off) <= 0.05)
        worst = max(e["max_abs_other_qk"] / abs(e["c"]), e["max_abs_other_ov_x_columns"] / abs(e["g_x"]),
                    e["max_abs_other_ov_y_column"] / abs(e["g_y"]))
        checks(f"K = {k}: trained products have the GD++ construction's pattern",
               f"largest other entry {100 * worst:.2f}% of its scale", "<= 5%", worst <= 0.05)
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
    t.prose("""
        Claim (von Oswald et al., "Transformers Learn In-Context by Gradient Descent", ICML
        2023, its multi-layer and recurrent models and GD++): deeper linear self-attention models beat as many steps of gradient
        descent; a recurrent (weight-tied) one does GD++, gradient descent whose steps also
        move the inputs, and matches it with the rates GD++ learns. Setting: d = N = 10,
        x ~ U(-1, 1)^d (the paper's text; the authors' code uses U(-0.5, 0.5)), w ~ N(0, I), no
        label noise, one head, half-MSE loss.
    """)
    if not session.quick:
        reproduce = MultiLayerSetting(layers=DEPTHS, tied=True, backend=backend)
        differ = [f"K{k}/{model}" for k in DEPTHS for model in ("lsa", "gd", "gdpp")
                  if reproduce.run_config(k, model) != s.experiment.run_config(k, model)]
        results["runs_differing_from_iclgd_reproduce"] = differ
        t.out("the training runs are those of `iclgd reproduce multi-layer --tied --layers 2,3`: "
              + ("all of them" if not differ else f"except {', '.join(differ)}") + "\n")

    run_dir = session.out_dir / "runs"
    results["step1_construction"] = step1_construction(t, checks, s)
    batch = validation_batch(s.experiment.task, s.experiment.val_tasks, s.experiment.seed)
    results["step2_deeper_gd"] = step2 = step2_deeper_gd(t, checks, s, batch)
    ctx = {"batch": batch, "run_dir": run_dir, "lam": theory.context_spectrum(batch.tokens)[0],
           "tuned_eta": {row["k"]: row["eta"] for row in step2["rows"]}, "schedule": s.experiment.run_config(DEPTHS[0], "lsa").train.schedule}
    ctx["learned"] = learned = step3_learned_rates(t, checks, s, ctx)
    results["step3_learned_rates"] = {key: value for key, value in learned.items() if key not in ("trained", "predictions")}
    lsa = step4_recurrent_lsa(t, checks, s, ctx)
    results["step4_recurrent_lsa"] = {key: value for key, value in lsa.items() if key not in ("trained", "gdpp_rates")}
    results["step5_weights"] = step5_weights(t, checks, s, lsa)
    return session.finish(results, f"training runs in {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
