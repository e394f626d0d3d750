r"""`iclgd reproduce softmax-vs-linear`: softmax against linear self-attention on constructed tokens.

von Oswald et al. (2023) build their argument on linear self-attention; their appendix trains
softmax-attention transformers on the same regression tokens and finds that they need more
capacity (heads, layer norm, MLPs) to come as close to gradient descent.  This experiment measures
how close each kind of model gets to K steps of GD and GD++, on the tasks of the one-layer claim
(d = N = 10, w ~ N(0, I), x ~ U(-a, a)^d, a = ``x_scale``, no noise), with the constructed tokens

    e_i = (x_i, y_i),  i = 1..N,      e_q = (x_q, 0),      yhat = -h_K[q, d]   (the LSA's read-out)

and the models of ``iclgd.models.stack`` (the query token is never a key or value, as in the
paper's construction).  For every depth K in ``depths`` it trains, each in its own resumable
directory DIR/<model>:

* ``linear-K<K>``,     ``linear-ln-K<K>``:  K linear-attention layers (scores Q K^T, no softmax,
  no 1/N), one head, without / with pre-LayerNorm;
* ``softmax-K<K>``,    ``softmax-ln-K<K>``: the same with softmax attention (scores / sqrt(C));
* ``softmax-h<H>-K<K>``: softmax, ``capacity_heads`` heads, no LayerNorm ("more capacity").

Why heads: a softmax head averages its values with weights that sum to one, so a single head
cannot drop the mean of the context labels that a linear head never adds, and its scores enter
through exp; with a second head whose scores are flat it can subtract that mean, and for small
scores softmax(s) ~ (1 + s - mean s) / N is a linear head again.  So a softmax model can only
match a linear one with more heads (or other capacity), which is what the claim rows test.

Baselines, tuned on ``tune_tasks`` training tasks: K steps of GD with one shared eta
(``iclgd.evaluate.tune_gd_eta``) and of GD++ with one shared (eta, gamma)
(``iclgd.evaluate.tune_gdpp_rates``).  Every model and baseline is evaluated on the same
``val_tasks`` validation tasks, differences paired per task.

Claims, with thresholds fixed before the first run:

1. at equal capacity (one head, no LayerNorm) softmax attention ends further from GD than linear
   attention: paired (softmax - linear) > 0 by more than 3 s.e., at every K;
2. more capacity brings softmax closer: paired (softmax with H heads - softmax with one head) < 0
   by more than 3 s.e., at every K.

The full table (every model's loss and its gap to GD and GD++) is reported, not judged.

Training (ours; chosen to fit the whole run in ~15 minutes on 2 CPU cores): Adam (b1 0.9,
b2 0.98, the authors'), lr 1e-3 constant, global-norm clip 10, batch 512, 4000 steps, init
VarianceScaling(0.002) as the authors' LSA runs; engine jax when installed, else the NumPy oracle
(``iclgd.train.stack_training``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from iclgd import baselines, metrics, plots
from iclgd._checks import positive_int
from iclgd.backends.numpy_stack import predict
from iclgd.evaluate import stream, tune_gd_eta, tune_gdpp_rates, validation_batch
from iclgd.experiments.output import (
    ClaimRow, announce, figure_title, finite_check, fmt, zero_predictor_loss,
)
from iclgd.experiments.skeleton import Experiment, Measured, Setting
from iclgd.models.stack import StackConfig, init_params
from iclgd.streams import batch_rng
from iclgd.tasks import LinearRegressionTask, resolve_x_scale
from iclgd.train.stack_training import fastest_engine, train_stack

KINDS = ("linear", "linear-ln", "softmax", "softmax-ln")




@dataclass(frozen=True)
class AttentionKindsSetting(Setting):
    """Depths, the heads of the "more capacity" softmax model, training length and evaluation sizes
    (defaults: the module doc).  ``backend`` is the training engine, "jax" or "numpy"."""

    QUICK: ClassVar[dict] = dict(depths=(1,), steps=200, batch_size=128, lr=5e-3, capacity_heads=2, backend="numpy",
                                 val_tasks=1000, tune_tasks=1000, checkpoint_every=100)
    TASK_COUNTS: ClassVar[tuple[str, ...]] = ("val_tasks", "tune_tasks")

    depths: tuple[int, ...] = (1, 2, 3)
    capacity_heads: int = 4
    steps: int = 4000
    batch_size: int = 512
    lr: float = 1e-3
    init_scale: float = 0.002
    checkpoint_every: int = 500
    x_scale: float | str = 1.0
    seed: int = 0
    backend: str = field(default_factory=fastest_engine)
    val_tasks: int = 10_000
    tune_tasks: int = 20_000
    smoke: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_scale", resolve_x_scale(self.x_scale))
        self.check_common()
        depths = tuple(self.depths)
        if not depths:
            raise ValueError("depths must name at least one depth K; got none")
        object.__setattr__(self, "depths", tuple(sorted({positive_int("depths", k) for k in depths})))
        if len(self.depths) != len(depths):
            raise ValueError(f"depths must not repeat a depth; got {list(depths)}")
        if positive_int("capacity_heads", self.capacity_heads) < 2:
            raise ValueError(f"capacity_heads must be >= 2 (the one-head softmax model is trained anyway); got {self.capacity_heads}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            positive_int(name, getattr(self, name))
        for name in ("lr", "init_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number; got {value!r}")
        if self.backend not in ("numpy", "jax"):
            raise ValueError(f"backend must be 'numpy' or 'jax' (the engines of iclgd.train.stack_training); got {self.backend!r}")

    @property
    def task(self) -> LinearRegressionTask:
        return LinearRegressionTask(d=10, n_context=10, x_scale=self.x_scale)

    def models(self) -> dict[str, StackConfig]:
        """Every model trained: name -> its configuration (module doc)."""
        size = self.task.d + 1
        out = {}
        for k in self.depths:
            for kind in KINDS:
                attention = kind.split("-")[0]
                out[f"{kind}-K{k}"] = StackConfig(token_size=size, attention=(attention,) * k, layer_norm=kind.endswith("-ln"))
            out[f"softmax-h{self.capacity_heads}-K{k}"] = StackConfig(
                token_size=size, attention=("softmax",) * k, n_heads=self.capacity_heads)
        return out


def model_label(name: str) -> str:
    """"softmax-ln-K2" -> "softmax, LayerNorm, K = 2"."""
    parts = name.split("-")
    words = [parts[0]] + ["LayerNorm" if p == "ln" else f"{p[1:]} heads" for p in parts[1:-1]]
    return ", ".join(words) + f", K = {parts[-1][1:]}"


def measure(out_dir: Path, setting: AttentionKindsSetting, backend, quiet: bool) -> Measured:
    """Train every model (resumable, under ``out_dir``/<model>), tune the GD and GD++ baselines,
    then evaluate everything on the same validation tasks."""
    task = setting.task
    batch = validation_batch(task, setting.val_tasks, setting.seed)
    tune_batch = task.sample(setting.tune_tasks, stream(setting.seed, "line_search"))

    def sample_batch(step: int):
        drawn = task.sample(setting.batch_size, batch_rng(setting.seed, step))
        return drawn.tokens, drawn.targets

    started_all = time.perf_counter()
    losses, trained_seconds, moved = {}, {}, {}
    for name, cfg in setting.models().items():
        announce(quiet, f"training {model_label(name)} ({setting.steps} steps, engine {setting.backend})")
        started = time.perf_counter()
        params0 = init_params(cfg, setting.seed, setting.init_scale)
        params, _ = train_stack(out_dir / name, cfg, params0, sample_batch,
                                steps=setting.steps, lr=setting.lr, b1=0.9, b2=0.98, eps=1e-8, clip_norm=10.0,
                                checkpoint_every=setting.checkpoint_every, engine=setting.backend, quiet=quiet)
        trained_seconds[name] = time.perf_counter() - started
        losses[name] = metrics.half_squared_errors(predict(cfg, params, batch.tokens), batch.targets)
        at_init = metrics.half_squared_errors(predict(cfg, params0, batch.tokens), batch.targets)
        moved[name] = metrics.paired_difference(losses[name], at_init).to_dict()
    rows = []
    for k in setting.depths:
        eta = tune_gd_eta(tune_batch, steps=k)
        eta_pp, gamma_pp = tune_gdpp_rates(tune_batch, steps=k)
        gd = metrics.half_squared_errors(baselines.gd_predict(batch.tokens, eta, k), batch.targets)
        gdpp = metrics.half_squared_errors(baselines.gdpp_predict(batch.tokens, eta_pp, gamma_pp, k), batch.targets)
        names = [name for name in losses if name.endswith(f"-K{k}")]
        softmax_more = f"softmax-h{setting.capacity_heads}-K{k}"
        rows.append({
            "n_layers": k,
            "rates": {"gd_eta": eta, "gdpp_eta": eta_pp, "gdpp_gamma": gamma_pp},
            "loss": {"gd": metrics.estimate(gd).to_dict(), "gdpp": metrics.estimate(gdpp).to_dict(),
                     **{name: metrics.estimate(losses[name]).to_dict() for name in names}},
            "minus_gd": {name: metrics.paired_difference(losses[name], gd).to_dict() for name in names},
            "minus_gdpp": {name: metrics.paired_difference(losses[name], gdpp).to_dict() for name in names},
            "softmax_minus_linear": metrics.paired_difference(losses[f"softmax-K{k}"], losses[f"linear-K{k}"]).to_dict(),
            "more_heads_minus_one": metrics.paired_difference(losses[softmax_more], losses[f"softmax-K{k}"]).to_dict(),
            "more_heads_minus_linear": metrics.paired_difference(losses[softmax_more], losses[f"linear-K{k}"]).to_dict(),
        })
    results = {
        "depths": rows,
        "zero_predictor_loss": zero_predictor_loss(batch.targets),
        "trained_minus_init": moved,
        "train_seconds": trained_seconds,
        "total_seconds": time.perf_counter() - started_all,
    }
    title = figure_title("softmax and linear self-attention against GD and GD++", task.x_scale, task.d, task.n_context)
    figures = {"gap_by_depth.png": lambda path: plot_gaps(path, rows, setting.capacity_heads, title)}
    return Measured(results, figures)


def relative(row: dict, name: str, baseline: str) -> float:
    """The paired (model - baseline) difference as a fraction of the baseline's loss."""
    return row[f"minus_{baseline}"][name]["mean"] / row["loss"][baseline]["mean"]


