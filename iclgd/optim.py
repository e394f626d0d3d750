r"""Adam with global-norm gradient clipping and a learning-rate schedule, in NumPy.

With g the gradient (all parameters), clipping rescales it to ``g * min(1, c / ||g||)``
(``||g||`` the global L2 norm over every parameter). Adam (Kingma & Ba, 2015), step t = 1, 2, ...:

    m <- b1 m + (1 - b1) g        v <- b2 v + (1 - b2) g^2
    p <- p - lr_t * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

which is also what ``optax.chain(optax.clip_by_global_norm(c), optax.adam(lr_t, b1, b2, eps))``
computes, so the jax backend can be held to this one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEDULES = ("constant", "cosine", "warmup_cosine")


@dataclass(frozen=True)
class AdamConfig:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = None  # None: no clipping
    schedule: str = "constant"  # "cosine": lr * (1 + cos(pi t / T)) / 2; "warmup_cosine": linear warm-up first
    warmup_steps: int = 0
    total_steps: int = 1  # T, for the schedules that decay

    def learning_rate(self, step: int) -> float:
        """lr_t for the update that produces step ``step + 1`` (step counts finished updates)."""
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "warmup_cosine" and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        start = self.warmup_steps if self.schedule == "warmup_cosine" else 0
        progress = min(1.0, (step - start) / max(1, self.total_steps - start))
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class AdamState:
    """First and second moments (dicts like params) and the number of updates done."""

    m: dict[str, np.ndarray]
    v: dict[str, np.ndarray]
    count: int = 0

    @classmethod
    def zeros_like(cls, params: dict[str, np.ndarray]) -> "AdamState":
        return cls({k: np.zeros_like(p) for k, p in params.items()}, {k: np.zeros_like(p) for k, p in params.items()}, 0)


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """sqrt(sum over all parameters of g^2)."""
    return float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))


def adam_update(
    config: AdamConfig, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], state: AdamState
) -> tuple[dict[str, np.ndarray], AdamState, float]:
    """One clipped Adam step; returns (new params, new state, the gradient's global norm before clipping)."""
    norm = global_norm(grads)
    scale = min(1.0, config.clip_norm / norm) if config.clip_norm is not None and norm > 0 else 1.0
    lr = config.learning_rate(state.count)
    count = state.count + 1
    correction1, correction2 = 1.0 - config.beta1**count, 1.0 - config.beta2**count
    new_params, new_m, new_v = {}, {}, {}
    for name, p in params.items():
        g = grads[name] * scale if scale != 1.0 else grads[name]
        m = config.beta1 * state.m[name] + (1.0 - config.beta1) * g
        v = config.beta2 * state.v[name] + (1.0 - config.beta2) * g * g
        update = (m / correction1) / (np.sqrt(v / correction2) + config.eps)
        new_params[name] = (p - lr * update).astype(p.dtype, copy=False)
        new_m[name], new_v[name] = m.astype(p.dtype, copy=False), v.astype(p.dtype, copy=False)
    return new_params, AdamState(new_m, new_v, count), norm
