"""Run configuration files: TOML with [task], [model] and [train] tables.

    [task]   fields of iclgd.LinearRegressionTask (d, n_context, x_scale, ...); for family
             "transformer", of iclgd.NoisyRegressionTask (d, n_examples, noise_variance, n_tasks, ...)
    [model]  family = "lsa" (default): fields of iclgd.LSAConfig; family = "gd" or "gdpp": K steps of
             GD / GD++ with learned rates, fields of iclgd.gd_models.LearnedGDConfig (n_layers,
             tied, dtype); d and n_context default to the task's.  family = "transformer": fields
             of iclgd.TransformerConfig; d and n_examples default to the task's
    [train]  fields of TrainConfig below (steps, batch_size, lr, seed, checkpoint_every, backend, ...);
             ``checkpoints = {log = 100, linear = 100}`` adds the paper's checkpoint grid

`iclgd train --set table.key=value` (``apply_overrides``) changes any key before validation.

Every error names the file, the table and key, and the reason; nothing is written anywhere
while reading.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from iclgd import gd_models, limits
from iclgd._checks import finite_float, nonnegative_int, positive_int
from iclgd.backends import available_backends
from iclgd.gd_models import VARIANTS, LearnedGDConfig
from iclgd.models import LSAConfig, TransformerConfig
from iclgd.models import transformer as transformer_model
from iclgd.models.lsa import check_init_scale
from iclgd.optim import SCHEDULES, AdamConfig
from iclgd.tasks import LinearRegressionTask, NoisyRegressionTask

SAMPLERS = ("numpy", "jax", "philox")

#: The default LSA init scale (TrainConfig.init_scale); the transformer has its own init and refuses another value.
DEFAULT_INIT_SCALE = 0.002

#: Sequences per distribution in the validation set a transformer run evaluates at every checkpoint
#: (the authors' eval batch size).
DEFAULT_EVAL_SIZE = 2048


@dataclass(frozen=True)
class CheckpointGrid:
    """Checkpoints on the union of ``log`` log-spaced and ``linear`` linear-spaced steps of a run of
    T steps, as the developmental-landscape paper's code places them:

        linear: floor(linspace(0, T - 1, linear))        log: floor(geomspace(1, T - 1, log))

    (100 + 100 over T = 500,000 give 190 distinct steps, among them 984, 40,292, 126,262, 318,181
    and 499,999.)  Step s is the state after s updates."""

    log: int = 0
    linear: int = 0

    def __post_init__(self) -> None:
        for name in ("log", "linear"):
            object.__setattr__(self, name, nonnegative_int(name, getattr(self, name), maximum=10**7))

    def steps(self, total_steps: int) -> list[int]:
        """The grid's distinct steps for a run of ``total_steps``, sorted."""
        last = max(total_steps - 1, 1)
        grid = set()
        if self.linear:
            grid |= set(np.linspace(0, last, self.linear).astype(np.int64).tolist())
        if self.log:
            grid |= set(np.geomspace(1, last, self.log).astype(np.int64).tolist())
        return sorted(step for step in grid if 0 <= step <= total_steps)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. lr 1e-3 and batch 2048 are the paper's settings for < 3 layers
    (it used 5e-4 for deeper models). clip_norm = 0 turns clipping off.

    sampler: "numpy" - batch t is ``task.sample(batch_size, batch_rng(seed, t))`` on the host, the
    same numbers on every backend; "jax" - drawn inside the jax backend's jitted step from
    ``jax.random.fold_in(PRNGKey(seed), t)`` (another stream: fast, for full-scale runs);
    "philox" - drawn inside the numba backend's kernel from a Philox4x32-10 stream keyed
    by (seed, t), a task per SIMD lane (``iclgd.backends.numba_philox``: another stream, the same
    for any thread count; noise-free tasks with w ~ N(0, I) and uniform inputs only)."""

    steps: int = 5000
    batch_size: int = 2048
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    backend: str = "numpy"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 10.0
    schedule: str = "constant"
    warmup_steps: int = 0
    init_scale: float = DEFAULT_INIT_SCALE
    sampler: str = "numpy"
    checkpoints: CheckpointGrid | None = None
    eval_size: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            set_(self, name, positive_int(name, getattr(self, name)))
        for name in ("seed", "warmup_steps"):
            set_(self, name, nonnegative_int(name, getattr(self, name)))
        if self.seed >= 2**63:
            raise ValueError(f"seed must be < 2**63; got {self.seed}")
        set_(self, "lr", finite_float("lr", self.lr, positive=True))
        for name in ("beta1", "beta2"):
            value = finite_float(name, getattr(self, name))
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {value}")
            set_(self, name, value)
        set_(self, "eps", finite_float("eps", self.eps, positive=True))
        set_(self, "clip_norm", finite_float("clip_norm", self.clip_norm, nonnegative=True))
        set_(self, "init_scale", finite_float("init_scale", self.init_scale, nonnegative=True))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}; got {self.schedule!r}")
        if self.warmup_steps > 0 and self.schedule != "warmup_cosine":
            raise ValueError(f"warmup_steps is used by schedule 'warmup_cosine' only; got {self.warmup_steps} with {self.schedule!r}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps must be <= steps = {self.steps}; got {self.warmup_steps}")
        if self.backend not in available_backends():
            raise ValueError(f"backend must be one of {available_backends()}; got {self.backend!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}; got {self.sampler!r}")
        if isinstance(self.checkpoints, dict):
            set_(self, "checkpoints", CheckpointGrid(**self.checkpoints))
        if self.checkpoints is not None and not isinstance(self.checkpoints, CheckpointGrid):
            raise ValueError(f"checkpoints must be a table {{log = L, linear = N}}; got {self.checkpoints!r}")
        if self.eval_size is not None:
            set_(self, "eval_size", positive_int("eval_size", self.eval_size, maximum=10**7))
        if self.sampler == "jax" and self.backend != "jax":
            raise ValueError(f"sampler 'jax' draws batches inside the jax backend's compiled step; got backend {self.backend!r}")
        if self.sampler == "philox" and self.backend != "numba":
            raise ValueError(f"sampler 'philox' draws batches in the numba backend's compiled code; it needs backend 'numba'; got backend {self.backend!r}")

    @functools.cached_property
    def _grid(self) -> tuple[int, ...]:
        return tuple(self.checkpoints.steps(self.steps)) if self.checkpoints is not None else ()

    def is_checkpoint(self, step: int) -> bool:
        """Whether the state after ``step`` updates is saved: every ``checkpoint_every`` steps, the
        last step, and the steps of the ``checkpoints`` grid."""
        if step % self.checkpoint_every == 0 or step == self.steps:
            return True
        index = bisect.bisect_left(self._grid, step)
        return index < len(self._grid) and self._grid[index] == step

    def next_checkpoint(self, step: int) -> int:
        """The first checkpoint step after ``step`` (at most ``steps``)."""
        every = (step // self.checkpoint_every + 1) * self.checkpoint_every
        index = bisect.bisect_right(self._grid, step)
        grid = self._grid[index] if index < len(self._grid) else self.steps
        return min(every, grid, self.steps) if step < self.steps else step

    def adam(self) -> AdamConfig:
        return AdamConfig(
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            clip_norm=self.clip_norm or None,
            schedule=self.schedule,
            warmup_steps=self.warmup_steps,
            total_steps=self.steps,
        )


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says where and why."""