def plot_gaps(path: Path, rows: list[dict], heads: int, title: str) -> None:
    """Every model's loss relative to K-step GD (left) and GD++ (right), in %, against K."""
    plt, fig, axes = plots._figure(2, width=4.6, title=title)
    depths = [row["n_layers"] for row in rows]
    kinds = list(KINDS) + [f"softmax-h{heads}"]
    for ax, baseline in zip(axes, ("gd", "gdpp")):
        for kind in kinds:
            values = [100 * relative(row, f"{kind}-K{row['n_layers']}", baseline) for row in rows]
            ax.plot(depths, values, "o-", ms=4, label=kind)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xticks(depths)
        ax.set_xlabel("layers K")
        ax.set_ylabel(f"model / {'GD' if baseline == 'gd' else 'GD++'} - 1 (%)")
    axes[0].legend(fontsize=7)
    plots._save(plt, fig, path)


def comparison_rows(r: dict) -> list[ClaimRow]:
    """The claims (module doc): (statement, our numbers, criterion, holds?)."""
    rows = r["depths"]
    heads = r["setting"]["capacity_heads"]

    def clearly_above(e):
        return e["mean"] - 3 * e["stderr"] > 0

    return [
        ("with one head and no LayerNorm, softmax attention ends further from GD than linear attention (every K)",
         "; ".join(f"K={row['n_layers']}: softmax - linear {fmt(row['softmax_minus_linear'])}" for row in rows),
         "paired (softmax - linear) > 0 by > 3 s.e. at every K",
         all(clearly_above(row["softmax_minus_linear"]) for row in rows)),
        (f"more capacity ({heads} heads) brings softmax attention closer (every K)",
         "; ".join(f"K={row['n_layers']}: {heads} heads - 1 head {fmt(row['more_heads_minus_one'])}" for row in rows),
         f"paired ({heads} heads - 1 head) < 0 by > 3 s.e. at every K",
         all(row["more_heads_minus_one"]["mean"] + 3 * row["more_heads_minus_one"]["stderr"] < 0 for row in rows)),
    ]


