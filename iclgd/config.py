"""Run configuration files: TOML with [task], [model] and [train] tables.

    [task]   fields of iclgd.LinearRegressionTask (d, n_context, x_scale, ...)
    [model]  fields of iclgd.LSAConfig; d and n_context default to the task's
    [train]  fields of iclgd.train.TrainConfig (steps, batch_size, lr, seed, checkpoint_every, backend, ...)

Every error names the file, the table and key, and the reason; nothing is written anywhere
while reading.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from iclgd.models import LSAConfig
from iclgd.tasks import LinearRegressionTask
from iclgd.train import TrainConfig


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class RunConfig:
    task: LinearRegressionTask
    model: LSAConfig
    train: TrainConfig


TABLES = {"task": LinearRegressionTask, "model": LSAConfig, "train": TrainConfig}


def _build(cls, table: dict, where: str, overrides: dict | None = None):
    fields = [field.name for field in dataclasses.fields(cls)]
    for key in table:
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; expected one of {fields}")
    for key, value in table.items():
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: key {key!r} must be a single value; got {type(value).__name__} {value!r}")
    try:
        return cls(**{**(overrides or {}), **table})
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from None


def run_config_from_dict(data: dict, source: str = "<config>") -> RunConfig:
    """Validate the three tables and build the dataclasses (``source`` names the file in errors)."""
    for table in data:
        if table not in TABLES:
            raise ConfigError(f"{source}: unknown table [{table}]; expected [task], [model] and [train]")
        if not isinstance(data[table], dict):
            raise ConfigError(f"{source}: {table!r} must be a table ([{table}]); got {data[table]!r}")
    task = _build(LinearRegressionTask, data.get("task", {}), f"{source}: [task]")
    model_table = data.get("model", {})
    model = _build(LSAConfig, model_table, f"{source}: [model]", {"d": task.d, "n_context": task.n_context})
    if model.d != task.d:
        raise ConfigError(f"{source}: [model] key 'd' = {model.d} disagrees with [task] d = {task.d}")
    if model.n_context != task.n_context:
        raise ConfigError(f"{source}: [model] key 'n_context' = {model.n_context} disagrees with [task] n_context = {task.n_context}")
    train = _build(TrainConfig, data.get("train", {}), f"{source}: [train]")
    return RunConfig(task, model, train)


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run configuration."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return run_config_from_dict(data, str(path))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {value!r} to TOML")


def run_config_to_toml(config: RunConfig) -> str:
    """The fully resolved configuration (every field, defaults included); None fields are left out."""
    lines = []
    for table, obj in (("task", config.task), ("model", config.model), ("train", config.train)):
        lines.append(f"[{table}]")
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if value is not None:
                lines.append(f"{field.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