#: [model] family -> (config class, fixed fields)
MODEL_FAMILIES = (
    {"lsa": (LSAConfig, {})}
    | {variant: (LearnedGDConfig, {"variant": variant}) for variant in VARIANTS}
    | {"transformer": (TransformerConfig, {})}
)


def task_class(family: str) -> type:
    """The [task] table's class for a [model] family: the noisy regression sequences of the
    developmental-landscape paper for the transformer, von Oswald et al.'s tasks otherwise."""
    return NoisyRegressionTask if family == "transformer" else LinearRegressionTask


#: [model] fields a family takes from the [task] table when the table does not set them.
LINKED_FIELDS = {"transformer": ("d", "n_examples")}


@dataclass(frozen=True)
class RunConfig:
    task: LinearRegressionTask | NoisyRegressionTask
    model: LSAConfig | LearnedGDConfig | TransformerConfig
    train: TrainConfig

    def __post_init__(self) -> None:
        expected_task = (NoisyRegressionTask,) if isinstance(self.model, TransformerConfig) else (LinearRegressionTask,)
        for name, expected in (("model", (LSAConfig, LearnedGDConfig, TransformerConfig)), ("task", expected_task), ("train", (TrainConfig,))):
            if not isinstance(getattr(self, name), expected):
                kinds = " or ".join(f"{kind.__module__.split('.')[0]}.{kind.__name__}" for kind in expected)
                raise ValueError(f"{name} must be an {kinds}; got {type(getattr(self, name)).__name__}")
        if isinstance(self.model, LearnedGDConfig) and self.train.sampler != "numpy":
            raise ValueError(
                f"learned-rate GD models (family {self.model.family!r}) train on the host data stream: "
                f"sampler must be 'numpy'; got sampler {self.train.sampler!r}"
            )
        if isinstance(self.model, TransformerConfig):
            self._check_transformer()
            return
        if self.train.eval_size is not None:
            raise ValueError(f"eval_size sets the validation set a transformer run evaluates at every checkpoint; "
                             f"the {self.model.family!r} family has none: leave it out (got {self.train.eval_size})")
        if isinstance(self.model, LearnedGDConfig):
            gd_models.check_init_scale(self.model, self.train.init_scale, "init_scale")
        else:
            check_init_scale(self.model, self.train.init_scale, "init_scale")
        if self.train.sampler == "philox":
            self._check_philox_task()
        lsa = self._lsa_model()
        batch_size = self.train.batch_size
        limits.check_bytes(
            f"batch_size = {batch_size}", limits.training_step_bytes(self.task, lsa, batch_size),
            f"a training step (sampling, then loss and gradient of {limits.lsa_shape_text(lsa, batch_size, self.task.n_context)})",
        )

    def _check_philox_task(self) -> None:
        """The Philox stream draws w ~ N(0, I) and x ~ U(-a, a)^d without noise or distractors."""
        task = self.task
        unsupported = [f"{name} = {getattr(task, name)!r}" for name, plain in
                       (("noise_std", 0.0), ("n_distractors", 0), ("w_scale", 1.0), ("x_distribution", "uniform"), ("dtype", "float64"))
                       if getattr(task, name) != plain]
        if unsupported:
            raise ValueError("sampler 'philox' draws noise-free tasks with w ~ N(0, I) and uniform inputs in float64 only; "
                             f"got {', '.join(unsupported)}: use sampler 'numpy'")

    def _check_transformer(self) -> None:
        model, task, train = self.model, self.task, self.train
        if (model.d, model.n_examples) != (task.d, task.n_examples):
            raise ValueError(f"the model's d, n_examples = {model.d}, {model.n_examples} disagree with the task's {task.d}, {task.n_examples}")
        if train.backend == "numba":
            raise ValueError("backend 'numba' computes the LSA family only; the transformer trains on 'numpy' (the oracle) or 'jax'")
        if train.sampler != "numpy":
            raise ValueError(f"the transformer trains on the host data stream (sampler 'numpy'); got sampler {train.sampler!r}")
        if train.init_scale != DEFAULT_INIT_SCALE:
            raise ValueError(
                f"init_scale sets the LSA's init; the transformer is initialised as PyTorch's defaults "
                f"(iclgd.models.transformer.init_params): leave init_scale at {DEFAULT_INIT_SCALE}; got {train.init_scale}"
            )
        limits.check_bytes(
            f"batch_size = {train.batch_size}", transformer_model.pass_bytes(model, train.batch_size),
            f"a training step of the transformer on {train.batch_size} sequences",
        )

    def _lsa_model(self) -> LSAConfig:
        """The model as the LSA the engines compute (a learned-rate GD model through its construction)."""
        return self.model.lsa_config() if isinstance(self.model, LearnedGDConfig) else self.model

    @property
    def eval_size(self) -> int:
        """Sequences per distribution in the validation set evaluated at every checkpoint."""
        return self.train.eval_size or DEFAULT_EVAL_SIZE


