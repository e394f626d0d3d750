r"""`iclgd reproduce sine`: a learned embedding and one linear self-attention layer on sine
regression behave like the same embedding under one fixed step of gradient descent.

von Oswald et al. (2023), Sec. 5 ("non-linear regression"): tasks y = A sin(x + phi) with N = 10
context pairs (iclgd.tasks.sine, x ~ U(-5, 5), A in [0.1, 0.5], phi in [0, pi]; the authors draw
A and phi from one uniform: A = 0.1 + 0.4 phi / pi, perfectly correlated, ``draws = "authors"``).
Tokens (x_i, y_i) and the query (x_q, 0) are embedded jointly,

    e = E + MLP(E),   E = token W_embed (2 -> 40, no bias),   MLP: 40 -> 160 (GELU) -> 40, with biases,

and one linear self-attention layer (one head, keys and values from the context only) reads the
prediction out as yhat = -h_q[40] (iclgd.models.stack, ``StackConfig(token_size=2,
attention=("linear",), embedding="mlp")``).  Two models, each a resumable run directory under
OUT (iclgd.train.stack_training.train_stack), both from the same initial embedding (the
authors' VarianceScaling init, scale 0.002):

    OUT/mlp_gd   "MLP + GD": the attention layer fixed to one GD step with rate eta = 0.1 on the
                 embedded context,
                     W_Q = W_K = diag(1, .., 1, 0),  W_V = -e_40 e_40^T,  W_O = (eta / N) e_40 e_40^T,
                     yhat = (eta / N) sum_i e_i[40] <e_i[:39], e_q[:39]> - e_q[40],
                 only the embedding (``embed.*``) trained: Adam(1e-3, 0.9, 0.999), clip 100
                 (the authors' rate is 3e-4: see "MLP + GD's rate" below);
    OUT/model    the model: every parameter trained, Adam(1e-3, 0.9, 0.98), clip 100.

OUT/timing.json keeps each run's training wall time summed over the invocations that trained it.
MLP + GD is trained first; at step 0 and every checkpoint of the model's training, the model is
compared with MLP + GD's final parameters on the same ``eval_tasks`` validation tasks (stream
(seed, "sine_validation")):

    loss             0.5 mean_b (yhat_b - y_b)^2 (half-MSE), and the paired difference model - MLP+GD
    preds diff       mean_b |yhat_model(b) - yhat_GD(b)|
    partial cosine   mean_b sign(d yhat_model(b) / d x_q) sign(d yhat_GD(b) / d x_q)
                     (the authors' "model cos" with a 1-dimensional x_q: the cosine of two
                     numbers is the product of their signs)

each with its standard error over tasks.  Claims (criteria fixed before any run was seen): the
final model's loss is within 10 % of MLP + GD's (paired); the partial cosine ends at >= 0.90 and
above its step-0 value; the preds diff ends at most half its step-0 value.  Predicting 0 is
reported for scale.  Figures: loss over training, partial cosine and preds diff over training,
and yhat(x_q) over x_q in (-5, 5) for a few tasks (model, MLP + GD, the true wave).

MLP + GD's rate.  The first recorded runs trained MLP + GD at the authors' 3e-4; at this tenth of
the authors' tasks it was then still far from converged (its validation loss -8 % over its last
quarter, 0.00375 at the end, against 0.00221 when trained at 1e-3 on the same tasks), so the
baseline the model is compared with was weaker than the one the paper compares with.  The
default is therefore the model's rate, 1e-3 (``mlp_gd_lr``; ``--mlp-gd-lr 3e-4`` for the
authors'); this choice was made after those runs were seen, and both are kept in
reference/results (sine/ at 1e-3, sine-mlpgd-lr3e-4/).  The claims' criteria are unchanged.

Scale (laptop, the default; NOT the authors').  The authors train both for 20,000 steps at
batch 2048 in float32.  Here 8,000 steps each at batch 512 (1/10 of the authors' tasks seen),
jax engine, float32 (3x faster than float64 on a CPU).  On the quiet 2-core machine a jax step of
batch 512 takes about 10 ms and the default run 2 min 50 s in all (79 s and 87 s of training;
20,000 steps each: 7 to 8 minutes); on 2 cores shared with other jobs a step took 15-26 ms at
load 1-3 and ~55 ms at load 7.  Evaluations (21 per run, 2048 tasks) take well under a second each.  ``--quick``: 100
steps of batch 64 at rate 1e-2 on the numpy engine in float64, 256 validation tasks, judged by
smoke checks only (both models at least 10 % below predicting 0, MLP + GD's layer the fixed GD
step, every number finite).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from iclgd import metrics, plots, streams
from iclgd._checks import finite_float, float_dtype, nonnegative_int, positive_int
from iclgd.experiments.output import ClaimRow, announce, beats_zero_check, finite_check, fmt, zero_predictor_loss
from iclgd.train.stack_training import fastest_engine
from iclgd.experiments.skeleton import Experiment, Measured, Setting
from iclgd.models.stack import StackConfig, init_params, param_shapes
from iclgd.tasks.sine import DRAWS, SineBatch, SineRegressionTask

#: The two trained models: run folder -> what it is.
MODELS = {"model": "embedding and LSA layer, all trained", "mlp_gd": "MLP + GD: the embedding trained under a fixed GD layer"}
LABELS = {"model": "model", "mlp_gd": "MLP+GD"}
#: The engines train_stack offers, fastest first on a CPU.
ENGINES = ("jax", "numpy")

GD_LR = 0.1  # the fixed GD layer's rate (the authors' create_weights(..., lr=0.1))
INIT_SCALE = 0.002  # VarianceScaling scale of every weight matrix
CLIP_NORM = 100.0
MODEL_BETAS = (0.9, 0.98)
MLP_GD_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

# The claims' criteria (fixed before any run was seen).
LOSS_GAP = 0.10  # |mean(model - MLP+GD)| <= 10 % of MLP+GD's loss
COSINE_THRESHOLD = 0.90  # final partial cosine (the paper's curves approach ~0.95)
PREDS_DIFF_FALL = 0.5  # final preds diff <= half its step-0 value
LAYER_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}  # the GD layer against its formula, relative to max |yhat|

CURVE_TASKS = 4
CURVE_POINTS = 201
FIGURES = {"loss": "sine_loss.png", "alignment": "sine_alignment.png", "curves": "sine_curves.png"}




@dataclass(frozen=True)
class SineSetting(Setting):
    """The run's setting (module docstring): the task's draws, both trainings, the evaluation.
    ``backend`` is train_stack's engine, "numpy" or "jax" (default: jax if installed)."""

    QUICK: ClassVar[dict] = dict(model_steps=100, mlp_gd_steps=100, batch_size=64, model_lr=1e-2, mlp_gd_lr=1e-2,
                                 eval_tasks=256, checkpoint_every=50, backend="numpy", dtype="float64")
    TASK_COUNTS: ClassVar[tuple[str, ...]] = ("eval_tasks",)

    draws: str = "authors"
    model_steps: int = 8000
    mlp_gd_steps: int = 8000
    batch_size: int = 512
    model_lr: float = 1e-3
    mlp_gd_lr: float = 1e-3  # the authors' 3e-4 leaves MLP + GD unconverged at this scale (module doc)
    seed: int = 0
    backend: str = field(default_factory=fastest_engine)
    dtype: str = "float32"
    eval_tasks: int = 2048
    checkpoint_every: int = 500
    smoke: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        self.check_common()
        if not isinstance(self.draws, str) or self.draws not in DRAWS:
            raise ValueError(f"draws must be one of {list(DRAWS)}; got {self.draws!r}")
        for name in ("model_steps", "mlp_gd_steps", "batch_size", "checkpoint_every"):
            set_(self, name, positive_int(name, getattr(self, name), maximum=10**9))
        for name in ("model_lr", "mlp_gd_lr"):
            set_(self, name, finite_float(name, getattr(self, name), positive=True))
        set_(self, "seed", nonnegative_int("seed", self.seed))
        if not isinstance(self.backend, str) or self.backend not in ENGINES:
            raise ValueError(f"backend must be one of {list(ENGINES)} (train_stack's engines); got {self.backend!r}")
        set_(self, "dtype", float_dtype("dtype", self.dtype).name)
        positive_int("eval_tasks", self.eval_tasks, maximum=10**7)

    def task(self) -> SineRegressionTask:
        return SineRegressionTask(draws=self.draws, dtype=self.dtype)

    def model_config(self) -> StackConfig:
        return stack_config(self.dtype)


