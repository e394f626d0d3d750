r"""`iclgd reproduce ood`: out of distribution, trained LSA layers degrade as gradient descent does.

von Oswald et al. (2023), Sec. 3: a linear self-attention (LSA) layer trained on in-context
linear regression implements one step of GD; if that is what it computes, it must also fail
where GD fails: when the test tasks are not the training tasks, the trained layer and GD (with
the rate tuned on the training tasks) should lose accuracy together.

The run, in the setting of iclgd.experiments.one_layer (d = N = 10, a = 1, w ~ N(0, I), no label
noise; one layer, one head; batch 2048, Adam lr 1e-3 with cosine decay):

1. train two models, each a resumable run directory under DIR:
   DIR/clean        on the standard task;
   DIR/distractors  on tasks whose context carries ``n_train_distractors`` labels replaced by
                    N(0, 1) noise (iclgd.tasks, ``n_distractors``);
2. tune one GD step's rate for each model on its own training distribution (the exact line
   search of iclgd.evaluate.tune_gd_eta on ``tune_tasks`` tasks of stream (seed, "line_search"));
   each model's rate stays fixed under every shift below;
3. shift the test tasks away from the training tasks and compare each model with its GD on the
   very same ``val_tasks`` validation tasks (paired, iclgd.evaluate.compare_with_gd):
   (a) input scale: every input from U(-alpha a, alpha a), alpha in ``alphas``;
   (b) input law at the same norm, E[x_k^2] = a^2 / 3: uniform, gaussian, exponential (one-sided),
       laplace (iclgd.tasks.X_DISTRIBUTIONS);
   (c) 0..``max_test_distractors`` distractor labels at test time;
4. the two models head to head on the same ``duel_tasks`` tasks of each distractor count, next to
   the same duel between their GD baselines.  The effect is small: a model trained on distractor
   tasks is GD with that distribution's rate, one GD step's loss is a parabola in the rate, so
   the gain over the clean rate is second order in the (few percent) difference of the rates,
   about 0.3 % of the loss at 2 distractors; a paired comparison needs ~10^5 tasks to resolve it
   well (at 10^4 tasks it sits near 4 standard errors).

Every number is a mean over tasks with its standard error; "LSA/GD - 1" is
mean(LSA - GD) / mean(GD), the paired difference relative to GD's loss.  Writes results.json,
report.md and (with matplotlib) ood_scale.png, ood_distributions.png, ood_distractors.png.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from iclgd import baselines, metrics, plots
from iclgd._checks import finite_float, nonnegative_int, positive_int
from iclgd.backends import fastest_backend
from iclgd.config import RunConfig, TrainConfig
from iclgd.experiments.output import (
    ClaimRow, announce, beats_zero_check, eta_check, figure_title, finite_check, fmt, run_seconds, x_scale_name, zero_predictor_loss,
)
from iclgd.experiments.skeleton import Experiment, Measured, Setting
from iclgd.evaluate import DEFAULT_ALPHAS, compare_with_gd, stream, tune_gd_eta, validation_batch
from iclgd.models import LSAConfig
from iclgd.tasks import X_DISTRIBUTIONS, LinearRegressionTask, resolve_x_scale, x_distribution_name
from iclgd.train import train

#: The two trained models: name -> what they were trained on.
MODELS = {"clean": "the standard task", "distractors": "tasks with distractor labels"}
#: The three shifts: results key -> (row key, what is shifted).
SWEEPS = {
    "input_scale": ("alpha", "input scale alpha: x ~ U(-alpha a, alpha a)"),
    "input_distribution": ("distribution", "input law at the same norm, E[x_k^2] = a^2/3"),
    "test_distractors": ("n_distractors", "distractor labels in the context at test time"),
}
FIGURES = {"input_scale": "ood_scale.png", "input_distribution": "ood_distributions.png", "test_distractors": "ood_distractors.png"}

IN_DISTRIBUTION_GAP = 0.01  # |paired LSA - GD| / GD on the training distribution, as in one_layer
OOD_GAP = 0.10  # max |LSA / GD - 1| over a sweep, as in one_layer's input-scale claim
Z = 4.0  # "significantly": at least 4 standard errors, as in `iclgd check`


@dataclass(frozen=True)
class OODSetting(Setting):
    """The paper's one-layer setting (d = N = 10) and the shifts to test; ``backend`` defaults to
    the fastest installed one (numba, else jax, else numpy); ``quick()`` is a smoke run of seconds:
    short training (long enough to move both models well below predicting 0), small evaluations,
    judged by ``smoke_rows`` instead of the paper's claims."""

    QUICK: ClassVar[dict] = dict(steps=300, val_tasks=2000, tune_tasks=10_000, duel_tasks=2000)
    TASK_COUNTS: ClassVar[tuple[str, ...]] = ("val_tasks", "tune_tasks", "duel_tasks")

    steps: int = 5000
    seed: int = 0
    backend: str = field(default_factory=fastest_backend)
    sampler: str = "numpy"
    x_scale: float | str = 1.0  # a, or a name of iclgd.tasks.X_SCALES
    n_train_distractors: int = 2
    max_test_distractors: int = 5
    val_tasks: int = 10_000
    tune_tasks: int = 100_000
    duel_tasks: int = 100_000  # the head to head: cheap (predictions only), and its effect is small
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    distributions: tuple[str, ...] = tuple(X_DISTRIBUTIONS)
    smoke: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise fields once, here
        self.check_common()
        set_(self, "x_scale", resolve_x_scale(self.x_scale))
        n_context = self.task().n_context
        if not 1 <= positive_int("n_train_distractors", self.n_train_distractors) <= n_context:
            raise ValueError(f"n_train_distractors must be in 1..{n_context}; got {self.n_train_distractors}")
        if not self.n_train_distractors <= nonnegative_int("max_test_distractors", self.max_test_distractors) <= n_context:
            raise ValueError(f"max_test_distractors must be in n_train_distractors..{n_context} = "
                             f"{self.n_train_distractors}..{n_context} (the head to head is at the training count); "
                             f"got {self.max_test_distractors}")
        alphas = tuple(finite_float("alphas", alpha, positive=True) for alpha in _sequence("alphas", self.alphas))
        distributions = tuple(x_distribution_name(name) for name in _sequence("distributions", self.distributions))
        if len(set(distributions)) != len(distributions):
            raise ValueError(f"distributions must not repeat a name; got {list(distributions)}")
        set_(self, "alphas", alphas)
        set_(self, "distributions", distributions)
        for model in MODELS:
            self.run_config(model)  # validates the task, model and training settings

    def task(self, n_distractors: int = 0) -> LinearRegressionTask:
        return LinearRegressionTask(d=10, n_context=10, x_scale=self.x_scale, n_distractors=n_distractors)

    def train_distractors(self, model: str) -> int:
        if model not in MODELS:
            raise ValueError(f"model must be one of {list(MODELS)}; got {model!r}")
        return self.n_train_distractors if model == "distractors" else 0

    def run_config(self, model: str) -> RunConfig:
        """The training run of ``model`` ("clean" or "distractors")."""
        task = self.task(self.train_distractors(model))
        lsa = LSAConfig(d=10, n_layers=1, n_heads=1, n_context=10)
        train_cfg = TrainConfig(
            steps=self.steps, batch_size=2048, lr=1e-3, seed=self.seed, backend=self.backend,
            sampler=self.sampler, schedule="cosine", checkpoint_every=max(1, self.steps // 10),
        )
        return RunConfig(task, lsa, train_cfg)


def _sequence(name: str, value) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a non-empty sequence; got {value!r}")
    value = tuple(value)
    if not value:
        raise ValueError(f"{name} must be a non-empty sequence; got {value!r}")
    return value


def shifted_tasks(setting: OODSetting, task: LinearRegressionTask) -> dict[str, list[tuple]]:
    """For each sweep, (shift value, test task): ``task`` with one thing changed."""
    return {
        "input_scale": [(alpha, dataclasses.replace(task, x_scale=task.x_scale * alpha)) for alpha in setting.alphas],
        "input_distribution": [(name, dataclasses.replace(task, x_distribution=name)) for name in setting.distributions],
        "test_distractors": [(k, dataclasses.replace(task, n_distractors=k)) for k in range(setting.max_test_distractors + 1)],
    }


def sweep(backend, cfg: LSAConfig, params: dict, key: str, shifted: list[tuple], n_tasks: int, seed: int, eta: float) -> list[dict]:
    """The model against one GD step at the fixed rate ``eta`` on ``n_tasks`` validation tasks of
    each shifted task: one row per shift, ``{key: value, **compare_with_gd(...).to_dict()}``."""
    rows = []
    for value, task in shifted:
        comparison = compare_with_gd(backend, cfg, params, validation_batch(task, n_tasks, seed), eta)
        rows.append({key: value, **comparison.to_dict()})
    return rows


def head_to_head(backend, cfg: LSAConfig, params: dict[str, dict], etas: dict[str, float], shifted: list[tuple],
                 n_tasks: int, seed: int) -> list[dict]:
    """The distractor-trained model against the clean one on the same ``n_tasks`` validation tasks
    of each test distractor count: both losses and their paired difference (distractors - clean),
    and the same paired difference between their GD baselines (one step at each model's rate)."""
    rows = []
    for k, task in shifted:
        batch = validation_batch(task, n_tasks, seed)
        lsa = {name: metrics.half_squared_errors(backend.predict(cfg, p, batch.tokens), batch.targets) for name, p in params.items()}
        gd = {name: metrics.half_squared_errors(baselines.gd_predict(batch.tokens, eta, 1), batch.targets) for name, eta in etas.items()}
        rows.append({"n_distractors": k, "clean_loss": metrics.estimate(lsa["clean"]).to_dict(),
                     "distractors_loss": metrics.estimate(lsa["distractors"]).to_dict(),
                     "distractors_minus_clean": metrics.paired_difference(lsa["distractors"], lsa["clean"]).to_dict(),
                     "gd_distractors_minus_clean": metrics.paired_difference(gd["distractors"], gd["clean"]).to_dict()})
    return rows


def measure(out_dir: Path, setting: OODSetting, backend, quiet: bool) -> Measured:
    """Train both models (or resume them) in ``out_dir``, then evaluate every shift."""
    configs = {name: setting.run_config(name) for name in MODELS}
    params, train_seconds = {}, {}
    for name, config in configs.items():
        params[name] = train(out_dir / name, config, quiet=quiet, backend=backend).params
        train_seconds[name] = run_seconds(out_dir / name)  # summed over resumes

    started = time.perf_counter()
    announce(quiet, f"evaluating both models under every shift on {setting.val_tasks} validation tasks each")
    cfg = configs["clean"].model
    models, sweeps = {}, {key: {} for key in SWEEPS}
    for name, config in configs.items():
        task = config.task
        eta = tune_gd_eta(task.sample(setting.tune_tasks, stream(setting.seed, "line_search")))
        batch = validation_batch(task, setting.val_tasks, setting.seed)
        own = compare_with_gd(backend, cfg, params[name], batch, eta)
        models[name] = {"trained_on": MODELS[name], "train_distractors": task.n_distractors, "gd_eta": eta,
                        "in_distribution": own.to_dict(), "zero_predictor_loss": zero_predictor_loss(batch.targets),
                        "train_seconds": train_seconds[name]}
        for key, shifted in shifted_tasks(setting, task).items():
            sweeps[key][name] = sweep(backend, cfg, params[name], SWEEPS[key][0], shifted, setting.val_tasks, setting.seed, eta)
    clean_task = configs["clean"].task
    optimum = baselines.one_step_optimum(clean_task.d, clean_task.n_context, clean_task.x_scale)
    results = {
        "x_scale": x_scale_name(setting.x_scale),
        "optimal_eta_clean": optimum.eta,
        "models": models,
        "sweeps": sweeps,
        "head_to_head": head_to_head(backend, cfg, params, {name: models[name]["gd_eta"] for name in MODELS},
                                     shifted_tasks(setting, clean_task)["test_distractors"], setting.duel_tasks, setting.seed),
    }
    results["eval_seconds"] = time.perf_counter() - started

    def drawing(key):
        row_key, what = SWEEPS[key]
        title = figure_title(f"trained LSA layers and GD under a shift: {what}", clean_task.x_scale, clean_task.d, clean_task.n_context)
        return lambda path: plots.ood_sweep(path, sweeps[key], row_key, what, band=OOD_GAP, title=title)

    return Measured(results, {FIGURES[key]: drawing(key) for key in SWEEPS})


# --- the comparison with the paper ----------------------------------------------------------------


def relative_gap(row: dict) -> tuple[float, float]:
    """LSA / GD - 1 = mean(LSA - GD) / mean(GD) and its standard error (the paired one, relative)."""
    gd = row["gd_loss"]["mean"]
    return row["model_minus_gd"]["mean"] / gd, row["model_minus_gd"]["stderr"] / gd


def worst_gap(r: dict, key: str) -> tuple[float, str]:
    """The largest |LSA / GD - 1| over both models and every shift of a sweep, and where it is."""
    row_key = SWEEPS[key][0]
    gaps = [(abs(relative_gap(row)[0]), f"{name}, {row_key} = {row[row_key]}")
            for name, rows in r["sweeps"][key].items() for row in rows]
    return max(gaps)


def comparison_rows(r: dict) -> list[ClaimRow]:
    """The paper's claims: (paper's statement, our number, our criterion, holds?)."""
    rows = []
    for name in MODELS:
        own = r["models"][name]["in_distribution"]
        gap, gap_err = relative_gap(own)
        rows.append((
            f"in distribution the {name} LSA equals one GD step with the eta tuned on its training tasks",
            f"{fmt(own['model_loss'])} vs GD {fmt(own['gd_loss'])} (LSA/GD - 1 = {100 * gap:+.2f} ± {100 * gap_err:.2f}%)",
            f"|paired diff| <= {100 * IN_DISTRIBUTION_GAP:g}% of GD's loss", abs(gap) <= IN_DISTRIBUTION_GAP,
        ))
    for key, statement in (("input_scale", "under input-scale shift the trained LSA degrades like GD"),
                           ("input_distribution", "under a change of input law (same norm) the trained LSA degrades like GD"),
                           ("test_distractors", "with more or fewer distractor labels the trained LSA degrades like GD")):
        worst, where = worst_gap(r, key)
        rows.append((statement, f"largest |LSA/GD - 1| over both models: {100 * worst:.1f}% ({where})",
                     f"<= {100 * OOD_GAP:g}%", worst <= OOD_GAP))
    k = r["setting"]["n_train_distractors"]
    duel = next(row for row in r["head_to_head"] if row["n_distractors"] == k)
    diff = duel["distractors_minus_clean"]
    rows.append((
        "a model trained with distractors beats the clean model on distractor tasks",
        f"{k} distractors, {r['setting']['duel_tasks']} tasks: {fmt(duel['distractors_loss'])} vs clean "
        f"{fmt(duel['clean_loss'])} (paired diff {fmt(diff, 5)}; their GDs {fmt(duel['gd_distractors_minus_clean'], 5)})",
        f"paired diff < 0 by >= {Z:g} s.e.", diff["mean"] + Z * diff["stderr"] < 0,
    ))
    return rows


def smoke_rows(r: dict) -> list[ClaimRow]:
    """The weaker criteria of a smoke run (``--quick``): finite numbers, the clean task's line-searched
    GD rate at the closed-form optimum, and both models well below predicting 0 in distribution."""
    trained = [beats_zero_check(f"the {name} LSA (in distribution)", {name: r["models"][name]["in_distribution"]["model_loss"]},
                                r["models"][name]["zero_predictor_loss"]) for name in MODELS]
    return [finite_check(r), eta_check("the clean task's line-searched GD eta is the optimal eta", r["models"]["clean"]["gd_eta"],
                                       r["optimal_eta_clean"]), *trained]


def sweep_table(r: dict, key: str) -> str:
    """One line per shift: each model, its GD and the relative gap."""
    row_key, _ = SWEEPS[key]
    head = f"| {row_key} |" + "".join(f" LSA ({name}) | GD (eta {r['models'][name]['gd_eta']:.3f}) | LSA/GD - 1 |" for name in MODELS)
    lines = [head, "|---|" + "---|---|---|" * len(MODELS)]
    by_model = [r["sweeps"][key][name] for name in MODELS]
    for rows in zip(*by_model):
        cells = []
        for row in rows:
            gap, gap_err = relative_gap(row)
            cells.append(f" {fmt(row['model_loss'])} | {fmt(row['gd_loss'])} | {100 * gap:+.2f} ± {100 * gap_err:.2f}% |")
        lines.append(f"| {rows[0][row_key]} |" + "".join(cells))
    return "\n".join(lines)


def head_to_head_table(r: dict) -> str:
    lines = ["| test distractors | LSA (clean) | LSA (distractors) | LSA: distractors - clean | GD: distractors' eta - clean's eta |",
             "|---|---|---|---|---|"]
    lines += [f"| {row['n_distractors']} | {fmt(row['clean_loss'])} | {fmt(row['distractors_loss'])} | "
              f"{fmt(row['distractors_minus_clean'], 5)} | {fmt(row['gd_distractors_minus_clean'], 5)} |"
              for row in r["head_to_head"]]
    return "\n".join(lines)


def setting_text(r: dict) -> str:
    s = r["setting"]
    m = r["models"]
    train_time = sum(model["train_seconds"] for model in m.values())
    return f"""Setting: d = N = 10, inputs {r['x_scale']}, w ~ N(0, I), no label noise; one layer, one head,
key size 11; Adam lr 1e-3 with cosine decay, batch 2048, {s['steps']} steps, seed {s['seed']},
backend `{s['backend']}`, sampler `{s['sampler']}`. Two models: "clean", trained on the standard
task, and "distractors", trained with {s['n_train_distractors']} of the 10 context labels replaced by N(0, 1) noise.
Each model's GD baseline is one GD step with the rate tuned (exact line search, {s['tune_tasks']} tasks)
on that model's training distribution: eta = {m['clean']['gd_eta']:.4f} (clean; closed form
{r['optimal_eta_clean']:.4f}) and {m['distractors']['gd_eta']:.4f} (distractors), fixed under every shift.
Every comparison is on the same {s['val_tasks']} validation tasks per test distribution; ± is one
standard error over tasks; LSA/GD - 1 is the paired difference relative to GD's loss.
Training took {train_time:.0f} s, evaluation {r['eval_seconds']:.0f} s."""


def sections(r: dict) -> str:
    s = r["setting"]
    figures = {key: (f"\n![{name}]({name})\n" if name in r["figures"] else "") for key, name in FIGURES.items()}
    return f"""## Input scale

Every input (context and query) from U(-alpha a, alpha a); the models' own training tasks otherwise.

{sweep_table(r, 'input_scale')}
{figures['input_scale']}
## Input law at the same norm

Every input coordinate i.i.d. with E[x_k^2] = a^2/3, as U(-a, a): gaussian N(0, a^2/3), laplace with
scale a/sqrt(6), exponential (a/sqrt(6)) Exp(1) (one-sided, not centred: mean a/sqrt(6)).

{sweep_table(r, 'input_distribution')}
{figures['input_distribution']}
## Distractor labels at test time

k of the 10 context labels replaced by N(0, 1) noise (positions drawn per task).

{sweep_table(r, 'test_distractors')}

The two models head to head on the same {s['duel_tasks']} tasks per distractor count (paired
differences), next to the same duel between one GD step at the distractor model's rate and at the
clean model's. One GD step's loss is a parabola in the rate, so the gain of the distractor rate is
second order in the rates' difference and small.

{head_to_head_table(r)}
{figures['test_distractors']}"""


EXPERIMENT = Experiment(claim="out of distribution, trained one-layer LSA models degrade as one step of GD does",
                        title="Out of distribution, a trained LSA layer degrades as GD does", source="von Oswald et al. 2023, Sec. 3",
                        measure=measure, claims=comparison_rows, checks=smoke_rows, setting_text=setting_text, sections=sections,
                        figures_inline=True)
run, table, exit_code, report = EXPERIMENT.run, EXPERIMENT.table, EXPERIMENT.exit_code, EXPERIMENT.report
