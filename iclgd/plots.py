"""Figures of a run (PNG, written atomically). Needs the `plot` extra (matplotlib).

Every figure is meant to be read without the report: axes say what is plotted and in which
units (losses are half-MSE, 0.5 mean (yhat - y)^2, in squared label units; steps are
optimiser updates), log axes carry plain decimal ticks, a trained model that overlaps GD gets
its own markers and a ratio panel, and the ``title`` argument (the experiment's: tied or
untied, the input scale) heads the figure."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from iclgd import runio


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


LOSS_LABEL = "half-MSE (validation tasks)"


def _figure(n_panels: int = 1, width: float = 5.0, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, 3.6 + (0.3 if title else 0.0)), squeeze=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return plt, fig, axes[0]


def _log_y(ax) -> None:
    """A log y axis whose ticks read as plain decimals (0.2, 0.3, 0.5, 1), denser when the data
    span less than a decade.  Call it after plotting (it reads the data's range)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    decades = np.log10(high / low) if low > 0 and high > low else 1.0
    # a narrow range gets more ticks per decade, so that at least a few are labelled
    subs = (1.0, 2.0, 5.0) if decades > 2 else (1.0, 2.0, 3.0, 5.0) if decades > 0.7 else (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _ratio_panel(ax, xs, ratios, errors, labels, xlabel: str, reference: str, colors=None) -> None:
    """100 (model / reference - 1) % against x, with a zero line: where two loss curves overlap
    on a log axis, this shows which is lower and by how much (``colors``: the reference's colour
    in the loss panel, default C1, C2, ...)."""
    for i, (values, error, label) in enumerate(zip(ratios, errors, labels)):
        ax.errorbar(xs, 100 * np.asarray(values), yerr=None if error is None else 100 * np.asarray(error),
                    fmt="o-", ms=4, capsize=2, color=(colors or [f"C{j + 1}" for j in range(len(ratios))])[i], label=label)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"model / {reference} - 1 (%)")
    ax.legend(fontsize=7)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    runio.atomic_write_bytes(path, buffer.getvalue())


def loss_curve(path: Path, metrics_records: list[dict], checkpoints: list[dict], gd_loss: float, optimal_loss: float,
               *, title: str = "") -> None:
    """Left: training loss (per logged step) and validation loss at checkpoints, with the GD and
    optimum lines.  Right: the validation loss relative to GD's, 100 (LSA / GD - 1) %."""
    plt, fig, (ax, ratio) = _figure(2, width=5.0, title=title)
    steps = np.array([r["step"] for r in metrics_records])
    losses = np.array([r["loss"] for r in metrics_records])
    ax.plot(steps, losses, color="0.7", lw=0.8, label="training batch loss (fresh tasks)")
    ax.plot([c["step"] for c in checkpoints], [c["loss"] for c in checkpoints], "o-", ms=3, label="trained LSA (validation)")
    ax.axhline(gd_loss, color="C1", ls="--", label=f"GD, tuned eta (validation, {gd_loss:.4f})")
    ax.axhline(optimal_loss, color="C2", ls=":", label=f"closed-form optimum (expectation, {optimal_loss:.4f})")
    _log_y(ax)
    ax.set_xlabel("training step (optimiser updates)")
    ax.set_ylabel("half-MSE")
    ax.legend(fontsize=7)
    late = [c for c in checkpoints if c["step"] > 0]
    _ratio_panel(ratio, [c["step"] for c in late], [[c["loss"] / gd_loss - 1.0 for c in late]], [None],
                 ["trained LSA (validation)"], "training step (optimiser updates)", "GD", colors=["C0"])
    _save(plt, fig, path)


def alignment_curve(path: Path, checkpoints: list[dict], *, title: str = "") -> None:
    """preds diff, model cos and model diff against GD, over training."""
    plt, fig, axes = _figure(3, width=3.6, title=title)
    steps = [c["step"] for c in checkpoints]
    units = {"preds_diff": "mean |yhat_LSA - yhat_GD| (label units)", "model_cos": "mean cosine (1 = aligned)",
             "model_diff": "mean L2 distance (label / input units)"}
    for ax, key, label in zip(axes, ("preds_diff", "model_cos", "model_diff"), ("preds diff", "model cos", "model diff")):
        ax.plot(steps, [c[key] for c in checkpoints], "o-", ms=3)
        ax.set_xlabel("training step (optimiser updates)")
        ax.set_ylabel(units[key], fontsize=8)
        ax.set_title(f"{label} (LSA vs GD)")
    _save(plt, fig, path)


def input_scale_sweep(path: Path, rows: list[dict], *, title: str = "") -> None:
    """Left: loss of the trained model and of GD when inputs are scaled by alpha (log scale).
    Right: the trained model relative to GD, 100 (LSA / GD - 1) %."""
    plt, fig, (ax, ratio) = _figure(2, width=5.0, title=title)
    alphas = [r["alpha"] for r in rows]
    for (key, label), fmt in zip((("model_loss", "trained LSA"), ("gd_loss", "GD (eta tuned at alpha = 1)")), ("o-", "s--")):
        means = np.array([r[key]["mean"] for r in rows])
        errors = np.array([r[key]["stderr"] for r in rows])
        ax.errorbar(alphas, means, yerr=errors, fmt=fmt, ms=4, capsize=2, label=label)
    _log_y(ax)
    ax.set_xlabel("input scale alpha (x ~ U(-alpha a, alpha a))")
    ax.set_ylabel(LOSS_LABEL)
    ax.legend(fontsize=8)
    gd = np.array([r["gd_loss"]["mean"] for r in rows])
    model = np.array([r["model_loss"]["mean"] for r in rows])
    _ratio_panel(ratio, alphas, [model / gd - 1.0], [None], ["trained LSA"], "input scale alpha", "GD", colors=["C0"])
    _save(plt, fig, path)


def ood_sweep(path: Path, sweeps: dict[str, list[dict]], key: str, xlabel: str, band: float = 0.10, *, title: str = "") -> None:
    """Out-of-distribution sweep of several models, each against its own GD baseline.

    ``sweeps``: model name -> rows, each with the shift ``row[key]`` (a number, or a name drawn
    as a category) and the estimates ``model_loss``, ``gd_loss`` and ``model_minus_gd``.
    Left: half-MSE of each model (solid) and of its GD (dashed), log scale.  Right: the relative
    gap 100 (LSA / GD - 1) % = 100 mean(LSA - GD) / mean(GD), error bars one paired standard
    error, with the band +-100 ``band`` % shaded."""
    plt, fig, (left, right) = _figure(2, width=5.0, title=title)
    first = next(iter(sweeps.values()))
    categorical = isinstance(first[0][key], str)
    for i, (name, rows) in enumerate(sweeps.items()):
        xs = np.arange(len(rows), dtype=float) if categorical else np.array([r[key] for r in rows], dtype=float)
        if categorical:
            xs = xs + 0.08 * (i - (len(sweeps) - 1) / 2)  # side by side
        for field, style, label in (("model_loss", "o-", f"LSA ({name})"), ("gd_loss", "x--", f"GD, eta of {name}")):
            means = np.array([r[field]["mean"] for r in rows])
            errors = np.array([r[field]["stderr"] for r in rows])
            left.errorbar(xs, means, yerr=errors, fmt=style[0] if categorical else style, color=f"C{i}", ms=4,
                          capsize=2, label=label)
        gd = np.array([r["gd_loss"]["mean"] for r in rows])
        gap = 100 * np.array([r["model_minus_gd"]["mean"] for r in rows]) / gd
        gap_err = 100 * np.array([r["model_minus_gd"]["stderr"] for r in rows]) / gd
        right.errorbar(xs, gap, yerr=gap_err, fmt="o-" if not categorical else "o", color=f"C{i}", ms=4, capsize=2,
                       label=f"LSA ({name}) vs its GD")
    right.axhspan(-100 * band, 100 * band, color="0.9", zorder=0, label=f"+-{100 * band:g}%")
    right.axhline(0.0, color="0.5", lw=0.8)
    _log_y(left)
    left.set_ylabel(LOSS_LABEL)
    right.set_ylabel("LSA / its GD - 1 (%)")
    for ax in (left, right):
        ax.set_xlabel(xlabel)
        if categorical:
            ax.set_xticks(range(len(first)))
            ax.set_xticklabels([r[key] for r in first])
        ax.legend(fontsize=7)
    _save(plt, fig, path)


def loss_by_depth(path: Path, rows: list[dict], labels: dict, *, title: str = "") -> None:
    """Left: half-MSE against depth K of the trained LSA, tuned GD, learned-rate GD and GD++
    (multi-layer claim).  Right: the trained LSA relative to learned-rate GD++ and GD, in %."""
    plt, fig, (ax, ratio) = _figure(2, width=5.0, title=title)
    depths = [r["n_layers"] for r in rows]
    styles = (("lsa", "o-"), ("tuned_gd", "s--"), ("gd", "^:"), ("gdpp", "v-."), ("tuned_gdpp", "D--"))
    for key, style in [(key, style) for key, style in styles if key in rows[0]["loss"]]:
        means = np.array([r["loss"][key]["mean"] for r in rows])
        errors = np.array([r["loss"][key]["stderr"] for r in rows])
        ax.errorbar(depths, means, yerr=errors, fmt=style, ms=5 if key == "lsa" else 4, capsize=2, label=labels[key])
    _log_y(ax)
    ax.set_xticks(depths)
    ax.set_xlabel("layers / steps K")
    ax.set_ylabel(LOSS_LABEL)
    ax.legend(fontsize=8)
    lsa = np.array([r["loss"]["lsa"]["mean"] for r in rows])
    others = [k for k in ("tuned_gdpp", "gdpp", "gd") if k in rows[0]["loss"]]
    _ratio_panel(ratio, depths, [lsa / np.array([r["loss"][k]["mean"] for r in rows]) - 1.0 for k in others],
                 [None] * len(others), [f"trained LSA vs {labels[k]}" for k in others], "layers / steps K", "baseline",
                 colors=["C4", "C3", "C2"][-len(others):])
    ratio.set_xticks(depths)
    _save(plt, fig, path)


def loss_by_layer(path: Path, rows: list[dict], labels: dict, *, title: str = "") -> None:
    """Inside each trained model: the half-MSE of the prediction read out after layer l, one line per depth K."""
    keys = ("lsa", "gdpp", "gd", "tuned_gd")
    plt, fig, axes = _figure(len(keys), width=3.6, title=title)
    for ax, key in zip(axes, keys):
        for r in rows:
            per_layer = r["loss_per_layer"][key]
            ax.plot(range(1, len(per_layer) + 1), [e["mean"] for e in per_layer], "o-", ms=3, label=f"K = {r['n_layers']}")
        ax.set_title(labels[key])
        _log_y(ax)
        ax.set_xlabel("read out after layer l")
        ax.set_xticks(range(1, max(r["n_layers"] for r in rows) + 1))
    axes[0].set_ylabel(LOSS_LABEL)
    axes[0].legend(fontsize=7)
    _save(plt, fig, path)


def alignment_by_depth(path: Path, rows: list[dict], labels: dict, *, title: str = "") -> None:
    """preds diff, model cos and model diff of the trained LSA against learned GD and GD++, by depth."""
    plt, fig, axes = _figure(3, width=3.6, title=title)
    depths = [r["n_layers"] for r in rows]
    for ax, metric, title in zip(axes, ("preds_diff", "model_cos", "model_diff"), ("preds diff", "model cos", "model diff")):
        for other in [k for k in ("gd", "gdpp", "tuned_gdpp") if k in rows[0]["alignment"]]:
            means = [r["alignment"][other][metric]["mean"] for r in rows]
            errors = [r["alignment"][other][metric]["stderr"] for r in rows]
            ax.errorbar(depths, means, yerr=errors, fmt="o-", ms=3, capsize=2, label=f"LSA vs {labels[other]}")
        ax.set_xticks(depths)
        ax.set_xlabel("layers K")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    _save(plt, fig, path)


def _step_text(value: float) -> str:
    """A training step as a tick label: 0, 1, 10, 100, 1000, 10k, 100k, 1M."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _training_step_axis(ax, steps, limits=None) -> None:
    """A log x axis of training steps with plain tick labels; symmetric-log (linear on [0, 1])
    when step 0 is shown.  ``limits``: the x range (to align several panels)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if len(steps) and min(steps) <= 0:
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
        ax.set_xlabel("training step (log scale; linear on [0, 1])")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("training step (log scale)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _step_text(value)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if limits is not None:
        ax.set_xlim(*limits)


def llc_curve(path: Path, rows: list[dict], *, title: str = "") -> None:
    """The LLC of a run's checkpoints (`iclgd llc`): lambda-hat against training step with error
    bars of one standard error over chains; the MALA acceptance of each checkpoint's SGLD steps
    with the 0.9 line below which the step size biases the estimate; and, when recorded, the
    per-position LLCs lambda-hat_k (one line per position k).  ``rows``: llc.json's table
    (step, llc_mean, llc_std_error, mala_acceptance, llc_per_position; a diverged checkpoint's
    llc_mean is None and it is marked on the step axis)."""
    positions = [r for r in rows if r.get("llc_per_position")]
    plt, fig, axes = _figure(3 if positions else 2, width=4.4, title=title)
    good = [r for r in rows if r.get("llc_mean") is not None]
    steps = [r["step"] for r in good]
    errors = [r["llc_std_error"] if r.get("llc_std_error") is not None else 0.0 for r in good]
    ax = axes[0]
    ax.errorbar(steps, [r["llc_mean"] for r in good], yerr=errors, fmt="o-", ms=3, capsize=2, label="lambda-hat +- s.e.")
    diverged = [r["step"] for r in rows if r.get("llc_mean") is None]
    for step in diverged:
        ax.axvline(step, color="C3", ls=":", lw=0.8)
    if diverged:
        ax.plot([], [], color="C3", ls=":", label="chains diverged")
    _training_step_axis(ax, [r["step"] for r in rows])
    ax.set_ylabel("local learning coefficient lambda-hat")
    ax.set_title("LLC over training")
    ax.legend(fontsize=7)
    limits = ax.get_xlim()
    mala = [(r["step"], r["mala_acceptance"]) for r in good if r.get("mala_acceptance") is not None]
    ax = axes[1]
    if mala:
        ax.plot(*zip(*mala), "o-", ms=3, color="C2", label="mean over chains and draws")
    ax.axhline(0.9, color="C3", ls="--", lw=0.8, label="0.9 (below: lower the step size)")
    _training_step_axis(ax, [r["step"] for r in rows], limits)
    ax.set_ylim(min([0.8] + [m for _, m in mala]) - 0.02, 1.01)
    ax.set_ylabel("MALA acceptance probability")
    ax.set_title("SGLD step check (MALA)")
    ax.legend(fontsize=7)
    if positions:
        ax = axes[2]
        values = np.array([r["llc_per_position"] for r in positions], dtype=float)
        cmap = plt.get_cmap("viridis")
        k_count = values.shape[1]
        for k in range(k_count):
            ax.plot([r["step"] for r in positions], values[:, k], "-", lw=1.2, color=cmap(k / max(1, k_count - 1)),
                    label=f"k = {k + 1}")
        _training_step_axis(ax, [r["step"] for r in rows], limits)
        ax.set_ylabel("per-position lambda-hat_k")
        ax.set_title("LLC of the loss at position k")
        ax.legend(fontsize=6, ncol=2 if k_count > 4 else 1)
    _save(plt, fig, path)


# --- `iclgd reproduce stages` --------------------------------------------------------------------------


def _stage_bands(ax, stage_summary: dict) -> None:
    """Shade the stages of a ``stages(...).summary()`` alternately and mark their boundaries."""
    for j, stage in enumerate(stage_summary.get("stages") or []):
        ax.axvspan(stage["start_step"], stage["end_step"], color="0.85" if j % 2 else "0.95", zorder=0)
        ax.text(np.sqrt(stage["start_step"] * stage["end_step"]), 1.0, f"{j + 1}: {stage['type']}", fontsize=6,
                ha="center", va="top", transform=ax.get_xaxis_transform())
    for boundary in stage_summary.get("boundaries") or []:
        ax.axvline(boundary["step"], color="0.4", lw=0.8, ls="--", zorder=1)


def _eval_series(rows: list[dict], *keys) -> tuple[list, list]:
    """(steps, values) of a nested key of evaluation rows, where present and finite."""
    steps, values = [], []
    for row in rows:
        value = row
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            steps.append(row["step"])
            values.append(float(value))
    return steps, values


def stages_overview(path: Path, seed_results: dict, *, title: str = "") -> None:
    """The paper's Fig. 1: the pretraining loss and the LLC (both protocols, +- s.e.) over log steps,
    with the stages found from the LLC (settled protocol) shaded; a second panel: the loss's stages."""
    plt, fig, axes = _figure(2, width=5.5, title=title)
    behaviour = seed_results["behaviour"]
    all_steps = [row["step"] for row in behaviour]
    for ax, key, what in ((axes[0], "llc_settled", "stages from the LLC (settled)"), (axes[1], "loss", "stages from the loss")):
        _stage_bands(ax, seed_results["stages"][key])
        ax.plot(*_eval_series(behaviour, "pretraining", "mse"), "o-", ms=3, color="C0", label="pretraining MSE")
        ax.set_ylabel("MSE", color="C0")
        twin = ax.twinx()
        for protocol, color in (("settled", "C3"), ("paper", "C1")):
            table = [r for r in seed_results["llc"][protocol]["table"] if r.get("llc_mean") is not None]
            twin.errorbar([r["step"] for r in table], [r["llc_mean"] for r in table],
                          yerr=[r.get("llc_std_error") or 0.0 for r in table], fmt="s-", ms=3, capsize=2, color=color,
                          label=f"LLC, {protocol} protocol")
        twin.set_ylabel("LLC lambda-hat")
        _training_step_axis(ax, all_steps)
        ax.set_title(what, fontsize=9)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=6, loc="center left")
    _save(plt, fig, path)


def stages_llc_per_position(path: Path, seed_results: dict, *, title: str = "") -> None:
    """The per-position LLC lambda-hat_k over log steps, one panel per SGLD protocol."""
    plt, fig, axes = _figure(2, width=4.6, title=title)
    for ax, protocol in zip(axes, ("settled", "paper")):
        table = [r for r in seed_results["llc"][protocol]["table"] if r.get("llc_per_position")]
        if table:
            values = np.array([r["llc_per_position"] for r in table], dtype=float)
            cmap = plt.get_cmap("viridis")
            k_count = values.shape[1]
            for k in range(k_count):
                ax.plot([r["step"] for r in table], values[:, k], "-", color=cmap(k / max(1, k_count - 1)), label=f"k = {k + 1}")
            ax.legend(fontsize=6, ncol=2)
        _training_step_axis(ax, [r["step"] for r in seed_results["llc"][protocol]["table"]])
        ax.set_ylabel("per-position lambda-hat_k")
        ax.set_title(f"{protocol} protocol", fontsize=9)
    _save(plt, fig, path)


def stages_icl_score(path: Path, rows: list[dict], *, threshold: float = -2.0, title: str = "") -> None:
    """The ICL score loss_K - loss_1 over log steps on both validation sets, with the threshold line."""
    plt, fig, axes = _figure(1, width=5.5, title=title)
    ax = axes[0]
    for name, color in (("pretraining", "C0"), ("true", "C2")):
        ax.plot(*_eval_series(rows, name, "icl_score"), "o-", ms=3, color=color, label=f"{name} distribution")
    ax.axhline(threshold, color="C3", ls="--", lw=0.8, label=f"{threshold:g}")
    ax.axhline(0.0, color="0.5", lw=0.6)
    _training_step_axis(ax, [r["step"] for r in rows])
    ax.set_ylabel("ICL score: MSE at k = K minus at k = 1")
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def stages_pc_trajectory(path: Path, ed_summary: dict, llc_stages: dict, *, title: str = "") -> None:
    """The essential-dynamics trajectory in PC1-PC2 and PC1-PC3 (raw points, smoothed curve),
    coloured by log step, with the detected milestones circled and the checkpoints nearest the
    LLC boundaries marked."""
    trajectory = ed_summary["trajectory"]
    scores = np.array(trajectory["scores"], dtype=float)
    smoothed = np.array(trajectory["smoothed"], dtype=float)
    steps = np.array(trajectory["steps"], dtype=float)
    pairs = [(0, j) for j in range(1, min(scores.shape[1], 3))]
    plt, fig, axes = _figure(len(pairs), width=4.6, title=title)
    colour = np.log10(1.0 + steps)
    milestones = set(ed_summary.get("milestone_steps") or [])
    boundaries = [b["checkpoint"] for b in llc_stages.get("boundaries") or []]
    ratio = ed_summary.get("explained_variance_ratio") or []
    for ax, (i, j) in zip(axes, pairs):
        points = ax.scatter(scores[:, i], scores[:, j], c=colour, s=12, cmap="viridis", zorder=2)
        ax.plot(smoothed[:, i], smoothed[:, j], "-", color="0.3", lw=1.0, zorder=1, label="smoothed")
        mark = [k for k, s in enumerate(steps) if int(s) in milestones]
        if mark:
            ax.scatter(scores[mark, i], scores[mark, j], s=80, facecolors="none", edgecolors="C3", lw=1.5, zorder=3,
                       label="ED milestones")
        near = [k for k, s in enumerate(steps) if s in boundaries]
        if near:
            ax.scatter(scores[near, i], scores[near, j], marker="x", s=50, color="C1", zorder=4, label="LLC boundaries")
        name = lambda c: f"PC{c + 1}" + (f" ({100 * ratio[c]:.0f}%)" if c < len(ratio) and ratio[c] is not None else "")  # noqa: E731
        ax.set_xlabel(name(i))
        ax.set_ylabel(name(j))
        ax.legend(fontsize=6)
    fig.colorbar(points, ax=list(axes), label="log10(1 + step)")
    buffer = io.BytesIO()  # not _save: tight_layout does not take a colorbar shared by panels
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    runio.atomic_write_bytes(path, buffer.getvalue())


def stages_behaviour(path: Path, rows: list[dict], *, ridge_mse: float | None = None, title: str = "") -> None:
    """Behavioural measures over log steps, each where evaluations.jsonl records it: the MSE at
    every position (with ridge's mean), the distance to ridge, the parameter norm, prediction
    norms, layer-norm weight norms and the out-of-distribution MSEs."""
    steps_all = [r["step"] for r in rows]
    extra_keys = sorted({key for r in rows for key, value in r.items()
                         if key not in ("step", "pretraining", "true", "param_norm") and isinstance(value, (dict, int, float))})
    plt, fig, axes = _figure(4, width=4.2, title=title)
    ax = axes[0]
    per_position = [(r["step"], r["pretraining"]["mse_per_position"]) for r in rows
                    if isinstance(r.get("pretraining"), dict) and r["pretraining"].get("mse_per_position")]
    if per_position:
        values = np.array([v for _, v in per_position], dtype=float)
        cmap = plt.get_cmap("viridis")
        for k in range(values.shape[1]):
            ax.plot([s for s, _ in per_position], values[:, k], "-", color=cmap(k / max(1, values.shape[1] - 1)), label=f"k = {k + 1}")
    if ridge_mse is not None:
        ax.axhline(ridge_mse, color="C3", ls="--", lw=0.8, label="ridge (mean over k)")
    ax.set_ylabel("pretraining MSE at position k")
    ax.legend(fontsize=5, ncol=2)
    ax = axes[1]
    for name, color in (("pretraining", "C0"), ("true", "C2")):
        ax.plot(*_eval_series(rows, name, "delta_ridge"), "o-", ms=3, color=color, label=f"{name}")
    ax.set_ylabel("distance to ridge (mean sq. difference)")
    ax.legend(fontsize=6)
    ax = axes[2]
    ax.plot(*_eval_series(rows, "param_norm"), "o-", ms=3, color="C0", label="parameter norm")
    for key in ("pretraining", "true"):
        series = _eval_series(rows, key, "prediction_norm")
        if series[0]:
            ax.plot(*series, "-", color="C1" if key == "pretraining" else "C2", label=f"prediction norm ({key})")
    for n, key in enumerate(extra_keys):
        value = rows[-1].get(key)
        if isinstance(value, (int, float)) and "norm" in key:
            ax.plot(*_eval_series(rows, key), "-", lw=0.8, color=f"C{(n + 3) % 10}", label=key)
        elif isinstance(value, dict) and "norm" in key:
            for sub in sorted(value):
                if "bias" in sub:
                    continue
                series = _eval_series(rows, key, sub)
                if series[0]:
                    ax.plot(*series, "-", lw=0.8, label=f"{key}/{sub}")
    ax.set_ylabel("norms")
    ax.legend(fontsize=5)
    ax = axes[3]
    drawn = False
    for n, key in enumerate(extra_keys):
        series = _eval_series(rows, key, "mse")
        if series[0] and "norm" not in key:
            ax.plot(*series, "-", color=f"C{n % 10}", label=key)
            drawn = True
    ax.plot(*_eval_series(rows, "true", "mse"), "-", color="k", lw=1.2, label="true (in distribution)")
    ax.set_ylabel("MSE (other validation sets)")
    if drawn:
        ax.set_yscale("log")
    ax.legend(fontsize=5)
    limits = (min(steps_all), 1.3 * max(steps_all)) if steps_all else None
    for ax in axes:
        _training_step_axis(ax, steps_all, limits)
    _save(plt, fig, path)


def task_prior_deltas(path: Path, rows: list[dict], *, title: str = "") -> None:
    """The finite-pool sweep (iclgd.experiments.task_prior): for each validation set (left: the
    pretraining distribution, right: the Gaussian prior), the trained model's mean squared
    distance to dMMSE and to ridge against the pool size M on a log2 axis (M = infinity drawn one
    step right of the largest M and labelled "inf"), ± one standard error; log y axis."""
    plt, fig, axes = _figure(2, width=5.0, title=title)
    finite = [r["n_tasks"] for r in rows if r["n_tasks"] is not None]
    top = int(np.log2(max(finite))) if finite else 0
    xs = [np.log2(r["n_tasks"]) if r["n_tasks"] is not None else top + 1 for r in rows]
    for ax, (set_name, label) in zip(axes, (("pretraining", "pretraining distribution (the pool)"),
                                            ("true", "Gaussian prior"))):
        for key, text, fmt in (("delta_dmmse", "to dMMSE", "o-"), ("delta_ridge", "to ridge", "s--")):
            pts = [(x, r["sets"][set_name][key]) for x, r in zip(xs, rows) if key in r["sets"][set_name]]
            if not pts:
                continue
            ax.errorbar([p[0] for p in pts], [max(p[1]["mean"], 1e-12) for p in pts], yerr=[p[1]["stderr"] for p in pts],
                        fmt=fmt, ms=4, capsize=2, label=f"model {text}")
        ticks = sorted(set(xs))
        ax.set_xticks(ticks)
        ax.set_xticklabels(["inf" if t == top + 1 and None in [r["n_tasks"] for r in rows] else f"{2 ** int(t)}" for t in ticks],
                           fontsize=7)
        _log_y(ax)
        ax.set_xlabel("tasks in the pool M (log2 axis)")
        ax.set_ylabel("mean squared distance (label units^2)")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
    _save(plt, fig, path)