def stack_config(dtype: str = "float32") -> StackConfig:
    """The authors' model: 2-dim tokens, embedding 2 -> 40 plus the MLP 40 -> 160 -> 40, one
    linear self-attention layer with one head."""
    return StackConfig(token_size=2, attention=("linear",), n_heads=1, embedding="mlp", d_embed=40, d_embed_hidden=160,
                       dtype=dtype)


def gd_layer_params(cfg: StackConfig, gd_lr: float = GD_LR, n_context: int = 10) -> dict[str, np.ndarray]:
    """The attention layer of one GD step on the embedded context (module docstring): with C the
    width and c = C - 1 the label coordinate, W_Q = W_K = diag(1, .., 1, 0), W_V = -e_c e_c^T,
    W_O = (gd_lr / N) e_c e_c^T, so that

        yhat = -h_q[c] = (gd_lr / N) sum_i e_i[c] <e_i[:c], e_q[:c]> - e_q[c].
    """
    if cfg.n_layers != 1 or cfg.n_heads != 1 or cfg.attention != ("linear",) or cfg.layer_norm or cfg.mlp:
        raise ValueError(f"the GD layer is one linear attention layer with one head, no LN and no MLP; got {cfg}")
    c = cfg.width
    rate = finite_float("gd_lr", gd_lr) / positive_int("n_context", n_context)
    projection = np.diag(np.r_[np.ones(c - 1), 0.0])
    corner = np.zeros((c, c))
    corner[-1, -1] = 1.0
    layer = {"layer0.w_q": projection, "layer0.w_k": projection, "layer0.w_v": -corner, "layer0.w_o": rate * corner}
    return {name: value[None].astype(cfg.dtype) for name, value in layer.items()}


