r"""Optimisers as composable gradient transformations, in NumPy (the design of optax).

Params, gradients and updates are flat dicts name -> np.ndarray.  A ``GradientTransformation``
is a pair of pure functions

    init(params) -> state
    update(updates, state, params) -> (updates', state')

that maps the incoming updates (at first the gradient g) to new ones and advances its own
state; ``chain(t_1, ..., t_k)`` runs them in turn (its state is the tuple of theirs) and
``apply_updates(params, u)`` returns ``p + u`` cast to p's dtype.  The transforms here, with
u the incoming updates and t = 0, 1, ... the number of updates a transform has already made:

    clip_by_global_norm(c):     u <- u * min(1, c / ||u||)     (||u||: the global L2 norm over
                                                                every parameter; u kept if ||u|| = 0)
    scale_by_adam(b1, b2, eps): m <- b1 m + (1 - b1) u,  v <- b2 v + (1 - b2) u^2,
                                u <- (m / (1 - b1^(t+1))) / (sqrt(v / (1 - b2^(t+1))) + eps)
    scale_by_schedule(f):       u <- f(t) u
    scale_by_learning_rate(f):  u <- -f(t) u                   (descent: p + u = p - f(t) u)

Adam (Kingma & Ba, 2015) with global-norm clipping and the rate lr_t is their chain,
``adam_chain(config)`` = chain(clip_by_global_norm(c), scale_by_adam(b1, b2, eps),
scale_by_learning_rate(lr_t)), i.e. with g the clipped gradient and t = 1, 2, ...

    m <- b1 m + (1 - b1) g        v <- b2 v + (1 - b2) g^2
    p <- p - lr_{t-1} * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

which is also what ``optax.chain(optax.clip_by_global_norm(c), optax.adam(lr_t, b1, b2, eps))``
computes, so the jax backend can be held to this one.  ``adam_update`` is one step of it on an
``AdamState`` (the checkpoint's m, v and count).  Schedules are functions of the number of
updates already made: the first update uses lr_0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Union

import numpy as np

Params = dict[str, np.ndarray]
Schedule = Callable[[int], float]

SCHEDULES = ("constant", "cosine", "warmup_cosine", "one_cycle")


# --- the transform interface ---------------------------------------------------------------------


class GradientTransformation(NamedTuple):
    """``init(params) -> state``; ``update(updates, state, params=None) -> (updates, new_state)``.
    Both are pure: neither changes its arguments."""

    init: Callable[[Params], Any]
    update: Callable[..., tuple[Params, Any]]


class EmptyState(NamedTuple):
    """The state of a transform that keeps none."""


class ClipState(NamedTuple):
    """What clipping measured at its last update: the global norm of the updates it was given
    (NaN before the first), so that a trainer can report it without measuring it again."""

    norm: float


class ScheduleState(NamedTuple):
    """The number of updates a schedule-driven transform has made."""

    count: int


def identity() -> GradientTransformation:
    """u <- u."""
    return GradientTransformation(lambda params: EmptyState(), lambda updates, state, params=None: (updates, state))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """t_k o ... o t_1: each transform's update is fed the previous one's output; the state is
    the tuple of their states.  ``chain()`` is the identity."""
    for i, transform in enumerate(transforms):
        if not isinstance(transform, GradientTransformation):
            raise ValueError(f"chain takes GradientTransformations; argument {i} is a {type(transform).__name__}")

    def init(params):
        return tuple(transform.init(params) for transform in transforms)

    def update(updates, state, params=None):
        if len(state) != len(transforms):
            raise ValueError(f"the state of a chain of {len(transforms)} transforms has {len(transforms)} parts; got {len(state)}")
        new_state = []
        for transform, part in zip(transforms, state):
            updates, part = transform.update(updates, part, params)
            new_state.append(part)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def apply_updates(params: Params, updates: Params) -> Params:
    """p + u for every parameter, cast to p's dtype."""
    return {name: (p + updates[name]).astype(p.dtype, copy=False) for name, p in params.items()}


# --- clipping -------------------------------------------------------------------------------------


def global_norm(grads: Params) -> float:
    """sqrt(sum over all parameters of g^2), accumulated in float64."""
    return float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """u <- u * min(1, c / ||u||) with ||u|| = global_norm(u); u unchanged when ||u|| is 0 or
    NaN, or at most c (c = inf never clips).  Its state, ClipState, is the norm it measured."""
    max_norm = float(max_norm)
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be a non-negative number; got {max_norm}")

    def update(updates, state, params=None):
        norm = global_norm(updates)
        scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
        if scale == 1.0:
            return updates, ClipState(norm)
        return {name: u * scale for name, u in updates.items()}, ClipState(norm)

    return GradientTransformation(lambda params: ClipState(math.nan), update)


# --- Adam -----------------------------------------------------------------------------------------


