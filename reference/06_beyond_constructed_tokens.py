#!/usr/bin/env python
r"""Walkthrough 06: beyond the constructed tokens - separate x and y tokens, sine regression, softmax.

Claim (von Oswald et al., "Transformers Learn In-Context by Gradient Descent", ICML 2023): the
one-step-GD picture of walkthroughs 01-03 survives outside the tokens built for it.  With x and y
in separate tokens, a two-layer transformer first copies each label into its input's token, then
does one GD step; on sine regression a learned embedding followed by one linear self-attention
(LSA) layer behaves like the same kind of embedding under one fixed GD step ("MLP + GD"); and
softmax attention needs more capacity than linear attention to come as close to GD.

The walkthrough, top to bottom:

1. the authors' "classic" tokens (x-token, y-token (0, .., 0, y), query x_q) and their sinusoidal
   positional encoding, on a tiny example; why a first layer must copy y_i into x_i's token, shown
   by a hand-set copying layer, built from the stack model's parameters, followed by the GD
   construction: together they give one GD step's prediction to round-off;
2. the trained two-layer model (`iclgd reproduce interleaved`): its layer-0 attention map, the
   copy sensitivities at init and at the end, and the model against one tuned GD step;
3. sine regression (`iclgd reproduce sine`): the task's draws, the fixed GD layer on an embedding
   against its formula, and the trained model against MLP + GD;
4. softmax against linear attention on constructed tokens (`iclgd reproduce softmax-vs-linear`).

Run it (from the repository root):

    python reference/06_beyond_constructed_tokens.py            # the three default runs (in a new temporary folder)
    python reference/06_beyond_constructed_tokens.py --out DIR  # keep (or resume, or find finished) the runs in DIR
    python reference/06_beyond_constructed_tokens.py --quick    # every step, tiny trainings (seconds)

Steps 2-4 run each experiment's own ``measure`` in its setting (the full run: the defaults of the
``iclgd reproduce`` command, jax engine when installed; --quick: its smoke setting on numpy) in
DIR/interleaved, DIR/sine and DIR/softmax-vs-linear, the folders `iclgd reproduce NAME --out
DIR/NAME` uses: a folder from either is resumed (or found finished) by the other.  Their checks are
the experiment's claim rows (one source of truth; --quick: its smoke checks), so a full run exits
with status 1 when a paper claim fails, as `iclgd reproduce` does.  At laptop scale (shorter
training than the authors') some of them do: the criteria are kept, and the failures reported.  A
full run records what it printed in reference/results/06_beyond_constructed_tokens.txt and its
numbers in 06_beyond_constructed_tokens.json; --quick writes both into --out instead.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from iclgd import baselines
from iclgd.backends import numpy_stack
from iclgd.experiments import attention_kinds, interleaved, sine
from iclgd.experiments.output import fmt, x_scale_name
from iclgd.models.stack import StackConfig, sinusoidal_encoding, zero_params
from iclgd.tasks import LinearRegressionTask
from iclgd.tasks.sine import SineRegressionTask
from iclgd.tokens import classic, constructed
from walkthrough import Session, Table, matrix_lines

NAME = "06_beyond_constructed_tokens"
TINY_D, TINY_N = 2, 2  # 2N + 1 = 5 tokens: few enough for the 10 encoding coordinates to tell apart linearly
TINY_TASKS, SEED = 1000, 0
DRAW_TASKS = 100_000  # step 3's look at the sine task's draws
EXACT = "1e-10"  # the hand-set constructions against their targets


def settings_for(quick: bool) -> dict:
    """Each experiment's setting: the default of its `iclgd reproduce` command, or its --quick
    smoke setting (interleaved's on the numpy engine, as the other two are)."""
    if quick:
        return {"interleaved": interleaved.InterleavedSetting.quick(backend="numpy"), "sine": sine.SineSetting.quick(),
                "softmax-vs-linear": attention_kinds.AttentionKindsSetting.quick()}
    return {"interleaved": interleaved.InterleavedSetting(), "sine": sine.SineSetting(),
            "softmax-vs-linear": attention_kinds.AttentionKindsSetting()}


def held_checkpoints(folder: Path) -> dict[str, int]:
    """The newest checkpoint step of every run directory under ``folder`` (train_stack's layout)."""
    held: dict[str, int] = {}
    for path in folder.glob("**/checkpoints/step_*.npz"):
        run = str(path.parent.parent.relative_to(folder))
        held[run] = max(held.get(run, 0), int(path.stem.split("_")[1]))
    return dict(sorted(held.items()))


def run_experiment(t, module, out: Path, setting) -> dict:
    """The experiment's measure and write, as `iclgd reproduce` runs them (Experiment.run, whose
    ``lsa_backend=False`` passes no backend to these experiments), except that --quick draws no figures."""
    held = held_checkpoints(out) if out.is_dir() else {}
    if held:
        t.out(f"  ({out} already holds {', '.join(f'{run} at step {step}' for run, step in held.items())}: "
              "training resumes there, or finds the run finished)")
    out.mkdir(parents=True, exist_ok=True)
    measured = module.measure(out, setting, None, False)
    results = {"claim": module.EXPERIMENT.claim, "setting": asdict(setting), **measured.results}
    return module.EXPERIMENT.write(out, results, {} if setting.smoke else measured.figures)


def judge(t, checks, module, results: dict) -> list:
    """The experiment's deciding rows as checks (a smoke run: its smoke checks, else the paper's
    claims); a smoke run also says how many claims hold at its length, unjudged."""
    rows = module.EXPERIMENT.deciding_rows(results)
    for name, ours, criterion, holds in rows:
        checks(name, ours, criterion, holds)
    if results["setting"]["smoke"]:
        claims = module.EXPERIMENT.claims(results)
        t.out(f"  (smoke run: of the paper's claims {sum(bool(row[3]) for row in claims)} of {len(claims)} hold at this "
              "length; not judged)")
    t.out("")
    return [list(row) for row in rows]


# --------------------------------------------------------------------------------------------


def copy_then_gd(d: int, n: int, eta: float) -> tuple[StackConfig, dict, np.ndarray, np.ndarray]:
    """Two linear layers of the stack (two heads, the sinusoidal encoding of size P concatenated)
    set by hand: layer 0 copies y_i into the last coordinate (the slot) of x_i's token and clears
    the slot everywhere else; layer 1 is one GD step from w = 0 with rate eta on (x_i, slot_i).
    (cfg, params, the copy head's attention, the clearing head's attention)."""
    p_size = interleaved.POSITIONAL_SIZE
    cfg = StackConfig(token_size=d, attention=("linear", "linear"), n_heads=2, positional_size=p_size)
    slot, n_tokens = cfg.width - 1, 2 * n + 1
    pe = sinusoidal_encoding(n_tokens, p_size)
    copy = np.zeros((n_tokens, n_tokens - 1))
    copy[classic.x_token_indices(n), classic.y_token_indices(n)] = 1.0  # x-token 2i reads its y-token 2i + 1
    clear = np.zeros((n_tokens, n_tokens - 1))
    clear[:, 0] = -pe[:, -1]  # every token reads token 0 with weight -PE[k, P - 1]
    params = zero_params(cfg)
    for head, (pattern, source) in enumerate(((copy, d - 1), (clear, d + 1))):  # d - 1: a y-token's label; d + 1: cos(0) = 1
        params["layer0.w_q"][head, d:, d:] = np.linalg.pinv(pe) @ pattern @ np.linalg.pinv(pe[:-1]).T
        params["layer0.w_k"][head, d:, d:] = np.eye(p_size)  # so Q K^T = PE W_q PE_keys^T = pattern
        params["layer0.w_v"][head, source, slot] = 1.0
        params["layer0.w_o"][head, slot, slot] = 1.0
    params["layer1.w_q"][0, :d, :d] = params["layer1.w_k"][0, :d, :d] = np.eye(d)
    params["layer1.w_v"][0, slot, slot] = -1.0
    params["layer1.w_o"][0, slot, slot] = eta / n
    return cfg, params, copy, clear


def step1_tokens(t, checks) -> dict:
    t.heading("Step 1. The authors' tokens, and why a first layer must copy")
    d, n, p_size = TINY_D, TINY_N, interleaved.POSITIONAL_SIZE
    task = LinearRegressionTask(d=d, n_context=n, x_scale="authors_code")
    examples = task.sample_examples(TINY_TASKS, SEED)
    tokens, names = classic.encode(examples).tokens, interleaved.token_names(n)
    t.prose(f"""The authors' code does not put (x_i, y_i) in one token. Its "classic" format (iclgd.tokens.classic)
        gives x_i a token of its own, then y_i a token (0, .., 0, y_i) of the same size d, and ends with the query
        input x_q: 2N + 1 tokens of size d. The label shares the last coordinate with the inputs; only the
        position tells them apart. A tiny example, d = {d}, N = {n}, x ~ U(-0.5, 0.5)^d (the authors' a), seed {SEED}:""")
    t.out(matrix_lines(tokens[0], names, [f"X[{c}]" for c in range(d)], decimals=3) + "\n")
    pe = sinusoidal_encoding(2 * n + 1, p_size)
    t.prose(f"""So a positional encoding is concatenated to every token (the authors' size P = {p_size}):
        PE[t, 2i] = sin(t / 10000^(2i/P)), PE[t, 2i + 1] = cos(t / 10000^(2i/P)), giving width C = d + P = {d + p_size}:""")
    t.out(matrix_lines(pe, names, [f"PE{c}" for c in range(p_size)]) + "\n")
    eta = baselines.one_step_optimum(d, n, task.x_scale).eta
    cfg, params, copy, clear = copy_then_gd(d, n, eta)
    cond = float(np.linalg.cond(pe))
    t.prose(f"""One GD step from w = 0 predicts yhat = (eta/N) sum_i y_i x_i . x_q. A linear self-attention layer computes
        it when each token holds its (x_i, y_i) (walkthrough 01), but here x_i and y_i sit in different tokens, and a
        layer mixes tokens only through its attention: a first layer must bring y_i into x_i's token. Built by hand
        from the stack model's parameters (iclgd.models.stack, two linear layers of two heads; copy_then_gd below),
        with the slot c = C - 1, the coordinate the read-out yhat = -h[query, c] uses:

        Layer 0, head 1, copies: x-token 2i attends to key 2i + 1 with weight 1, and its value is that token's last raw
        coordinate, y_i, written into the slot. Head 2 clears: token k attends to key 0 with weight -PE[k, P - 1] and
        reads its cos(0) = 1, so it removes the encoding's own entry from the slot. Both attention patterns are
        Q K^T of the encodings alone (W_q = pinv(PE) A pinv(PE_keys)^T), possible because the {2 * n + 1} x {p_size}
        encoding has full row rank (condition number {cond:.3g}).

        Layer 1 is the GD construction on the copied tokens: W_q = W_k = blockdiag(I_d, 0) (scores X_j . x_q),
        W_v = -e_c e_c^T, W_o = (eta/N) e_c e_c^T, eta = {eta:.4f} (the optimum for this task), so yhat = (eta/N) sum_j
        slot_j X_j . x_q. The y-tokens are keys too (their raw part (0, y_i) is not zero), but their slot is now 0.""")
    states = numpy_stack.forward(cfg, params, tokens)
    t.out("  after layer 0 (the raw coordinates and the slot; '.' is 0 to round-off):")
    t.out(matrix_lines(states[1][0][:, [*range(d), cfg.width - 1]], names, [*(f"X[{c}]" for c in range(d)), "slot"], decimals=3) + "\n")
    maps = numpy_stack.attention_maps(cfg, params, tokens)[0]
    gd = baselines.gd_predict(constructed.encode(examples).tokens, eta, 1)
    yhat = numpy_stack.predict(cfg, params, tokens)
    pattern_error = max(float(np.max(np.abs(maps[:, 0] - copy))), float(np.max(np.abs(maps[:, 1] - clear))))
    prediction_error = float(np.max(np.abs(yhat - gd)))
    checks.small("layer 0's attention is the hand-set copy and clear patterns", pattern_error, EXACT)
    checks.small(f"copy, then the GD layer: one GD step's prediction ({TINY_TASKS} tasks, max |yhat - yhat_GD|)", prediction_error, EXACT)
    without = {name: (np.zeros_like(value) if name.startswith("layer0.") else value) for name, value in params.items()}
    no_copy = float(np.max(np.abs(numpy_stack.predict(cfg, without, tokens) - gd)))
    checks("without layer 0 the same GD layer is not GD", f"max |yhat - yhat_GD| = {no_copy:.3f}", ">= 0.1", no_copy >= 0.1, "\n")
    big_n = 10
    big = sinusoidal_encoding(2 * big_n + 1, p_size)
    target = np.zeros((2 * big_n + 1, 2 * big_n))
    target[classic.x_token_indices(big_n), classic.y_token_indices(big_n)] = 1.0
    nearest = big @ np.linalg.pinv(big, rcond=1e-10) @ target @ (big[:-1] @ np.linalg.pinv(big[:-1], rcond=1e-10)).T
    missed = float(np.linalg.norm(target - nearest) / np.linalg.norm(target))
    t.prose(f"""Two limits of this construction. It is linear attention on 5 tokens: with the authors' N = {big_n}
        ({2 * big_n + 1} tokens, still P = {p_size}) the patterns PE W PE_keys^T live in a {p_size}-dimensional column space,
        and the nearest of them to the copy pattern misses it by {100 * missed:.0f}% of its norm (least squares). And
        softmax cannot do it exactly at all: a softmax row is positive and sums to one, so no head clears with
        negative weights, no y-token or query row can attend to nothing, and a weight of exactly 1 needs an
        infinite logit. What softmax has is sharpness: exp turns the smooth similarity of neighbouring encodings
        into a near-shift. The authors use a softmax layer 0, and step 2 shows how close training gets.""")
    return {"eta": eta, "encoding_condition_number": cond, "attention_pattern_max_abs_error": pattern_error,
            "copy_then_gd_max_abs_diff": prediction_error, "no_copy_max_abs_diff": no_copy,
            "linear_copy_relative_miss_at_n10": missed}


def step2_interleaved(t, checks, setting, out: Path) -> dict:
    t.heading("Step 2. Trained on these tokens: layer 0 copies, layer 1 is one GD step")
    t.prose(f"""iclgd.experiments.interleaved trains the authors' model on the classic tokens with the encoding above:
        layer 0 softmax attention (logits / sqrt(C)), layer 1 linear attention, one head each, no MLP or LayerNorm;
        d = N = {setting.d}, x ~ U(-{setting.x_scale:g}, {setting.x_scale:g})^d, Adam after clipping; {setting.steps} steps of batch
        {setting.batch_size} (the authors: 10k x 2048), engine {setting.backend}, {setting.dtype}, seed {setting.seed}; then it tunes one
        GD step's rate on {setting.tune_tasks} tasks and compares on {setting.eval_tasks} evaluation tasks.""")
    r = run_experiment(t, interleaved, out, setting)
    n, attention = setting.n_context, r["copy_attention"]
    amap, queries, keys = np.asarray(attention["map"]), list(range(6)), list(range(8))
    x_tokens = classic.x_token_indices(n)
    own_weight = float(amap[x_tokens, x_tokens].mean())
    names, key_names = interleaved.token_names(n), interleaved.token_names(n, keys=True)
    t.out("  layer 0's softmax weights, averaged over the copy tasks (a few query rows, the first keys):")
    t.out(matrix_lines(amap[queries][:, keys], [names[q] for q in queries], [key_names[k] for k in keys]) + "\n")
    t.prose(f"""An x-token query 2i puts on its own y-token 2i + 1 a mean weight of {fmt(attention['weight'])}, the largest
        of its row in {fmt(attention['argmax_fraction'])} of (task, query) pairs; the rest of a row must go somewhere (it sums to
        one), on average {own_weight:.3f} of it on the x-token itself. Copy sensitivities (the authors' analyse_copy):
        own, next and other are the norms of the task-averaged gradient of the sum of x-token k's layer-0 output with
        respect to the raw tokens k, k + 1 (its y) and the others; own holds the residual, sqrt(d) = {math.sqrt(setting.d):.3f}.""")
    init, end = r["evaluations"][0], r["evaluations"][-1]
    t.out(Table(12, 18, 18, 18).block(("", "own", "next", "other"),
                                      [(f"step {e['step']}", *(fmt(e["copy"][part]) for part in ("own", "next", "other")))
                                       for e in (init, end)]))
    c = r["comparison"]
    t.prose(f"""Against one GD step from w = 0, its rate tuned by line search on training tasks: eta = {r['gd_eta']:.4f} in
        the mean convention (the authors' sum form eta/N = {r['gd_eta_sum_form']:.4f}; closed-form optimum {r['optimal_eta']:.4f}),
        on the same evaluation tasks; the sensitivity is d yhat / d x_q, GD's being (eta/N) sum_i y_i x_i.""")
    t.out(Table(34, 18).block(("", "mean ± s.e."), [
        ("loss (half-MSE): model", fmt(c["model_loss"])), ("loss: one GD step", fmt(c["gd_loss"])),
        ("model - GD (paired)", fmt(c["model_minus_gd"])), ("predicting 0", fmt(r["zero_predictor_loss"])),
        ("preds diff |yhat - yhat_GD|", fmt(c["preds_diff"])), ("cosine of d yhat / d x_q", fmt(c["model_cos"]))]))
    rows = judge(t, checks, interleaved, r)
    return {"copy_attention": {k: attention[k] for k in ("weight", "argmax_fraction")}, "copy": {"init": init["copy"], "end": end["copy"]},
            "gd_eta": r["gd_eta"], "comparison": c, "rows": rows}


def step3_sine(t, checks, setting, out: Path) -> dict:
    t.heading("Step 3. Sine regression: a learned embedding, then one GD step")
    task = SineRegressionTask(draws=setting.draws)  # float64: the draws themselves, not the training dtype
    drawn = task.sample(DRAW_TASKS, SEED)
    amp, phase = drawn.amplitudes, drawn.phases
    deviation = float(np.max(np.abs(amp - (0.1 + 0.4 * phase / np.pi))))
    other = SineRegressionTask(draws="independent").sample(DRAW_TASKS, SEED)
    t.prose(f"""Tasks y = A sin(x + phi), N = {task.n_context} pairs, x ~ U(-{task.x_range:g}, {task.x_range:g}), tokens (x_i, y_i) and the query
        (x_q, 0) (iclgd.tasks.sine). The paper's text draws A in [0.1, 0.5] and phi in [0, pi]; the authors' code
        draws both from one uniform u, A = 0.1 + 0.4 u and phi = pi u, so the experiment's draws ("{setting.draws}")
        give one wave per amplitude. Over {DRAW_TASKS} tasks (seed {SEED}): corr(A, phi) = {np.corrcoef(amp, phase)[0, 1]:.6f}
        (independent draws: {np.corrcoef(other.amplitudes, other.phases)[0, 1]:+.4f}); the first three (A, phi):
        {', '.join(f'({a:.3f}, {p:.3f})' for a, p in zip(amp[:3], phase[:3]))}.""")
    checks.small("the authors' draws: max |A - (0.1 + 0.4 phi/pi)|", deviation, "1e-12", "\n")
    cfg64 = sine.stack_config("float64")
    params = {name: np.asarray(value, np.float64) for name, value in sine.initial_params(setting, "mlp_gd").items()}
    params |= sine.gd_layer_params(cfg64, sine.GD_LR, task.n_context)  # the layer in float64 (eta/N rounds in float32)
    tokens = drawn.tokens[:256]
    yhat = numpy_stack.predict(cfg64, params, tokens)
    relative = float(np.max(np.abs(yhat - sine.gd_layer_formula(cfg64, params, tokens))) / np.max(np.abs(yhat)))
    t.prose(f"""The model (iclgd.models.stack): each token is embedded, e = E + MLP(E) with E = token W_embed (2 -> 40)
        and an MLP 40 -> 160 -> 40, then one LSA layer reads yhat = -h_q[40]. "MLP + GD" fixes that layer to one GD
        step with eta = {sine.GD_LR:g} on the embedded tokens, W_q = W_k = diag(1, .., 1, 0), W_v = -e_40 e_40^T,
        W_o = (eta/N) e_40 e_40^T, i.e. yhat = (eta/N) sum_i e_i[40] <e_i[:39], e_q[:39]> - e_q[40], and trains only the
        embedding. At its initial embedding, in float64, on 256 tasks:""")
    checks.small("the fixed GD layer on an embedding = the formula (max error / max |yhat|)", relative, "1e-12", "\n")
    t.prose(f"""iclgd.experiments.sine trains MLP + GD ({setting.mlp_gd_steps} steps, Adam {setting.mlp_gd_lr:g}), then the model, every
        parameter ({setting.model_steps} steps, Adam {setting.model_lr:g}), both from the same embedding, batch {setting.batch_size}, engine
        {setting.backend}, {setting.dtype} (the authors: 20k steps at batch 2048 each), and compares them on {setting.eval_tasks} validation
        tasks: losses, preds diff mean |yhat - yhat_MLP+GD|, and the partial cosine mean sign(dyhat/dx_q) sign(dyhat_GD/dx_q).""")
    r = run_experiment(t, sine, out, setting)
    t.out(Table(8, 18, 18, 18, 15).block(("step", "model loss", "model - MLP+GD", "preds diff", "partial cosine"),
                                         [(e["step"], fmt(e["loss"], 5), fmt(e["minus_mlp_gd"], 5), fmt(e["preds_diff"]),
                                           fmt(e["partial_cosine"], 3)) for e in r["over_training"]["model"]]))
    t.out(f"  MLP+GD's final loss {fmt(r['final']['mlp_gd_loss'], 5)}; predicting 0: {fmt(r['zero_predictor_loss'], 5)}\n")
    rows = judge(t, checks, sine, r)
    return {"draws_max_abs_deviation": deviation, "gd_layer_relative_error": relative, "final": r["final"],
            "at_step_0": r["at_step_0"], "rows": rows}


def step4_softmax(t, checks, setting, out: Path) -> dict:
    t.heading("Step 4. Softmax against linear attention")
    heads = setting.capacity_heads
    t.prose(f"""Back on constructed tokens (x_i, y_i), d = N = 10, x ~ U(-{setting.x_scale:g}, {setting.x_scale:g})^d, iclgd.experiments.attention_kinds
        trains, at each depth K = {', '.join(map(str, setting.depths))}, K layers of linear or softmax attention, one head, without and
        with LayerNorm, and of softmax with {heads} heads ({setting.steps} steps of batch {setting.batch_size}, engine {setting.backend}), and compares each with K GD
        steps (one tuned eta) and K GD++ steps on {setting.val_tasks} validation tasks. A softmax head averages with weights
        that sum to one, so it cannot drop the mean of the context labels that a linear head never adds; a second,
        flat head can subtract it, and for small logits softmax is a linear head again.""")
    r = run_experiment(t, attention_kinds, out, setting)
    body = []
    for row in r["depths"]:
        k = row["n_layers"]
        for kind in (*attention_kinds.KINDS, f"softmax-h{heads}"):
            name = f"{kind}-K{k}"
            body.append((k, kind, fmt(row["loss"][name]), f"{100 * attention_kinds.relative(row, name, 'gd'):+.1f}%",
                         f"{100 * attention_kinds.relative(row, name, 'gdpp'):+.1f}%"))
        body += [(k, f"GD (eta {row['rates']['gd_eta']:.3f})", fmt(row["loss"]["gd"]), "", ""),
                 (k, "GD++", fmt(row["loss"]["gdpp"]), "", "")]
    t.out(Table(3, 20, 18, 9, 9).block(("K", "model", "loss (half-MSE)", "vs GD", "vs GD++"), body))
    rows = judge(t, checks, attention_kinds, r)
    return {"depths": [{key: row[key] for key in ("n_layers", "rates", "softmax_minus_linear", "more_heads_minus_one")}
                       for row in r["depths"]], "rows": rows}


def main(argv=None) -> int:
    session = Session(argv, __doc__, NAME, "each experiment's smoke setting, numpy engine, seconds",
                      "run folders interleaved, sine and softmax-vs-linear")
    t, checks, out = session.t, session.checks, session.out_dir
    settings = settings_for(session.quick)
    results = session.open("beyond the constructed tokens: separate x and y tokens, sine regression, softmax attention",
                           "a transformer copies labels into their inputs' tokens and then does one GD step; an embedding "
                           "plus one LSA layer behaves like MLP + GD; softmax attention needs more capacity than linear",
                           {name: asdict(setting) for name, setting in settings.items()},
                           training_backend=", ".join(sorted({setting.backend for setting in settings.values()})))
    results["setting"] = {"interleaved": f"d = N = 10, {x_scale_name(settings['interleaved'].x_scale)}",
                          "sine": "y = A sin(x + phi), N = 10, x ~ U(-5, 5)",
                          "softmax-vs-linear": f"d = N = 10, {x_scale_name(settings['softmax-vs-linear'].x_scale)}"}
    results["step1_tokens"] = step1_tokens(t, checks)
    results["step2_interleaved"] = step2_interleaved(t, checks, settings["interleaved"], out / "interleaved")
    results["step3_sine"] = step3_sine(t, checks, settings["sine"], out / "sine")
    results["step4_softmax_vs_linear"] = step4_softmax(t, checks, settings["softmax-vs-linear"], out / "softmax-vs-linear")
    return session.finish(results, f"run folders in {out}")


if __name__ == "__main__":
    sys.exit(main())