TABLES = {"task": LinearRegressionTask, "model": LSAConfig, "train": TrainConfig}

#: (table class, key) of the keys whose value is a table (an inline TOML table) -> the class it is read into.
TABLE_VALUED = {(TrainConfig, "checkpoints"): CheckpointGrid}


def _build(cls, table: dict, where: str, overrides: dict | None = None, fixed: dict | None = None):
    """``cls(**overrides, **table, **fixed)``; ``fixed`` fields are not keys the table may set."""
    fixed = fixed or {}
    fields = [field.name for field in dataclasses.fields(cls) if field.name not in fixed]
    for key in table:
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; expected one of {fields}")
    table = dict(table)
    for key, value in table.items():
        grid_class = TABLE_VALUED.get((cls, key))
        if grid_class is not None and isinstance(value, dict):
            keys = [field.name for field in dataclasses.fields(grid_class)]
            unknown = [k for k in value if k not in keys]
            if unknown:
                raise ConfigError(f"{where}: key {key!r}: unknown key(s) {unknown}; expected a table of {keys}")
            try:
                table[key] = grid_class(**value)
            except (ValueError, TypeError) as error:
                raise ConfigError(f"{where}: key {key!r}: {error}") from None
        elif isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: key {key!r} must be a single value; got {type(value).__name__} {value!r}")
    try:
        return cls(**{**(overrides or {}), **table, **fixed})
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from None


