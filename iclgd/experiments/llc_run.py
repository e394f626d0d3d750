r"""`iclgd llc`: the local learning coefficient (LLC) of a run's checkpoints, over training.

For each selected checkpoint ``checkpoints/step_<step>.npz`` of a run directory (any model
family a run holds: the developmental-landscape transformer, an LSA, or GD / GD++ with learned
rates), lambda-hat is estimated at its parameters w* by SGLD localised at w*
(``iclgd.analysis.llc.estimate_llc``; the step, the score and the diagnostics are described
there), on one data set built once and shared by every checkpoint:

    data   ``data_size`` sequences (tasks) of the run's own task, as trained ([task] of its
           config.toml: a finite pool stays that pool), drawn from the dedicated stream
           ``iclgd.streams.purpose_rng(seed, "llc/data")``: independent of every training batch,
           of the validation sets and of the SGLD chains, whose streams are
           ``iclgd.streams.sgld_rng(seed, c)``.  Default 8192 sequences.

Defaults for a transformer run: the developmental-landscape paper's SGLD hyperparameters, from
the authors' sweep config (timaeus-research/icl), which states them as scales
(gradient scale eps nbeta / 2 = 0.01, localization scale eps gamma / 2 = 0.001):

    step_size    eps   = 3e-4                                    (paper: 3e-4)
    nbeta              = 2 * 0.01 / 3e-4  = 66.67                (paper: the same)
    localization gamma = 2 * 0.001 / 3e-4 = 6.667                (paper: the same)
    batch_size         = 64 sequences per SGLD step              (paper: 1024; on the paper's model after 3000
                                                                  steps, 2 chains at 1024 gave 166.3 +- 0.8, 4 at
                                                                  64 gave 172.6 +- 2.8, per position alike, for
                                                                  1/16 of the work)
    score              = "minibatch" (the loss of the step's own minibatch, as devinterp records it)
    chains x draws     = 4 x 500                                 (paper: 10 x 5000; fewer, so that a
                                                                  CPU run is feasible)
    burnin             = estimate_llc's default ceil(2 / (eps gamma)) = 1000 steps
    per_position       = on (lambda-hat_k of each of the K positions' losses, from the same chains)
    mala_every         = 10 (the MALA acceptance of every 10th draw; 1: every draw, which doubles the draws' work)

nbeta and gamma are these numbers whatever --step-size is (they set the tempered posterior; the
step size only how finely SGLD samples it).

For the LSA families (lsa, gd, gdpp), estimate_llc's own defaults (read from its signature):
step_size 1e-4, nbeta = n / log n of the data set, localization 100, 4 chains x 500 draws,
burn-in ceil(2 / (eps gamma)) = 200, batch 1024, score "minibatch", no per-position LLC (the
LSA predicts one query).  A learned-rate GD model's LLC is that of its rates (eta, and gamma for
GD++), its loss computed through its LSA form (``ThroughLSAObjective``).

Cost: the transformer defaults take (1000 burn-in + 500 draws) x 4 chains SGLD steps on minibatches
of 64 sequences and 50 x 4 MALA checks: 70.9 s per checkpoint of the paper's 51,717-parameter
model on jax, 616.8 s on the numpy oracle, on a shared 2-core CPU (benchmarks/llc.py,
benchmarks/results/llc.md).  The paper's protocol (--chains 10 --draws 5000 --burnin 0
--batch-size 1024 --mala-every 1) is for a GPU: one gradient of the paper's model at batch 1024
takes ~0.2 s on this CPU with jax.

Files, in the output folder (default ``RUN/llc/``), each written atomically:

    step_<step>.json   one per checkpoint: ``LLCResult.summary()`` (llc_mean, llc_std_error,
                       llc_per_chain, init_loss, the SGLD settings, diagnostics, per_position), the
                       step, the settings asked for (``llc_settings``: what a rerun must repeat),
                       the backend, the data stream, the run and its config fingerprint, and the
                       wall time of the estimate.  A checkpoint whose chains diverged gets a file
                       too, with ``diverged`` (the message) and a null estimate, so that a rerun
                       skips it; the command then exits 1.
    llc.json           the table over every step file in the folder (step, llc_mean,
                       llc_std_error, mala_acceptance, flat, settling step, per-position means),
                       the settings, the data and the provenance
    llc.png            lambda-hat against training step with its standard error; the MALA
                       acceptance per checkpoint against 0.9; the per-position LLCs (when
                       recorded).  Needs matplotlib (the `plot` extra); without it, a note.

Resuming: the output folder is locked (``runio.RunLock``) while a process writes it; a
checkpoint whose file exists is skipped, so a rerun of the same command (after a kill, or
Ctrl-C, which leaves no partial file) estimates only the missing ones.  (On the jax backend the
chains run as compiled chunks of steps; Ctrl-C or SIGTERM takes effect when the running chunk
ends, and that checkpoint's work is lost.)  Every file records its
``llc_settings``; a rerun whose settings differ from a file's (the run, the data, or any SGLD
setting; not the backend, which changes how, not what, is computed) is refused, naming them.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iclgd import gd_models, plots, runio
from iclgd._checks import finite_float, nonnegative_int, positive_int
from iclgd.analysis.llc import LLCDiverged, estimate_llc, estimate_llc_of, json_ready
from iclgd.analysis.objective import BackendObjective
from iclgd.models import TransformerConfig
from iclgd.sgld import SCORES, default_burnin, default_nbeta, make_settings
from iclgd.streams import purpose_rng

#: The purpose of the data set's stream: ``purpose_rng(seed, DATA_PURPOSE)``.
DATA_PURPOSE = "llc/data"
DATA_STREAM = f"iclgd.streams.purpose_rng(seed, {DATA_PURPOSE!r})"
DEFAULT_DATA_SIZE = 8192
DEFAULT_SEED = 0
#: The output folder inside the run directory, without --out.
OUT_NAME = "llc"
RESULT_FILE = "llc.json"
FIGURE_FILE = "llc.png"

#: The developmental-landscape paper's SGLD (the authors' sweep config, timaeus-research/icl).
PAPER = {"step_size": 3e-4, "gradient_scale": 0.01, "localization_scale": 0.001, "chains": 10, "draws": 5000,
         "batch_size": 1024, "score": "minibatch"}
PAPER["nbeta"] = 2 * PAPER["gradient_scale"] / PAPER["step_size"]  # eps nbeta / 2 = 0.01
PAPER["localization"] = 2 * PAPER["localization_scale"] / PAPER["step_size"]  # eps gamma / 2 = 0.001

#: The defaults for a transformer run: the paper's SGLD posterior (eps, nbeta, gamma) sampled with fewer chains
#: and draws, minibatch 64 and MALA on every 10th draw, so that a checkpoint takes about a minute on a CPU.
TRANSFORMER_DEFAULTS = {"step_size": PAPER["step_size"], "nbeta": PAPER["nbeta"], "localization": PAPER["localization"],
                        "chains": 4, "draws": 500, "burnin": None, "batch_size": 64,
                        "score": PAPER["score"], "per_position": True, "mala_every": 10}


def _estimator_defaults() -> dict:
    """estimate_llc's own defaults, under the command's names (the LSA families use these)."""
    found = {name: p.default for name, p in inspect.signature(estimate_llc).parameters.items()}
    return {"step_size": found["step_size"], "nbeta": found["nbeta"], "localization": found["localization"],
            "chains": found["num_chains"], "draws": found["num_draws"], "burnin": found["num_burnin_steps"],
            "batch_size": found["batch_size"], "score": found["score"], "per_position": False,
            "mala_every": found["mala_every"]}


LSA_DEFAULTS = _estimator_defaults()


# --- settings ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLCSettings:
    """What `iclgd llc` is asked for; a field left None takes the run family's default (see the
    module docstring).  The field names are the command's flags (chains = --chains, ...).

    chains, draws, burnin   SGLD chains, draws per chain counted, steps per chain run first and not counted
    step_size, nbeta, localization   eps, the inverse temperature and gamma of the SGLD step
    batch_size              sequences per SGLD step (at most data_size: then the whole data set)
    data_size, seed         the data set's size; the seed of its stream and of the chains' streams
    score                   "minibatch", "paired" or "full" (iclgd.analysis.llc)
    per_position            the per-position LLCs too (transformer runs only)
    mala_every              the MALA acceptance of every k-th draw (0: never)
    """

    chains: int | None = None
    draws: int | None = None
    burnin: int | None = None
    step_size: float | None = None
    nbeta: float | None = None
    localization: float | None = None
    batch_size: int | None = None
    data_size: int | None = None
    seed: int | None = None
    score: str | None = None
    per_position: bool | None = None
    mala_every: int | None = None

    def resolved(self, model) -> "LLCSettings":
        """Every field set: the given ones checked (ValueError naming the field), the others the
        defaults of ``model``'s family, nbeta (LSA) and burnin filled in as estimate_llc would."""
        transformer = isinstance(model, TransformerConfig)
        defaults = TRANSFORMER_DEFAULTS if transformer else LSA_DEFAULTS
        value = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        value = {name: defaults.get(name) if v is None else v for name, v in value.items()}
        value["data_size"] = positive_int("data_size", DEFAULT_DATA_SIZE if value["data_size"] is None else value["data_size"])
        value["seed"] = nonnegative_int("seed", DEFAULT_SEED if value["seed"] is None else value["seed"])
        if value["batch_size"] is None:  # the estimator's None: the whole data set every step
            value["batch_size"] = value["data_size"]
        for name in ("chains", "draws", "batch_size"):
            value[name] = positive_int(name, value[name])
        value["mala_every"] = nonnegative_int("mala_every", value["mala_every"])
        value["step_size"] = finite_float("step_size", value["step_size"], positive=True)
        value["localization"] = finite_float("localization", value["localization"], nonnegative=True)
        if value["nbeta"] is None:
            value["nbeta"] = default_nbeta(value["data_size"])
        value["nbeta"] = finite_float("nbeta", value["nbeta"], positive=True)
        if value["burnin"] is None:
            value["burnin"] = default_burnin(value["step_size"], value["localization"])
        value["burnin"] = nonnegative_int("burnin", value["burnin"])
        if value["score"] not in SCORES:
            raise ValueError(f"score must be one of {list(SCORES)}; got {value['score']!r}")
        if not isinstance(value["per_position"], (bool, np.bool_)):
            raise ValueError(f"per_position must be True or False; got {value['per_position']!r}")
        value["per_position"] = bool(value["per_position"])
        if value["per_position"] and not transformer:
            raise ValueError(f"per_position must be off: it needs a transformer run (a loss at every position); this run's "
                             f"model is the {model.family!r} family, which predicts one query")
        value["batch_size"] = min(value["batch_size"], value["data_size"])
        resolved = LLCSettings(**value)
        make_settings(resolved.data_size, **resolved.estimator_arguments(), mala_every=resolved.mala_every)  # the estimator's own checks
        return resolved

    def estimator_arguments(self) -> dict:
        """The keyword arguments of estimate_llc (mala_every aside)."""
        return {"step_size": self.step_size, "nbeta": self.nbeta, "localization": self.localization,
                "num_chains": self.chains, "num_draws": self.draws, "num_burnin_steps": self.burnin,
                "batch_size": self.batch_size, "seed": self.seed, "score": self.score}

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# --- the run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """A run directory as `iclgd llc` reads it: its config and its checkpoints (step -> path)."""

    path: Path
    config: object
    checkpoints: dict

    @property
    def family(self) -> str:
        return self.config.model.family

    def fingerprint(self) -> str:
        from iclgd.train.checkpoints import config_fingerprint

        return config_fingerprint(self.config)


