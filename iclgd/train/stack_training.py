r"""Resumable training of the attention stack (``iclgd.models.stack``) with clipped Adam.

``train_stack(run_dir, cfg, params0, sample_batch, steps=..., ...)`` makes ``steps`` updates,
update t (t = 0 .. steps - 1) on batch ``sample_batch(t)`` (tokens (B, T, D), targets (B,),
deterministic in t), each

    g = d loss(params_t; batch t) / d params          (0 for names outside ``trainable``)
    g <- g min(1, clip_norm / ||g||)                   (global norm over every parameter)
    m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,  k = t + 1
    u = -lr (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps)     (0 for names outside ``trainable``)
    params_{t+1} = params_t + u

Engines: "numpy" takes the gradient from the oracle (``iclgd.backends.numpy_stack.loss_and_grad``)
and the update from ``iclgd.optim`` (chain(clip_by_global_norm, scale_by_adam,
scale_by_learning_rate)); "jax" runs ``iclgd.backends.jax_stack.make_train_step`` (autodiff and the
same chain in optax).  Both take the same updates from the same state and batch, to round-off.
Frozen names (outside ``trainable``) keep zero Adam moments and never move.

The run directory (every file written atomically: a temporary file, then ``os.replace``, as
``iclgd.runio`` does, so an interrupted write leaves no partial file under a final name):

    config.json                    what the run is: cfg, lr, b1, b2, eps, clip_norm, the trainable
                                   names and a SHA-256 of params0.  A rerun whose values differ is
                                   refused with a ValueError naming the fields (``steps``,
                                   ``checkpoint_every``, the engine and ``quiet`` are how far and how
                                   a run is computed, not what it is: they may change between calls,
                                   and either engine may resume the other's run).
    checkpoints/step_XXXXXXXX.npz  at step 0, every ``checkpoint_every`` steps and at ``steps``:
                                   params/<name>, adam_m/<name>, adam_v/<name>, adam_count, step,
                                   the loss history (history_step, history_loss), the evaluations
                                   (JSON text) and the config's fingerprint
    history.json                   the history of the newest checkpoint, for reading (the
                                   checkpoint, not this file, is what a resume reads)
    .lock                          while a process trains the run (``iclgd.runio.RunLock``)

A rerun with the same arguments resumes from the newest checkpoint that loads (a damaged one is
skipped with a warning on stderr; temporary files of killed writers are removed); since batch t
is ``sample_batch(t)``, a run stopped and resumed takes exactly the updates of one run straight
through.  ``evaluate(step, params) -> dict`` (optional) is called at step 0 and at every
checkpoint, before the checkpoint is written, and its results are kept in the history.

History: {"step": [t, ...], "loss": [loss of batch t at params_t, ...],
"evaluations": [{"step": s, **evaluate(s, params_s)}, ...]} (a loss every step).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from iclgd import runio
from iclgd._checks import nonnegative_int, positive_int
from iclgd.models.stack import check_config, check_params, check_targets, check_tokens, param_shapes
from iclgd.optim import (
    AdamState,
    adam_chain_state,
    adam_state_of,
    apply_updates,
    chain,
    clip_by_global_norm,
    scale_by_adam,
    scale_by_learning_rate,
)
from iclgd.train.errors import TrainingDiverged

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
ENGINES = ("numpy", "jax")


def fastest_engine() -> str:
    """The faster installed engine of train_stack: "jax" when jax and optax are installed (the
    stack has no numba engine), else "numpy"."""
    import importlib.util

    return "jax" if all(importlib.util.find_spec(name) is not None for name in ("jax", "optax")) else "numpy"


# --- what a run is ----------------------------------------------------------------------------------------


def check_trainable(cfg, trainable) -> list[str]:
    """The trainable names in ``param_shapes`` order (None: all), or ValueError naming unknown ones."""
    names = list(param_shapes(cfg))
    if trainable is None:
        return names
    if isinstance(trainable, str) or not hasattr(trainable, "__iter__"):
        raise ValueError(f"trainable must be a collection of parameter names or None; got {trainable!r}")
    chosen = set(trainable)
    unknown = sorted(chosen - set(names), key=repr)
    if unknown:
        raise ValueError(f"trainable names parameters this config does not have: {unknown}; its parameters are {names}")
    return [name for name in names if name in chosen]


def check_optimiser(lr, b1, b2, eps, clip_norm) -> dict:
    """{"lr", "b1", "b2", "eps", "clip_norm"} as floats (clip_norm None for no clipping), or ValueError."""
    values = {}
    for name, value in (("lr", lr), ("b1", b1), ("b2", b2), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number; got {value!r}")
        values[name] = float(value)
    for name in ("b1", "b2"):
        if not 0.0 <= values[name] < 1.0:
            raise ValueError(f"{name} must be in [0, 1); got {values[name]}")
    if values["eps"] < 0:
        raise ValueError(f"eps must be non-negative; got {values['eps']}")
    clip = math.inf if clip_norm is None else clip_norm
    if isinstance(clip, bool) or not isinstance(clip, (int, float, np.integer, np.floating)) or not clip > 0:
        raise ValueError(f"clip_norm must be a positive number (inf or None: no clipping); got {clip_norm!r}")
    values["clip_norm"] = None if math.isinf(clip) else float(clip)
    return values


def params_digest(cfg, params: dict) -> str:
    """SHA-256 (hex) of the parameters in ``cfg.dtype``, name by name in ``param_shapes`` order."""
    digest = hashlib.sha256()
    for name in param_shapes(cfg):
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(np.ascontiguousarray(params[name], dtype=cfg.dtype).tobytes())
    return digest.hexdigest()


def run_identity(cfg, params0: dict, optimiser: dict, trainable: list[str]) -> dict:
    """The contents of config.json: {"cfg": {...}, "lr", "b1", "b2", "eps", "clip_norm",
    "trainable": [names], "params0_sha256": hex}, as JSON would read it back."""
    identity = {"cfg": asdict(cfg), **optimiser, "trainable": trainable, "params0_sha256": params_digest(cfg, params0)}
    return json.loads(json.dumps(identity))


def differing_fields(old: dict, new: dict) -> list[str]:
    """The fields (``cfg.<field>`` for the model's) in which two identities differ."""
    names = []
    for key in sorted(set(old) | set(new)):
        if key == "cfg" and isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            inner = sorted(set(old[key]) | set(new[key]))
            names += [f"cfg.{field}" for field in inner if old[key].get(field) != new[key].get(field)]
        elif old.get(key) != new.get(key):
            names.append(key)
    return names


def fingerprint(identity: dict) -> str:
    """SHA-256 (first 16 hex digits) of config.json's contents: every checkpoint carries it."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _open_config(run_dir: Path, identity: dict) -> None:
    """Write config.json in a new run; in an existing one, ValueError unless it holds ``identity``."""
    path = run_dir / CONFIG_FILE
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} cannot be read ({error}); refusing to resume or overwrite the run") from None
        if not isinstance(existing, dict):
            raise ValueError(f"{path} does not hold a run configuration; refusing to resume or overwrite the run")
        differing = differing_fields(existing, identity)
        if differing:
            details = ", ".join(
                f"{name} ({_lookup(existing, name)!r} there, {_lookup(identity, name)!r} here)" for name in differing[:8]
            )
            raise ValueError(
                f"{run_dir} holds a run with a different configuration ({path}): {details} differ; "
                "resume it with the same arguments or choose another run directory"
            )
        return
    if runio.list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} holds checkpoints but no {CONFIG_FILE}, so nothing says which run they belong to; "
                         "refusing to resume or overwrite them (choose another run directory)")
    runio.write_json(path, identity)


def _lookup(identity: dict, name: str):
    if name.startswith("cfg."):
        return identity.get("cfg", {}).get(name[4:])
    value = identity.get(name)
    return f"sha256 {value[:12]}..." if name == "params0_sha256" and isinstance(value, str) else value


# --- checkpoints --------------------------------------------------------------------------------------------


def _jsonable(value):
    """``value`` with NumPy scalars and arrays as Python numbers and lists (for JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(run_dir: Path, step: int, params: dict, adam: AdamState, history: dict, identity_print: str) -> Path:
    """checkpoints/step_XXXXXXXX.npz, written atomically (see the module docstring)."""
    arrays = {f"params/{k}": np.asarray(v) for k, v in params.items()}
    arrays |= {f"adam_m/{k}": np.asarray(v) for k, v in adam.m.items()}
    arrays |= {f"adam_v/{k}": np.asarray(v) for k, v in adam.v.items()}
    arrays["adam_count"] = np.array(adam.count, dtype=np.int64)
    arrays["step"] = np.array(step, dtype=np.int64)
    arrays["history_step"] = np.asarray(history["step"], dtype=np.int64)
    arrays["history_loss"] = np.asarray(history["loss"], dtype=np.float64)
    arrays["evaluations"] = np.array(json.dumps(history["evaluations"]))
    arrays["fingerprint"] = np.array(identity_print)
    path = runio.checkpoint_path(run_dir, step)
    runio.save_npz(path, arrays)
    return path


def load_checkpoint(path: Path, cfg, identity_print: str) -> tuple[int, dict, AdamState, dict]:
    """(step, params, AdamState, history) from a checkpoint of this run.  A file that cannot be
    read or lacks the run's arrays raises runio.RunFileError (damage: the caller skips it); a whole
    checkpoint of another run (its fingerprint) raises ValueError."""
    data = runio.load_npz(path)
    shapes = param_shapes(cfg)
    expected = {f"{group}/{name}": shape for group in ("params", "adam_m", "adam_v") for name, shape in shapes.items()}
    expected |= {"adam_count": (), "step": (), "evaluations": (), "fingerprint": ()}
    for name, shape in expected.items():
        if name not in data or data[name].shape != shape:
            found = "missing" if name not in data else f"shape {data[name].shape}"
            raise runio.RunFileError(f"{path}: array {name!r} must have shape {shape}; {found}")
    for name in ("history_step", "history_loss"):
        if name not in data or data[name].ndim != 1:
            raise runio.RunFileError(f"{path}: array {name!r} must be 1-d")
    if str(data["fingerprint"]) != identity_print:
        raise ValueError(f"{path} is a checkpoint of another run (fingerprint {str(data['fingerprint'])}, "
                         f"this run's {identity_print})")
    step = int(data["step"])
    named = next((s for s, p in runio.list_checkpoints(path.parent.parent) if p.name == path.name), step)
    if named != step or int(data["adam_count"]) != step:
        raise runio.RunFileError(f"{path}: holds step {step} and Adam count {int(data['adam_count'])}, its name says {named}")
    try:
        evaluations = json.loads(str(data["evaluations"]))
    except json.JSONDecodeError:
        raise runio.RunFileError(f"{path}: its evaluations are not JSON") from None

    def group(prefix):
        return {name: data[f"{prefix}/{name}"].astype(cfg.dtype, copy=False) for name in shapes}

    history = {"step": [int(s) for s in data["history_step"]], "loss": [float(v) for v in data["history_loss"]],
               "evaluations": evaluations}
    return step, group("params"), AdamState(group("adam_m"), group("adam_v"), step), history


def latest_checkpoint(run_dir: Path, cfg, identity_print: str):
    """The newest checkpoint that loads, as load_checkpoint gives it, or None when there is none;
    damaged ones are reported on stderr and skipped."""
    for _, path in reversed(runio.list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, cfg, identity_print)
        except runio.RunFileError as error:
            runio.warn(f"skipping damaged checkpoint: {error}")
    return None


def _remove_temp_files(run_dir: Path) -> None:
    """Delete the temporary files killed writers left (config.json, history.json, checkpoints)."""
    candidates = [p for name in (CONFIG_FILE, HISTORY_FILE) for p in run_dir.glob(f".{name}.*{runio.TEMP_SUFFIX}")]
    if (run_dir / runio.CHECKPOINT_DIR).is_dir():
        candidates += list((run_dir / runio.CHECKPOINT_DIR).glob(f".*{runio.TEMP_SUFFIX}"))
    for path in candidates:
        path.unlink(missing_ok=True)


# --- the engines ------------------------------------------------------------------------------------------


class _NumpyEngine:
    """The oracle's gradient and iclgd.optim's chain, frozen names masked."""

    def __init__(self, cfg, params: dict, adam: AdamState, optimiser: dict, trainable: list[str]):
        from iclgd.backends import numpy_stack

        clip = math.inf if optimiser["clip_norm"] is None else optimiser["clip_norm"]
        self.cfg, self.oracle, self.trainable = cfg, numpy_stack, frozenset(trainable)
        self.transform = chain(clip_by_global_norm(clip), scale_by_adam(optimiser["b1"], optimiser["b2"], optimiser["eps"]),
                               scale_by_learning_rate(optimiser["lr"]))
        self.params, self.state = params, adam_chain_state(adam)

    def _masked(self, tree: dict) -> dict:
        return {name: value if name in self.trainable else np.zeros_like(value) for name, value in tree.items()}

    def step(self, tokens: np.ndarray, targets: np.ndarray) -> float:
        loss, grads = self.oracle.loss_and_grad(self.cfg, self.params, tokens, targets)
        updates, self.state = self.transform.update(self._masked(grads), self.state, self.params)
        self.params = apply_updates(self.params, self._masked(updates))
        return float(loss)

    def snapshot(self) -> tuple[dict, AdamState]:
        return self.params, adam_state_of(self.state)


class _JaxEngine:
    """``jax_stack.make_train_step``; params and optimiser state stay on the device between steps."""

    def __init__(self, cfg, params: dict, adam: AdamState, optimiser: dict, trainable: list[str]):
        from iclgd.backends import jax_stack

        self.jax_stack = jax_stack
        init, self._step = jax_stack.make_train_step(cfg, trainable=trainable, **optimiser)
        self.params = {name: value for name, value in params.items()}
        self.state = jax_stack.with_adam_state(init(params), adam)

    def step(self, tokens: np.ndarray, targets: np.ndarray) -> float:
        self.params, self.state, loss = self._step(self.params, self.state, tokens, targets)
        return float(loss)

    def snapshot(self) -> tuple[dict, AdamState]:
        return {name: np.asarray(value) for name, value in self.params.items()}, self.jax_stack.adam_state_of(self.state)


# --- the loop -----------------------------------------------------------------------------------------------


def _evaluation(evaluate, step: int, params: dict) -> dict:
    result = evaluate(step, {name: np.array(value) for name, value in params.items()})
    if not isinstance(result, dict):
        raise ValueError(f"evaluate(step, params) must return a dict; got {type(result).__name__}")
    return _jsonable({"step": step, **result})


def train_stack(run_dir, cfg, params0: dict, sample_batch, *, steps: int, lr: float, b1: float, b2: float, eps: float,
                clip_norm: float | None, checkpoint_every: int, trainable=None, engine: str = "numpy", evaluate=None,
                quiet: bool = True) -> tuple[dict, dict]:
    """Train (or resume) the run in ``run_dir`` up to ``steps`` updates; returns (params as NumPy
    arrays, history) (see the module docstring).  ValueError for bad arguments, for a run
    directory that holds another configuration (naming the differing fields) and for a run that
    already went past ``steps``; TrainingDiverged when a loss is not finite (the last checkpoint
    stays)."""
    check_config(cfg)
    run_dir = Path(run_dir)
    steps = nonnegative_int("steps", steps)
    checkpoint_every = positive_int("checkpoint_every", checkpoint_every)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}; got {engine!r}")
    if evaluate is not None and not callable(evaluate):
        raise ValueError(f"evaluate must be a callable evaluate(step, params) -> dict or None; got {type(evaluate).__name__}")
    params0 = check_params(cfg, params0)
    optimiser = check_optimiser(lr, b1, b2, eps, clip_norm)
    names = check_trainable(cfg, trainable)
    identity = run_identity(cfg, params0, optimiser, names)
    identity_print = fingerprint(identity)

    with runio.RunLock(run_dir):
        _open_config(run_dir, identity)
        _remove_temp_files(run_dir)
        resumed = latest_checkpoint(run_dir, cfg, identity_print)
        if resumed is None:
            step, params, adam = 0, params0, AdamState.zeros_like(params0)
            history = {"step": [], "loss": [], "evaluations": []}
            if evaluate is not None:
                history["evaluations"].append(_evaluation(evaluate, 0, params))
            _checkpoint(run_dir, 0, params, adam, history, identity_print, quiet)
        else:
            step, params, adam, history = resumed
            if not quiet:
                print(f"{run_dir}: resuming at step {step} of {steps}", file=sys.stderr)
        if step > steps:
            raise ValueError(f"{run_dir} already holds step {step}, past the {steps} steps asked for; "
                             "ask for at least as many steps or choose another run directory")
        if step == steps:
            return params, history
        runner = (_NumpyEngine if engine == "numpy" else _JaxEngine)(cfg, params, adam, optimiser, names)
        for t in range(step, steps):
            tokens, targets = sample_batch(t)
            tokens = check_tokens(cfg, tokens)
            targets = check_targets(cfg, targets, tokens.shape[0])
            loss = runner.step(tokens, targets)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"{run_dir}: the loss of step {t} is {loss}; the run keeps its last checkpoint")
            history["step"].append(t)
            history["loss"].append(loss)
            if (t + 1) % checkpoint_every == 0 or t + 1 == steps:
                params, adam = runner.snapshot()
                if evaluate is not None:
                    history["evaluations"].append(_evaluation(evaluate, t + 1, params))
                _checkpoint(run_dir, t + 1, params, adam, history, identity_print, quiet)
        return params, history


def _checkpoint(run_dir: Path, step: int, params: dict, adam: AdamState, history: dict, identity_print: str, quiet: bool) -> None:
    """The checkpoint of ``step``, then history.json."""
    save_checkpoint(run_dir, step, params, adam, history, identity_print)
    runio.write_json(run_dir / HISTORY_FILE, history)
    if not quiet:
        last = f", loss {history['loss'][-1]:.6g}" if history["loss"] else ""
        print(f"{run_dir}: checkpoint at step {step}{last}", file=sys.stderr)
