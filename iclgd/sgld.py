r"""SGLD chains localised at w*: their settings, each step's randomness, the host runner and the
MALA check.  The estimator built on them (and the math) is ``iclgd.analysis.llc``; the jax
backend runs the same chains in one compiled program (``sgld_chains``), fed the same draws.

One step of chain c, from w_t (w_0 = w*):

    indices, xi = draw_step(sgld_rng(seed, c), n, batch_size, P)   # the minibatch B_t, then N(0, I_P)
    L, g = the objective's loss and gradient on B_t at w_t          # recorded as the step's score
    w_{t+1} = w_t + iclgd.optim.sgld(eps, nbeta, gamma, w*).update(g, ., w_t, noise=xi)
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import numpy as np

from iclgd.optim import apply_updates, sgld
from iclgd.streams import sgld_rng

SCORES = ("minibatch", "paired", "full")


class LLCDiverged(ValueError):
    """A chain's loss or parameters became non-finite; the message names the chain and the draw."""


# --- settings --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SGLDSettings:
    """Everything that defines a set of SGLD chains (see the module docstring)."""

    step_size: float
    nbeta: float
    localization: float
    num_chains: int
    num_draws: int
    num_burnin_steps: int
    batch_size: int | None  # None: every step's gradient on the whole data set
    seed: int
    score: str = "minibatch"
    mala_every: int = 1  # the MALA acceptance of every k-th draw (0: never)

    @property
    def num_steps(self) -> int:
        return self.num_burnin_steps + self.num_draws


def default_nbeta(n_samples: int) -> float:
    """n / log n, the inverse temperature of Watanabe's WBIC at sample size n."""
    return n_samples / math.log(n_samples) if n_samples > 1 else 1.0