def embedding_names(cfg: StackConfig) -> list[str]:
    """The embedding's parameter names (``embed.*``): what MLP + GD trains."""
    return [name for name in param_shapes(cfg) if name.startswith("embed.")]


def initial_params(setting: SineSetting, model: str) -> dict[str, np.ndarray]:
    """Both runs' init: the authors' init (scale 0.002) from the seed's init stream, the same
    embedding for both; MLP + GD's attention layer replaced by the GD layer."""
    cfg = setting.model_config()
    params = init_params(cfg, streams.init_rng(setting.seed), INIT_SCALE)
    if model == "mlp_gd":
        params |= gd_layer_params(cfg, GD_LR, setting.task().n_context)
    return params


def engine_module(name: str):
    """The stack engine that evaluates: iclgd.backends.jax_stack or numpy_stack."""
    if name == "jax":
        from iclgd.backends import jax_stack

        return jax_stack
    from iclgd.backends import numpy_stack

    return numpy_stack


# --- measuring ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    """A model's predictions yhat (B,) and slopes d yhat / d x_q (B,) on a batch, float64."""

    predictions: np.ndarray
    slopes: np.ndarray


def outputs(engine, cfg: StackConfig, params: dict, tokens: np.ndarray) -> Outputs:
    """yhat and d yhat / d x_q (the query token's x entry) of every task."""
    predictions = np.asarray(engine.predict(cfg, params, tokens), dtype=np.float64)
    slopes = np.asarray(engine.prediction_input_grad(cfg, params, tokens), dtype=np.float64)[:, -1, 0]
    return Outputs(predictions, slopes)


def partial_cosine(slopes_a: np.ndarray, slopes_b: np.ndarray) -> metrics.Estimate:
    """mean_b sign(a_b) sign(b_b): the cosine of two 1-dimensional gradients, task by task."""
    return metrics.estimate(np.sign(slopes_a) * np.sign(slopes_b))


def compare(mine: Outputs, reference: Outputs, targets: np.ndarray) -> dict:
    """A model against MLP + GD on the same tasks: both losses, their paired difference, the
    preds diff and the partial cosine (estimates as dicts)."""
    losses = metrics.half_squared_errors(mine.predictions, targets)
    reference_losses = metrics.half_squared_errors(reference.predictions, targets)
    return {
        "loss": metrics.estimate(losses).to_dict(),
        "mlp_gd_loss": metrics.estimate(reference_losses).to_dict(),
        "minus_mlp_gd": metrics.paired_difference(losses, reference_losses).to_dict(),
        "preds_diff": metrics.preds_diff(mine.predictions, reference.predictions).to_dict(),
        "partial_cosine": partial_cosine(mine.slopes, reference.slopes).to_dict(),
    }


def gd_layer_formula(cfg: StackConfig, params: dict, tokens: np.ndarray, gd_lr: float = GD_LR) -> np.ndarray:
    """(gd_lr / N) sum_i e_i[-1] <e_i[:-1], e_q[:-1]> - e_q[-1] (B,), float64, from the embedded
    stream h_0 = e of the NumPy oracle: what the GD layer must predict."""
    from iclgd.backends import numpy_stack

    e = np.asarray(numpy_stack.forward(cfg, params, tokens)[0], dtype=np.float64)
    context, query = e[:, :-1], e[:, -1]
    n = context.shape[1]
    inner = np.einsum("bic,bc->bi", context[:, :, :-1], query[:, :-1])
    return (gd_lr / n) * np.einsum("bi,bi->b", context[:, :, -1], inner) - query[:, -1]