def run_config_from_dict(data: dict, source: str = "<config>") -> RunConfig:
    """Validate the three tables and build the dataclasses (``source`` names the file in errors)."""
    for table in data:
        if table not in TABLES:
            raise ConfigError(f"{source}: unknown table [{table}]; expected [task], [model] and [train]")
        if not isinstance(data[table], dict):
            raise ConfigError(f"{source}: {table!r} must be a table ([{table}]); got {data[table]!r}")
    model_table = dict(data.get("model", {}))
    family = model_table.pop("family", "lsa")
    if not isinstance(family, str) or family not in MODEL_FAMILIES:
        raise ConfigError(f"{source}: [model]: key 'family' must be one of {list(MODEL_FAMILIES)}; got {family!r}")
    task = _build(task_class(family), data.get("task", {}), f"{source}: [task]")
    model_class, fixed = MODEL_FAMILIES[family]
    linked = LINKED_FIELDS.get(family, ("d", "n_context"))
    model = _build(model_class, model_table, f"{source}: [model]", {name: getattr(task, name) for name in linked}, fixed)
    for name in linked:
        if getattr(model, name) != getattr(task, name):
            raise ConfigError(f"{source}: [model]: key {name!r} = {getattr(model, name)} disagrees with [task] {name} = {getattr(task, name)}")
    train = _build(TrainConfig, data.get("train", {}), f"{source}: [train]")
    try:
        return RunConfig(task, model, train)
    except ValueError as error:
        raise ConfigError(f"{source}: [train]: {error}") from None


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML run configuration, apply ``overrides`` (``table.key=value`` assignments, as
    given to `iclgd train --set`; see ``apply_overrides``) and validate the result."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return run_config_from_dict(apply_overrides(data, overrides or []), str(path))


def parse_assignment(assignment: str) -> tuple[str, str, object]:
    """``"table.key=value"`` as (table, key, value); the value is read as a TOML value (0.002 a
    float, 2 an int, true a bool, "x" a string) and is the raw text when it is not one (bare words)."""
    target, equals, text = assignment.partition("=")
    table, dot, key = target.strip().partition(".")
    if not equals or not dot or not table or not key or "." in key:
        raise ConfigError(f"--set expects table.key=value, such as train.lr=0.002; got {assignment!r}")
    return table, key.strip(), _toml_or_text(text.strip())


def _toml_or_text(text: str) -> object:
    """``text`` read as one TOML value, else ``text`` itself."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["v"] if list(parsed) == ["v"] else text


def table_keys(table: str, data: dict) -> list[str]:
    """The keys a config's ``table`` may set (for [model], those of the family ``data`` names)."""
    family = data.get("model", {}).get("family", "lsa") if isinstance(data.get("model", {}), dict) else "lsa"
    if table == "task":
        return [field.name for field in dataclasses.fields(task_class(family if isinstance(family, str) else "lsa"))]
    if table != "model":
        return [field.name for field in dataclasses.fields(TABLES[table])]
    if not isinstance(family, str) or family not in MODEL_FAMILIES:  # reported, with the families, when the config is validated
        return ["family"]
    model_class, fixed = MODEL_FAMILIES[family]
    return ["family"] + [field.name for field in dataclasses.fields(model_class) if field.name not in fixed]


def apply_overrides(data: dict, assignments: list[str]) -> dict:
    """A copy of the raw config ``data`` with each ``table.key=value`` of ``assignments`` set
    (later ones win), to be validated exactly as a file is.  Raises ConfigError naming --set and
    the assignment for a malformed assignment or an unknown table or key."""
    result = {table: dict(values) if isinstance(values, dict) else values for table, values in data.items()}
    parsed = [(assignment, *parse_assignment(assignment)) for assignment in assignments]
    for assignment, table, key, value in parsed:
        if table not in TABLES:
            raise ConfigError(f"--set {assignment}: unknown table [{table}]; expected one of {list(TABLES)}")
        if not isinstance(result.setdefault(table, {}), dict):
            raise ConfigError(f"--set {assignment}: the config's {table!r} is not a table; got {result[table]!r}")
        result[table][key] = value
    for assignment, table, key, _ in parsed:  # keys checked once the [model] family is final
        if key not in table_keys(table, result):
            raise ConfigError(f"--set {assignment}: unknown key {key!r} in [{table}]; expected one of {table_keys(table, result)}")
    return result


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, CheckpointGrid):
        return "{" + ", ".join(f"{field.name} = {getattr(value, field.name)}" for field in dataclasses.fields(value)) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")


def run_config_to_toml(config: RunConfig) -> str:
    """The fully resolved configuration (every field, defaults included); None fields are left out."""
    lines = []
    for table, obj in (("task", config.task), ("model", config.model), ("train", config.train)):
        lines.append(f"[{table}]")
        if table == "model":
            lines.append(f"family = {_toml_value(obj.family)}")
        for field in dataclasses.fields(obj):
            if table == "model" and field.name == "variant":
                continue  # written as the family
            value = getattr(obj, field.name)
            if value is not None:
                lines.append(f"{field.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