@dataclass
class AdamState:
    """First and second moments (dicts like params) and the number of updates done: the state
    of ``scale_by_adam``, and what checkpoints store (adam_m/*, adam_v/*, adam_count)."""

    m: Params
    v: Params
    count: int = 0

    @classmethod
    def zeros_like(cls, params: Params) -> "AdamState":
        return cls({k: np.zeros_like(p) for k, p in params.items()}, {k: np.zeros_like(p) for k, p in params.items()}, 0)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam's direction.  With t = count + 1 (this update's number):
    m <- b1 m + (1 - b1) u,  v <- b2 v + (1 - b2) u u,  u <- (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    The direction is computed in the promoted dtype of u and the moments; the new moments are
    stored in the parameters' dtype (the moments' own when params is None).  State: AdamState."""
    for name, value in (("b1", b1), ("b2", b2)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1); got {value}")
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative; got {eps}")

    def update(updates, state, params=None):
        count = state.count + 1
        correction1, correction2 = 1.0 - b1**count, 1.0 - b2**count
        like = state.m if params is None else params
        direction, new_m, new_v = {}, {}, {}
        for name, g in updates.items():
            m = b1 * state.m[name] + (1.0 - b1) * g
            v = b2 * state.v[name] + (1.0 - b2) * g * g
            direction[name] = (m / correction1) / (np.sqrt(v / correction2) + eps)
            dtype = like[name].dtype
            new_m[name], new_v[name] = m.astype(dtype, copy=False), v.astype(dtype, copy=False)
        return direction, AdamState(new_m, new_v, count)

    return GradientTransformation(AdamState.zeros_like, update)


# --- schedules and the learning rate ----------------------------------------------------------------


def constant_schedule(value: float) -> Schedule:
    """f(t) = value."""
    return lambda step: value


def warmup_cosine_schedule(peak: float, warmup_steps: int, total_steps: int) -> Schedule:
    """With W = warmup_steps, T = total_steps: f(t) = peak (t + 1) / W for t < W (the last
    warm-up update uses the peak), then peak (1 + cos(pi p)) / 2 with p = min(1, (t - W) / max(1, T - W)):
    the peak at t = W, 0 from t = T on."""

    def rate(step):
        if step < warmup_steps:
            return peak * (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))

    return rate


def one_cycle_parts(peak: float, total_steps: int) -> tuple[float, float, float, float]:
    """(initial rate, peak step, final rate, final step) of ``one_cycle_schedule``."""
    divisor = max(1.0, total_steps / 2 - 1)
    return peak / divisor, max(0.0, total_steps / 2 - 1), peak / divisor**2, max(1.0, total_steps - 1.0)


def one_cycle_schedule(peak: float, total_steps: int) -> Schedule:
    """The schedule of the developmental-landscape paper's code (PyTorch's OneCycleLR with a
    linear anneal, pct_start 0.5 and div_factor = final_div_factor = T/2 - 1; formula from
    PyTorch's documentation): with m = T/2 - 1 (at least 1), lr_0 = peak / m,

        f(t) = lr_0 + (peak - lr_0) t / m                                for t <= m (warm-up over the first half),
        f(t) = peak + (peak / m^2 - peak) (t - m) / (T - 1 - m)          for m < t < T - 1 (decay to ~0),

    and peak / m^2 from t = T - 1 on."""
    initial, peak_step, final, last_step = one_cycle_parts(peak, total_steps)

    def rate(step):
        if step <= peak_step:
            return initial + (peak - initial) * (step / peak_step if peak_step > 0 else 1.0)
        progress = min(1.0, (step - peak_step) / max(1e-12, last_step - peak_step))
        return peak + (final - peak) * progress

    return rate


def cosine_schedule(peak: float, total_steps: int) -> Schedule:
    """f(t) = peak (1 + cos(pi min(1, t / max(1, T)))) / 2: the peak at t = 0, 0 from t = T on."""
    return warmup_cosine_schedule(peak, 0, total_steps)


def schedule_from_name(name: str, lr: float, warmup_steps: int = 0, total_steps: int = 1) -> Schedule:
    """The schedule called ``name`` (one of SCHEDULES) at peak ``lr``; "cosine" ignores warmup_steps."""
    if name == "constant":
        return constant_schedule(lr)
    if name == "cosine":
        return cosine_schedule(lr, total_steps)
    if name == "warmup_cosine":
        return warmup_cosine_schedule(lr, warmup_steps, total_steps)
    if name == "one_cycle":
        return one_cycle_schedule(lr, total_steps)
    raise ValueError(f"schedule must be one of {list(SCHEDULES)}; got {name!r}")


def scale_by_schedule(schedule: Schedule) -> GradientTransformation:
    """u <- f(t) u, t the number of updates this transform has made (the first uses f(0)).
    State: ScheduleState(t)."""

    def update(updates, state, params=None):
        factor = schedule(state.count)
        return {name: factor * u for name, u in updates.items()}, ScheduleState(state.count + 1)

    return GradientTransformation(lambda params: ScheduleState(0), update)


def scale_by_learning_rate(learning_rate: Union[float, Schedule], *, flip_sign: bool = True) -> GradientTransformation:
    """u <- -lr_t u (descent, so that p + u = p - lr_t u), lr_t a constant or a schedule of the
    update count; ``flip_sign=False`` gives u <- lr_t u."""
    rate = learning_rate if callable(learning_rate) else constant_schedule(float(learning_rate))
    if not flip_sign:
        return scale_by_schedule(rate)
    return scale_by_schedule(lambda step: -rate(step))


# --- Adam with clipping and a schedule: the training loop's optimiser --------------------------------


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
        return schedule_from_name(self.schedule, self.lr, self.warmup_steps, self.total_steps)(step)


def adam_chain(config: AdamConfig) -> GradientTransformation:
    """chain(clip_by_global_norm(clip_norm) (clip_norm None: inf, which never clips but still
    measures the norm), scale_by_adam(beta1, beta2, eps), scale_by_learning_rate(config.learning_rate)).
    Its state is (ClipState, AdamState, ScheduleState); see adam_chain_state and gradient_norm."""
    clip = clip_by_global_norm(math.inf if config.clip_norm is None else config.clip_norm)
    rate = schedule_from_name(config.schedule, config.lr, config.warmup_steps, config.total_steps)
    return chain(clip, scale_by_adam(config.beta1, config.beta2, config.eps), scale_by_learning_rate(rate))


def adam_chain_state(state: AdamState) -> tuple:
    """AdamState -> the state of ``adam_chain``: the schedule has made as many updates as Adam."""
    return (ClipState(math.nan), state, ScheduleState(state.count))


def adam_state_of(chain_state: tuple) -> AdamState:
    """The state of ``adam_chain`` -> its AdamState (m, v, count)."""
    return chain_state[1]


def gradient_norm(chain_state: tuple) -> float:
    """The global norm of the gradient the last update of ``adam_chain`` was given (before clipping)."""
    return chain_state[0].norm


def adam_update(config: AdamConfig, params: Params, grads: Params, state: AdamState) -> tuple[Params, AdamState, float]:
    """One step of ``adam_chain(config)`` from ``state``; returns (new params, new state, the
    gradient's global norm before clipping)."""
    updates, chain_state = adam_chain(config).update(grads, adam_chain_state(state), params)
    return apply_updates(params, updates), adam_state_of(chain_state), gradient_norm(chain_state)


# --- SGLD: the sampler of the local learning coefficient, as one more transform ---------------------


def sgld(step_size: float, nbeta: float, localization: float, center: Params,
         mask: Params | None = None) -> GradientTransformation:
    r"""Stochastic-gradient Langevin dynamics localised at w* = ``center`` (Welling & Teh, 2011;
    the localised form of Lau et al., 2023), as a transform of the gradient g of the loss:

        u <- -(eps / 2) [nbeta g + gamma (w - w*)] + sqrt(eps) xi,     xi ~ N(0, I),

    eps = step_size, gamma = localization, w = ``params`` (required).  The standard normals xi
    (a dict like params, any float dtype) come with each call, ``update(grads, state, params,
    noise=xi)``, so that every backend can be fed the same draws; ``noise=None`` gives the
    noiseless step, which is a gradient step of size eps nbeta / 2 when gamma = 0.  ``mask``
    (name -> 0/1 array broadcastable to the parameter, default all ones) restricts the chain:
    entries with mask 0 get u = 0 and stay at w*.  Its stationary density (eps -> 0) is
    proportional to exp(-nbeta L(w) - (gamma / 2) ||w - w*||^2).  State: ScheduleState(draws made)."""
    for name, value in (("step_size", step_size), ("nbeta", nbeta), ("localization", localization)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number; got {value!r}")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive; got {step_size}")
    if nbeta < 0 or localization < 0:
        raise ValueError(f"nbeta and localization must be non-negative; got nbeta={nbeta}, localization={localization}")
    half, noise_scale = 0.5 * float(step_size), math.sqrt(float(step_size))

    def update(updates, state, params=None, noise=None):
        if params is None:
            raise ValueError("sgld needs the current params (the localization term pulls them towards the center)")
        new = {}
        for name, g in updates.items():
            step = -half * (nbeta * g + localization * (params[name] - center[name]))
            if noise is not None:
                step = step + noise_scale * noise[name]
            new[name] = step if mask is None else step * mask[name]
        return new, ScheduleState(state.count + 1)

    return GradientTransformation(lambda params: ScheduleState(0), update)