def layer_checks(cfg: StackConfig, start: dict, final: dict, tokens: np.ndarray, predictions: np.ndarray) -> dict:
    """MLP + GD's layer: its largest change over training (0: frozen) and its prediction against
    the formula (max |yhat - formula|, relative to max |yhat|)."""
    formula = gd_layer_formula(cfg, final, tokens)
    change = max(float(np.max(np.abs(np.asarray(final[name], np.float64) - np.asarray(start[name], np.float64))))
                 for name in start if name.startswith("layer0."))
    return {"layer_max_change": change,
            "formula_max_abs_error": float(np.max(np.abs(predictions - formula))),
            "prediction_max_abs": float(np.max(np.abs(predictions)))}


def sample_batch(setting: SineSetting):
    """Training batch t: ``batch_size`` tasks from stream (seed, t), the same for both runs."""
    task = setting.task()

    def batch(step: int):
        drawn = task.sample(setting.batch_size, streams.batch_rng(setting.seed, step))
        return drawn.tokens, drawn.targets
    return batch


TIMING_FILE = "timing.json"


def add_training_time(out_dir: Path, model: str, steps: int, seconds: float) -> float:
    """The seconds spent training ``model`` in ``out_dir`` over every invocation, kept in
    OUT/timing.json as {model: {"steps", "seconds"}}: ``seconds`` is added (and the file
    rewritten) only when the run holds more steps than the file says, so a rerun of a finished
    run leaves it as it was."""
    from iclgd import runio

    path = Path(out_dir) / TIMING_FILE
    try:
        timing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        runio.warn(f"{path} is not readable; training times restart from this invocation")
        timing = {}
    entry = timing.get(model) if isinstance(timing, dict) and isinstance(timing.get(model), dict) else {"steps": 0, "seconds": 0.0}
    if steps > entry.get("steps", 0):
        entry = {"steps": steps, "seconds": float(entry.get("seconds", 0.0)) + seconds}
        runio.write_json(path, {**(timing if isinstance(timing, dict) else {}), model: entry})
    return float(entry["seconds"])


def train_run(out_dir: Path, setting: SineSetting, model: str, evaluate, quiet: bool) -> tuple[dict, dict, float]:
    """Train (or resume) one run; (final params, history, seconds spent training it over every
    invocation, ``add_training_time``)."""
    from iclgd.train.stack_training import train_stack

    cfg = setting.model_config()
    if model == "model":
        steps, lr, (b1, b2), trainable = setting.model_steps, setting.model_lr, MODEL_BETAS, None
    else:
        steps, lr, (b1, b2), trainable = setting.mlp_gd_steps, setting.mlp_gd_lr, MLP_GD_BETAS, embedding_names(cfg)
    announce(quiet, f"sine: training {LABELS[model]} for {steps} steps into {out_dir / model}")
    started = time.perf_counter()
    params, history = train_stack(out_dir / model, cfg, initial_params(setting, model), sample_batch(setting), steps=steps,
                                  lr=lr, b1=b1, b2=b2, eps=ADAM_EPS, clip_norm=CLIP_NORM,
                                  checkpoint_every=setting.checkpoint_every, trainable=trainable, engine=setting.backend,
                                  evaluate=evaluate, quiet=quiet)
    return params, history, add_training_time(out_dir, model, len(history["loss"]), time.perf_counter() - started)


def curve_batch(task: SineRegressionTask, n_tasks: int, seed: int, grid: np.ndarray) -> tuple[SineBatch, np.ndarray]:
    """``n_tasks`` tasks of stream (seed, "sine_curves"), and tokens (n_tasks * G, N + 1, 2): each
    task's context with the query x_q swept over ``grid`` (G,)."""
    batch = task.sample(n_tasks, streams.purpose_rng(seed, "sine_curves"))
    tokens = np.repeat(batch.tokens, grid.size, axis=0)
    tokens[:, -1, 0] = np.tile(grid, n_tasks)
    tokens[:, -1, 1] = 0.0
    return batch, tokens.astype(task.dtype)