def open_run(run_dir) -> RunInfo:
    """The run in ``run_dir``; ValueError (what was expected, what was found) unless it is a run
    directory with a config.toml and at least one checkpoint."""
    from iclgd.config import load_run_config

    path = Path(run_dir)
    if not path.exists():
        raise ValueError(f"--run expects a run directory (written by `iclgd train --out DIR`); {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"--run expects a run directory (written by `iclgd train --out DIR`); {path} is a file")
    if not (path / "config.toml").is_file():
        raise ValueError(f"--run expects a run directory with a config.toml (written by `iclgd train --out DIR`); {path} has none")
    config = load_run_config(path / "config.toml")
    found = runio.list_checkpoints(path)
    if not found:
        raise ValueError(f"--run {path} holds no checkpoints (expected {runio.CHECKPOINT_DIR}/step_*.npz); "
                         "train it first, or name another run")
    return RunInfo(path, config, dict(found))


def _steps_text(steps: list[int]) -> str:
    if len(steps) <= 12:
        return ", ".join(map(str, steps))
    return f"{', '.join(map(str, steps[:6]))}, ..., {', '.join(map(str, steps[-3:]))} ({len(steps)} steps)"


def select_checkpoints(run: RunInfo, text: str | None) -> list[int]:
    """The steps that ``text`` names: "all" (or None) or comma-separated steps, each one a
    checkpoint of the run; ValueError naming the first that is not, and the run's steps."""
    steps = sorted(run.checkpoints)
    if text is None or text.strip() == "all":
        return steps
    try:
        wanted = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--checkpoints must be 'all' or comma-separated training steps such as 0,1000,5000; got {text!r}") from None
    missing = [step for step in wanted if step not in run.checkpoints]
    if missing:
        raise ValueError(f"--checkpoints names step {missing[0]}, which is not a checkpoint of {run.path}; "
                         f"its checkpoints are at steps {_steps_text(steps)}")
    return sorted(set(wanted))


def default_backend(model) -> str:
    """The fastest installed backend that computes ``model``'s family: jax (else numpy) for the
    transformer; numba, else jax, else numpy for the LSA families."""
    import importlib.util

    from iclgd.backends import fastest_backend

    if isinstance(model, TransformerConfig):
        return "jax" if importlib.util.find_spec("jax") is not None else "numpy"
    return fastest_backend()


def check_backend(name: str, model):
    """The backend ``name``, or ValueError when it does not compute ``model``'s family."""
    from iclgd.backends import get_backend

    transformer = isinstance(model, TransformerConfig)
    refusal = ValueError(f"--backend {name} does not compute the {model.family!r} family; "
                         f"use {'numpy or jax' if transformer else 'numpy, numba or jax'}")
    if transformer and name == "numba":  # known before numba's kernels are loaded
        raise refusal
    try:
        backend = get_backend(name)
    except ValueError as error:
        raise ValueError(f"--backend: {error}") from None
    computed = model.lsa_config() if isinstance(model, gd_models.LearnedGDConfig) else model
    if not isinstance(computed, backend.families):
        raise refusal
    return backend


class ThroughLSAObjective:
    """A learned-rate GD model's loss on a fixed data set as an SGLD objective over its rates:
    the rates are written into its LSA form (``gd_models.to_lsa_params``), the backend computes
    the LSA's loss and gradient, and the chain rule (``gd_models.pullback``) gives the rates'."""

    n_positions = None

    def __init__(self, backend, cfg: gd_models.LearnedGDConfig, data):
        self.cfg = cfg
        self.inner = BackendObjective(backend, cfg.lsa_config(), data)
        self.n_samples = self.inner.n_samples

    def loss(self, params: dict, indices=None) -> float:
        return self.inner.loss(gd_models.to_lsa_params(self.cfg, params), indices)

    def loss_and_grad(self, params: dict, indices=None):
        loss, grads = self.inner.loss_and_grad(gd_models.to_lsa_params(self.cfg, params), indices)
        return loss, gd_models.pullback(self.cfg, grads)


def data_description(config, settings: LLCSettings) -> dict:
    """How the data set is drawn: the stream, its seed, its size and the task (a JSON-able dict)."""
    return {"stream": DATA_STREAM, "seed": settings.seed, "size": settings.data_size,
            "distribution": "the run's task as trained ([task] of its config.toml)",
            "task": {f.name: getattr(config.task, f.name) for f in dataclasses.fields(config.task)}}


def build_data(config, settings: LLCSettings):
    """``data_size`` tasks of the run's task from ``purpose_rng(seed, "llc/data")``."""
    try:
        return config.task.sample(settings.data_size, purpose_rng(settings.seed, DATA_PURPOSE))
    except ValueError as error:
        raise ValueError(f"--data-size {settings.data_size} is too many sequences to draw: {error}") from None


def estimate(backend, config, params: dict, data, settings: LLCSettings):
    """The LLCResult of ``params`` (a checkpoint's) on ``data``."""
    model = config.model
    if isinstance(model, gd_models.LearnedGDConfig):
        return estimate_llc_of(ThroughLSAObjective(backend, model, data), params, **settings.estimator_arguments(),
                               mala_every=settings.mala_every)
    return estimate_llc(backend, model, params, data, **settings.estimator_arguments(),
                        per_position=settings.per_position, mala_every=settings.mala_every)


# --- files -------------------------------------------------------------------------------------------------


def step_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"step_{step:08d}.json"


def list_results(out_dir: Path) -> dict[int, Path]:
    """step -> path of every step_<step>.json in ``out_dir`` (temp files ignored)."""
    found = {}
    for path in Path(out_dir).glob("step_*.json"):
        try:
            found[int(path.stem.split("_")[1])] = path
        except (IndexError, ValueError):
            continue
    return dict(sorted(found.items()))


def identity(run: RunInfo, settings: LLCSettings) -> dict:
    """What a result file must share with a rerun that skips it: the run, the data and every
    SGLD setting (the backend and the checkpoint selection are not part of it)."""
    return json_ready({"run_fingerprint": run.fingerprint(), "data_stream": DATA_STREAM, **settings.as_dict()})


def _flag(name: str) -> str:
    return {"run_fingerprint": "the run (its config fingerprint)", "data_stream": "the data stream"}.get(
        name, "--" + name.replace("_", "-"))


def _read_result(path: Path) -> dict | None:
    """A result file's content, or None (with a warning) when it is damaged."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        runio.warn(f"{path} is not readable ({type(error).__name__}); it is left out and its checkpoint estimated again")
        return None
    if not isinstance(record, dict) or not isinstance(record.get("llc_settings"), dict) or not isinstance(record.get("step"), int):
        runio.warn(f"{path} is not an LLC result file; it is left out and its checkpoint estimated again")
        return None
    return record


def check_same_settings(out_dir: Path, records: dict[int, dict], wanted: dict) -> None:
    """ValueError naming the differing settings when a result file in ``out_dir`` was made with others."""
    for step, record in records.items():
        found = record["llc_settings"]
        differing = [key for key in sorted(set(found) | set(wanted)) if found.get(key) != wanted.get(key)]
        if differing:
            parts = "; ".join(f"{_flag(key)} {found.get(key)!r} there, {wanted.get(key)!r} now" for key in differing)
            raise ValueError(f"{out_dir} holds LLC estimates made with other settings ({step_path(out_dir, step).name}: {parts}); "
                             "rerun with those settings to resume, or choose another --out")


def remove_temp_files(out_dir: Path) -> list[Path]:
    """Delete the temp files killed writers left in ``out_dir`` (call it holding the lock)."""
    removed = [p for p in Path(out_dir).glob(f".*{runio.TEMP_SUFFIX}") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def table_row(record: dict) -> dict:
    """The row of llc.json for a result file."""
    diagnostics = record.get("diagnostics") or {}
    per_position = record.get("per_position") or {}
    return {"step": record["step"], "llc_mean": record.get("llc_mean"), "llc_std_error": record.get("llc_std_error"),
            "mala_acceptance": diagnostics.get("mala_acceptance"), "flat": diagnostics.get("flat"),
            "settling_step": diagnostics.get("settling_step"), "init_loss": record.get("init_loss"),
            "llc_per_position": per_position.get("llc_mean"), "llc_per_position_std_error": per_position.get("llc_std_error"),
            "warnings": diagnostics.get("warnings") or [], "diverged": record.get("diverged"),
            "backend": record.get("backend"), "wall_time_s": record.get("wall_time_s")}


def progress_text(index: int, total: int, record: dict) -> str:
    """``[3/12] step 1000: llc 19.3 +- 0.4 (MALA 0.95, flat, 47.1 s)``."""
    head = f"[{index}/{total}] step {record['step']}:"
    if record.get("diverged"):
        return f"{head} diverged ({record['diverged']}; {record['wall_time_s']:.1f} s)"
    diagnostics = record["diagnostics"]
    mala = diagnostics.get("mala_acceptance")
    se = record.get("llc_std_error")
    return (f"{head} llc {record['llc_mean']:.4g} +- {'nan' if se is None else f'{se:.2g}'} "
            f"(MALA {'n/a' if mala is None else f'{mala:.3f}'}, {'flat' if diagnostics.get('flat') else 'drifting'}, "
            f"{record['wall_time_s']:.1f} s)")


def format_table(rows: list[dict]) -> str:
    """The table printed at the end: step, lambda-hat, its standard error, MALA, flat."""
    lines = [f"{'step':>10}  {'llc':>10}  {'s.e.':>8}  {'MALA':>6}  flat"]
    for row in rows:
        if row["diverged"]:
            lines.append(f"{row['step']:>10}  {'diverged':>10}")
            continue
        se, mala = row["llc_std_error"], row["mala_acceptance"]
        lines.append(f"{row['step']:>10}  {row['llc_mean']:>10.4g}  {'nan' if se is None else f'{se:.3g}':>8}  "
                     f"{'n/a' if mala is None else f'{mala:.3f}':>6}  {'yes' if row['flat'] else 'no'}")
    return "\n".join(lines)


def figure_title(run: RunInfo, settings: LLCSettings) -> str:
    return (f"LLC of {run.path.name} ({run.family}): eps {settings.step_size:g}, nbeta {settings.nbeta:.4g}, "
            f"gamma {settings.localization:.4g}, {settings.chains} chains x {settings.draws} draws "
            f"(burn-in {settings.burnin}), batch {settings.batch_size} of {settings.data_size}")


# --- the command -------------------------------------------------------------------------------------------


def say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def run(run_dir, settings: LLCSettings = LLCSettings(), *, checkpoints: str | None = None, backend: str | None = None,
        out_dir=None, quiet: bool = False) -> dict:
    """Estimate the LLC of the selected checkpoints of ``run_dir`` into ``out_dir`` (default
    RUN/llc), skipping those already estimated; returns llc.json's content plus "computed" (the
    steps estimated now), "resumed" (those found done) and "exit_code" (1 if a checkpoint's
    chains diverged, else 0).  Every bad input is a ValueError before anything is written."""
    run_info = open_run(run_dir)
    config = run_info.config
    steps = select_checkpoints(run_info, checkpoints)
    settings = settings.resolved(config.model)
    backend_name = backend or default_backend(config.model)
    engine = check_backend(backend_name, config.model)
    out = Path(out_dir) if out_dir is not None else run_info.path / OUT_NAME
    wanted = identity(run_info, settings)
    data = build_data(config, settings)  # once, shared by every checkpoint (and refused before anything is written)
    with runio.RunLock(out):
        for path in remove_temp_files(out):
            runio.warn(f"removed {path}, left by a writer that was killed")
        records = {step: record for step, path in list_results(out).items() if (record := _read_result(path)) is not None}
        check_same_settings(out, records, wanted)
        todo = [step for step in steps if step not in records]
        done = len(steps) - len(todo)
        what = f"{len(steps)} checkpoint{'s' if len(steps) != 1 else ''} of {run_info.path} ({run_info.family})"
        if not todo:
            say(quiet, f"iclgd: llc: resuming: all {what} already estimated in {out}; nothing to do")
        else:
            state = f"resuming: {done} of {len(steps)} already estimated in {out}" if done else f"writing to {out}"
            say(quiet, f"iclgd: llc of {what}; {state}; backend {backend_name}; data {settings.data_size} sequences from "
                       f"{DATA_STREAM} with seed {settings.seed}")
        description = data_description(config, settings)
        computed = []
        for index, step in enumerate(steps, start=1):
            if step not in todo:
                continue
            record = _estimate_checkpoint(run_info, step, engine, backend_name, data, settings, wanted, description)
            runio.write_json(step_path(out, step), record)
            records[step] = record
            computed.append(step)
            say(quiet, progress_text(index, len(steps), record))
            for warning in (record.get("diagnostics") or {}).get("warnings", []):
                runio.warn(f"step {step}: {warning}")
        results = _summary(run_info, settings, wanted, description, records, backend_name)
        previous = _read_summary(out / RESULT_FILE)
        figure_missing = plots.matplotlib_available() and not (out / FIGURE_FILE).exists()
        if computed or previous is None or previous.get("table") != results["table"] or figure_missing:
            results["figure"] = _draw(out / FIGURE_FILE, results["table"], figure_title(run_info, settings))
            runio.write_json(out / RESULT_FILE, results)
        else:  # a rerun with nothing new: the files stay as they are
            results = previous
    results |= {"computed": computed, "resumed": [step for step in steps if step not in computed], "out": str(out),
                "exit_code": 1 if any(row["diverged"] for row in results["table"]) else 0}
    return results


def _estimate_checkpoint(run_info: RunInfo, step: int, engine, backend_name: str, data, settings: LLCSettings,
                         wanted: dict, description: dict) -> dict:
    """The result file's content for checkpoint ``step`` (the estimate, or its divergence)."""
    from iclgd.train.checkpoints import load_checkpoint

    config = run_info.config
    params = load_checkpoint(run_info.checkpoints[step], config.model.dtype, config).params
    start = time.perf_counter()
    try:
        summary, diverged = estimate(engine, config, params, data, settings).summary(), None
    except LLCDiverged as error:
        summary, diverged = {"llc_mean": None, "llc_std_error": None}, str(error)
    record = {"step": step, **summary, "diverged": diverged, "llc_settings": wanted, "backend": backend_name,
              "data": description, "run": {"path": str(run_info.path), "family": run_info.family,
                                           "fingerprint": wanted["run_fingerprint"]},
              "checkpoint": str(run_info.checkpoints[step]), "wall_time_s": time.perf_counter() - start}
    return json_ready(record)


def _summary(run_info: RunInfo, settings: LLCSettings, wanted: dict, description: dict, records: dict, backend_name: str) -> dict:
    from iclgd.provenance import provenance

    table = [table_row(records[step]) for step in sorted(records)]
    defaults = "transformer: the developmental-landscape paper's SGLD (fewer chains and draws)" \
        if isinstance(run_info.config.model, TransformerConfig) else "estimate_llc's defaults"
    return json_ready({"run": str(run_info.path), "family": run_info.family, "llc_settings": wanted,
                        "defaults": defaults, "paper": PAPER, "data": description, "table": table,
                        "figure": None, "provenance": provenance(backend_name)})


def _read_summary(path: Path) -> dict | None:
    """llc.json's content, or None when it is missing or damaged (it is then written again)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("table"), list) else None


def _draw(path: Path, table: list[dict], title: str) -> str | None:
    """llc.png, or None (with a note on stderr) without matplotlib."""
    if not plots.matplotlib_available():
        print(f"iclgd: note: {path.name} not drawn: matplotlib is not installed (pip install 'iclgd[plot]')", file=sys.stderr)
        return None
    plots.llc_curve(path, table, title=title)
    return path.name
