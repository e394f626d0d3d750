"""Checkpoints: one file per saved step, written atomically, that belongs to exactly one run.

A checkpoint ``checkpoints/step_<step>.npz`` holds params, Adam's moments and count, the step,
the data stream's position (batches are drawn statelessly from (seed, step), so that is the
stream's whole state) and the fingerprint of the run's resolved config.  Loading for a resume
checks every array's header against the config's layout before reading data, then the
fingerprint, the step and the stream: a whole checkpoint of another run or step is refused
(``CheckpointMismatch``), a damaged one is skipped with its name on stderr.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from iclgd import gd_models, runio
from iclgd.backends.training import TrainState
from iclgd.config import TrainConfig, run_config_to_toml
from iclgd.models.families import param_shapes
from iclgd.optim import AdamState
from iclgd.streams import DATA_STREAMS


def config_fingerprint(config) -> str:
    """What a run *is*: the SHA-256 (first 16 hex digits) of its resolved config.toml with the
    backend left out (the backend is how a run is computed, not what it is: any backend may
    resume any run).  Every checkpoint carries it, so a checkpoint of another run is refused."""
    lines = [line for line in run_config_to_toml(config).splitlines() if not line.startswith("backend = ")]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]


def _param_shapes(model) -> dict[str, tuple[int, ...]]:
    if isinstance(model, gd_models.LearnedGDConfig):
        return gd_models.param_shapes(model)
    return param_shapes(model)


def checkpoint_layout(config) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every array a checkpoint of ``config`` holds: name -> (shape, dtype)."""
    layout = {}
    for group in ("params/", "adam_m/", "adam_v/"):
        layout |= {group + name: (shape, config.model.dtype) for name, shape in _param_shapes(config.model).items()}
    layout |= {"adam_count": ((), "int64"), "step": ((), "int64"), "data_stream": ((), "str"), "fingerprint": ((), "str")}
    return layout


def _data_stream(train_cfg: "TrainConfig", step: int) -> dict:
    # the data stream is stateless (batch t = f(seed, t)); its whole state is (seed, next batch)
    return {"stream": DATA_STREAMS[train_cfg.sampler], "seed": train_cfg.seed, "next_batch": step}


def save_checkpoint(run_dir: Path, state: TrainState, config) -> Path:
    """Write ``checkpoints/step_<step>.npz`` atomically: params, Adam's moments and count, the
    step, the data stream's position and the config's fingerprint."""
    if isinstance(config, TrainConfig):  # the older call save_checkpoint(run_dir, state, train_cfg)
        raise TypeError("save_checkpoint needs the whole RunConfig (its fingerprint goes into the checkpoint)")
    arrays = {f"params/{k}": v for k, v in state.params.items()}
    arrays |= {f"adam_m/{k}": v for k, v in state.adam.m.items()}
    arrays |= {f"adam_v/{k}": v for k, v in state.adam.v.items()}
    arrays["adam_count"] = np.array(state.adam.count, dtype=np.int64)
    arrays["step"] = np.array(state.step, dtype=np.int64)
    arrays["data_stream"] = np.array(json.dumps(_data_stream(config.train, state.step)))
    arrays["fingerprint"] = np.array(config_fingerprint(config))
    path = runio.checkpoint_path(run_dir, state.step)
    runio.save_npz(path, arrays)
    return path


def load_checkpoint(path: Path, dtype: str, config=None) -> TrainState:
    """The TrainState in a checkpoint file, in ``dtype``.

    With ``config`` (how resuming reads it) the file must be a checkpoint of that run: every
    array's shape and dtype is checked from the headers before anything is read, and the
    fingerprint, the step (against the file name too) and the data stream's position must
    match; otherwise RunFileError says what differs.  Without it, the headers are still checked
    for size, so a crafted file cannot make the reader allocate more than the file holds."""
    path = Path(path)
    if config is not None:
        _refuse_another_runs(path, config)
    data = runio.load_npz(path, checkpoint_layout(config) if config is not None else None)

    def group(prefix):
        return {k[len(prefix) :]: v.astype(dtype, copy=False) for k, v in data.items() if k.startswith(prefix)}

    try:
        adam = AdamState(group("adam_m/"), group("adam_v/"), int(data["adam_count"]))
        state = TrainState(int(data["step"]), group("params/"), adam)
    except KeyError as error:
        raise runio.RunFileError(f"{path}: not a checkpoint (no array {error})") from None
    if config is not None:
        _check_identity(path, data, state, config)
    return state


def _refuse_another_runs(path: Path, config) -> None:
    """CheckpointMismatch when the file's fingerprint (read alone, after the header checks) names
    another run: a checkpoint of a model of other shapes or dtype is another run's, not damage."""
    headers = runio.npz_headers(path)
    shape_dtype = headers.get("fingerprint")
    if shape_dtype is None or shape_dtype[0] != () or shape_dtype[1].kind != "U" or shape_dtype[1].itemsize > runio.MAX_TEXT_BYTES:
        return  # no readable fingerprint: the layout check reports the damage
    try:
        with np.load(path, allow_pickle=False) as data:
            found = str(data["fingerprint"])
    except Exception:  # noqa: BLE001 - unreadable: the full load reports it as damage
        return
    if found != config_fingerprint(config):
        raise CheckpointMismatch(
            f"{path} is a checkpoint of another run (config fingerprint {found}; this run's is {config_fingerprint(config)})"
        )


def _check_identity(path: Path, data: dict, state: TrainState, config) -> None:
    """Raise CheckpointMismatch unless the checkpoint belongs to ``config``'s run at the step its name says."""
    found, expected = str(data["fingerprint"]), config_fingerprint(config)
    if found != expected:
        raise CheckpointMismatch(f"{path} is a checkpoint of another run (config fingerprint {found}; this run's is {expected})")
    named_step = next((step for step, p in runio.list_checkpoints(path.parent.parent) if p.name == path.name), None)
    if named_step is not None and named_step != state.step:
        raise CheckpointMismatch(f"{path} holds step {state.step}, not the step {named_step} its name says (a renamed file?)")
    try:
        stream = json.loads(str(data["data_stream"]))
    except json.JSONDecodeError:
        stream = None
    if stream != _data_stream(config.train, state.step):
        raise CheckpointMismatch(
            f"{path}: its data stream position {stream} does not continue this run "
            f"(expected {_data_stream(config.train, state.step)})"
        )
    if state.adam.count != state.step:
        raise CheckpointMismatch(f"{path}: Adam's update count {state.adam.count} differs from its step {state.step}")


class CheckpointMismatch(runio.RunFileError):
    """A whole, readable checkpoint that does not belong to this run at this step: refused, never skipped."""


def latest_checkpoint(run_dir: Path, dtype: str, config=None) -> tuple[TrainState | None, Path | None]:
    """The newest checkpoint that loads, and its path; (None, None) if the run has none.

    A damaged file (unreadable, or its arrays not those of ``config``) is reported by name on
    stderr and skipped for an older one; a whole checkpoint of another run or step is refused
    (CheckpointMismatch), and so is a run whose checkpoints are all damaged."""
    found = runio.list_checkpoints(run_dir)
    for _, path in reversed(found):
        try:
            return load_checkpoint(path, dtype, config), path
        except CheckpointMismatch:
            raise
        except runio.RunFileError as error:
            runio.warn(f"skipping damaged checkpoint: {error}")
    if found:
        raise runio.RunFileError(
            f"{run_dir}: every checkpoint is damaged ({len(found)} files, newest {found[-1][1].name}); "
            "nothing to resume from. Move them away to start the run again."
        )
    return None, None
