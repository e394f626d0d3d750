r"""`iclgd reproduce task-prior`: the finite-pool sweep, from dMMSE to ridge.

Raventos et al. (2023, "Pretraining task diversity and the emergence of non-Bayesian in-context
learning for regression") and Hoogland et al. (the developmental-landscape paper): a transformer
trained on in-context linear regression whose task vectors come from a finite pool of M tasks
(drawn once from N(0, I_D)) tracks the Bayes predictor of that pool, dMMSE, when M is small, and
the Bayes predictor of the Gaussian prior, ridge, when M is large: past a transition M it no
longer fits its own (finite) pretraining distribution optimally but generalises to new tasks.

The run, for M in {1, 2, 4, .., 2^max_log2_tasks} and M = infinity (a fresh w ~ N(0, I_D) per
sequence), each in its own resumable run directory ``OUT/M_<M>/run`` (``OUT/M_inf/run``):

1. train the transformer on ``NoisyRegressionTask(d, n_examples, noise_variance, n_tasks=M)``
   (pool_seed 0, the same pool for every seed), Adam with the paper's one-cycle schedule (peak lr
   0.003) compressed to ``steps``; ``iclgd.train.train`` resumes an interrupted run;
2. measure the final model on the two validation sets of iclgd.train.evaluation (``eval_size``
   sequences each, streams that depend on the task alone): the pretraining distribution (the
   pool) and the Gaussian prior ("true").  Per sequence b, with yhat, ridge and dmmse the (K,)
   predictions per prefix and y the labels, the mean over the K positions of
       model / ridge / dMMSE MSE:  (yhat - y)^2,  (ridge - y)^2,  (dmmse - y)^2
       delta_ridge:  (yhat - ridge)^2          delta_dmmse:  (yhat - dmmse)^2
   and their mean over sequences ± one standard error (dMMSE only for a finite pool).  The means
   equal the final checkpoint's evaluation row (evaluations.jsonl), stored next to them as a check.
   The measures go to ``OUT/M_<M>/measures.json``; a rerun whose run and measures are complete
   skips that M (no training, no evaluation).

Claims (judged on the pretraining distribution, the paper's criterion; the Gaussian prior's
numbers are reported alongside): delta_dmmse < delta_ridge for M = 1, 2, 4 (the model is
dMMSE-like), and delta_ridge < delta_dmmse at the largest finite M run (ridge-like).  The
transition M is the smallest M of the sweep from which every larger finite M is ridge-like.

Scale (laptop, the default; NOT the papers' scale).  The papers train for 500k steps at batch
256 (Hoogland et al.; Raventos et al. 500k at batch 256 with an 8-layer model, D = 8, M up to
2^20).  Here, for under an hour on 2 shared CPU cores with jax: the developmental-landscape
model (2 layers, 4 heads, d_model = d_mlp = 64, 51,717 parameters), D = 4, K = 8, sigma^2 =
0.125, 16,000 steps at batch 64 (about 1 / 125 of the paper's sequences), 5 checkpoints, M up to
2^8 (``--max-log2-tasks 8``):
    training   10 runs (M = 1, 2, .., 256 and infinity) x 16,000 steps x ~6.3 ms a step
               (the stages experiment's measurement of this model, jax, lax.scan)     ~ 17 min
    compiles   ~20 s per run (a jit per run and chunk length)                         ~  3 min
    evaluation 5 checkpoints x 10 runs x ~0.25 s, + the final measures (2 x 2048
               sequences, ridge and dMMSE over at most 256 pool vectors)              <  1 min
    total                                                                             ~ 21 min
A larger ``--max-log2-tasks`` adds ~2 min per M.  Short training favours ridge: a model that has
seen each of M tasks fewer times memorises less, so the transition M here is expected to be
smaller than the papers' (Raventos et al.: about 2^13 at D = 8 and their length); the report
states the transition found, not the papers'.

``--quick``: a tiny model (D = 2, K = 4, 1 layer, d_model 8) for 100 steps on the numpy backend,
M in {1, 2} and infinity, 64 validation sequences: seconds, judged by smoke checks only (every
estimate finite, every M measured, the baselines as theory says: at M = 1 dMMSE is the true task's
prediction, its MSE sigma^2), never by the paper's claims.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from iclgd import metrics, plots, runio
from iclgd._checks import nonnegative_int, positive_int
from iclgd.experiments.landscape_model import LandscapeModel
from iclgd.experiments.output import ClaimRow, announce, finite_check, fmt, run_seconds
from iclgd.experiments.skeleton import Experiment, Measured, Setting

#: The validation sets, as iclgd.train.evaluation names them.
SETS = ("pretraining", "true")
SET_TEXT = {"pretraining": "pretraining distribution (the pool)", "true": "Gaussian prior (M = infinity)"}
#: The M = 1..4 the dMMSE-like claim is judged at.
SMALL_M = (1, 2, 4)
MEASURES_FILE = "measures.json"
FIGURE = "task_prior_deltas.png"
#: The largest --max-log2-tasks: 2^20 tasks is Raventos et al.'s largest pool.
MAX_LOG2_TASKS = 20


def m_name(n_tasks: int | None) -> str:
    """The run folder's name of a pool size: "M_4", or "M_inf" for the Gaussian prior."""
    return "M_inf" if n_tasks is None else f"M_{n_tasks}"