def measure(out_dir: Path, setting: SineSetting, backend, quiet: bool) -> Measured:
    """Train MLP + GD, then the model (comparing it with MLP + GD's final parameters at every
    checkpoint); measure both at the end; the curves of a few tasks."""
    del backend  # the engine is train_stack's, named by setting.backend
    out_dir = Path(out_dir)
    cfg, task, engine = setting.model_config(), setting.task(), engine_module(setting.backend)
    val = task.sample(setting.eval_tasks, streams.purpose_rng(setting.seed, "sine_validation"))
    targets = np.asarray(val.targets, dtype=np.float64)

    def evaluate_mlp_gd(step, params):
        losses = metrics.half_squared_errors(outputs(engine, cfg, params, val.tokens).predictions, targets)
        return {"loss": metrics.estimate(losses).to_dict()}

    gd_params, gd_history, gd_seconds = train_run(out_dir, setting, "mlp_gd", evaluate_mlp_gd, quiet)
    reference = outputs(engine, cfg, gd_params, val.tokens)

    def evaluate_model(step, params):
        return compare(outputs(engine, cfg, params, val.tokens), reference, targets)

    model_params, model_history, model_seconds = train_run(out_dir, setting, "model", evaluate_model, quiet)

    started = time.perf_counter()
    announce(quiet, f"sine: measuring both models on {setting.eval_tasks} validation tasks")
    final = compare(outputs(engine, cfg, model_params, val.tokens), reference, targets)
    start = model_history["evaluations"][0]
    grid = np.linspace(-task.x_range, task.x_range, CURVE_POINTS)
    shown, sweep = curve_batch(task, CURVE_TASKS, setting.seed, grid)
    curves = {name: np.asarray(engine.predict(cfg, p, sweep), np.float64).reshape(CURVE_TASKS, grid.size)
              for name, p in (("model", model_params), ("mlp_gd", gd_params))}
    truth = np.asarray(shown.amplitudes, np.float64)[:, None] * np.sin(grid[None] + np.asarray(shown.phases, np.float64)[:, None])
    results = {
        "n_context": task.n_context,
        "x_range": task.x_range,
        "amplitude_range": list(task.amplitude_range),
        "phase_range": list(task.phase_range),
        "final": final,
        "at_step_0": {key: start[key] for key in ("loss", "preds_diff", "partial_cosine", "minus_mlp_gd")},
        "zero_predictor_loss": zero_predictor_loss(targets),
        "mlp_gd_layer": layer_checks(cfg, initial_params(setting, "mlp_gd"), gd_params, val.tokens, reference.predictions),
        "over_training": {"model": model_history["evaluations"], "mlp_gd": gd_history["evaluations"]},
        "curves": [{"amplitude": float(shown.amplitudes[i]), "phase": float(shown.phases[i]),
                    "model_grid_half_mse": float(0.5 * np.mean((curves["model"][i] - truth[i]) ** 2)),
                    "mlp_gd_grid_half_mse": float(0.5 * np.mean((curves["mlp_gd"][i] - truth[i]) ** 2))}
                   for i in range(CURVE_TASKS)],
        "train_seconds": {"model": model_seconds, "mlp_gd": gd_seconds},
    }
    results["eval_seconds"] = time.perf_counter() - started
    histories = {"model": model_history, "mlp_gd": gd_history}
    zero = results["zero_predictor_loss"]["mean"]
    figures = {
        FIGURES["loss"]: lambda path: loss_figure(path, histories, zero, title=figure_title(setting)),
        FIGURES["alignment"]: lambda path: alignment_figure(path, model_history["evaluations"], title=figure_title(setting)),
        FIGURES["curves"]: lambda path: curves_figure(path, shown, grid, curves, truth, title=figure_title(setting)),
    }
    return Measured(results, figures)


# --- figures -------------------------------------------------------------------------------------------------


def figure_title(setting: SineSetting) -> str:
    return (f"sine regression y = A sin(x + phi), N = 10, x ~ U(-5, 5), {setting.draws} draws; "
            f"batch {setting.batch_size}, seed {setting.seed}")