def default_burnin(step_size: float, localization: float) -> int:
    """ceil(2 / (eps gamma)): the localization term shrinks w - w* by (1 - eps gamma / 2) a step,
    so this is one relaxation time of w - w* and two of its variance (a flat direction then
    holds about 86 % of its stationary spread); 0 without localization."""
    return int(math.ceil(2.0 / (step_size * localization))) if localization > 0 else 0


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _finite_float(name: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'}; got {value}")
    return float(value)


def make_settings(n_samples: int, *, step_size, nbeta, localization, num_chains, num_draws, num_burnin_steps,
                  batch_size, seed, score, mala_every) -> SGLDSettings:
    """SGLDSettings from estimate_llc's arguments, each checked (ValueError naming it), defaults filled in."""
    step_size = _finite_float("step_size", step_size, positive=True)
    localization = _finite_float("localization", localization)
    nbeta = default_nbeta(n_samples) if nbeta is None else _finite_float("nbeta", nbeta, positive=True)
    burnin = default_burnin(step_size, localization) if num_burnin_steps is None else _positive_int("num_burnin_steps", num_burnin_steps, 0)
    if batch_size is not None:
        batch_size = _positive_int("batch_size", batch_size)
    if score not in SCORES:
        raise ValueError(f"score must be one of {list(SCORES)}; got {score!r}")
    return SGLDSettings(
        step_size, nbeta, localization, _positive_int("num_chains", num_chains), _positive_int("num_draws", num_draws),
        burnin, batch_size, _positive_int("seed", seed, 0), score, _positive_int("mala_every", mala_every, 0),
    )


# --- restriction -------------------------------------------------------------------------------------


def restriction_mask(params: dict, restrict) -> dict[str, np.ndarray] | None:
    """The 0/1 mask of the parameters that move: ``restrict`` None (all move), a glob pattern
    or a list of them matched against the names (fnmatch: "block1.attn.*"), or a dict name ->
    boolean array (entries True move; names absent stay fixed).  ValueError when nothing moves."""
    if restrict is None:
        return None
    if isinstance(restrict, str):
        restrict = [restrict]
    if isinstance(restrict, dict):
        unknown = sorted(set(restrict) - set(params))
        if unknown:
            raise ValueError(f"restrict names parameters the model has not: {unknown}; its parameters: {list(params)}")
        mask = {}
        for name, p in params.items():
            m = np.asarray(restrict.get(name, np.zeros(p.shape, dtype=bool)))
            if m.shape != p.shape:
                raise ValueError(f"restrict[{name!r}] must have the parameter's shape {p.shape}; got {m.shape}")
            if not np.all((m == 0) | (m == 1)):  # a fraction would scale the drift by m but the noise by m^2
                raise ValueError(f"restrict[{name!r}] must hold booleans (or 0 and 1); got other values")
            mask[name] = m.astype(p.dtype)
    elif isinstance(restrict, (list, tuple)) and all(isinstance(r, str) for r in restrict):
        mask = {name: np.full(p.shape, float(any(fnmatch.fnmatchcase(name, r) for r in restrict)), dtype=p.dtype)
                for name, p in params.items()}
    else:
        raise ValueError(f"restrict must be None, a name pattern, a list of patterns or a dict of masks; got {type(restrict).__name__}")
    if not any(m.any() for m in mask.values()):
        raise ValueError(f"restrict {restrict!r} matches no parameter; the parameters are {list(params)}")
    return mask


# --- MALA ---------------------------------------------------------------------------------------------


def mala_acceptance(w: dict, w_new: dict, loss: float, grads: dict, loss_new: float, grads_new: dict, center: dict,
                    step_size: float, nbeta: float, localization: float, mask: dict | None = None) -> float:
    r"""The Metropolis-adjusted Langevin acceptance probability of the SGLD proposal w -> w',
    both ends scored on the same minibatch (loss, grads at w; loss_new, grads_new at w'):

        U(w) = nbeta L(w) + (gamma / 2) ||w - w*||^2,          G(w) = nbeta grad L(w) + gamma (w - w*)
        log q(b | a) = -||b - a + (eps / 2) G(a)||^2 / (2 eps)
        alpha = min(1, exp(U(w) - U(w') + log q(w | w') - log q(w' | w)))

    Only the entries that move (mask 1) enter: fixed ones have w' = w and no proposal density."""
    eps = step_size
    energy = nbeta * (loss - loss_new)
    log_q_forward = log_q_backward = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # a far proposal gives alpha = 0, not a warning
        for name in w:
            m = 1.0 if mask is None else mask[name]
            a, b = np.asarray(w[name], np.float64), np.asarray(w_new[name], np.float64)
            g_a, g_b = np.asarray(grads[name], np.float64), np.asarray(grads_new[name], np.float64)
            if mask is not None:  # a fixed entry never enters, even where its gradient is not finite
                g_a, g_b = np.where(m != 0, g_a, 0.0), np.where(m != 0, g_b, 0.0)
            drift_a = m * (nbeta * g_a + localization * (a - center[name]))
            drift_b = m * (nbeta * g_b + localization * (b - center[name]))
            energy += 0.5 * localization * float(np.sum(m * ((a - center[name]) ** 2 - (b - center[name]) ** 2)))
            log_q_forward -= float(np.sum(m * (b - a + 0.5 * eps * drift_a) ** 2)) / (2 * eps)
            log_q_backward -= float(np.sum(m * (a - b + 0.5 * eps * drift_b) ** 2)) / (2 * eps)
    log_alpha = energy + log_q_backward - log_q_forward
    if math.isnan(log_alpha):  # inf - inf: a proposal too far out to score
        return 0.0
    return 1.0 if log_alpha >= 0 else float(math.exp(log_alpha))


# --- the chains' randomness -----------------------------------------------------------------------------


def draw_step(rng: np.random.Generator, n_samples: int, batch_size: int | None, n_params: int):
    """One step's randomness from a chain's stream: the minibatch's row indices (batch_size of
    them, uniform with replacement; None when batch_size is None: the whole data set), then the
    noise's n_params standard normals (float64)."""
    indices = None if batch_size is None else rng.integers(0, n_samples, size=batch_size)
    return indices, rng.standard_normal(n_params)


def unflatten(vector: np.ndarray, like: dict) -> dict:
    """A flat vector -> a dict shaped like ``like`` (in its order), each part in its dtype."""
    out, start = {}, 0
    for name, p in like.items():
        out[name] = vector[start:start + p.size].reshape(p.shape).astype(p.dtype, copy=False)
        start += p.size
    return out


@dataclass
class ChainRecords:
    """What the chains recorded at every step (burn-in first, then draws), (C, S) each:
    score (the per-step score, see SCORES), per_position (C, S, K) or None, distance
    ||w_t - w*|| before the step, and mala (the acceptance of the step, NaN where not computed)."""

    score: np.ndarray
    per_position: np.ndarray | None
    distance: np.ndarray
    mala: np.ndarray


# --- the host chains ------------------------------------------------------------------------------------


@np.errstate(over="ignore", invalid="ignore")  # a diverging chain is reported as LLCDiverged, not as warnings
def run_host_chains(objective, center: dict, settings: SGLDSettings, mask: dict | None, per_position: bool,
                    init_loss: float, init_per_position: np.ndarray | None) -> ChainRecords:
    """Advance ``settings.num_chains`` chains in lockstep on the host: each step, for each chain,
    the gradient on its minibatch, the score, then the ``iclgd.optim.sgld`` update."""
    s = settings
    n_params = sum(p.size for p in center.values())
    transform = sgld(s.step_size, s.nbeta, s.localization, center, mask)
    rngs = [sgld_rng(s.seed, c) for c in range(s.num_chains)]
    params = [dict(center) for _ in range(s.num_chains)]
    states = [transform.init(center) for _ in range(s.num_chains)]
    shape = (s.num_chains, s.num_steps)
    score, distance, mala = np.empty(shape), np.empty(shape), np.full(shape, np.nan)
    positions = np.empty(shape + (objective.n_positions,)) if per_position else None
    for t in range(s.num_steps):
        for c in range(s.num_chains):
            indices, noise = draw_step(rngs[c], objective.n_samples, s.batch_size, n_params)
            w = params[c]
            if per_position:
                losses, grads = objective.per_position_loss_and_grad(w, indices)
                loss = float(np.mean(losses))
            else:
                loss, grads = objective.loss_and_grad(w, indices)
            _check_finite(loss, grads, c, t, s)
            distance[c, t] = math.sqrt(sum(float(np.sum((np.asarray(w[k], np.float64) - center[k]) ** 2)) for k in w))
            if s.score == "minibatch":
                score[c, t] = loss
                if per_position:
                    positions[c, t] = losses
            elif s.score == "paired":
                if per_position:
                    at_center = objective.per_position_loss(center, indices)
                    positions[c, t] = losses - at_center + init_per_position
                    score[c, t] = loss - float(np.mean(at_center)) + init_loss
                else:
                    score[c, t] = loss - objective.loss(center, indices) + init_loss
            else:  # full
                if per_position:
                    positions[c, t] = objective.per_position_loss(w, None)
                    score[c, t] = float(np.mean(positions[c, t]))
                else:
                    score[c, t] = objective.loss(w, None)
            updates, states[c] = transform.update(grads, states[c], w, noise=unflatten(noise, w))
            w_new = apply_updates(w, updates)
            if not all(np.isfinite(p).all() for p in w_new.values()):
                raise LLCDiverged(_where(c, t + 1, s) + ": the parameters became non-finite; " + _advice(s))
            draw = t - s.num_burnin_steps
            if s.mala_every and draw >= 0 and draw % s.mala_every == 0:
                loss_new, grads_new = objective.loss_and_grad(w_new, indices)
                if math.isfinite(loss_new):
                    mala[c, t] = mala_acceptance(w, w_new, loss, grads, loss_new, grads_new, center,
                                                 s.step_size, s.nbeta, s.localization, mask)
                else:
                    mala[c, t] = 0.0
            params[c] = w_new
    return ChainRecords(score, positions, distance, mala)


def _where(chain: int, step: int, s: SGLDSettings) -> str:
    if step < s.num_burnin_steps:
        return f"chain {chain}, burn-in step {step}"
    return f"chain {chain}, draw {step - s.num_burnin_steps} (after {s.num_burnin_steps} burn-in steps)"


def _advice(s: SGLDSettings) -> str:
    return (f"the chain left the basin of w*: lower step_size (now {s.step_size:g}) or nbeta (now {s.nbeta:g}), "
            f"or raise localization (now {s.localization:g}); iclgd.analysis.llc.calibrate sweeps them")


def _check_finite(loss: float, grads: dict, chain: int, step: int, s: SGLDSettings) -> None:
    if not math.isfinite(loss):
        raise LLCDiverged(f"{_where(chain, step, s)}: the loss became {loss}; " + _advice(s))
    if not all(np.isfinite(g).all() for g in grads.values()):
        raise LLCDiverged(f"{_where(chain, step, s)}: the gradient became non-finite; " + _advice(s))