def smoke_rows(r: dict) -> list[ClaimRow]:
    """A smoke run's checks: finite numbers; training lowered every model's validation loss below
    its loss at initialisation (paired, by more than 2 s.e.: the LayerNorm models move slowly in a
    smoke run's 200 steps)."""
    moved = r["trained_minus_init"]
    return [finite_check(r), (
        "training lowered every model's validation loss",
        "; ".join(f"{name}: {fmt(e)}" for name, e in moved.items()),
        "paired (trained - initial) < 0 by > 2 s.e. for every model",
        all(e["mean"] + 2 * e["stderr"] < 0 for e in moved.values()),
    )]


def setting_text(r: dict) -> str:
    s = r["setting"]
    a = s["x_scale"]
    return f"""Setting: d = N = 10, x ~ U(-{a:g}, {a:g})^d (input scale a = {a:g}), w ~ N(0, I), no label noise; constructed tokens
(x_i, y_i), query (x_q, 0), never a key or value; read-out -h[q, d]. Models: K = {', '.join(map(str, s['depths']))} layers of linear
or softmax attention, width 11, one head, without or with pre-LayerNorm, and softmax with {s['capacity_heads']} heads; no MLP.
Adam (0.9, 0.98) lr {s['lr']:g} constant, clip 10, batch {s['batch_size']}, {s['steps']} steps, init VarianceScaling({s['init_scale']:g}),
engine `{s['backend']}`, seed {s['seed']}. GD: one eta for all K steps by line search on {s['tune_tasks']} training tasks;
GD++: one (eta, gamma) by a direct search on the same tasks. Evaluation on {s['val_tasks']} validation tasks, every comparison
paired on them; ± is one standard error over tasks. The whole run took {r['total_seconds']:.0f} s."""