def _series(evaluations: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = np.array([row["step"] for row in evaluations], dtype=float)
    means = np.array([row[key]["mean"] for row in evaluations], dtype=float)
    errors = np.array([row[key]["stderr"] for row in evaluations], dtype=float)
    return steps, means, errors


def _smoothed(history: dict, windows: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The training-batch loss averaged over about ``windows`` equal windows of steps."""
    steps, losses = np.asarray(history["step"], dtype=float), np.asarray(history["loss"], dtype=float)
    if steps.size == 0:
        return steps, losses
    width = max(1, steps.size // windows)
    cut = steps.size - steps.size % width
    return steps[:cut].reshape(-1, width).mean(axis=1), losses[:cut].reshape(-1, width).mean(axis=1)


def loss_figure(path: Path, histories: dict, zero: float, *, title: str = "") -> None:
    """Validation half-MSE (± s.e.) of the model and MLP + GD over their training steps, their
    training-batch losses (window means, faint) and predicting 0 for scale; log y axis."""
    plt, fig, axes = plots._figure(1, width=6.5, title=title)
    ax = axes[0]
    for i, name in enumerate(("model", "mlp_gd")):
        steps, means, errors = _series(histories[name]["evaluations"], "loss")
        ax.errorbar(steps, means, yerr=errors, fmt="o-", ms=3, capsize=2, color=f"C{i}", label=f"{LABELS[name]} (validation)")
        batch_steps, batch_losses = _smoothed(histories[name])
        if batch_steps.size:
            ax.plot(batch_steps, batch_losses, "-", lw=0.8, alpha=0.35, color=f"C{i}", label=f"{LABELS[name]} (training batches)")
    ax.axhline(zero, color="0.4", ls="--", lw=0.8, label="predicting 0")
    ax.set_xlabel("training step")
    ax.set_ylabel(plots.LOSS_LABEL)
    plots._log_y(ax)
    ax.legend(fontsize=7)
    plots._save(plt, fig, path)


def alignment_figure(path: Path, evaluations: list[dict], *, title: str = "") -> None:
    """The model against MLP + GD's final parameters over the model's training: the partial
    cosine (the 0.90 criterion marked) and the preds diff, each ± s.e."""
    plt, fig, axes = plots._figure(2, width=4.6, title=title)
    steps, means, errors = _series(evaluations, "partial_cosine")
    axes[0].errorbar(steps, means, yerr=errors, fmt="o-", ms=3, capsize=2, color="C0")
    axes[0].axhline(COSINE_THRESHOLD, color="C3", ls="--", lw=0.8, label=f"criterion {COSINE_THRESHOLD:g}")
    axes[0].axhline(1.0, color="0.6", lw=0.6)
    axes[0].set_ylabel("partial cosine")
    axes[0].set_title("mean_b sign(dyhat_model/dx_q) sign(dyhat_GD/dx_q)", fontsize=8)
    axes[0].set_xlabel("model training step")
    axes[0].legend(fontsize=7)
    steps, means, errors = _series(evaluations, "preds_diff")
    axes[1].errorbar(steps, means, yerr=errors, fmt="o-", ms=3, capsize=2, color="C1")
    axes[1].set_ylabel("preds diff")
    axes[1].set_title("mean_b |yhat_model - yhat_MLP+GD|", fontsize=8)
    axes[1].set_xlabel("model training step")
    plots._log_y(axes[1])
    plots._save(plt, fig, path)


def curves_figure(path: Path, shown: SineBatch, grid: np.ndarray, curves: dict, truth: np.ndarray, *, title: str = "") -> None:
    """yhat(x_q) over the grid for each shown task: the true wave, the model and MLP + GD, with
    the task's context points."""
    n = truth.shape[0]
    plt, fig, axes = plots._figure(n, width=3.4, title=title)
    for i, ax in enumerate(axes):
        ax.plot(grid, truth[i], "-", color="0.2", lw=1.6, label="truth")
        ax.plot(grid, curves["model"][i], "-", color="C0", lw=1.2, label="model")
        ax.plot(grid, curves["mlp_gd"][i], "--", color="C1", lw=1.2, label="MLP+GD")
        context = np.asarray(shown.tokens[i, :-1], dtype=np.float64)
        ax.plot(context[:, 0], context[:, 1], "o", ms=4, color="k", label="context")
        ax.set_title(f"A = {float(shown.amplitudes[i]):.2f}, phi = {float(shown.phases[i]):.2f}", fontsize=8)
        ax.set_xlabel("x_q")
        if i == 0:
            ax.set_ylabel("yhat(x_q)")
            ax.legend(fontsize=6)
    plots._save(plt, fig, path)


# --- the comparison with the paper -------------------------------------------------------------------------


def _relative(entry: dict, reference: dict) -> float:
    return entry["mean"] / reference["mean"] if reference["mean"] else math.inf


def layer_row(r: dict) -> ClaimRow:
    """MLP + GD's attention layer is the fixed GD step: unchanged by training and predicting the formula."""
    layer = r["mlp_gd_layer"]
    tolerance = LAYER_TOLERANCE[r["setting"]["dtype"]]
    relative = layer["formula_max_abs_error"] / max(layer["prediction_max_abs"], 1e-300)
    return ("MLP+GD's attention layer is one fixed GD step (eta = 0.1 over N = 10) on the trained embedding",
            f"largest change in training {layer['layer_max_change']:.3g}; max |yhat - formula| = "
            f"{layer['formula_max_abs_error']:.3g} ({relative:.2g} of max |yhat|)",
            f"no change; formula error <= {tolerance:g} of max |yhat| ({r['setting']['dtype']})",
            layer["layer_max_change"] == 0.0 and relative <= tolerance)


def comparison_rows(r: dict) -> list[ClaimRow]:
    """The paper's claims: (paper's statement, our number, our criterion, holds?)."""
    final, start, zero = r["final"], r["at_step_0"], r["zero_predictor_loss"]
    gap = _relative(final["minus_mlp_gd"], final["mlp_gd_loss"])
    gap_err = final["minus_mlp_gd"]["stderr"] / final["mlp_gd_loss"]["mean"] if final["mlp_gd_loss"]["mean"] else math.inf
    cos0, cos1 = start["partial_cosine"], final["partial_cosine"]
    diff0, diff1 = start["preds_diff"], final["preds_diff"]
    steps = r["setting"]["model_steps"]
    return [
        ("the trained model's loss approaches MLP+GD's (a learned embedding under one GD step)",
         f"model {fmt(final['loss'], 5)} vs MLP+GD {fmt(final['mlp_gd_loss'], 5)}; paired diff {fmt(final['minus_mlp_gd'], 5)} "
         f"({100 * gap:+.1f} ± {100 * gap_err:.1f}% of MLP+GD's); predicting 0: {fmt(zero, 5)}",
         f"|paired diff| <= {100 * LOSS_GAP:g}% of MLP+GD's loss", abs(gap) <= LOSS_GAP),
        ("the partial cosine between the model and MLP+GD rises towards ~0.95 over training",
         f"{fmt(cos0, 3)} at step 0 -> {fmt(cos1, 3)} at step {steps}",
         f"final >= {COSINE_THRESHOLD:g} and above step 0's", cos1["mean"] >= COSINE_THRESHOLD and cos1["mean"] > cos0["mean"]),
        ("the preds diff between the model and MLP+GD falls over training",
         f"{fmt(diff0, 4)} at step 0 -> {fmt(diff1, 4)} at step {steps}",
         f"final <= {PREDS_DIFF_FALL:g} x step 0's", diff1["mean"] <= PREDS_DIFF_FALL * diff0["mean"]),
        layer_row(r),
    ]


def smoke_rows(r: dict) -> list[ClaimRow]:
    """The weaker criteria of a smoke run: finite numbers, both models well below predicting 0,
    and MLP+GD's layer the fixed GD step (frozen, the formula)."""
    losses = {"model": r["final"]["loss"], "MLP+GD": r["final"]["mlp_gd_loss"]}
    return [finite_check(r), beats_zero_check("both models", losses, r["zero_predictor_loss"]), layer_row(r)]


def over_training_table(r: dict) -> str:
    rows = r["over_training"]["model"]
    gd = {row["step"]: row["loss"] for row in r["over_training"]["mlp_gd"]}
    lines = ["| step | model loss | MLP+GD loss (its own run, same step) | model - MLP+GD (final) | preds diff | partial cosine |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        other = fmt(gd[row["step"]], 5) if row["step"] in gd else "-"
        lines.append(f"| {row['step']} | {fmt(row['loss'], 5)} | {other} | {fmt(row['minus_mlp_gd'], 5)} | "
                     f"{fmt(row['preds_diff'], 4)} | {fmt(row['partial_cosine'], 3)} |")
    return "\n".join(lines)


def curves_table(r: dict) -> str:
    lines = ["| task | A | phi | model half-MSE on the grid | MLP+GD half-MSE on the grid |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {c['amplitude']:.3f} | {c['phase']:.3f} | {c['model_grid_half_mse']:.5f} | {c['mlp_gd_grid_half_mse']:.5f} |"
              for i, c in enumerate(r["curves"])]
    return "\n".join(lines)


def late_change(rows: list[dict]) -> tuple[int, int, float]:
    """(from step, to step, 100 (last / that - 1)): the change of a run's validation loss over
    the last quarter of its evaluations (whether it was still falling when training stopped)."""
    first = rows[min(len(rows) - 1, (3 * (len(rows) - 1)) // 4)]
    last = rows[-1]
    return first["step"], last["step"], 100 * (last["loss"]["mean"] / first["loss"]["mean"] - 1)


def draws_text(draws: str) -> str:
    if draws == "authors":
        return ("as the authors' code draws them: one uniform u per task gives A = 0.1 + 0.4 u and phi = pi u, so the "
                "amplitude and the phase are perfectly correlated (A = 0.1 + 0.4 phi / pi), a one-parameter family of waves")
    return ("independently (two uniforms per task), the two-parameter family of the paper's text; the authors' code "
            "draws both from one uniform (perfectly correlated)")


def setting_text(r: dict) -> str:
    s = r["setting"]
    seconds = r["train_seconds"]
    return f"""Setting: sine regression y = A sin(x + phi), N = {r['n_context']} context pairs, x ~ U(-{r['x_range']:g}, {r['x_range']:g}),
A in [{r['amplitude_range'][0]:g}, {r['amplitude_range'][1]:g}], phi in [{r['phase_range'][0]:g}, {r['phase_range'][1]:.4f}], drawn
{draws_text(s['draws'])} (`draws = "{s['draws']}"`). Tokens (x_i, y_i) and (x_q, 0); embedding 2 -> 40 (no bias) plus
the MLP 40 -> 160 (GELU) -> 40; one linear self-attention layer, one head; yhat = -h_q[40]; init scale {INIT_SCALE:g}.
The model: every parameter, Adam({s['model_lr']:g}, {MODEL_BETAS[0]}, {MODEL_BETAS[1]}), clip {CLIP_NORM:g}, {s['model_steps']} steps.
MLP+GD: the layer fixed to one GD step (eta = {GD_LR:g}, N = 10), the embedding only, Adam({s['mlp_gd_lr']:g},
{MLP_GD_BETAS[0]}, {MLP_GD_BETAS[1]}), clip {CLIP_NORM:g}, {s['mlp_gd_steps']} steps. Batch {s['batch_size']}, seed {s['seed']},
engine `{s['backend']}`, {s['dtype']}; {s['eval_tasks']} validation tasks (the same for every number: paired);
± is one standard error over tasks. The authors: 20,000 steps at batch 2048 for each, float32.
Training took {seconds['model']:.0f} s (model) and {seconds['mlp_gd']:.0f} s (MLP+GD) of wall time, summed over the
invocations that trained them (evaluations at checkpoints included); the final measures {r['eval_seconds']:.1f} s."""


def late_text(r: dict) -> str:
    parts = []
    for name in ("model", "mlp_gd"):
        start, end, change = late_change(r["over_training"][name])
        parts.append(f"{LABELS[name]} {change:+.1f}% (step {start} -> {end})")
    return "; ".join(parts)


def sections(r: dict) -> str:
    return f"""## Over training

The model at step 0 and at every checkpoint, against MLP+GD's final parameters on the same
validation tasks (the partial cosine: mean over tasks of sign(d yhat_model / d x_q) sign(d yhat_GD /
d x_q), x_q being 1-dimensional; the preds diff: mean |yhat_model - yhat_GD|).

{over_training_table(r)}

## A few tasks

yhat(x_q) over x_q in [-5, 5] with each task's context fixed (figure {FIGURES['curves']}): the
half-MSE against the true wave over the grid.

{curves_table(r)}

## Still training?

The validation loss over the last quarter of each run: {late_text(r)}.
{rates_text(r)}

## What differs from the authors

- Scale: {r['setting']['model_steps']} and {r['setting']['mlp_gd_steps']} steps at batch {r['setting']['batch_size']}
  instead of 20,000 at batch 2048 for each.
{rate_difference(r)}- The amplitude and phase draws: {draws_text(r['setting']['draws'])}.
- The partial cosine and preds diff compare the model at each checkpoint with MLP+GD's final
  parameters (trained first); the authors' numbers are not saved (their plots only), so the
  ~0.95 partial cosine could not be checked against a stored value.
"""


def rate_difference(r: dict) -> str:
    """The report's bullet on MLP+GD's rate, when it is not the authors' 3e-4."""
    rate = r["setting"]["mlp_gd_lr"]
    return "" if math.isclose(rate, 3e-4) else f"- MLP+GD's Adam rate: {rate:g} (the authors': 3e-4).\n"


def rates_text(r: dict) -> str:
    """How the two Adam rates compare (the report's "Still training?" section)."""
    model_lr, mlp_gd_lr = r["setting"]["model_lr"], r["setting"]["mlp_gd_lr"]
    if mlp_gd_lr < model_lr:
        return (f"MLP+GD trains its embedding with Adam at {mlp_gd_lr:g}, the model at {model_lr:g}, so at a short run "
                "the slower MLP+GD is likely the further from converged of the two.")
    return (f"MLP+GD trains its embedding with Adam at {mlp_gd_lr:g}, the model at {model_lr:g} (the authors train "
            "MLP+GD at 3e-4, for 20,000 steps of batch 2048).")


EXPERIMENT = Experiment(claim="on sine regression, a learned MLP embedding followed by one trained linear self-attention layer "
                              "behaves like the same kind of embedding trained under one fixed step of gradient descent (MLP + GD)",
                        title="Sine regression: a trained embedding + LSA layer against MLP + GD",
                        source="von Oswald et al. 2023, Sec. 5", lsa_backend=False, measure=measure, claims=comparison_rows,
                        checks=smoke_rows, setting_text=setting_text, sections=sections)
run, table, exit_code, report = EXPERIMENT.run, EXPERIMENT.table, EXPERIMENT.exit_code, EXPERIMENT.report
