"""Figures of a run (PNG, written atomically). Needs the `plot` extra (matplotlib)."""
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


def _figure(n_panels: int = 1, width: float = 5.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, 3.6), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    runio.atomic_write_bytes(path, buffer.getvalue())


def loss_curve(path: Path, metrics_records: list[dict], checkpoints: list[dict], gd_loss: float, optimal_loss: float) -> None:
    """Training loss (per logged step) and validation loss at checkpoints, with the GD and optimum lines."""
    plt, fig, (ax,) = _figure(width=6.0)
    steps = np.array([r["step"] for r in metrics_records])
    losses = np.array([r["loss"] for r in metrics_records])
    ax.plot(steps, losses, color="0.7", lw=0.8, label="training batch loss (fresh tasks)")
    ax.plot([c["step"] for c in checkpoints], [c["loss"] for c in checkpoints], "o-", ms=3, label="trained LSA (validation)")
    ax.axhline(gd_loss, color="C1", ls="--", label=f"GD, tuned eta (validation, {gd_loss:.4f})")
    ax.axhline(optimal_loss, color="C2", ls=":", label=f"closed-form optimum (expectation, {optimal_loss:.4f})")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("half-MSE")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def alignment_curve(path: Path, checkpoints: list[dict]) -> None:
    """preds diff, model cos and model diff against GD, over training."""
    plt, fig, axes = _figure(3, width=3.6)
    steps = [c["step"] for c in checkpoints]
    for ax, key, label in zip(axes, ("preds_diff", "model_cos", "model_diff"), ("preds diff", "model cos", "model diff")):
        ax.plot(steps, [c[key] for c in checkpoints], "o-", ms=3)
        ax.set_xlabel("training step")
        ax.set_title(f"{label} (LSA vs GD)")
    _save(plt, fig, path)


def input_scale_sweep(path: Path, rows: list[dict]) -> None:
    """Loss of the trained model and of GD when inputs are scaled by alpha."""
    plt, fig, (ax,) = _figure()
    alphas = [r["alpha"] for r in rows]
    for key, label in (("model_loss", "trained LSA"), ("gd_loss", "GD (eta tuned at alpha = 1)")):
        means = np.array([r[key]["mean"] for r in rows])
        errors = np.array([r[key]["stderr"] for r in rows])
        ax.errorbar(alphas, means, yerr=errors, marker="o", ms=3, capsize=2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("input scale alpha (x ~ U(-alpha a, alpha a))")
    ax.set_ylabel("half-MSE")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def ood_sweep(path: Path, sweeps: dict[str, list[dict]], key: str, xlabel: str, band: float = 0.10) -> None:
    """Out-of-distribution sweep of several models, each against its own GD baseline.

    ``sweeps``: model name -> rows, each with the shift ``row[key]`` (a number, or a name drawn
    as a category) and the estimates ``model_loss``, ``gd_loss`` and ``model_minus_gd``.
    Left: half-MSE of each model (solid) and of its GD (dashed), log scale.  Right: the relative
    gap 100 (LSA / GD - 1) % = 100 mean(LSA - GD) / mean(GD), error bars one paired standard
    error, with the band +-100 ``band`` % shaded."""
    plt, fig, (left, right) = _figure(2, width=5.0)
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
    left.set_yscale("log")
    left.set_ylabel("half-MSE")
    right.set_ylabel("LSA / GD - 1 (%)")
    for ax in (left, right):
        ax.set_xlabel(xlabel)
        if categorical:
            ax.set_xticks(range(len(first)))
            ax.set_xticklabels([r[key] for r in first])
        ax.legend(fontsize=7)
    _save(plt, fig, path)


def loss_by_depth(path: Path, rows: list[dict], labels: dict) -> None:
    """Half-MSE against depth K: trained LSA, tuned GD, learned-rate GD and GD++ (multi-layer claim)."""
    plt, fig, (ax,) = _figure()
    depths = [r["n_layers"] for r in rows]
    for key, style in (("lsa", "o-"), ("tuned_gd", "s--"), ("gd", "^:"), ("gdpp", "v-.")):
        means = np.array([r["loss"][key]["mean"] for r in rows])
        errors = np.array([r["loss"][key]["stderr"] for r in rows])
        ax.errorbar(depths, means, yerr=errors, fmt=style, ms=4, capsize=2, label=labels[key])
    ax.set_xticks(depths)
    ax.set_xlabel("layers / steps K")
    ax.set_ylabel("half-MSE (validation)")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def loss_by_layer(path: Path, rows: list[dict], labels: dict) -> None:
    """Inside each trained model: the half-MSE of the prediction read out after layer l, one line per depth K."""
    keys = ("lsa", "gdpp", "gd", "tuned_gd")
    plt, fig, axes = _figure(len(keys), width=3.6)
    for ax, key in zip(axes, keys):
        for r in rows:
            per_layer = r["loss_per_layer"][key]
            ax.plot(range(1, len(per_layer) + 1), [e["mean"] for e in per_layer], "o-", ms=3, label=f"K = {r['n_layers']}")
        ax.set_title(labels[key])
        ax.set_yscale("log")
        ax.set_xlabel("read out after layer l")
        ax.set_xticks(range(1, max(r["n_layers"] for r in rows) + 1))
    axes[0].set_ylabel("half-MSE")
    axes[0].legend(fontsize=7)
    _save(plt, fig, path)


def alignment_by_depth(path: Path, rows: list[dict], labels: dict) -> None:
    """preds diff, model cos and model diff of the trained LSA against learned GD and GD++, by depth."""
    plt, fig, axes = _figure(3, width=3.6)
    depths = [r["n_layers"] for r in rows]
    for ax, metric, title in zip(axes, ("preds_diff", "model_cos", "model_diff"), ("preds diff", "model cos", "model diff")):
        for other in ("gd", "gdpp"):
            means = [r["alignment"][other][metric]["mean"] for r in rows]
            errors = [r["alignment"][other][metric]["stderr"] for r in rows]
            ax.errorbar(depths, means, yerr=errors, fmt="o-", ms=3, capsize=2, label=f"LSA vs {labels[other]}")
        ax.set_xticks(depths)
        ax.set_xlabel("layers K")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    _save(plt, fig, path)
