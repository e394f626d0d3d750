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
integer part is in float64, rounded once to the dtype.  Results are bit-for-bit the same for
any thread count and chunking; across machines only libm's log, cos and sin may differ in the
last bit.

Entry points:
    philox_task_batch(seed, step, B, N, d, a, dtype)   -> w (B, d), x (B, N + 1, d), prange over tasks
    draw_task(seed, step, b, w_row, x_task, a)         -> fills one task (inlined into kernels)
    tokens_and_targets(w, x)                            -> tokens (B, N + 1, d + 1), targets (B,) of a batch
    philox_sampled_grad(cfg, params, seed, step, B, N, a) -> (half-MSE loss, grads) of that batch, on the
                                                          numba backend's kernel

The gradient: ``philox_sampled_grad`` draws the batch with the parallel kernel above, builds
tokens and labels from it (labels summed in float64 and rounded once to the dtype) and hands
them to the numba backend's lane kernel (iclgd.backends.numba_lanes), the kernel every other
numba gradient runs on; so this module adds no gradient code of its own.  (It used to fuse the
draws into a per-task gradient pass, one loop from draw to gradient; that pass cost about 22 s
of compilation for each dtype and, at three layers, ten times the lane kernel's time a step.)
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from iclgd import limits
from iclgd._checks import finite_float, float_dtype, nonnegative_int, positive_int
from iclgd.backends.numba_backend import loss_and_grad_on_tokens
from iclgd.models.families import module_of
from iclgd.models.lsa import LSAConfig

#: The stream's name, as a checkpoint would record it (its state is (seed, t)).
STREAM = "iclgd.backends.numba_philox: Philox4x32-10, key (seed, t) mod 2^32, counter (block, task, (seed, t) div 2^32)"

ROUNDS = 10
MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
WEYL = (0x9E3779B9, 0xBB67AE85)

_M0, _M1 = np.uint64(MULTIPLIERS[0]), np.uint64(MULTIPLIERS[1])
_W0, _W1 = np.uint64(WEYL[0]), np.uint64(WEYL[1])
_LOW = np.uint64(0xFFFFFFFF)
_HALF = np.uint64(32)
_SHIFT_HI, _SHIFT_LO, _SHIFT_24, _PLACE = np.uint64(5), np.uint64(6), np.uint64(8), np.uint64(26)
_WORD_LIMIT = 2**32  # task indices and block indices are one counter word each
_SEED_LIMIT = 2**64  # seeds and steps fill a key word and a counter word
_TWO_PI = 2.0 * np.pi


# --- the generator -------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _block(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1), uint32 words in and out.
    (Written on 32-bit words, widened only for the products, so that LLVM vectorises loops over
    counters: the 32 x 32 -> 64-bit products are one SIMD instruction.)"""
    for _ in range(ROUNDS):
        p0 = np.uint64(c0) * _M0
        p1 = np.uint64(c2) * _M1
        c0, c1, c2, c3 = (np.uint32(np.uint32(p1 >> _HALF) ^ c1 ^ k0), np.uint32(p1),
                          np.uint32(np.uint32(p0 >> _HALF) ^ c3 ^ k1), np.uint32(p0))
        k0 = np.uint32(k0 + _W0)  # mod 2^32
        k1 = np.uint32(k1 + _W1)
    return c0, c1, c2, c3


@njit(cache=True)
def _blocks(counters, keys, out):
    for i in range(counters.shape[0]):
        c, k = counters[i], keys[i]
        words = _block(c[0], c[1], c[2], c[3], k[0], k[1])
        for j in range(4):
            out[i, j] = words[j]


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
    _blocks(np.ascontiguousarray(counters, np.uint32), np.ascontiguousarray(keys, np.uint32), out)
    return out


# --- words to numbers ---------------------------------------------------------------------------

_P53, _INV_P53, _INV_P54 = 2**53, 2.0**-53, 2.0**-54
_P24, _INV_P24, _INV_P25 = 2**24, 2.0**-24, 2.0**-25


@njit(cache=True, inline="always")
def _bits53(hi, lo):
    """53 random bits of two words: (hi >> 5) 2^26 + (lo >> 6), an int64 in [0, 2^53)."""
    return np.int64((np.uint64(hi) >> _SHIFT_HI) << _PLACE | (np.uint64(lo) >> _SHIFT_LO))


@njit(cache=True, inline="always")
def _bits24(word):
    """24 random bits of one word: word >> 8, an int64 in [0, 2^24)."""
    return np.int64(np.uint64(word) >> _SHIFT_24)


@njit(cache=True, inline="always")
def _unit(k, scale):
    """U = (2k + 1) / 2^(m+1) in (0, 1), from m random bits k, scale = 2^-(m+1)."""
    return np.float64(2 * k + 1) * scale


@njit(cache=True, inline="always")
def _symmetric(k, m_pow, inv_m_pow, a):
    """x = a (2k + 1 - 2^m) / 2^m in (-a, a), from m random bits k (m_pow = 2^m)."""
    return (np.float64(2 * k + 1 - m_pow) * inv_m_pow) * a


@njit(cache=True, inline="always")
def _box_muller(u1, u2):
    """Two independent N(0, 1) draws from two unit draws in (0, 1)."""
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = _TWO_PI * u2
    return radius * np.cos(angle), radius * np.sin(angle)


@njit(cache=True, inline="always")
def _fill_normals53(out, c1, c2, c3, k0, k1):
    """out (n,) ~ N(0, 1), two a block (53-bit unit draws) from block 0 on; returns the number
    of blocks used."""
    n = out.shape[0]
    n_blocks = (n + 1) // 2
    for j in range(n_blocks):
        w0, w1, w2, w3 = _block(np.uint32(j), c1, c2, c3, k0, k1)
        z0, z1 = _box_muller(_unit(_bits53(w0, w1), _INV_P54), _unit(_bits53(w2, w3), _INV_P54))
        out[2 * j] = z0
        if 2 * j + 1 < n:
            out[2 * j + 1] = z1
    return n_blocks


@njit(cache=True, inline="always")
def _fill_normals24(out, c1, c2, c3, k0, k1):
    """out (n,) ~ N(0, 1), four a block (two pairs of 24-bit unit draws) from block 0 on;
    returns the number of blocks used."""
    n = out.shape[0]
    n_blocks = (n + 3) // 4
    for j in range(n_blocks):
        w0, w1, w2, w3 = _block(np.uint32(j), c1, c2, c3, k0, k1)
        z0, z1 = _box_muller(_unit(_bits24(w0), _INV_P25), _unit(_bits24(w1), _INV_P25))
        z2, z3 = _box_muller(_unit(_bits24(w2), _INV_P25), _unit(_bits24(w3), _INV_P25))
        values = (z0, z1, z2, z3)
        for lane in range(min(4, n - 4 * j)):
            out[4 * j + lane] = values[lane]
    return n_blocks


@njit(cache=True, inline="always")
def _fill_uniforms53(out, first, c1, c2, c3, k0, k1, a):
    """out (n,) ~ U(-a, a), 53-bit, two a block from block ``first`` on (a loop LLVM vectorises)."""
    n = out.shape[0]
    for j in range(n // 2):
        w0, w1, w2, w3 = _block(np.uint32(first + j), c1, c2, c3, k0, k1)
        out[2 * j] = _symmetric(_bits53(w0, w1), _P53, _INV_P53, a)
        out[2 * j + 1] = _symmetric(_bits53(w2, w3), _P53, _INV_P53, a)
    if n % 2:
        w0, w1, w2, w3 = _block(np.uint32(first + n // 2), c1, c2, c3, k0, k1)
        out[n - 1] = _symmetric(_bits53(w0, w1), _P53, _INV_P53, a)


@njit(cache=True, inline="always")
def _fill_uniforms24(out, first, c1, c2, c3, k0, k1, a):
    """out (n,) ~ U(-a, a), 24-bit, four a block from block ``first`` on."""
    n = out.shape[0]
    for j in range(n // 4):
        w0, w1, w2, w3 = _block(np.uint32(first + j), c1, c2, c3, k0, k1)
        out[4 * j] = _symmetric(_bits24(w0), _P24, _INV_P24, a)
        out[4 * j + 1] = _symmetric(_bits24(w1), _P24, _INV_P24, a)
        out[4 * j + 2] = _symmetric(_bits24(w2), _P24, _INV_P24, a)
        out[4 * j + 3] = _symmetric(_bits24(w3), _P24, _INV_P24, a)
    rest = n % 4
    if rest:
        words = _block(np.uint32(first + n // 4), c1, c2, c3, k0, k1)
        for lane in range(rest):
            out[n - rest + lane] = _symmetric(_bits24(words[lane]), _P24, _INV_P24, a)


def _fill_task(weights_row, flat_inputs, c1, c2, c3, k0, k1, x_scale):
    """Stand-in for compiled code: numba types each call by the buffers' dtype (the overload
    below), so a kernel compiles the 24-bit or the 53-bit draws, never both."""
    raise NotImplementedError("_fill_task runs inside numba-compiled code only")


@overload(_fill_task, inline="always")
def _fill_task_typed(weights_row, flat_inputs, c1, c2, c3, k0, k1, x_scale):
    if weights_row.dtype == types.float32:
        def fill_24_bit(weights_row, flat_inputs, c1, c2, c3, k0, k1, x_scale):
            first = _fill_normals24(weights_row, c1, c2, c3, k0, k1)
            _fill_uniforms24(flat_inputs, first, c1, c2, c3, k0, k1, x_scale)
        return fill_24_bit

    def fill_53_bit(weights_row, flat_inputs, c1, c2, c3, k0, k1, x_scale):
        first = _fill_normals53(weights_row, c1, c2, c3, k0, k1)
        _fill_uniforms53(flat_inputs, first, c1, c2, c3, k0, k1, x_scale)
    return fill_53_bit


# --- one task, a batch ----------------------------------------------------------------------------


@njit(inline="always", cache=True)
def draw_task(seed, step, b, weights_row, inputs_task, x_scale):
    """Fill task ``b`` of step ``step`` of the stream of ``seed``: weights_row (d,) ~ N(0, I_d),
    inputs_task (N + 1, d) ~ U(-x_scale, x_scale), in the buffers' dtype (float32 buffers use
    24-bit draws, other float buffers 53-bit; see the module docstring).

    For compiled callers: no checks here (seed, step in [0, 2^64), b in [0, 2^32), x_scale > 0,
    weights_row and inputs_task of one float dtype, inputs_task C-contiguous)."""
    s, t = np.uint64(seed), np.uint64(step)
    k0, k1 = np.uint32(s & _LOW), np.uint32(t & _LOW)
    c1, c2, c3 = np.uint32(b), np.uint32(s >> _HALF), np.uint32(t >> _HALF)
    flat = inputs_task.reshape(inputs_task.size)  # a view: row by row, coordinate by coordinate
    _fill_task(weights_row, flat, c1, c2, c3, k0, k1, x_scale)


@njit(parallel=True, cache=True)
def _task_batch(seed, step, weights, inputs, x_scale):
    for b in prange(weights.shape[0]):
        draw_task(seed, step, b, weights[b], inputs[b], x_scale)


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
                       batch_size * (n_context + 2) * d * dtype.itemsize,
                       f"drawing {batch_size} tasks of d = {d} weights and (N + 1) x d = {n_context + 1} x {d} inputs")
    weights = np.empty((batch_size, d), dtype)
    inputs = np.empty((batch_size, n_context + 1, d), dtype)
    _task_batch(seed, step, weights, inputs, x_scale)
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
    ``philox_task_batch(seed, step, batch_size, n_context, cfg.d, x_scale, cfg.dtype)``, as tokens
    (``tokens_and_targets``) through the numba backend's gradient kernel.
    Returns what ``NumbaBackend._sample_loss_and_grad`` returns: (float loss, dict like params)."""
    if not isinstance(cfg, LSAConfig):
        raise ValueError(f"cfg must be an iclgd.LSAConfig; got {type(cfg).__name__}")
    n_context = positive_int("n_context", n_context)
    if cfg.n_context is not None and cfg.n_context != n_context:
        raise ValueError(f"n_context must match cfg.n_context = {cfg.n_context}; got {n_context}")
    params = module_of(cfg).check_params(cfg, params)
    batch_size = positive_int("batch_size", batch_size, maximum=_WORD_LIMIT - 1)
    n_tokens, itemsize = n_context + 1, np.dtype(cfg.dtype).itemsize
    limits.check_bytes(f"batch_size = {batch_size} (with n_context = {n_context}, d = {cfg.d})",
                       batch_size * n_tokens * (cfg.d * (8 + itemsize) + (cfg.d + 1) * itemsize + 8),
                       f"the tokens of {batch_size} tasks of (N + 1) x (d + 1) = {n_tokens} x {cfg.d + 1} numbers "
                       "and their float64 labels")
    weights, inputs = philox_task_batch(seed, step, batch_size, n_context, cfg.d, x_scale, cfg.dtype)
    tokens, targets = tokens_and_targets(weights, inputs)
    return loss_and_grad_on_tokens(cfg, params, tokens, targets)
