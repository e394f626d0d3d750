r"""`iclgd reproduce one-layer`: a trained LSA layer is one step of GD with the best rate.

von Oswald et al. (2023), Sec. 3 / Fig. 2: a single linear self-attention layer trained on
in-context linear regression (d = N = 10, batch 2048, Adam) reaches the loss of one GD step
with a tuned learning rate, its predictions and its sensitivities d yhat / d x_q match GD's
(preds diff and model diff near 0, model cos near 1), the model interpolated between the
trained and the constructed weights is as good, and out of distribution it degrades as GD does.

The run: train (resumable, in DIR), then on 10^4 validation tasks (paired with every baseline):
GD at a line-searched eta and at the closed-form eta*, the alignment metrics, the interpolation,
an input-scale sweep, and the alignment at every checkpoint.  Writes results.json, params.npz,
loss.png, alignment.png, ood.png, report.md.

Headline estimate: GD at eta* has a known expected loss (the closed form), so
``optimal_loss + mean(trained - GD(eta*))`` on the same tasks estimates the trained model's
expected loss with the small standard error of the paired difference (a control variate);
the raw validation loss is reported too.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from iclgd import baselines, plots, runio
from iclgd._checks import positive_int
from iclgd.backends import fastest_backend, get_backend
from iclgd.config import RunConfig
from iclgd.construct import gd_construction
from iclgd.experiments import output
from iclgd.experiments.output import beats_zero_check, finite_check, fmt, results_tables, write_outputs, zero_predictor_loss
from iclgd.evaluate import compare_with_gd, input_scale_sweep, interpolation_sweep, stream, tune_gd_eta, validation_batch
from iclgd.models import LSAConfig
from iclgd.tasks import X_SCALES, LinearRegressionTask
from iclgd.config import TrainConfig
from iclgd.train import load_checkpoint, train


@dataclass(frozen=True)
class OneLayerSetting:
    """The paper's setting (d = N = 10, one layer, one head, batch 2048, lr 1e-3) and our run length.
    A cosine decay of the learning rate lets 5000 steps land on the optimum on a laptop CPU.
    ``backend`` defaults to the fastest installed one (numba, else jax, else numpy); ``smoke``
    marks a smoke run (``quick``), judged by ``smoke_rows`` instead of the paper's claims."""

    steps: int = 5000
    seed: int = 0
    x_scale: float = 1.0
    backend: str = field(default_factory=fastest_backend)
    sampler: str = "numpy"
    val_tasks: int = 10_000
    tune_tasks: int = 100_000  # GD's line search: the one-step loss is a parabola in eta, so it is cheap
    n_curve_points: int = 20
    smoke: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.smoke, bool):
            raise ValueError(f"smoke must be True or False; got {self.smoke!r}")
        for name in ("val_tasks", "tune_tasks"):
            if positive_int(name, getattr(self, name)) < 2:
                raise ValueError(f"{name} must be >= 2 (a standard error needs two tasks); got {getattr(self, name)}")
        positive_int("n_curve_points", self.n_curve_points)
        self.run_config()  # validates the task, model and training settings

    @classmethod
    def quick(cls, **changes) -> "OneLayerSetting":
        """A smoke run of seconds (as the walkthrough's --quick): 300 steps, small evaluations."""
        return cls(**(dict(steps=300, val_tasks=2000, tune_tasks=10_000, smoke=True) | changes))

    def run_config(self) -> RunConfig:
        task = LinearRegressionTask(d=10, n_context=10, x_scale=self.x_scale)
        model = LSAConfig(d=10, n_layers=1, n_heads=1, n_context=10)
        train_cfg = TrainConfig(
            steps=self.steps, batch_size=2048, lr=1e-3, seed=self.seed, backend=self.backend,
            sampler=self.sampler, schedule="cosine", checkpoint_every=max(1, self.steps // self.n_curve_points),
        )
        return RunConfig(task, model, train_cfg)


def x_scale_name(x_scale: float) -> str:
    names = {value: name for name, value in X_SCALES.items()}
    return f"a = {x_scale:g} ({names[x_scale]})" if x_scale in names else f"a = {x_scale:g}"


def alignment_over_training(backend, config: RunConfig, run_dir: Path, batch, eta: float) -> list[dict]:
    """Validation loss and alignment with GD at every checkpoint (on the validation tasks)."""
    rows = []
    for step, path in runio.list_checkpoints(run_dir):
        params = load_checkpoint(path, config.model.dtype).params
        c = compare_with_gd(backend, config.model, params, batch, eta)
        rows.append({"step": step, "loss": c.model_loss.mean, "preds_diff": c.preds_diff.mean,
                     "model_cos": c.model_cos.mean, "model_diff": c.model_diff.mean})
    return rows


def run(out_dir: str | Path, setting: OneLayerSetting, quiet: bool = False) -> dict:
    out_dir = Path(out_dir)
    config = setting.run_config()
    backend = get_backend(setting.backend)
    started = time.perf_counter()
    state = train(out_dir, config, quiet=quiet, backend=backend)
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    task, cfg = config.task, config.model
    gd_eta = tune_gd_eta(task.sample(setting.tune_tasks, stream(setting.seed, "line_search")))
    optimum = baselines.one_step_optimum(task.d, task.n_context, task.x_scale)
    batch = validation_batch(task, setting.val_tasks, setting.seed)
    tuned = compare_with_gd(backend, cfg, state.params, batch, gd_eta)
    at_optimum = compare_with_gd(backend, cfg, state.params, batch, optimum.eta)
    constructed = gd_construction(cfg, gd_eta)
    curve = alignment_over_training(backend, config, out_dir, batch, gd_eta)
    results = {
        "claim": "a trained one-layer LSA equals one step of GD with the best learning rate",
        "setting": asdict(setting),
        "x_scale": x_scale_name(task.x_scale),
        "trained_loss": tuned.model_loss.to_dict(),
        "gd_loss": tuned.gd_loss.to_dict(),
        "gd_eta": gd_eta,
        "optimal_eta": optimum.eta,
        "optimal_loss": optimum.half_mse,
        "gd_loss_at_optimal_eta": at_optimum.gd_loss.to_dict(),
        "trained_minus_gd": tuned.model_minus_gd.to_dict(),
        "trained_minus_gd_at_optimal_eta": at_optimum.model_minus_gd.to_dict(),
        "trained_expected_loss": {
            "mean": optimum.half_mse + at_optimum.model_minus_gd.mean,
            "stderr": at_optimum.model_minus_gd.stderr,
            "method": "closed-form optimum + paired mean of (trained - GD at eta*) on the validation tasks",
        },
        "preds_diff": tuned.preds_diff.to_dict(),
        "model_cos": tuned.model_cos.to_dict(),
        "model_diff": tuned.model_diff.to_dict(),
        "interpolation": interpolation_sweep(backend, cfg, state.params, constructed, batch),
        "ood_input_scale": input_scale_sweep(backend, cfg, state.params, task, setting.val_tasks, setting.seed, gd_eta),
        "training_curve": curve,
        "zero_predictor_loss": zero_predictor_loss(batch.targets),
        "train_seconds": train_seconds,
    }
    results["relative_excess_over_optimum"] = results["trained_expected_loss"]["mean"] / optimum.half_mse - 1.0
    results["eval_seconds"] = time.perf_counter() - started

    runio.save_params(out_dir / "params.npz", state.params)
    figures = {
        "loss.png": lambda path: plots.loss_curve(path, runio.read_jsonl(out_dir / "metrics.jsonl"), curve,
                                                  tuned.gd_loss.mean, optimum.half_mse),
        "alignment.png": lambda path: plots.alignment_curve(path, curve),
        "ood.png": lambda path: plots.input_scale_sweep(path, results["ood_input_scale"]),
    }
    return write_outputs(out_dir, results, figures, report, comparison_rows, smoke_rows)


def comparison_rows(r: dict) -> list[tuple[str, str, str, bool]]:
    """(paper's statement, our number, our criterion, holds?) for the report and the console."""
    excess = r["relative_excess_over_optimum"]
    interp = {row["alpha"]: row["loss"] for row in r["interpolation"]}
    ood = r["ood_input_scale"]
    worst_gap = max(abs(row["model_loss"]["mean"] / row["gd_loss"]["mean"] - 1) for row in ood)
    return [
        ("trained LSA loss = loss of one GD step with tuned eta",
         f"{fmt(r['trained_loss'])} vs GD {fmt(r['gd_loss'])} (paired diff {fmt(r['trained_minus_gd'], 5)})",
         "paired |diff| <= 1% of GD's loss", abs(r["trained_minus_gd"]["mean"]) <= 0.01 * r["gd_loss"]["mean"]),
        ("no one-layer LSA beats the closed-form one-step optimum",
         f"expected loss {r['trained_expected_loss']['mean']:.4f} ± {r['trained_expected_loss']['stderr']:.4f} vs optimum {r['optimal_loss']:.4f} ({100 * excess:+.2f}%)",
         "within 1% of the optimum", abs(excess) <= 0.01),
        eta_row(r),
        ("predictions match GD (preds diff ~ 0)", fmt(r["preds_diff"]), "< 5% of GD's RMS error",
         r["preds_diff"]["mean"] < 0.05 * np.sqrt(2 * r["gd_loss"]["mean"])),
        ("sensitivities align (model cos ~ 1)", fmt(r["model_cos"]), ">= 0.99", r["model_cos"]["mean"] >= 0.99),
        ("sensitivities match (model diff ~ 0)", fmt(r["model_diff"]), "< 0.1", r["model_diff"]["mean"] < 0.1),
        ("interpolated (trained + constructed)/2 is as good", f"{fmt(interp[0.5])}", "within 1% of GD's loss",
         abs(interp[0.5]["mean"] / r["gd_loss"]["mean"] - 1) <= 0.01),
        ("out of distribution the LSA degrades like GD", f"largest |LSA/GD - 1| over alpha in [{ood[0]['alpha']}, {ood[-1]['alpha']}]: {100 * worst_gap:.1f}%",
         "<= 10%", worst_gap <= 0.10),
    ]


def eta_row(r: dict) -> tuple[str, str, str, bool]:
    """The line-searched GD rate against the closed-form optimum (a claim, and a smoke check)."""
    return ("tuned GD eta is the optimal eta", f"line search {r['gd_eta']:.4f}, closed form {r['optimal_eta']:.4f}",
            "within 5%", abs(r["gd_eta"] / r["optimal_eta"] - 1) <= 0.05)


def smoke_rows(r: dict) -> list[tuple[str, str, str, bool]]:
    """The weaker criteria of a smoke run (``--quick``): finite numbers, GD's rate as theory says,
    and a trained layer well below predicting 0."""
    return [finite_check(r), eta_row(r), beats_zero_check("the LSA", {"trained LSA": r["trained_loss"]}, r["zero_predictor_loss"])]


def exit_code(r: dict) -> int:
    """0 when every claim holds (every smoke check, for a smoke run), else 1."""
    return output.exit_code(r, comparison_rows, smoke_rows)


def table(r: dict) -> str:
    return results_tables(r, comparison_rows, smoke_rows)


def report(r: dict) -> str:
    s = r["setting"]
    ood_lines = "\n".join(
        f"| {row['alpha']:g} | {fmt(row['model_loss'])} | {fmt(row['gd_loss'])} |" for row in r["ood_input_scale"]
    )
    interp_lines = "\n".join(f"| {row['alpha']:g} | {fmt(row['loss'])} |" for row in r["interpolation"])
    figures = "".join(f"\n![{name}]({name})" for name in r["figures"])
    title = " (smoke run, --quick)" if output.is_smoke(r) else ""
    return f"""# One trained LSA layer = one step of gradient descent{title}

Claim (von Oswald et al. 2023, Sec. 3, Fig. 2): {r['claim']}.

Setting: d = N = 10, inputs {r['x_scale']}, w ~ N(0, I), no label noise; one layer, one head,
key size 11, no query attention; Adam lr 1e-3 with cosine decay, batch 2048, {s['steps']} steps,
seed {s['seed']}, backend `{s['backend']}`, sampler `{s['sampler']}`. Evaluation on {s['val_tasks']} validation tasks,
every comparison paired on those tasks; ± is one standard error over tasks.
Training took {r['train_seconds']:.0f} s, evaluation {r['eval_seconds']:.0f} s.

{table(r)}

The trained model's expected loss is estimated as the closed-form optimum plus the paired
difference to GD at eta* = {r['optimal_eta']:.4f} on the same tasks (GD at eta* has a known
expected loss, so this removes the task-sampling noise of {r['trained_loss']['stderr']:.4f} in the raw validation loss).

## Interpolation between trained and constructed weights

Products W_q W_k^T and W_v W_o blended as (1 - alpha) trained + alpha constructed (GD at the tuned eta).

| alpha | half-MSE |
|---|---|
{interp_lines}

## Input-scale shift

Every input (context and query) from U(-alpha a, alpha a); GD keeps the eta tuned at alpha = 1.

| alpha | trained LSA | GD |
|---|---|---|
{ood_lines}
{figures}
"""