def sections(r: dict) -> str:
    heads = r["setting"]["capacity_heads"]
    lines = []
    for row in r["depths"]:
        k = row["n_layers"]
        for kind in list(KINDS) + [f"softmax-h{heads}"]:
            name = f"{kind}-K{k}"
            lines.append(f"| {k} | {kind} | {fmt(row['loss'][name])} | {100 * relative(row, name, 'gd'):+.1f}% | "
                         f"{100 * relative(row, name, 'gdpp'):+.1f}% |")
        lines.append(f"| {k} | tuned GD (eta {row['rates']['gd_eta']:.3f}) | {fmt(row['loss']['gd'])} | | |")
        lines.append(f"| {k} | tuned GD++ (eta {row['rates']['gdpp_eta']:.3f}, gamma {row['rates']['gdpp_gamma']:.3f}) | "
                     f"{fmt(row['loss']['gdpp'])} | | |")
    table = "\n".join(lines)
    return f"""## Every model against K steps of GD and GD++ (half-MSE; gaps are paired, relative to the baseline's loss)

| K | model | loss | vs GD | vs GD++ |
|---|---|---|---|---|
{table}"""


EXPERIMENT = Experiment(claim="softmax-attention models need more capacity than linear self-attention to come as close to gradient descent",
                        title="Softmax against linear self-attention on constructed tokens",
                        source="von Oswald et al. 2023, appendix (softmax attention)",
                        lsa_backend=False, measure=measure, claims=comparison_rows, checks=smoke_rows, setting_text=setting_text, sections=sections)
run, table, exit_code, report = EXPERIMENT.run, EXPERIMENT.table, EXPERIMENT.exit_code, EXPERIMENT.report
