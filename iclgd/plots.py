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