def m_text(n_tasks: int | None) -> str:
    return "inf" if n_tasks is None else str(n_tasks)


@dataclass(frozen=True)
class TaskPriorSetting(LandscapeModel, Setting):
    """The sweep's setting (module docstring): task, model, training and the M grid."""

    QUICK: ClassVar[dict] = dict(d=2, n_examples=4, n_layers=1, n_heads=2, d_model=8, d_mlp=8, steps=100,
                                 batch_size=16, checkpoints=2, eval_size=64, max_log2_tasks=1, backend="numpy")
    TASK_COUNTS: ClassVar[tuple[str, ...]] = ("eval_size",)

    max_log2_tasks: int = 8
    seed: int = 0
    # (the task, the model, the batch and the peak rate: LandscapeModel's fields)
    steps: int = 16_000
    checkpoints: int = 5
    eval_size: int = 2048
    smoke: bool = False

    def __post_init__(self) -> None:
        self.check_common()
        if nonnegative_int("max_log2_tasks", self.max_log2_tasks) > MAX_LOG2_TASKS:
            raise ValueError(f"max_log2_tasks must be <= {MAX_LOG2_TASKS} (2^{MAX_LOG2_TASKS} tasks, Raventos et al.'s "
                             f"largest pool); got {self.max_log2_tasks}")
        self.check_model()
        nonnegative_int("seed", self.seed)
        for name in ("steps", "checkpoints"):
            positive_int(name, getattr(self, name))
        self.run_config(None)  # checks the task, model and training settings
        self.run_config(2 ** self.max_log2_tasks)

    @property
    def pool_sizes(self) -> list[int | None]:
        """M = 1, 2, 4, .., 2^max_log2_tasks, then None (M = infinity)."""
        return [2 ** k for k in range(self.max_log2_tasks + 1)] + [None]

    def run_config(self, n_tasks: int | None):
        from iclgd.config import run_config_from_dict

        return run_config_from_dict(self.run_config_dict(
            steps=self.steps, seed=self.seed, n_tasks=n_tasks,
            checkpoint_every=max(1, math.ceil(self.steps / self.checkpoints)),
            eval_size=self.eval_size, log_every=max(1, self.steps // 100)), source="<reproduce task-prior>")


# --- measuring one trained model ----------------------------------------------------------------------------


def _final_evaluation(run_dir: Path, step: int) -> dict | None:
    """The evaluation row of ``step`` in evaluations.jsonl (the last written), None if absent."""
    rows = [r for r in runio.read_jsonl(run_dir / "evaluations.jsonl", report=None) if isinstance(r, dict) and r.get("step") == step]
    return rows[-1] if rows else None


def measure_model(backend, config, params: dict) -> dict:
    """{set: {"model_mse", "ridge_mse", "dmmse_mse", "delta_ridge", "delta_dmmse": estimate}} on the
    validation sets of iclgd.train.evaluation (dMMSE entries only for a finite pool)."""
    from iclgd.tokens.interleaved import encode
    from iclgd.train.evaluation import baseline_predictions, validation_sets

    out = {}
    step = config.train.batch_size
    for name, examples in validation_sets(config.task, config.eval_size).items():
        tokens = encode(examples, config.model.dtype).tokens
        yhat = np.concatenate([np.asarray(backend.predict(config.model, params, tokens[i:i + step]), dtype=np.float64)
                               for i in range(0, len(tokens), step)])
        ys = np.asarray(examples.ys, dtype=np.float64)
        reference = baseline_predictions(config.task, examples)  # ridge; dmmse for a finite pool (on both sets)
        per_sequence = {"model_mse": np.mean((yhat - ys) ** 2, axis=1)}
        for baseline, predictions in reference.items():
            per_sequence[f"{baseline}_mse"] = np.mean((predictions - ys) ** 2, axis=1)
            per_sequence[f"delta_{baseline}"] = np.mean((yhat - predictions) ** 2, axis=1)
        out[name] = {key: metrics.estimate(values).to_dict() for key, values in per_sequence.items()}
    return out


def measure_pool_size(out_dir: Path, setting: TaskPriorSetting, n_tasks: int | None, backend, quiet: bool) -> dict:
    """Train (or resume) the run of pool size ``n_tasks`` and measure it; cached in measures.json
    (reused when its config and final step match: a finished M is skipped)."""
    from iclgd.config import run_config_to_toml
    from iclgd.train import train

    config = setting.run_config(n_tasks)
    folder = out_dir / m_name(n_tasks)
    run_dir = folder / "run"
    cache = folder / MEASURES_FILE
    fingerprint = run_config_to_toml(config)
    if cache.is_file():
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
            if stored.get("config") == fingerprint and stored.get("step") == config.train.steps:
                return stored | {"computed_now": False}
        except (OSError, ValueError):
            runio.warn(f"{cache} is not readable; M = {m_text(n_tasks)} is measured again")
    announce(quiet, f"task-prior: M = {m_text(n_tasks)}: training {setting.steps} steps into {run_dir}")
    state = train(run_dir, config, quiet=quiet, backend=backend)
    started = time.perf_counter()
    measured = measure_model(backend, config, state.params)
    row = _final_evaluation(run_dir, state.step) or {}
    record = {
        "n_tasks": n_tasks, "run": str(run_dir), "step": int(state.step), "config": fingerprint,
        "train_seconds": run_seconds(run_dir), "measure_seconds": time.perf_counter() - started,
        "sets": measured,
        "final_evaluation": {name: {key: row.get(name, {}).get(key) for key in ("mse", "delta_ridge", "delta_dmmse")}
                             for name in SETS},
    }
    runio.write_json(cache, record)
    return record | {"computed_now": True}


def transition(rows: list[dict], set_name: str = "pretraining") -> int | None:
    """The smallest finite M from which every larger finite M of the sweep is ridge-like
    (delta_ridge < delta_dmmse on ``set_name``); None when the largest is not."""
    finite = [r for r in rows if r["n_tasks"] is not None]
    found = None
    for r in reversed(finite):
        s = r["sets"][set_name]
        if s["delta_ridge"]["mean"] < s["delta_dmmse"]["mean"]:
            found = r["n_tasks"]
        else:
            break
    return found


def measure(out_dir: Path, setting: TaskPriorSetting, backend, quiet: bool) -> Measured:
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = [measure_pool_size(out_dir, setting, m, backend, quiet) for m in setting.pool_sizes]
    for row in rows:
        row.pop("config", None)
    results = {"out": str(out_dir), "pool_sizes": [m_text(m) for m in setting.pool_sizes], "rows": rows,
               "transition_m": {name: transition(rows, name) for name in SETS},
               "seconds_this_process": time.perf_counter() - started}
    title = (f"D = {setting.d}, K = {setting.n_examples}, {setting.steps} steps at batch {setting.batch_size}"
             + (" (smoke run)" if setting.smoke else ""))
    return Measured(results, {FIGURE: lambda path: plots.task_prior_deltas(path, rows, title=title)})


# --- claims ----------------------------------------------------------------------------------------------------


def _row(r: dict, n_tasks: int | None) -> dict | None:
    return next((x for x in r["rows"] if x["n_tasks"] == n_tasks), None)


def _deltas_text(s: dict) -> str:
    return f"delta_dmmse {fmt(s['delta_dmmse'])}, delta_ridge {fmt(s['delta_ridge'])}"


def claim_rows(r: dict) -> list[ClaimRow]:
    rows = []
    small = [(m, _row(r, m)) for m in SMALL_M]
    present = [(m, x) for m, x in small if x is not None]
    ok = len(present) == len(SMALL_M) and all(
        x["sets"]["pretraining"]["delta_dmmse"]["mean"] < x["sets"]["pretraining"]["delta_ridge"]["mean"] for _, x in present)
    ours = "; ".join(f"M = {m}: {_deltas_text(x['sets']['pretraining'])}" for m, x in present)
    missing = [m for m, x in small if x is None]
    if missing:
        ours += ("; " if ours else "") + f"not run: M = {', '.join(map(str, missing))} (--max-log2-tasks too small)"
    rows.append(("at small M (1, 2, 4) the trained model tracks dMMSE, the Bayes predictor of its pool",
                 ours, "delta_dmmse < delta_ridge on the pretraining distribution at M = 1, 2 and 4", ok))
    largest = max(m for m in (x["n_tasks"] for x in r["rows"]) if m is not None)
    x = _row(r, largest)["sets"]["pretraining"]
    rows.append((f"at large M the trained model tracks ridge, the Bayes predictor of the Gaussian prior (largest M run: {largest})",
                 f"M = {largest}: {_deltas_text(x)}; transition M (pretraining) = {r['transition_m']['pretraining']}",
                 f"delta_ridge < delta_dmmse on the pretraining distribution at M = {largest}",
                 x["delta_ridge"]["mean"] < x["delta_dmmse"]["mean"]))
    return rows


def smoke_rows(r: dict) -> list[ClaimRow]:
    """The smoke run's checks: finite numbers, every M measured and its figure written, and the
    dMMSE baseline as theory says at M = 1 (the true task's prediction: MSE = sigma^2)."""
    rows = [finite_check(r)]
    expected = r["pool_sizes"]
    got = [m_text(x["n_tasks"]) for x in r["rows"] if x.get("step") == r["setting"]["steps"]]
    rows.append(("every M is trained to the last step and measured", f"{len(got)} of {len(expected)} ({', '.join(got)})",
                 "all", got == expected))
    one = _row(r, 1)
    sigma2 = r["setting"]["noise_variance"]
    dm = one["sets"]["pretraining"]["dmmse_mse"] if one else None
    rows.append(("at M = 1 dMMSE predicts with the one task: its MSE is the noise variance",
                 f"{fmt(dm)} (sigma^2 = {sigma2:g})" if dm else "M = 1 not run",
                 "within 4 s.e. + 10% of sigma^2", bool(dm) and abs(dm["mean"] - sigma2) <= 4 * dm["stderr"] + 0.1 * sigma2))
    figures_ok = all((Path(r["out"]) / name).is_file() for name in r["figures"])
    rows.append(("the figure is written", f"{len(r['figures'])} figure(s)", "every listed figure present", figures_ok))
    return rows


# --- the report ------------------------------------------------------------------------------------------------


def setting_text(r: dict) -> str:
    s = r["setting"]
    train_time = sum(x.get("train_seconds") or 0.0 for x in r["rows"])
    return f"""Setting ({'smoke run' if s['smoke'] else 'laptop scale, not the papers: 500k steps at batch 256'}): D = {s['d']},
K = {s['n_examples']}, sigma^2 = {s['noise_variance']:g}; pools of M tasks drawn once from N(0, I_D) (pool seed 0), M in
{{{', '.join(r['pool_sizes'])}}} (inf: a fresh w ~ N(0, I_D) per sequence); transformer {s['n_layers']} layers, {s['n_heads']} heads,
d_model {s['d_model']}, d_mlp {s['d_mlp']}, {s['dtype']}; Adam, one-cycle schedule peaking at lr {s['lr']:g}, batch
{s['batch_size']}, {s['steps']} steps, seed {s['seed']}, backend `{s['backend']}`. Measured on {s['eval_size']} validation
sequences from the pretraining distribution and {s['eval_size']} from the Gaussian prior (iclgd.train.evaluation's
sets); ± is one standard error over sequences; every MSE and delta is the mean over sequences and the K positions.
Training took {train_time:.0f} s (summed over processes and M); this process {r['seconds_this_process']:.0f} s."""


def _table(r: dict, set_name: str) -> str:
    lines = ["| M | model MSE | ridge MSE | dMMSE MSE | delta_ridge | delta_dmmse | closer to |", "|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        s = x["sets"][set_name]
        dm = s.get("delta_dmmse")
        closer = "—" if dm is None else ("dMMSE" if dm["mean"] < s["delta_ridge"]["mean"] else "ridge")
        lines.append(f"| {m_text(x['n_tasks'])} | {fmt(s['model_mse'])} | {fmt(s['ridge_mse'])} | "
                     f"{fmt(s['dmmse_mse']) if 'dmmse_mse' in s else '—'} | {fmt(s['delta_ridge'])} | "
                     f"{fmt(dm) if dm else '—'} | {closer} |")
    return "\n".join(lines)


def sections(r: dict) -> str:
    smoke = ("\n**This is a smoke run (--quick)**: a tiny model trained for seconds; its numbers check the pipeline, "
             "not the papers.\n" if r["setting"]["smoke"] else "")
    parts = [smoke]
    for name in SETS:
        t = r["transition_m"][name]
        parts.append(f"""## On the {SET_TEXT[name]}

{_table(r, name)}

Transition M (the smallest M from which every larger finite M is closer to ridge): {t if t is not None else 'not reached'}.
""")
    parts.append("""## What this scale can and cannot show

The papers train far longer (500k steps at batch 256); a model that sees each pool task fewer times
memorises less, so the transition from dMMSE to ridge is expected at a smaller M here than in
Raventos et al. (about 2^13 at D = 8). The direction of the effect (dMMSE-like at small M, ridge-like at
large M) is what this run judges; the location of the transition is reported, not compared.
""")
    return "\n".join(parts)


EXPERIMENT = Experiment(
    claim="trained on a finite pool of M regression tasks, the transformer tracks dMMSE (the pool's Bayes predictor) at "
          "small M and ridge (the Gaussian prior's Bayes predictor) at large M",
    title="Task diversity: from dMMSE to ridge", source="Raventos et al. 2023; Hoogland et al., The Developmental Landscape of In-Context Learning",
    measure=measure, claims=claim_rows, checks=smoke_rows, setting_text=setting_text, sections=sections)


def run(out_dir, setting: TaskPriorSetting, quiet: bool = False) -> dict:
    """Run (or resume) the sweep in ``out_dir``; results.json's content."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return EXPERIMENT.run(out_dir, setting, quiet)


table, exit_code, report = EXPERIMENT.table, EXPERIMENT.exit_code, EXPERIMENT.report
