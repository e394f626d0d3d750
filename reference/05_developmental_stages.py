#!/usr/bin/env python
r"""Walkthrough 05: developmental stages of in-context linear regression, on a laptop.

Claim (Hoogland et al., "The Developmental Landscape of In-Context Learning"): a 2-layer transformer
trained on in-context linear regression develops in discrete stages.  They show as plateaus and
critical points of the local learning coefficient (LLC) over log(step), as turns of the model's
outputs in their principal components ("essential dynamics", ED), and as changes of behaviour: first
the zero prediction (the loss plateau at E[y^2] = D + sigma^2), then in-context learning (the loss on
the last example far below the loss on the first).

The walkthrough, top to bottom:

1. the setting, and the loss levels the model passes;
2. the two detectors on curves whose answer is known, on the laptop run's checkpoint grid: stage
   boundaries of a piecewise-linear LLC curve, and an ED milestone at the corner of a trajectory;
3. training, the LLC at every checkpoint (two SGLD protocols), ED and stage detection: the pipeline
   of ``iclgd reproduce stages`` (iclgd.experiments.stages), resumed where a run folder holds a part;
4. behaviour: the plateau and in-context learning;
5. the LLC and its stages, next to the paper's;
6. essential dynamics: the milestones, their distance to the LLC's boundaries, and how they move
   with the smoother (reported, not judged: the judged setting is the one stated before the run);
7. after the LLC's peak: the fall the paper reports, under both SGLD protocols.

Run it (from the repository root):

    python reference/05_developmental_stages.py            # the laptop run: ~35 min on 2 cores with jax
    python reference/05_developmental_stages.py --quick    # every step, a tiny model (seconds)
    python reference/05_developmental_stages.py --out DIR  # keep (or resume) the run in DIR

``iclgd reproduce stages --out DIR`` and this script share the run folder layout, so a folder from
either is resumed by the other.  A full run records what it printed in
reference/results/05_developmental_stages.txt and its numbers in 05_developmental_stages.json;
the checks are the claims of ``iclgd reproduce stages`` (one source of truth), and the script exits
with status 1 if any of them fails.  At laptop scale one does: the ED milestones lie farther from the
LLC's boundaries than the 0.3 decade the claim allows (step 6), so the full run exits 1, as
``iclgd reproduce stages`` does; the criterion is kept, and the failure reported.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict

import numpy as np

from iclgd.analysis.essential_dynamics import SmoothingSettings, essential_dynamics
from iclgd.analysis.stages import stages as detect_stages
from iclgd.experiments import stages as experiment
from walkthrough import Session, Table

NAME = "05_developmental_stages"


def step1_setting(t, setting) -> dict:
    t.heading("Step 1. The task, the model and the loss levels it passes")
    cfg = setting.run_config(setting.seed)
    zero = setting.d + setting.noise_variance
    t.prose(f"""Each sequence holds K = {setting.n_examples} pairs (x_k, y_k) with x ~ N(0, I_D), D = {setting.d}, and
        y = w.x + noise, w ~ N(0, I_D) fresh per sequence, noise variance sigma^2 = {setting.noise_variance:g}; the
        model reads the pairs as interleaved tokens and predicts every y_k from the pairs before it. Predicting zero
        costs E[y^2] = D + sigma^2 = {zero:g} (the paper's first plateau); the Bayes predictor (ridge regression with
        lambda = sigma^2 on the prefix) is the floor. The model: a {setting.n_layers}-layer, {setting.n_heads}-head
        transformer, d_model {setting.d_model}, d_mlp {setting.d_mlp}, LayerNorm, trained with Adam under a one-cycle
        schedule (peak {setting.lr:g}) for {setting.steps} steps at batch {setting.batch_size}, checkpoints on a
        log grid ({setting.log_checkpoints}) joined with a linear one ({setting.linear_checkpoints}).""")
    return {"zero_prediction_mse": zero, "steps": cfg.train.steps}


def step2_known_answers(t, checks, laptop) -> dict:
    t.heading("Step 2. The detectors on curves with known answers, on the laptop run's checkpoint grid")
    train = laptop.run_config(0).train  # the laptop grid in both modes
    grid = np.array(sorted({0, train.steps, *train.checkpoints.steps(train.steps)}), dtype=np.int64)
    x = np.log10(np.maximum(grid, 1))
    interior = grid[(grid > 0)]
    lo, hi = math.log10(interior[1]), math.log10(interior[-1])
    breaks = [lo + 0.45 * (hi - lo), lo + 0.7 * (hi - lo)]  # a flat stretch, a rise, a flat stretch
    curve = np.interp(x, [lo, *breaks, hi], [20.0, 20.0, 160.0, 160.0])
    noisy = curve + np.random.default_rng(0).normal(0.0, 1.0, curve.size)
    result = detect_stages(grid, noisy, errors=np.ones(grid.size), bandwidth=laptop.stage_bandwidth)
    found = [b.log_step for b in result.boundaries]
    t.prose(f"""The LLC criterion fits a smooth curve to lambda-hat against log10(step) (Gaussian-kernel local linear
        regression) and cuts at the edges of flat stretches and where its slope has a local minimum in magnitude
        (critical points). A
        curve flat at 20, rising to 160 between 10^{breaks[0]:.2f} and 10^{breaks[1]:.2f} steps and flat after, with noise
        of one standard error, sampled at the laptop run's {grid.size} checkpoints: boundaries at 10^({', '.join(f'{b:.2f}' for b in found)}),
        stages {' -> '.join(result.types)}.""")
    checks("stage detection finds both ends of the rise", ", ".join(f"{b:.2f}" for b in found),
           f"two boundaries within 0.2 decade of {breaks[0]:.2f}, {breaks[1]:.2f}",
           len(found) == 2 and all(abs(f - b) <= 0.2 for f, b in zip(found, breaks)))
    corner = grid.size // 2
    index = np.arange(grid.size, dtype=np.float64)
    path = np.stack([np.minimum(index, corner), np.maximum(index - corner, 0.0), np.zeros(grid.size)], axis=1)
    basis = np.linalg.qr(np.random.default_rng(1).standard_normal((40, 3)))[0].T  # the path inside 40 features
    ed = essential_dynamics(path @ basis, grid, smoothing=SmoothingSettings(sigma=laptop.ed_sigma))
    t.prose(f"""ED smooths the trajectory in its leading principal components along the checkpoint index and marks
        milestones where it turns (cusps of the evolute, sharp turns). Two straight segments at right angles, joined
        at checkpoint {corner} (step {grid[corner]}), in 40 features: PCA explains
        {', '.join(f'{v:.3f}' for v in ed.pca.explained_variance_ratio)} with three components, and the milestones
        are at steps {ed.milestone_steps}.""")
    checks("a corner is one milestone, at the corner", f"{ed.milestone_steps}", f"[{grid[corner]}]",
           ed.milestone_steps == [int(grid[corner])], "\n")
    return {"stage_breaks": breaks, "stage_found": found, "corner_step": int(grid[corner]), "corner_found": ed.milestone_steps}


def step3_pipeline(t, setting, out_dir) -> dict:
    t.heading("Step 3. Training, the LLC at every checkpoint, essential dynamics, stages")
    burnin = "llc_run's default" if setting.llc_burnin is None else setting.llc_burnin
    t.prose(f"""iclgd.experiments.stages runs each part resumably in {out_dir}: training; the LLC at every checkpoint with
        two SGLD protocols (settled: {setting.llc_chains} chains x ({burnin} burn-in + {setting.llc_draws} draws); the paper's:
        {setting.paper_chains} chains x {setting.paper_draws} draws counted from the start), minibatch {setting.llc_batch_size}, on
        {setting.llc_data_size} sequences; the outputs of every checkpoint on {setting.ed_sequences} fixed sequences for ED;
        then stage detection on the LLC and the loss curves.""")
    results = experiment.run(out_dir, setting, quiet=False)
    seed = results["seeds"][str(setting.seed)]
    t.out(f"  settled burn-in: {seed['llc']['settled']['settings'].get('burnin')} steps")
    t.out(f"  training {seed['train_seconds']:.0f} s, LLC settled {seed['llc']['settled']['seconds']:.0f} s, "
          f"LLC paper protocol {seed['llc']['paper']['seconds']:.0f} s (summed over the processes that ran them)\n")
    return results


def step4_behaviour(t, checks, rows: dict, seed: dict, quick: bool) -> None:
    t.heading("Step 4. Behaviour: the zero prediction, then in-context learning")
    table = Table(6, 9, 10, 12)
    body = [(r["step"], f"{r['pretraining']['mse']:.3f}", f"{r['pretraining']['icl_score']:.2f}",
             f"{r['pretraining']['delta_ridge']:.3f}") for r in seed["behaviour"]]
    t.out(table.block(("step", "MSE", "ICL score", "delta ridge"), body))
    t.prose(f"""MSE: the pretraining loss on validation sequences; ICL score: loss on the last example minus loss on the
        first; delta ridge: the mean squared gap to the Bayes prediction. Ridge's own MSE here: {seed['ridge_mse']:.3f}
        (the paper's 1.656 is on its validation data).""")
    if not quick:
        for name in ("the loss leaves", "in-context learning"):
            rows_by(checks, rows, name)


def step5_llc(t, checks, rows: dict, seed: dict, setting, quick: bool) -> None:
    t.heading("Step 5. The LLC over training and its stages")
    settled, paper = ({r["step"]: r for r in seed["llc"][p]["table"]} for p in ("settled", "paper"))
    t.out(Table(6, 16, 16).block(("step", "settled", "paper protocol"),
                                 [(s, estimate(settled.get(s)), estimate(paper.get(s))) for s in sorted(set(settled) | set(paper))]))
    summary = seed["stages"]["llc_settled"]
    t.prose(f"""Stages of the settled LLC (bandwidth {summary.get('smoother', {}).get('bandwidth_decades')} decades):
        boundaries at steps {', '.join(f"{b['step']:.0f}" for b in summary.get('boundaries', [])) or 'none'}; stages
        {' -> '.join(st['type'] for st in summary.get('stages', []))}. Our stages by index next to the paper's (the
        schedule is compressed: {setting.steps} steps at batch {setting.batch_size} against the paper's 500k at 256, so
        stages compare by order, not by step):""")
    ends = [(row["paper"]["stage"] if row["paper"] else "-",
             row["paper"]["llc"] if row["paper"] else "-",
             row["ours"]["end_step"] if row["ours"] else "not reached",
             row["ours"]["type"] if row["ours"] else "",
             number(row["ours"]["llc_settled"]) if row["ours"] else "") for row in seed["stage_ends"]]
    t.out(Table(5, 11, 12, 8, 12).block(("stage", "paper LLC", "ours: end", "type", "LLC settled"), ends))
    if not quick:
        for name in ("the LLC rises", "the LLC reaches values", "at least two stage boundaries"):
            rows_by(checks, rows, name)


def step6_essential_dynamics(t, checks, rows: dict, seed: dict, setting, quick: bool) -> dict:
    t.heading("Step 6. Essential dynamics: milestones and the LLC's boundaries")
    ed = seed["ed"]
    t.prose(f"""PCA of the full outputs of {ed['n_checkpoints']} checkpoints on {ed['sequences']} sequences
        ({ed['n_features']} features): explained variance {', '.join(f'{v:.3f}' for v in ed['explained_variance_ratio'])}.
        Milestones (local-quadratic smoothing, sigma {setting.ed_sigma:g} checkpoints, the setting fixed before the run):
        steps {ed['milestone_steps'] or 'none'}; nearest LLC boundary in decades:
        {', '.join(f"{m['distance_decades']:.3f}" for m in seed['milestone_matches'] if m['distance_decades'] is not None) or 'none'}.""")
    if not quick:
        rows_by(checks, rows, "essential dynamics", end="\n")
    sensitivity = seed["ed_sensitivity"]
    t.prose("""How the milestones move with the features and the smoother (the authors smooth in the checkpoint index
        with scipy's gaussian_filter1d; log_step smooths in log(1 + step)). Reported, not judged: choosing the smoother
        after seeing where the boundaries are would make the check meaningless, and the more milestones a smoother
        finds, the likelier one falls near a boundary by chance.""")
    t.out(experiment.sensitivity_table(sensitivity) + "\n")
    return {"sensitivity": sensitivity}


def step7_after_peak(t, seed: dict) -> dict:
    t.heading("Step 7. After the peak: does the LLC fall?")
    settled, paper = ({r["step"]: r["llc_mean"] for r in seed["llc"][p]["table"]} for p in ("settled", "paper"))
    fall = {p: seed["llc"][p]["fall"] for p in ("settled", "paper")}
    peak = fall["settled"].get("peak_step")
    after = [s for s in sorted(settled) if peak is not None and s >= peak]

    def ratio(step):
        a, b = paper.get(step), settled.get(step)
        return f"{a / b:.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "n/a"
    t.out(Table(6, 9, 15, 7).block(("step", "settled", "paper protocol", "ratio"),
                                   [(s, number(settled.get(s)), number(paper.get(s)), ratio(s)) for s in after]))
    shown = {p: (f"{100 * f['relative_fall']:.1f}% ({f['fall_in_std_errors']:.1f} s.e.)"
                 if f.get("relative_fall") is not None and f.get("fall_in_std_errors") is not None else "n/a")
             for p, f in fall.items()}
    t.prose(f"""The paper sees the LLC fall from 170 to 123 in LR3-LR4 while the loss keeps falling. Its chains count
        draws from the first SGLD step. Here, counted from the start, the estimate falls {shown['paper']} from its peak;
        counted after a burn-in of {seed['llc']['settled']['settings'].get('burnin')} steps, it falls {shown['settled']}. The ratio column is the share of the settled
        value that the draws from the start reach. A drop is consistent with chains that take longer to climb from w* to
        their stationary loss at later checkpoints, so that a count from the start reads a smaller LLC there; a fall
        that only the count from the start shows is then a property of the sampler's budget, not of the model.""")
    return {"peak_step": peak, "fall": fall}


def number(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def estimate(row: dict | None) -> str:
    """An LLC table row as 'mean +- s.e.' (n/a where it is missing or not finite)."""
    if not row:
        return "n/a"
    return f"{number(row.get('llc_mean'))} +- {number(row.get('llc_std_error'))}"


def rows_by(checks, rows: dict, prefix: str, end: str = "") -> None:
    """Check the claim of ``iclgd reproduce stages`` whose statement starts with ``prefix``."""
    ((name, ours, criterion, holds),) = [row for key, row in rows.items() if key.startswith(prefix)]
    checks(name, ours, criterion, holds, end)


def setting_for(quick: bool) -> experiment.StagesSetting:
    """The laptop run of ``iclgd reproduce stages`` (one seed), or its --quick smoke setting."""
    return experiment.StagesSetting.for_scale("laptop", quick=quick)


def main(argv=None) -> int:
    session = Session(argv, __doc__, NAME, "a tiny model on numpy, seconds", "training run, LLC estimates and ED features")
    t, checks = session.t, session.checks
    setting = setting_for(session.quick)
    results = session.open("developmental stages of in-context linear regression", experiment.EXPERIMENT.claim,
                           asdict(setting), training_backend=setting.backend)
    results["step1_setting"] = step1_setting(t, setting)
    results["step2_known_answers"] = step2_known_answers(t, checks, setting_for(False))
    measured = step3_pipeline(t, setting, session.out_dir / "stages")
    seed = measured["seeds"][str(setting.seed)]
    claim_rows = experiment.claim_rows(measured) if not session.quick else experiment.smoke_rows(measured)
    rows = {row[0]: row for row in claim_rows}
    step4_behaviour(t, checks, rows, seed, session.quick)
    step5_llc(t, checks, rows, seed, setting, session.quick)
    results["step6_essential_dynamics"] = step6_essential_dynamics(t, checks, rows, seed, setting, session.quick)
    results["step7_after_peak"] = step7_after_peak(t, seed)
    if session.quick:
        t.heading("Smoke checks (a tiny model: the paper's claims are not judged)")
        for name, ours, criterion, holds in claim_rows:
            checks(name, ours, criterion, holds)
    results["claims" if not session.quick else "smoke_checks"] = [list(row) for row in claim_rows]
    results["seed"] = {k: seed[k] for k in ("checkpoints", "milestone_matches", "stage_ends", "ridge_mse")}
    return session.finish(results, f"run folder {session.out_dir / 'stages'}")


if __name__ == "__main__":
    sys.exit(main())
