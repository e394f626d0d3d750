r"""A counter-based data stream for the numba backend: Philox4x32-10, drawn inside compiled code.

Another stream than the NumPy one (``iclgd.streams.batch_rng``, PCG64): the numbers differ, the
distribution is the same (w ~ N(0, I_d), x ~ U(-a, a)^d, labels y = w.x), so a run on this
stream is another run, as with the jax sampler.  What it buys: every task's numbers depend on
(seed, step, task index) alone, so a compiled parallel loop draws the batch, the same for any
thread count, with no draw in Python.

The generator (Salmon, Moraes, Dror and Shaw 2011, "Parallel random numbers: as easy as
1, 2, 3").  A block maps a 128-bit counter c = (c0, c1, c2, c3) and a 64-bit key k = (k0, k1)
(32-bit words) to four 32-bit words by 10 rounds; round r uses the key bumped r - 1 times,
k <- (k0 + 0x9E3779B9, k1 + 0xBB67AE85) mod 2^32, and maps

    (hi0, lo0) = M0 c0,  (hi1, lo1) = M1 c2      (64-bit products split in 32-bit halves,
                                                   M0 = 0xD2511F53, M1 = 0xCD9E8D57)
    c <- (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0).

``philox4x32_10`` exposes the blocks; tests hold them to the published known-answer vectors.

Streams: block j of task b of training step t with seed s has key (s mod 2^32, t mod 2^32)
and counter (j, b, s div 2^32, t div 2^32); for seeds and steps below 2^32 that is key (s, t)
and counter (j, b, 0, 0).  Distinct (s, t, b, j) give distinct (key, counter) pairs for any
s, t < 2^64, b, j < 2^32.  A task's blocks are used in order: the weights first, then the
inputs row by row (x_1, ..., x_N, x_q), each coordinate in order; the values of a block
left over after the last weight (and after the last input) are dropped.

From words to numbers (the draw's precision is the buffer's dtype):

    float64: two words (u, v) give k = (u >> 5) 2^26 + (v >> 6), 53 random bits; a block
             gives two such k (words 0, 1 and 2, 3).
    float32: one word u gives k = u >> 8, 24 random bits; a block gives four.

With m bits (53 or 24) the unit draw is U = (2k + 1) / 2^(m+1), in (0, 1), and the input is

    x = a (2U - 1) = a (2k + 1 - 2^m) / 2^m,

an odd multiple of a 2^-m: uniform on the 2^m midpoints of a grid of (-a, a), exactly
symmetric about 0 (before the product with a and the rounding to the dtype), with variance
a^2 (1 - 4^-m) / 3.  Normals are Box-Muller on a pair (U1, U2) of unit draws:

    z1 = sqrt(-2 ln U1) cos(2 pi U2),   z2 = sqrt(-2 ln U1) sin(2 pi U2),

two exact N(0, 1) draws per pair up to the grid of U (so |z| <= sqrt(2 ln 2^(m+1)): 8.65 in
float64, 5.89 in float32, where N(0, 1) puts 4e-9 of its mass beyond 5.89).  A float64 block
gives one pair (two normals), a float32 block two pairs (four).  The arithmetic after the
integer part is in float64, rounded once to the dtype; ln, cos and sin are not libm's but
series of the kernel's own (numba_lanes ``_log_unit``, ``_cos_turn``: ln u by 2 atanh after
taking out u's power of two; cos and sin of 2 pi U after an exact reduction of U to
[-1/8, 1/8] turn), within a few units in the last place of float64 (2 in the tests; 1 measured for cos and sin),
so that the loop over tasks is vectorised (a libm call per lane is not).  Results are
bit-for-bit the same for any thread count and chunking; across machines they may differ in
the last bit where the compiler fuses multiply-adds differently.  (This is the stream's second
version, "v2" in ``STREAM``: the first took ln, cos and sin from libm, so its float64 weights
differ from these in the last bits; its float32 weights and all inputs are the same.  A
checkpoint of the first is refused on resume, by its stream name.)

Entry points:
    philox4x32_10(counters, keys)                      -> the generator's blocks
    philox_task_batch(seed, step, B, N, d, a, dtype)   -> w (B, d), x (B, N + 1, d)
    tokens_and_targets(w, x)                            -> tokens (B, N + 1, d + 1), targets (B,) of a batch
    philox_sampled_grad(cfg, params, seed, step, B, N, a) -> (half-MSE loss, grads) of that batch
    philox_gradient(cfg, params, seed, B, N, a)        -> the same as a function of (params, step),
                                                          checked once (for a training loop)

Where the code is: the compiled draws live in iclgd.backends.numba_lanes (``philox_block``,
``_draw_block_philox``), next to the numba backend's kernel, because the kernel draws a block
of tasks itself, one task per SIMD lane: ``philox_sampled_grad`` is one pass of that kernel
(numba backend's ``loss_and_grad_on_philox``) that draws, builds the tokens and labels and
computes the gradient without storing the batch; ``philox_task_batch`` runs the same draw code
and stores the batch.  (numba's disk cache checks only the source file of a cached function,
so compiled code that is inlined into a cached kernel is kept in that kernel's file.)  This
module holds the stream's definition, the checks and the plain path from a stored batch to
tokens (``tokens_and_targets``), against which the kernel's own tokens are tested.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from iclgd import limits
from iclgd._checks import finite_float, float_dtype, nonnegative_int, positive_int
from iclgd.backends.numba_backend import loss_and_grad_on_philox
from iclgd.backends.numba_lanes import (
    LANES, PHILOX_MULTIPLIERS, PHILOX_ROUNDS, PHILOX_WEYL, philox_blocks, philox_task_fill,
)
from iclgd.models.families import module_of
from iclgd.models.lsa import LSAConfig

#: The stream's name, as a checkpoint would record it (its state is (seed, t)).
STREAM = ("iclgd.backends.numba_philox v2: Philox4x32-10, key (seed, t) mod 2^32, counter (block, task, (seed, t) div 2^32), "
          "Box-Muller by the kernel's series")

ROUNDS, MULTIPLIERS, WEYL = PHILOX_ROUNDS, PHILOX_MULTIPLIERS, PHILOX_WEYL

_WORD_LIMIT = 2**32  # task indices and block indices are one counter word each
_SEED_LIMIT = 2**64  # seeds and steps fill a key word and a counter word


# --- the generator and a batch ---------------------------------------------------------------------


def philox4x32_10(counters, keys) -> np.ndarray:
    """Philox4x32-10 blocks: counters (n, 4) and keys (n, 2) of 32-bit words -> (n, 4) uint32
    (word 0 first, as in the paper's known-answer tables)."""
    counters, keys = np.atleast_2d(np.asarray(counters)), np.atleast_2d(np.asarray(keys))
    for name, array, width in (("counters", counters, 4), ("keys", keys, 2)):
        if array.ndim != 2 or array.shape[1] != width or array.dtype.kind not in "iu":
            raise ValueError(f"{name} must be integers of shape (n, {width}); got {array.dtype} {array.shape}")
        if array.size and (array.min() < 0 or array.max() >= _WORD_LIMIT):
            raise ValueError(f"{name} must be 32-bit words in [0, 2^32); got values in [{array.min()}, {array.max()}]")
    if counters.shape[0] != keys.shape[0]:
        raise ValueError(f"counters and keys must have as many rows; got {counters.shape[0]} and {keys.shape[0]}")
    out = np.zeros(counters.shape, np.uint32)
    philox_blocks(np.ascontiguousarray(counters, np.uint32), np.ascontiguousarray(keys, np.uint32), out)
    return out


def _stream_args(seed, step, batch_size, n_context, x_scale):
    """The stream's arguments checked: (seed, step as uint64, batch_size, n_context, x_scale)."""
    seed = nonnegative_int("seed", seed, maximum=_SEED_LIMIT - 1)
    step = nonnegative_int("step", step, maximum=_SEED_LIMIT - 1)
    batch_size = positive_int("batch_size", batch_size, maximum=_WORD_LIMIT - 1)
    n_context = positive_int("n_context", n_context)
    x_scale = finite_float("x_scale", x_scale, positive=True)
    return np.uint64(seed), np.uint64(step), batch_size, n_context, x_scale


def _check_blocks(n_context: int, d: int) -> None:
    """A task's blocks are counted in one counter word (at most one block per two draws)."""
    if d + (n_context + 1) * d >= _WORD_LIMIT:
        raise ValueError(f"a task must draw fewer than 2^32 numbers; got d + (N + 1) d = {d + (n_context + 1) * d} "
                         f"(N = {n_context}, d = {d})")


def _scratch_bytes(n_context: int, d: int, n_layers: int, n_heads: int, itemsize: int) -> int:
    """Upper estimate of the lane kernel's scratch: per thread and lane, the tokens (N + 1) x D
    and at most 4 K H + 3 K + 6 D x D matrices and 16 vectors (numba_lanes._lane_pass)."""
    dim = d + 1
    per_lane = (n_context + 1) * dim + (4 * n_layers * n_heads + 3 * n_layers + 6) * dim * dim + 16 * dim
    return numba.config.NUMBA_NUM_THREADS * LANES * per_lane * itemsize


def philox_task_batch(seed: int, step: int, batch_size: int, n_context: int, d: int, x_scale: float,
                      dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step`` of the Philox stream of ``seed``: weights (B, d) ~ N(0, I_d) and inputs
    (B, N + 1, d) ~ U(-x_scale, x_scale), in ``dtype``, task b from key (seed, step) and counter
    (block, b) (module docstring); drawn in parallel over tasks, the same for any thread count."""
    seed, step, batch_size, n_context, x_scale = _stream_args(seed, step, batch_size, n_context, x_scale)
    d = positive_int("d", d)
    dtype = float_dtype("dtype", dtype)
    _check_blocks(n_context, d)
    limits.check_bytes(f"batch_size = {batch_size} (with n_context = {n_context}, d = {d})",
                       batch_size * (n_context + 2) * d * dtype.itemsize + _scratch_bytes(n_context, d, 0, 0, dtype.itemsize),
                       f"drawing {batch_size} tasks of d = {d} weights and (N + 1) x d = {n_context + 1} x {d} inputs")
    weights = np.empty((batch_size, d), dtype)
    inputs = np.empty((batch_size, n_context + 1, d), dtype)
    philox_task_fill(np.array([seed, step, 0, 0, 0], np.uint64), x_scale, weights, inputs, numba.config.NUMBA_NUM_THREADS)
    return weights, inputs


# --- the gradient on a batch of the stream ---------------------------------------------------------


@njit(parallel=True, cache=True)
def _write_tokens(weights, inputs, tokens, targets):
    for b in prange(inputs.shape[0]):
        n_tokens, d = inputs.shape[1], inputs.shape[2]
        for row in range(n_tokens):
            label = 0.0  # float64: summed over k = 0 .. d - 1, rounded once to the dtype
            for k in range(d):
                tokens[b, row, k] = inputs[b, row, k]
                label += np.float64(inputs[b, row, k]) * np.float64(weights[b, k])
            if row < n_tokens - 1:
                tokens[b, row, d] = label
            else:
                tokens[b, row, d] = 0.0
                targets[b] = label


def tokens_and_targets(weights: np.ndarray, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tasks as the model reads them: tokens (B, N + 1, d + 1), rows (x_i, w.x_i) and then
    (x_q, 0), and targets w.x_q (B,), in the dtype of ``inputs``; each label is summed in float64
    over k = 0 .. d - 1 and rounded once to that dtype (a parallel numba loop over tasks)."""
    batch_size, n_tokens, d = inputs.shape
    tokens = np.empty((batch_size, n_tokens, d + 1), inputs.dtype)
    targets = np.empty(batch_size, inputs.dtype)
    _write_tokens(weights, inputs, tokens, targets)
    return tokens, targets


def philox_sampled_grad(cfg: LSAConfig, params: dict, seed: int, step: int, batch_size: int, n_context: int,
                        x_scale: float) -> tuple[float, dict[str, np.ndarray]]:
    """(half-MSE loss, gradient) of an LSA on batch ``step`` of the Philox stream of ``seed``:
    the ``batch_size`` noise-free tasks w ~ N(0, I_d), x ~ U(-x_scale, x_scale)^d, y = w.x of
    ``philox_task_batch(seed, step, batch_size, n_context, cfg.d, x_scale, cfg.dtype)``, drawn
    inside the numba backend's kernel, which builds the tokens as ``tokens_and_targets`` does
    (labels summed in float64, rounded once) and computes the gradient in the same pass.
    Returns what ``NumbaBackend._sample_loss_and_grad`` returns: (float loss, dict like params)."""
    if not isinstance(cfg, LSAConfig):
        raise ValueError(f"cfg must be an iclgd.LSAConfig; got {type(cfg).__name__}")
    params = module_of(cfg).check_params(cfg, params)  # in cfg.dtype
    step = nonnegative_int("step", step, maximum=_SEED_LIMIT - 1)
    return philox_gradient(cfg, params, seed, batch_size, n_context, x_scale)(params, step)


def philox_gradient(cfg: LSAConfig, params: dict, seed: int, batch_size: int, n_context: int, x_scale: float):
    """``gradient(params, step) -> philox_sampled_grad(cfg, params, seed, step, batch_size,
    n_context, x_scale)``, everything checked here, once: for a training loop, whose params keep
    the names, shapes and dtype (cfg.dtype) of the ``params`` checked here and whose steps are in
    [0, 2^64)."""
    if not isinstance(cfg, LSAConfig):
        raise ValueError(f"cfg must be an iclgd.LSAConfig; got {type(cfg).__name__}")
    n_context = positive_int("n_context", n_context)
    if cfg.n_context is not None and cfg.n_context != n_context:
        raise ValueError(f"n_context must match cfg.n_context = {cfg.n_context}; got {n_context}")
    module_of(cfg).check_params(cfg, params)
    wrong = sorted(name for name, value in params.items()
                   if not (isinstance(value, np.ndarray) and value.dtype == np.dtype(cfg.dtype)))
    if wrong:
        given = params[wrong[0]]
        kind = given.dtype if isinstance(given, np.ndarray) else type(given).__name__
        raise ValueError(f"params must be NumPy arrays in cfg.dtype = {cfg.dtype} (a training loop's own); "
                         f"got {kind} for {wrong}")
    seed, _, batch_size, n_context, x_scale = _stream_args(seed, 0, batch_size, n_context, x_scale)
    _check_blocks(n_context, cfg.d)
    itemsize = np.dtype(cfg.dtype).itemsize
    limits.check_bytes(f"batch_size = {batch_size} (with n_context = {n_context}, d = {cfg.d})",
                       3 * batch_size * itemsize + _scratch_bytes(n_context, cfg.d, cfg.n_layers, cfg.n_heads, itemsize),
                       f"the predictions, targets and errors of {batch_size} tasks and the kernel's scratch")
    seed = int(seed)

    def gradient(params: dict, step: int) -> tuple[float, dict[str, np.ndarray]]:
        return loss_and_grad_on_philox(cfg, params, seed, step, batch_size, n_context, x_scale)

    return gradient
