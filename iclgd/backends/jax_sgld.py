r"""The SGLD chains of an LLC estimate (``iclgd.analysis.llc``) as one compiled jax program.

``sgld_chains(objective, center, settings, mask, per_position, init_loss, init_per_position)``
is the jax backend's ``Backend.sgld_chains`` hook, for both model families (the LSA and the
transformer).  It computes what ``iclgd.sgld.run_host_chains`` computes - the same steps, the
same records, the same ``LLCDiverged`` messages - and is held to it (and so to the NumPy
oracle) by tests/test_jax_sgld.py to float64 round-off.

The program.  One step of one chain is traced once (``_step``), ``lax.scan`` runs it over a
chunk of L steps, and ``jax.vmap`` runs that scan for all C chains at once; the whole chunk is
one ``jax.jit`` call (``_run_chunk``).  It is compiled once per ``_Plan`` - the config (with its
dtype) and whether steps use a minibatch - and per shape (C, L, the data's n, the batch size),
and jax's jit cache keeps it for the process.  Everything else is an argument of the compiled
program: the data, w*, the mask (all ones without ``restrict``), step_size, nbeta,
localization, L(w*) and its per-position values, the score (an index that ``lax.switch``
reads, so only the chosen rule runs) and per-step flags (whether the step is real and whether
its MALA acceptance is wanted; unbatched scan inputs, so the ``lax.cond`` they drive skips the
work).  The transformer always computes the per-position losses (the loss is their mean) and
the host keeps them when asked.  So one compiled program serves every estimate of a model on
data of a shape: every score, with and without per_position or restrict, and a calibration
sweep over step_size and nbeta.  The carry (each chain's parameters and transform state) stays
on the device from one chunk to the next.

The randomness is the host runner's, drawn on the host: chain c's generator
``iclgd.streams.sgld_rng(seed, c)`` gives, for every step in turn, ``draw_step`` = the
minibatch's row indices, then the float64 standard normals over the flattened parameters in
``center``'s order (cast to cfg.dtype, as ``iclgd.sgld.unflatten`` casts them).  Each chain has
its own generator, so drawing chain by chain gives exactly the numbers of the host's lockstep
loop.  The draws of a chunk are stacked into indices (C, L, batch) int32 and noise (C, L, P),
and the minibatch's rows are gathered inside the program (tokens[indices]).

Memory and chunks: a chunk holds at most ``MAX_CHUNK_BYTES`` (64 MiB) of draws.  L is the
smallest power of two >= num_steps, the largest power of two whose draws fit in 64 MiB
(C (P itemsize + 4 batch) bytes a step), or 256 steps (so that Ctrl-C, which takes effect
between compiled calls, never waits long), whichever is least (``chunk_length``); the last chunk's
steps past num_steps are padding that the program skips.  Powers of two let estimates with
different step counts (a calibration sweep changes the default burn-in) share a compiled
program.  While chunk k runs, chunk k + 1 is drawn on the host, so at most two chunks of draws
(<= 128 MiB) are alive at a time however long the chains.  The records are small (C L (5 + K)
numbers a chunk).  A loss over more than ``CHUNK`` (2048) rows (a large minibatch,
batch_size None, or the "full" score on a large data set) is computed in parts of at most
``CHUNK`` rows per chain, in a ``lax.scan`` that accumulates the values and gradients (the host
objective's scheme), so activations are bounded by those of C x 2048 rows.  The records do not
depend on the chunk length (tests/test_jax_sgld.py forces tiny chunks).

Each step, for each chain, at w_t (see ``iclgd.sgld``):

    L, (L_1..L_K), g  = loss, per-position losses and gradient on the minibatch B_t
    score             = L | L - L_{B_t}(w*) + L(w*) | L(w_t) on all rows   (settings.score)
    distance          = ||w_t - w*||  (accumulated in float64)
    u, state          = sgld(eps, nbeta, gamma, w*, mask).update(g, state, w_t, noise=xi_t)
    w_{t+1}           = optax.apply_updates(w_t, u)
    mala              = MALA acceptance of w_t -> w_{t+1} on B_t (float64, ``mala_acceptance``'s
                        formula) on every mala_every-th draw after burn-in (a flag per step, an
                        unbatched scan input, so ``lax.cond`` skips the other steps), else NaN

Every step also records whether its loss, gradient and new parameters are finite.  After each
chunk the host finds the first non-finite step in the host runner's order (step, then chain)
and raises ``LLCDiverged`` with the host runner's message (``iclgd.sgld._where``, ``_advice``).
The model, its gradient and the update are computed in cfg.dtype; the distance, the MALA
acceptance and the scores' combination with L(w*) in float64, as the host runner does.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iclgd.analysis import objective as objective_module
from iclgd.analysis.objective import CHUNK
from iclgd.models import LSAConfig, TransformerConfig
from iclgd.sgld import SCORES, ChainRecords, LLCDiverged, SGLDSettings, _advice, _where, draw_step
from iclgd.streams import sgld_rng

#: the most bytes of draws (noise and minibatch indices) one chunk of steps holds on the host
MAX_CHUNK_BYTES = 64 * 2**20
#: the most steps one compiled call runs: Ctrl-C (or SIGTERM) takes effect between calls, so this
#: bounds how long an interrupt waits (a few seconds for the paper's model on a CPU)
MAX_CHUNK_STEPS = 256


# --- SGLD as an optax transform ------------------------------------------------------------------------


class SGLDState(NamedTuple):
    """The number of updates the transform has made (as ``iclgd.optim.sgld``'s ScheduleState)."""

    count: jax.Array


def sgld(step_size, nbeta, localization, center: dict, mask: dict | None = None) -> optax.GradientTransformationExtraArgs:
    r"""Localised SGLD as one more optax transform: the jax twin of ``iclgd.optim.sgld``.

        u <- -(eps / 2) [nbeta g + gamma (w - w*)] + sqrt(eps) xi,    then u <- u * mask

    eps = step_size, gamma = localization, w* = ``center``, g the incoming updates (the loss's
    gradient), w = ``params`` (required).  The standard normals xi come with each call as the
    extra argument ``noise`` (a dict like params; None: the noiseless step):

        updates, state = transform.update(grads, state, params, noise=xi)
        params = optax.apply_updates(params, updates)

    so that it chains with other optax transforms (``optax.chain`` forwards ``noise`` by name to
    the transforms that take it).  The scalars may be Python floats or traced jax scalars (a
    compiled program then serves every step size); they are rounded to each parameter's dtype
    before use, as NumPy does with Python floats, and the operations are the host transform's,
    in its order.  ``mask`` (name -> 0/1 array like the parameter) keeps the entries with 0 at
    w*.  State: SGLDState(updates made)."""

    def init(params):
        return SGLDState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, noise=None, **extra_args):
        if params is None:
            raise ValueError("sgld needs the current params (the localization term pulls them towards the center)")
        half, scale = 0.5 * step_size, jnp.sqrt(step_size) if isinstance(step_size, jax.Array) else math.sqrt(step_size)
        new = {}
        for name, g in updates.items():
            w = params[name]
            dtype = w.dtype

            def cast(x):
                return jnp.asarray(x).astype(dtype)

            step = -cast(half) * (cast(nbeta) * g + cast(localization) * (w - center[name]))
            if noise is not None:
                step = step + cast(scale) * noise[name].astype(dtype)
            new[name] = step if mask is None else step * mask[name]
        return new, SGLDState(optax.safe_int32_increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


# --- the losses ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything static about the chains' program (hashable: the jit cache key).  The score,
    per_position, the mask and the MALA schedule are not: they are arguments of the program
    (see ``_step``), so one compiled program serves every estimate of a model on data of a shape."""

    cfg: LSAConfig | TransformerConfig
    names: tuple[str, ...]  # the parameters in center's order (the noise's order)
    batched: bool  # a minibatch per step (False: every row)
    part_rows: int = CHUNK  # the most rows of one loss evaluation (more are computed in parts)

    @property
    def transformer(self) -> bool:
        return isinstance(self.cfg, TransformerConfig)


def _errors(plan: _Plan, params: dict, tokens, targets):
    """Each row's loss: LSA 0.5 (yhat - y)^2 (R,); transformer (yhat_k - y_k)^2 (R, K)."""
    if plan.transformer:
        from iclgd.backends import jax_transformer

        return jnp.square(jax_transformer._predict(plan.cfg, params, tokens) - targets)
    from iclgd.backends import jax_backend

    return 0.5 * jnp.square(jax_backend._predict(plan.cfg, params, tokens) - targets)


def _reduce(plan: _Plan, params: dict, tokens, targets, weights=None):
    """(L, per-position losses or None): the rows' mean loss (weighted sum when weights are given;
    rows of weight 0 are padding and do not enter)."""
    errors = _errors(plan, params, tokens, targets)
    if weights is None:
        per_row = jnp.mean(errors, axis=0)
    else:
        w = weights.reshape(weights.shape + (1,) * (errors.ndim - 1))
        per_row = jnp.sum(jnp.where(w > 0, w * errors, 0), axis=0)
    return (jnp.mean(per_row), per_row) if plan.transformer else (per_row, None)


def _rows_loss(plan: _Plan, params: dict, data, rows, grad: bool):
    """(L, per-position or None, gradient or None) on the rows ``rows`` of the data (an index
    vector; None: all rows), in parts of at most CHUNK rows whose values and gradients are
    accumulated (the host objective's scheme), so memory is bounded whatever the rows.  The parts
    are of equal size, padded with copies of real rows of weight 0 (finite wherever the real rows
    are), their loss left out by ``jnp.where``."""
    tokens, targets = data
    n_rows = tokens.shape[0] if rows is None else rows.shape[0]
    value_and_grad = jax.value_and_grad(functools.partial(_reduce, plan), has_aux=True)
    if n_rows <= plan.part_rows:
        part_tokens, part_targets = (tokens, targets) if rows is None else (tokens[rows], targets[rows])
        if grad:
            (loss, per_position), grads = value_and_grad(params, part_tokens, part_targets)
            return loss, per_position, grads
        return (*_reduce(plan, params, part_tokens, part_targets), None)
    n_parts = -(-n_rows // plan.part_rows)
    size = -(-n_rows // n_parts)
    pad = n_parts * size - n_rows
    every = jnp.arange(n_rows) if rows is None else rows
    index = jnp.concatenate([every, every[:pad]]).reshape(n_parts, size)  # padding: copies of real rows, weight 0
    dtype = tokens.dtype
    weights = jnp.concatenate([jnp.full(n_rows, 1.0 / n_rows, dtype), jnp.zeros(pad, dtype)]).reshape(n_parts, size)

    def part(total, xs):
        i, w = xs
        if grad:
            (loss, per_position), grads = value_and_grad(params, tokens[i], targets[i], w)
        else:
            (loss, per_position), grads = _reduce(plan, params, tokens[i], targets[i], w), None
        return jax.tree_util.tree_map(jnp.add, total, (loss, per_position, grads)), None

    per_position_zero = jnp.zeros(targets.shape[1:], dtype) if plan.transformer else None
    grads_zero = jax.tree_util.tree_map(jnp.zeros_like, params) if grad else None
    total, _ = jax.lax.scan(part, (jnp.zeros([], dtype), per_position_zero, grads_zero), (index, weights))
    return total


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


def _f64(x):
    return x.astype(jnp.float64)


def _mala(plan: _Plan, consts, w, w_new, loss, grads, loss_new, grads_new):
    """``iclgd.sgld.mala_acceptance`` in float64: only the entries that move (mask 1) enter."""
    eps, nbeta, gamma = consts["hyper"]
    energy = nbeta * (_f64(loss) - _f64(loss_new))
    log_q_forward = log_q_backward = jnp.zeros([], jnp.float64)
    for name in plan.names:
        m = _f64(consts["mask"][name])
        a, b, c = _f64(w[name]), _f64(w_new[name]), _f64(consts["center"][name])
        moves = m != 0  # a fixed entry never enters, even where its gradient is not finite
        drift_a = jnp.where(moves, m * (nbeta * _f64(grads[name]) + gamma * (a - c)), 0.0)
        drift_b = jnp.where(moves, m * (nbeta * _f64(grads_new[name]) + gamma * (b - c)), 0.0)
        energy = energy + 0.5 * gamma * jnp.sum(m * ((a - c) ** 2 - (b - c) ** 2))
        log_q_forward = log_q_forward - jnp.sum(m * (b - a + 0.5 * eps * drift_a) ** 2) / (2 * eps)
        log_q_backward = log_q_backward - jnp.sum(m * (a - b + 0.5 * eps * drift_b) ** 2) / (2 * eps)
    log_alpha = energy + log_q_backward - log_q_forward
    alpha = jnp.where(log_alpha >= 0, 1.0, jnp.exp(jnp.minimum(log_alpha, 0.0)))
    alpha = jnp.where(jnp.isnan(log_alpha), 0.0, alpha)  # as the host: a proposal too far out to score is refused
    return jnp.where(jnp.isfinite(loss_new), alpha, 0.0)


# --- one step, the chunk's program ------------------------------------------------------------------------


def _unflatten(plan: _Plan, center: dict, vector) -> dict:
    """The flat noise (P,) -> a dict like center, in center's order (``iclgd.sgld.unflatten``)."""
    out, start = {}, 0
    for name in plan.names:
        shape = center[name].shape
        size = math.prod(shape)
        out[name] = vector[start:start + size].reshape(shape)
        start += size
    return out


def _scores(plan: _Plan, consts, w, rows, loss, per_position):
    """(score, per-position scores or None) of the step by every rule of SCORES, selected by the
    (unbatched) index consts["score"] with ``lax.switch``, so only the chosen rule runs.  The
    transformer always records the per-position scores (their mean is the score; the host drops
    them unless asked), with init_per_position zeros when they are not wanted."""
    data, center = consts["data"], consts["center"]

    def minibatch():
        return _f64(loss), None if per_position is None else _f64(per_position)

    def paired():
        at_center, at_center_positions, _ = _rows_loss(plan, center, data, rows, grad=False)
        if per_position is None:
            return _f64(loss) - _f64(at_center) + consts["init_loss"], None
        positions = _f64(per_position) - _f64(at_center_positions) + consts["init_per_position"]
        return _f64(loss) - jnp.mean(_f64(at_center_positions)) + consts["init_loss"], positions

    def full():
        value, positions, _ = _rows_loss(plan, w, data, None, grad=False)
        if positions is None:
            return _f64(value), None
        return jnp.mean(_f64(positions)), _f64(positions)

    return jax.lax.switch(consts["score"], [minibatch, paired, full])


def _step(plan: _Plan, consts, carry, xs):
    """One SGLD step of one chain (see the module docstring): (w_t, state) -> (w_{t+1}, state')
    and the step's records.  xs = (rows, noise, (valid, mala)): padding steps (valid False, at
    the end of the last chunk) are skipped by ``lax.cond`` and leave the carry as it is; the MALA
    acceptance is computed where the flag is set, NaN elsewhere."""
    rows, noise, (valid, mala_flag) = xs

    def skip(carry):
        nan, false = jnp.full([], jnp.nan, jnp.float64), jnp.zeros([], bool)
        record = {"loss": jnp.zeros([], consts["data"][0].dtype), "grads_finite": false, "distance": nan, "score": nan,
                  "params_finite": false, "mala": nan}
        if plan.transformer:
            record["per_position"] = jnp.full(consts["data"][1].shape[1:], jnp.nan, jnp.float64)
        return carry, record

    def real(carry):
        w, state = carry
        data, center = consts["data"], consts["center"]
        eps, nbeta, gamma = consts["hyper"]
        loss, per_position, grads = _rows_loss(plan, w, data, rows, grad=True)
        score, positions = _scores(plan, consts, w, rows, loss, per_position)
        record = {
            "loss": loss,
            "grads_finite": _all_finite(grads),
            "distance": jnp.sqrt(sum(jnp.sum(jnp.square(_f64(w[k]) - _f64(center[k]))) for k in plan.names)),
            "score": score,
        }
        if positions is not None:
            record["per_position"] = positions
        transform = sgld(eps, nbeta, gamma, center, consts["mask"])
        updates, state = transform.update(grads, state, w, noise=_unflatten(plan, center, noise))
        w_new = optax.apply_updates(w, updates)
        record["params_finite"] = _all_finite(w_new)

        def acceptance():
            loss_new, _, grads_new = _rows_loss(plan, w_new, data, rows, grad=True)
            return _mala(plan, consts, w, w_new, loss, grads, loss_new, grads_new)

        record["mala"] = jax.lax.cond(mala_flag, acceptance, lambda: jnp.full([], jnp.nan, jnp.float64))
        return (w_new, state), record

    return jax.lax.cond(valid, real, skip, carry)


@functools.partial(jax.jit, static_argnums=0)
def _run_chunk(plan: _Plan, consts, carry, rows, noise, flags):
    """L steps of every chain: ``jax.vmap`` over the chains (axis 0 of carry, rows (C, L, batch)
    and noise (C, L, P)) of a ``lax.scan`` of ``_step`` over the L steps; flags = (valid, mala),
    each (L,), are shared by the chains (unbatched, so the conds they drive skip work).  Returns
    the new carry and the records, each (C, L, ...)."""

    def chain(carry, rows, noise):
        return jax.lax.scan(functools.partial(_step, plan, consts), carry, (rows, noise, flags))

    return jax.vmap(chain)(carry, rows, noise)


# --- the host side ----------------------------------------------------------------------------------------


def chunk_length(settings: SGLDSettings, n_params: int, itemsize: int, max_bytes: int = MAX_CHUNK_BYTES) -> int:
    """The steps per chunk: the smallest power of two that holds all num_steps steps, the
    largest whose draws fit in max_bytes (C chains x (P noise entries of ``itemsize`` bytes +
    batch int32 indices) per step), or MAX_CHUNK_STEPS (an interrupt's longest wait), whichever is least.  Powers of two let estimates whose step
    counts differ (a calibration sweep changes the burn-in) share one compiled program; the last
    chunk's padding steps are skipped inside it."""
    per_step = settings.num_chains * (n_params * itemsize + 4 * (settings.batch_size or 0))
    longest = max(1, max_bytes // per_step)
    return min(1 << (settings.num_steps - 1).bit_length(), 1 << (longest.bit_length() - 1), MAX_CHUNK_STEPS)


def _draw_chunk(rngs, settings: SGLDSettings, n_samples: int, n_params: int, dtype, start: int, length: int):
    """The draws of steps start .. start + length - 1 (those < num_steps; the rest, padding, zeros):
    indices (C, L, batch) int32 or None, noise (C, L, P), flags (valid (L,), MALA (L,))."""
    s = settings
    valid = min(length, s.num_steps - start)
    noise = np.zeros((s.num_chains, length, n_params), dtype)
    rows = None if s.batch_size is None else np.zeros((s.num_chains, length, s.batch_size), np.int32)
    for c, rng in enumerate(rngs):
        for i in range(valid):
            indices, xi = draw_step(rng, n_samples, s.batch_size, n_params)
            noise[c, i] = xi
            if rows is not None:
                rows[c, i] = indices
    steps = np.arange(start, start + length)
    draws = steps - s.num_burnin_steps
    is_valid = steps < s.num_steps
    mala = is_valid & (draws >= 0) & ((draws % s.mala_every == 0) if s.mala_every else False)
    return rows, noise, (is_valid, mala)


def _check_chunk(records: dict, start: int, valid: int, s: SGLDSettings) -> None:
    """Raise the host runner's LLCDiverged for the first non-finite step (in its order: the
    earliest step, then the lowest chain) among the chunk's ``valid`` steps."""
    loss = records["loss"][:, :valid]
    grads_ok, params_ok = records["grads_finite"][:, :valid], records["params_finite"][:, :valid]
    bad = ~np.isfinite(loss) | ~grads_ok | ~params_ok
    if not bad.any():
        return
    first = np.where(bad.any(axis=1), bad.argmax(axis=1), valid)
    i = int(first.min())
    c = int(np.flatnonzero(first == i)[0])
    step = start + i
    if not np.isfinite(loss[c, i]):
        raise LLCDiverged(f"{_where(c, step, s)}: the loss became {float(loss[c, i])}; " + _advice(s))
    if not grads_ok[c, i]:
        raise LLCDiverged(f"{_where(c, step, s)}: the gradient became non-finite; " + _advice(s))
    raise LLCDiverged(_where(c, step + 1, s) + ": the parameters became non-finite; " + _advice(s))


def sgld_chains(objective, center: dict, settings: SGLDSettings, mask: dict | None, per_position: bool,
                init_loss: float, init_per_position, *, chunk_steps: int | None = None) -> ChainRecords | None:
    """The chains of ``iclgd.sgld.run_host_chains`` (same arguments, same ChainRecords, same
    LLCDiverged) as one compiled program; see the module docstring.  None when the objective is
    not a model family's loss on a data set (``BackendObjective`` of an LSA or a transformer):
    the estimator then runs the host chains.  ``chunk_steps`` fixes the steps per chunk (default
    ``chunk_length``: at most MAX_CHUNK_BYTES of draws); the records do not depend on it."""
    cfg = getattr(objective, "cfg", None)
    if not isinstance(cfg, (LSAConfig, TransformerConfig)) or not hasattr(objective, "tokens"):
        return None
    s = settings
    dtype = np.dtype(cfg.dtype)
    names = tuple(center)
    center = {k: np.asarray(center[k], dtype) for k in names}
    n_params = sum(p.size for p in center.values())
    plan = _Plan(cfg, names, s.batch_size is not None, objective_module.CHUNK)
    if per_position and init_per_position is None:
        raise ValueError("per_position needs init_per_position, the per-position losses at w*")
    n_positions = cfg.n_examples if plan.transformer else 0
    consts = {
        "data": (jnp.asarray(objective.tokens, dtype), jnp.asarray(objective.targets, dtype)),
        "center": {k: jnp.asarray(v) for k, v in center.items()},
        "mask": {k: jnp.asarray(np.ones(v.shape, dtype) if mask is None else np.asarray(mask[k], dtype)) for k, v in center.items()},
        "hyper": tuple(jnp.asarray(x, jnp.float64) for x in (s.step_size, s.nbeta, s.localization)),
        "score": jnp.asarray(SCORES.index(s.score), jnp.int32),
        "init_loss": jnp.asarray(init_loss, jnp.float64),
        "init_per_position": jnp.asarray(init_per_position if per_position else np.zeros(n_positions), jnp.float64),
    }
    length = chunk_length(s, n_params, dtype.itemsize) if chunk_steps is None else max(1, int(chunk_steps))
    params = {k: jnp.broadcast_to(v, (s.num_chains,) + v.shape) for k, v in center.items()}
    state = SGLDState(jnp.zeros(s.num_chains, jnp.int32))
    carry = (params, state)
    rngs = [sgld_rng(s.seed, c) for c in range(s.num_chains)]
    shape = (s.num_chains, s.num_steps)
    out = {"score": np.empty(shape), "distance": np.empty(shape), "mala": np.full(shape, np.nan)}
    if per_position:
        out["per_position"] = np.empty(shape + (n_positions,))

    def collect(start, records):
        records = jax.tree_util.tree_map(np.asarray, records)
        valid = min(length, s.num_steps - start)
        _check_chunk(records, start, valid, s)
        for key in out:
            if key in records:
                out[key][:, start:start + valid] = records[key][:, :valid]

    starts = list(range(0, s.num_steps, length))
    draws, pending = _draw_chunk(rngs, s, objective.n_samples, n_params, dtype, 0, length), None
    for k, start in enumerate(starts):
        carry, records = _run_chunk(plan, consts, carry, *draws)  # dispatched asynchronously
        if pending is not None:
            collect(*pending)
        pending = (start, records)
        if k + 1 < len(starts):  # drawn on the host while the chunk runs
            draws = _draw_chunk(rngs, s, objective.n_samples, n_params, dtype, starts[k + 1], length)
    collect(*pending)
    return ChainRecords(out["score"], out.get("per_position"), out["distance"], out["mala"])
