"""The developmental-landscape paper's task and transformer, as the experiments built on it share
them (``reproduce stages`` and ``reproduce task-prior``).

Hoogland et al. (The Developmental Landscape of In-Context Learning) train a 2-layer, 4-head
transformer (d_model = d_mlp = 64, LayerNorm, 51,717 parameters at D = 4, K = 8) on in-context linear
regression: D = 4, K = 8 examples per sequence, y = w.x + noise with sigma^2 = 0.125, Adam under
a one-cycle schedule peaking at lr 0.003.  ``LandscapeModel`` holds those settings as dataclass
fields; an experiment's setting inherits them and adds its own (scale, steps, checkpoints, ...).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from iclgd._checks import finite_float, positive_int


def default_backend() -> str:
    """"jax" where it is installed (the transformer's fast backend), else "numpy"."""
    return "jax" if importlib.util.find_spec("jax") is not None else "numpy"


@dataclass(frozen=True)
class LandscapeModel:
    """The paper's task (``d``, ``n_examples``, ``noise_variance``), transformer (``n_layers``,
    ``n_heads``, ``d_model``, ``d_mlp``), number type, optimiser peak rate, batch and backend."""

    backend: str = field(default_factory=default_backend)
    d: int = 4
    n_examples: int = 8
    noise_variance: float = 0.125
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_mlp: int = 64
    dtype: str = "float32"
    batch_size: int = 64
    lr: float = 0.003

    def check_model(self) -> None:
        """ValueError unless the backend computes transformers and the batch and rate are valid
        (the task and model fields are checked when iclgd.config.run_config_from_dict parses
        ``run_config_dict``'s result)."""
        if self.backend not in ("numpy", "jax"):
            raise ValueError(f"backend must be 'numpy' or 'jax' (the backends that compute the transformer); "
                             f"got {self.backend!r}")
        positive_int("batch_size", self.batch_size)
        finite_float("lr", self.lr, positive=True)

    def run_config_dict(self, *, steps: int, seed: int, n_tasks: int | None = None, **train) -> dict:
        """The run configuration (iclgd.config's dict form) training this model for ``steps`` with
        the one-cycle schedule; ``n_tasks`` a finite task pool (None: w ~ N(0, I_D) per sequence);
        ``train`` further [train] entries (checkpoints, eval_size, log_every)."""
        task = {"d": self.d, "n_examples": self.n_examples, "noise_variance": self.noise_variance, "dtype": self.dtype}
        if n_tasks is not None:
            task["n_tasks"] = n_tasks
        return {
            "task": task,
            "model": {"family": "transformer", "n_layers": self.n_layers, "n_heads": self.n_heads,
                      "d_model": self.d_model, "d_mlp": self.d_mlp, "dtype": self.dtype},
            "train": {"steps": steps, "batch_size": self.batch_size, "lr": self.lr, "seed": seed,
                      "schedule": "one_cycle", "backend": self.backend} | train,
        }
