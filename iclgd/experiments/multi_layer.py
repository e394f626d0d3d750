r"""`iclgd reproduce multi-layer`: K-layer (or recurrent) LSA against K steps of GD and GD++.

von Oswald et al. (2023), multi-layer experiments: trained K-layer linear self-attention models match
or beat K steps of gradient descent, and recurrent (weight-tied) models approach GD++, the GD
variant whose layers also apply the curvature correction x_j <- x_j - (gamma / N) sum_i (x_i . x_j) x_i.

For every K in ``layers``, on the task of the one-layer claim (d = N = 10, x ~ U(-a, a)^d with
a = ``x_scale``, 1 by default, w ~ N(0, I), no noise), the run trains, each in its own resumable directory DIR/K<K>/<model>:

* ``lsa``:  a K-layer LSA (one head, key size d + 1), tied when ``tied``;
* ``gd``:   K steps of GD with learned rates (one per step, or one shared when ``tied``);
* ``gdpp``: K steps of GD++ with learned eta and gamma (per step, or shared when ``tied``);

all three by ``iclgd.train.train`` on the same task stream (the GD models through their LSA
form, iclgd.gd_models).  It also tunes one shared eta for K plain GD steps by a line search on
training-distribution tasks (``tuned GD``), and one shared (eta, gamma) for K GD++ steps by a
direct search on the same tasks (``tuned GD++``, ``iclgd.evaluate.tune_gdpp_rates``): learned
rates can stop short of their optimum (project issue 13 found, at a = 0.5, learned eta 18.95,
gamma 1.875 against a direct search's ~20.33, ~1.965, the loss ~0.8 % high), so the claim about
recurrent models is judged against tuned GD++, and the learned rates are reported beside it.  On the same validation tasks it reports every
model's half-MSE, the paired differences, the loss read out after every layer inside each
model, and the alignment (preds diff, model cos, model diff) of the trained LSA with the
learned GD and GD++ models.  Writes results.json, report.md and loss_by_depth.png,
loss_by_layer.png, alignment_by_depth.png.

Run length (ours, chosen to fit 10 minutes on 2 CPU cores with numba): the K-layer LSA gets
1000 (K + 1) Adam steps (deeper models converge more slowly: a tied 5-layer LSA is still 7.8% above
GD++ after 3000 steps, ``--layers 5 --steps-per-layer 400``, and 1.7% after 6000), batch 1024, lr 1e-3 with cosine decay; the learned
rates 2000 steps, batch 512, lr 0.1 (a handful of scalars that must travel to eta ~ 7: a large
rate, and a small batch is enough).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from iclgd import baselines, metrics, plots
from iclgd._checks import positive_int
from iclgd.backends import fastest_backend
from iclgd.config import RunConfig, TrainConfig
from iclgd.experiments.output import (
    ClaimRow, announce, beats_zero_check, figure_title, finite_check, fmt, run_seconds, zero_predictor_loss,
)
from iclgd.experiments.skeleton import Experiment, Measured, Setting
from iclgd.evaluate import stream, tune_gd_eta, tune_gdpp_rates, validation_batch
from iclgd.gd_models import LearnedGDConfig, as_lsa
from iclgd.models import LSAConfig
from iclgd.tasks import LinearRegressionTask, resolve_x_scale
from iclgd.train import check_run_dir, train

#: reference values of tuned K-step GD's half-MSE for d = N = 10, a = 1 (compared only at a = 1), quoted in the project's issue 5 (our
#: Monte Carlo agrees: tests/test_multistep_gd.py)
QUOTED_TUNED_GD = {2: 0.626, 4: 0.473}
MODELS = ("lsa", "gd", "gdpp")
MODEL_LABELS = {"lsa": "trained LSA", "gd": "learned-rate GD", "gdpp": "learned-rate GD++", "tuned_gd": "tuned GD",
                "tuned_gdpp": "tuned GD++"}


@dataclass(frozen=True)
class MultiLayerSetting(Setting):
    """Which depths, tied or not, and how long to train (defaults: the module doc); ``x_scale`` is a
    (or a name of iclgd.tasks.X_SCALES); ``quick()`` is a smoke run of seconds: K = 1, 2 and short
    training (long enough to move the LSA well below predicting 0), judged by ``smoke_rows``."""

    QUICK: ClassVar[dict] = dict(layers=(1, 2), steps_base=250, steps_per_layer=50, batch_size=256, baseline_steps=50,
                                 baseline_batch_size=256, val_tasks=1000, tune_tasks=2000)
    TASK_COUNTS: ClassVar[tuple[str, ...]] = ("val_tasks", "tune_tasks")

    layers: tuple[int, ...] = (1, 2, 3, 4, 5)
    tied: bool = False
    steps_base: int = 1000
    steps_per_layer: int = 1000
    batch_size: int = 1024
    lr: float = 1e-3
    baseline_steps: int = 2000
    baseline_batch_size: int = 512
    baseline_lr: float = 0.1
    seed: int = 0
    backend: str = field(default_factory=fastest_backend)
    val_tasks: int = 10_000
    tune_tasks: int = 20_000
    x_scale: float | str = 1.0
    smoke: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_scale", resolve_x_scale(self.x_scale))
        self.check_common()
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("layers must name at least one depth K; got none")
        object.__setattr__(self, "layers", tuple(sorted({positive_int("layers", k) for k in layers})))
        if len(self.layers) != len(layers):
            raise ValueError(f"layers must not repeat a depth; got {list(layers)}")
        for name in ("steps_base", "steps_per_layer"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {getattr(self, name)!r}")
        for name in ("baseline_steps", "batch_size", "baseline_batch_size"):
            positive_int(name, getattr(self, name))
        for k in self.layers:
            for model in MODELS:
                self.run_config(k, model)  # validates every training setting

    def lsa_steps(self, n_layers: int) -> int:
        """Training steps of the K-layer LSA: steps_base + steps_per_layer * K."""
        return self.steps_base + self.steps_per_layer * n_layers

    @property
    def task(self) -> LinearRegressionTask:
        return LinearRegressionTask(d=10, n_context=10, x_scale=self.x_scale)

    def run_config(self, n_layers: int, model: str) -> RunConfig:
        task = self.task
        if model == "lsa":
            model_cfg = LSAConfig(d=task.d, n_layers=n_layers, n_heads=1, tied=self.tied, n_context=task.n_context)
            steps, batch_size, lr = self.lsa_steps(n_layers), self.batch_size, self.lr
        elif model in ("gd", "gdpp"):
            model_cfg = LearnedGDConfig(d=task.d, n_context=task.n_context, n_layers=n_layers, tied=self.tied, variant=model)
            steps, batch_size, lr = self.baseline_steps, self.baseline_batch_size, self.baseline_lr
        else:
            raise ValueError(f"model must be one of {list(MODELS)}; got {model!r}")
        train_cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=self.seed, backend=self.backend,
                                schedule="cosine", checkpoint_every=max(1, steps // 10), log_every=max(1, steps // 200))
        return RunConfig(task, model_cfg, train_cfg)


def layer_readouts(backend, cfg, params, tokens: np.ndarray) -> list[np.ndarray]:
    """The prediction read out after every layer l = 1..K inside a model: ``-E_l[:, N, d]`` (B,) each."""
    lsa_cfg, lsa_params = as_lsa(cfg, params)
    return [-states[:, -1, -1] for states in backend.forward(lsa_cfg, lsa_params, tokens)[1:]]


def _estimates(losses: np.ndarray) -> dict:
    return metrics.estimate(losses).to_dict()


def tuned_gdpp_model(n_layers: int, d: int, n_context: int, rates: tuple[float, float]) -> tuple:
    """K GD++ steps sharing the tuned (eta, gamma), as a (LearnedGDConfig, params) pair (tied)."""
    cfg = LearnedGDConfig(d=d, n_context=n_context, n_layers=n_layers, tied=True, variant="gdpp")
    return cfg, {"eta": np.array([rates[0]]), "gamma": np.array([rates[1]])}


def evaluate_depth(backend, n_layers: int, trained: dict, tuned_eta: float, batch,
                   tuned_gdpp: tuple[float, float] | None = None) -> dict:
    """Every model's loss (after each layer and at the end), paired differences and alignment on
    ``batch``; with ``tuned_gdpp`` = (eta, gamma), K GD++ steps at those shared rates too."""
    predictions, sensitivities, per_layer = {}, {}, {}
    trained = dict(trained)
    if tuned_gdpp is not None:
        d = batch.tokens.shape[2] - 1
        trained["tuned_gdpp"] = tuned_gdpp_model(n_layers, d, batch.tokens.shape[1] - 1, tuned_gdpp)
    others = ("tuned_gd", "gd", "gdpp") + (("tuned_gdpp",) if tuned_gdpp is not None else ())
    for name, (cfg, params) in trained.items():
        readouts = layer_readouts(backend, cfg, params, batch.tokens)
        per_layer[name] = [_estimates(metrics.half_squared_errors(r, batch.targets)) for r in readouts]
        predictions[name] = readouts[-1]
        lsa_cfg, lsa_params = as_lsa(cfg, params)
        sensitivities[name] = backend.sensitivity(lsa_cfg, lsa_params, batch.tokens)
    per_layer["tuned_gd"] = [
        _estimates(metrics.half_squared_errors(baselines.gd_predict(batch.tokens, tuned_eta, k), batch.targets))
        for k in range(1, n_layers + 1)
    ]
    predictions["tuned_gd"] = baselines.gd_predict(batch.tokens, tuned_eta, n_layers)
    sensitivities["tuned_gd"] = baselines.gd_weights(batch.tokens, tuned_eta, n_layers)
    losses = {name: metrics.half_squared_errors(p, batch.targets) for name, p in predictions.items()}
    row = {
        "n_layers": n_layers,
        "tuned_gd_eta": tuned_eta,
        "loss": {name: _estimates(value) for name, value in losses.items()},
        "paired": {
            f"lsa_minus_{other}": metrics.paired_difference(losses["lsa"], losses[other]).to_dict()
            for other in others
        },
        "alignment": {
            other: {key: value.to_dict() for key, value in metrics.alignment(
                predictions["lsa"], sensitivities["lsa"], predictions[other], sensitivities[other]).items()}
            for other in ("gd", "gdpp", "tuned_gd") + others[3:]
        },
        "loss_per_layer": per_layer,
        "rates": {name: {key: value.tolist() for key, value in trained[name][1].items()} for name in ("gd", "gdpp")},
    }
    if tuned_gdpp is not None:
        row["tuned_gdpp_rates"] = {"eta": float(tuned_gdpp[0]), "gamma": float(tuned_gdpp[1])}
    return row


def measure(out_dir: Path, setting: MultiLayerSetting, backend, quiet: bool) -> Measured:
    """Train every model at every depth (resumable, under ``out_dir``/K<K>/<model>), then compare
    them depth by depth on the validation tasks."""
    task = setting.task
    batch = validation_batch(task, setting.val_tasks, setting.seed)
    tune_batch = task.sample(setting.tune_tasks, stream(setting.seed, "line_search"))
    for k in setting.layers:  # every run directory checked before anything trains or is written
        for model in MODELS:
            check_run_dir(out_dir / f"K{k}" / model, setting.run_config(k, model))
    rows, seconds = [], {}
    started_all = time.perf_counter()
    for k in setting.layers:
        trained = {}
        for model in MODELS:
            config = setting.run_config(k, model)
            if not quiet:
                print(f"K = {k}: training {MODEL_LABELS[model]} ({config.train.steps} steps, backend {setting.backend})", flush=True)
            state = train(out_dir / f"K{k}" / model, config, quiet=quiet, backend=backend)
            seconds[f"K{k}/{model}"] = run_seconds(out_dir / f"K{k}" / model)  # summed over resumes
            trained[model] = (config.model, state.params)
        started = time.perf_counter()
        announce(quiet, f"K = {k}: evaluating every model on {setting.val_tasks} validation tasks")
        row = evaluate_depth(backend, k, trained, tune_gd_eta(tune_batch, steps=k), batch,
                             tuned_gdpp=tune_gdpp_rates(tune_batch, steps=k))
        seconds[f"K{k}/evaluation"] = time.perf_counter() - started
        rows.append(row)
    results = {
        "depths": rows,
        "quoted_tuned_gd": {str(k): v for k, v in QUOTED_TUNED_GD.items()} if setting.x_scale == 1.0 else {},
        "zero_predictor_loss": zero_predictor_loss(batch.targets),
        "seconds": seconds,
        "total_seconds": time.perf_counter() - started_all,
    }
    kind = "recurrent (tied) K-layer LSA" if setting.tied else "K-layer LSA (untied)"
    title = figure_title(f"{kind} against K steps of GD and GD++", task.x_scale, task.d, task.n_context)
    figures = {
        "loss_by_depth.png": lambda path: plots.loss_by_depth(path, rows, MODEL_LABELS, title=title),
        "loss_by_layer.png": lambda path: plots.loss_by_layer(path, rows, MODEL_LABELS, title=title),
        "alignment_by_depth.png": lambda path: plots.alignment_by_depth(path, rows, MODEL_LABELS, title=title),
    }
    return Measured(results, figures)


def comparison_rows(r: dict) -> list[ClaimRow]:
    """The paper's claims: (paper's statement, our number, our criterion, holds?)."""
    rows = r["depths"]
    tied = r["setting"]["tied"]
    model = "recurrent LSA" if tied else "K-layer LSA"
    out = tuned_gd_rows(r)

    def excess(row, other):  # paired (LSA - other) as a fraction of other's loss
        return row["paired"][f"lsa_minus_{other}"]["mean"] / row["loss"][other]["mean"]

    worst = max(rows, key=lambda row: excess(row, "tuned_gd"))
    out.append((
        f"the trained {model} is no worse than tuned K-step GD (every K)",
        "; ".join(f"K={row['n_layers']}: {100 * excess(row, 'tuned_gd'):+.1f}%" for row in rows),
        "paired (LSA - GD) <= 2% of GD's loss for every K", excess(worst, "tuned_gd") <= 0.02,
    ))
    deep = [row for row in rows if row["n_layers"] >= 2]
    if deep:
        clearly = all(excess(row, "tuned_gd") <= -0.05 and
                      row["paired"]["lsa_minus_tuned_gd"]["mean"] + 3 * row["paired"]["lsa_minus_tuned_gd"]["stderr"] < 0
                      for row in deep)
        out.append((
            f"for K >= 2 the trained {model} clearly beats tuned K-step GD",
            "; ".join(f"K={row['n_layers']}: {fmt(row['paired']['lsa_minus_tuned_gd'])}" for row in deep),
            "paired (LSA - GD) < -5% of GD's loss and below 0 by > 3 s.e.", clearly,
        ))
        if tied:
            reference = gdpp_reference(r)
            out.append((
                f"for K >= 2 the trained recurrent LSA is within 5% of {MODEL_LABELS[reference]}",
                "; ".join(f"K={row['n_layers']}: {100 * excess(row, reference):+.1f}%" for row in deep),
                f"|paired (LSA - GD++)| <= 5% of GD++'s loss, GD++ at {GDPP_RATES_TEXT[reference]}",
                all(abs(excess(row, reference)) <= 0.05 for row in deep),
            ))
    return out


GDPP_RATES_TEXT = {"tuned_gdpp": "the shared (eta, gamma) of a direct search on training tasks",
                   "gdpp": "its learned rates"}


def gdpp_reference(r: dict) -> str:
    """The GD++ the recurrent-model claim is judged against: tuned GD++ (results of this version),
    learned-rate GD++ in results written before tuned GD++ was measured."""
    return "tuned_gdpp" if all("tuned_gdpp" in row["loss"] for row in r["depths"]) else "gdpp"


def tuned_gd_rows(r: dict) -> list[ClaimRow]:
    """The row on tuned K-step GD (falls with K; near the reference values), where there is something
    to compare: two depths or more, or a depth with a reference value."""
    rows = r["depths"]
    gd = [row["loss"]["tuned_gd"] for row in rows]
    quoted = {int(k): v for k, v in r["quoted_tuned_gd"].items() if int(k) in {row["n_layers"] for row in rows}}
    if len(rows) < 2 and not quoted:
        return []
    by_depth = {row["n_layers"]: row for row in rows}
    falls = all(b["mean"] < a["mean"] for a, b in zip(gd, gd[1:]))
    near_quote = all(abs(by_depth[k]["loss"]["tuned_gd"]["mean"] - v) <= 3 * by_depth[k]["loss"]["tuned_gd"]["stderr"]
                     for k, v in quoted.items())
    quote_text = ", ".join(f"{v} at K = {k}" for k, v in quoted.items())
    return [(
        "tuned K-step GD falls with K" + (f" (reference values: {quote_text})" if quoted else ""),
        ", ".join(f"K={row['n_layers']}: {fmt(row['loss']['tuned_gd'])}" for row in rows),
        ("decreasing in K" if len(rows) >= 2 else "") + ("; " if len(rows) >= 2 and quoted else "")
        + ("within 3 s.e. of the reference values" if quoted else ""),
        falls and near_quote,
    )]


#: how far above tuned GD a smoke run's learned-rate GD may be
SMOKE_GD_SLACK = 0.10


def smoke_rows(r: dict) -> list[ClaimRow]:
    """The weaker criteria of a smoke run (``--quick``): finite numbers, tuned GD as theory says,
    learned-rate GD no worse than tuned GD (within 10%), and the LSA well below predicting 0 at every K."""
    rows = r["depths"]
    learned = [row["loss"]["gd"]["mean"] / row["loss"]["tuned_gd"]["mean"] - 1 for row in rows]
    lsa = {f"K={row['n_layers']}": row["loss"]["lsa"] for row in rows}
    return [finite_check(r), *tuned_gd_rows(r), (
        "learned-rate GD is no worse than tuned GD (every K)",
        "; ".join(f"K={row['n_layers']}: {100 * gap:+.1f}%" for row, gap in zip(rows, learned)),
        f"learned-rate GD <= tuned GD + {100 * SMOKE_GD_SLACK:g}%", all(gap <= SMOKE_GD_SLACK for gap in learned),
    ), beats_zero_check("the trained LSA at every K", lsa, r["zero_predictor_loss"])]


def setting_text(r: dict) -> str:
    s = r["setting"]
    kind = "tied (recurrent)" if s["tied"] else "untied"
    rates = "one shared rate (pair)" if s["tied"] else "one rate (pair) per step"
    a = s.get("x_scale", 1.0)
    return f"""Setting: d = N = 10, x ~ U(-{a:g}, {a:g})^d, w ~ N(0, I), no label noise. LSA: {kind}, one head, key size 11,
{s['steps_base']} + {s['steps_per_layer']} K Adam steps, batch {s['batch_size']}, lr {s['lr']:g} with cosine decay. Learned-rate GD and GD++:
{rates}, {s['baseline_steps']} steps, batch {s['baseline_batch_size']}, lr {s['baseline_lr']:g} (cosine), trained by the
same loop through their LSA form. Tuned GD: one eta for all K steps by line search on {s['tune_tasks']} training tasks;
tuned GD++: one (eta, gamma) for all K steps by a direct search (grid, then Nelder-Mead) on the same tasks.
Input scale a = {a:g}. Seed {s['seed']}, backend `{s['backend']}`. Evaluation on {s['val_tasks']} validation tasks; every comparison is paired
on those tasks; ± is one standard error over tasks. The whole run took {r['total_seconds']:.0f} s."""


def rate_cells(values: list[float], last_unused: bool) -> str:
    """Learned rates to three decimals; the last GD++ step's gamma moves inputs no later step reads:
    its gradient is 0 and it stays at its init, shown as "(unused)"."""
    text = [f"{v:.3f}" for v in values]
    if last_unused:
        text[-1] = "(unused)"
    return ", ".join(text)


def sections(r: dict) -> str:
    s = r["setting"]
    tuned_pp = gdpp_reference(r) == "tuned_gdpp"
    names = ("lsa", "tuned_gd", "gd", "gdpp") + (("tuned_gdpp",) if tuned_pp else ())
    pp = "tuned_gdpp" if tuned_pp else "gdpp"
    loss_lines = "\n".join(
        f"| {row['n_layers']} | " + " | ".join(fmt(row["loss"][n]) for n in names)
        + f" | {fmt(row['paired']['lsa_minus_tuned_gd'])} | {fmt(row['paired'][f'lsa_minus_{pp}'])} |"
        for row in r["depths"]
    )
    others = ("gd", "gdpp") + (("tuned_gdpp",) if tuned_pp else ())
    align_lines = "\n".join(
        f"| {row['n_layers']} | {other} | " + " | ".join(fmt(row["alignment"][other][m]) for m in ("preds_diff", "model_cos", "model_diff")) + " |"
        for row in r["depths"] for other in others
    )
    layer_lines = "\n".join(
        f"| {row['n_layers']} | {MODEL_LABELS[n]} | " + ", ".join(f"{e['mean']:.3f}" for e in row["loss_per_layer"][n]) + " |"
        for row in r["depths"] for n in names
    )
    def tuned_pp_cells(row) -> str:
        rates = row.get("tuned_gdpp_rates")
        return f" {rates['eta']:.3f} | {rates['gamma']:.3f} |" if rates else ""

    rate_lines = "\n".join(
        f"| {row['n_layers']} | {row['tuned_gd_eta']:.3f} | {rate_cells(row['rates']['gd']['eta'], False)} | "
        f"{rate_cells(row['rates']['gdpp']['eta'], False)} | {rate_cells(row['rates']['gdpp']['gamma'], not s['tied'])} |"
        + tuned_pp_cells(row)
        for row in r["depths"]
    )
    loss_head = "| K | trained LSA | tuned GD | learned GD | learned GD++ |" + (" tuned GD++ |" if tuned_pp else "")
    rate_head = "| K | tuned GD eta | learned GD eta | learned GD++ eta | learned GD++ gamma |" + (
        " tuned GD++ eta | tuned GD++ gamma |" if tuned_pp else "")
    return f"""## Loss per depth (half-MSE)

{loss_head} LSA - tuned GD | LSA - {MODEL_LABELS[pp]} |
|{"---|" * (len(names) + 3)}
{loss_lines}

## Alignment of the trained LSA with the GD and GD++ models

| K | with | preds diff | model cos | model diff |
|---|---|---|---|---|
{align_lines}

## Loss read out after every layer (l = 1..K)

| K | model | half-MSE after layer 1, 2, ... |
|---|---|---|
{layer_lines}

## Rates

{rate_head}
|{"---|" * (5 + 2 * tuned_pp)}
{rate_lines}"""


EXPERIMENT = Experiment(claim="trained K-layer LSA models match or beat K steps of GD; recurrent ones approach GD++",
                        title="K-layer LSA against K steps of GD and GD++", source="von Oswald et al. 2023, multi-layer and recurrent experiments",
                        measure=measure, claims=comparison_rows, checks=smoke_rows, setting_text=setting_text, sections=sections)
run, table, exit_code, report = EXPERIMENT.run, EXPERIMENT.table, EXPERIMENT.exit_code, EXPERIMENT.report
