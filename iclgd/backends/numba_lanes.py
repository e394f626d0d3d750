r"""The numba backend's kernel: every task's K-layer forward and backward on D x D matrices, with
the tasks of a block as SIMD lanes, and the training draws made inside it (NumPy's PCG64
uniforms, bit for bit, or whole tasks of the Philox stream of iclgd.backends.numba_philox).

The algebra (iclgd/backends/numba_backend.py's docstring has the derivation).  A layer
updates every token by ``E' = E M`` with ``M = I + Y``, ``Y = sum_h X_h R_h``, ``X_h = P_h G``,
``P_h = W_q[h] W_k[h]^T``, ``R_h = W_v[h] W_o[h]`` and the Gram matrix ``G = C^T C`` of the
attended rows C; the next layer's Gram matrix is ``G' = M^T G M``.  Per task, for K layers:

    forward   G_0 = C_0^T C_0 (lower triangle, mirrored);  a_0 = the query row;
              layer l < K - 1:  X_lh = P_h G_l,  Y_l = sum_h X_lh R_h,  W_l = G_l + G_l Y_l,
                                G_{l+1} = W_l + Y_l^T W_l (symmetric: lower triangle),
                                a_{l+1} = a_l + a_l Y_l;
              last layer:       u_h = a P_h,  s_h = u_h G,  yhat = -(a[d] + sum_h s_h . R_h[:, d])
    backward  (c = dL/dyhat; abar = dL/da, Gs = dL/dG + (dL/dG)^T, both of the layer's output)
              last layer:  sbar_h = -c R_h[:, d],  ubar_h = G sbar_h,  dR_h[:, d] += -c s_h,
                           dP_h += a^T ubar_h,  abar = -c e_d + sum_h P_h ubar_h,
                           Gs = sum_h (u_h^T sbar_h + sbar_h^T u_h)
              layer l:     Mbar = W_l Gs + a_l^T abar,  Q_h = Mbar R_h^T,
                           dP_h += Q_h G_l,  dR_h += X_lh^T Mbar,
                           and where dL/dE_l is needed (l > 0, or the sensitivity):
                           T = Gs + Y_l Gs,  Z = sum_h P_h^T Q_h,
                           Gs <- T + T Y_l^T + Z + Z^T (lower triangle),  abar <- abar + Y_l abar
              input:       d yhat / d e_q = abar + Gs e_q (the second term when the query is attended)

Only the y column of the last layer's R enters (the read-out), the identity part of M is
never multiplied (``+ G``, ``+ a``, ``+ Gs`` instead), the symmetric G' and Gs are computed
as lower triangles, and the first layer propagates nothing to its input unless the
sensitivity is asked for.  Layer K - 2 (K > 1) sees the last layer's Gs, of rank 2H; where
that is cheaper (4 H < D) it is kept as its vectors and G_{K-1}, W_{K-2} are never formed
(M = M_{K-2}, G = G_{K-2}):

    s_h = ((u_h M^T) G) M,        ubar_h = M^T (G (M sbar_h)),
    Mbar = sum_h (G M u_h) sbar_h^T + (G M sbar_h) u_h^T + a^T abar,
    M Gs M^T = sum_h (M u_h)(M sbar_h)^T + (M sbar_h)(M u_h)^T,

every vector there computed once, in the forward or in the last layer's backward.
``step_flops`` (numba_backend) counts the result.

Layout ("tasks as SIMD lanes"): the batch is cut into N_CHUNKS fixed chunks (not the thread
count); a chunk runs in blocks of LANES tasks, and every per-task D x D matrix of a block is
stored as (D, D, LANES), the task index innermost, so that every product is a loop of
multiply-adds over LANES contiguous tasks, which LLVM turns into SIMD instructions (a block
with fewer tasks is padded with zero tasks, whose contributions are exactly zero).  The
weights enter as scalars broadcast over the lanes.  Each chunk keeps its gradient per lane,
adds its blocks in order, then sums its lanes in a fixed order; the chunks are added in
order by the caller: results do not depend on the number of threads.

Why this shape of code (numba 0.68, LLVM, AMD Zen 4):

* LANES is a compile-time constant, and large enough (64) that LLVM vectorises the lane loop;
  at 16 or 32 it unrolls it into scalar code first (measured: 3-6 GFLOP/s instead of 25-45).
* Every array the parallel loop touches is allocated outside it (scratch with a row per
  thread, ``numba.get_thread_id()``), so numba passes each one to the loop's compiled body as
  an argument of its own and, finding no aliases among them, marks them ``noalias``; LLVM then
  keeps the sums of the products in registers (i, j, k loop order) with no run-time overlap
  checks: measured 1.65x on the whole pass.  The body is one call of ``_chunk_pass``, which
  LLVM inlines (``forceinline``) and numba compiles once, on its own (inlined into the loop at
  numba's level it cost numba's parallel-loop passes two minutes a dtype); the helpers are
  inlined into ``_chunk_pass`` (``inline="always"``) and index the arrays in full, never
  slicing them into views.  Anything numba counts as an alias in the loop's body would drop
  ``noalias`` for the whole kernel: a view, a bool or tuple variable assigned there (hence the
  int flags of ``_plan``, and helpers with one exit and no tuple results built in branches).
* ``error_model="numpy"`` on the kernel: numba's default model tests every float division for
  a zero denominator (to raise ZeroDivisionError), a branch that keeps LLVM from vectorising a
  loop with a division in it (the Philox normals' ln); no division in the kernel has a zero
  denominator.
* No np.zeros or array expressions in the kernel: each would be a parallel loop of its own
  (a thread launch each); the caller allocates the outputs and adds the chunks.
* One kernel serves every mode (predict, gradient, sensitivity, the layer maps of
  ``forward``, the fused sampled training passes of both streams) and both dtypes (tokens
  come in the weights' dtype, draws in float64, rounded on load), so there are two compiled
  specialisations (float32, float64) in all (cold compilation: ``python -m
  iclgd.backends.numba_warmup`` with an empty NUMBA_CACHE_DIR, README "Backends and speed").
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

N_CHUNKS = 32  # fixed partition of the batch: results are the same on any number of threads
LANES = 64  # tasks per SIMD block (a compile-time constant: see the module docstring)
FAST = {"reassoc", "contract"}  # vectorised sums and fused multiply-adds; NaN and inf still propagate

MODE_PREDICT, MODE_GRAD, MODE_SENSITIVITY, MODE_MAPS = 0, 1, 2, 3
#: where a block's tasks come from: given tokens; drawn here with weights w given and inputs x from
#: NumPy's PCG64; or drawn here, w and x, from the Philox stream of iclgd.backends.numba_philox
LOAD_TOKENS, LOAD_PCG64, LOAD_PHILOX = 0, 1, 2

# PCG64 (XSL-RR 128/64, NumPy's default bit generator): the 128-bit LCG multiplier, in 64-bit halves
_PCG_MULT_HI, _PCG_MULT_LO = np.uint64(0x2360ED051FC65DA4), np.uint64(0x4385DF649FCCF645)
_PCG_MULT_LO0, _PCG_MULT_LO1 = np.uint64(0x9FCCF645), np.uint64(0x4385DF64)  # its low half's 32-bit limbs
_ZERO, _ONE, _ELEVEN, _THIRTY_TWO, _FIFTY_EIGHT, _SIXTY_THREE = (np.uint64(v) for v in (0, 1, 11, 32, 58, 63))
_LOW_32 = np.uint64(0xFFFFFFFF)
_TWO_TO_MINUS_53 = 1.0 / 9007199254740992.0

# Philox4x32-10 (the stream of iclgd.backends.numba_philox, whose docstring defines it)
PHILOX_ROUNDS = 10
PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
_PH_M0, _PH_M1 = np.uint64(PHILOX_MULTIPLIERS[0]), np.uint64(PHILOX_MULTIPLIERS[1])
_PH_W0, _PH_W1 = np.uint64(PHILOX_WEYL[0]), np.uint64(PHILOX_WEYL[1])
_FIVE, _SIX, _EIGHT, _TWENTY_SIX = (np.uint64(v) for v in (5, 6, 8, 26))
_TWO_PI = 2.0 * np.pi
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # ln 2 = hi + lo, hi with 21 zero low bits
_SQRT2 = 1.4142135623730951
_MANTISSA, _EXPONENT_OF_ONE, _FIFTY_TWO = np.uint64(0x000FFFFFFFFFFFFF), np.uint64(0x3FF0000000000000), np.uint64(52)


# --- products on per-lane matrices: arr[tid, slot, i, j, lane] -------------------------------------
# ``tid`` is the thread's scratch row; every helper is inlined into _chunk_pass.


@njit(cache=True, fastmath=FAST, inline="always")
def _ab(out, o, a, sa, b, sb, tid, accumulate):
    """out[o] (+)= a[sa] b[sb] in every lane."""
    n, m, kk = out.shape[2], out.shape[3], a.shape[3]
    for i in range(n):
        for j in range(m):
            if not accumulate:
                for t in range(LANES):
                    out[tid, o, i, j, t] = 0.0
            for k in range(kk):
                for t in range(LANES):
                    out[tid, o, i, j, t] += a[tid, sa, i, k, t] * b[tid, sb, k, j, t]


@njit(cache=True, fastmath=FAST, inline="always")
def _ab_from(out, o, base, sbase, a, sa, b, sb, tid):
    """out[o] = base[sbase] + a[sa] b[sb] in every lane."""
    n, m, kk = out.shape[2], out.shape[3], a.shape[3]
    for i in range(n):
        for j in range(m):
            for t in range(LANES):
                out[tid, o, i, j, t] = base[tid, sbase, i, j, t]
            for k in range(kk):
                for t in range(LANES):
                    out[tid, o, i, j, t] += a[tid, sa, i, k, t] * b[tid, sb, k, j, t]


@njit(cache=True, fastmath=FAST, inline="always")
def _atb_acc(out, o, a, sa, b, sb, tid):
    """out[o] += a[sa]^T b[sb] in every lane."""
    n, m, kk = out.shape[2], out.shape[3], a.shape[2]
    for i in range(n):
        for j in range(m):
            for k in range(kk):
                for t in range(LANES):
                    out[tid, o, i, j, t] += a[tid, sa, k, i, t] * b[tid, sb, k, j, t]


@njit(cache=True, fastmath=FAST, inline="always")
def _shared_left(out, o, p, slot, h, transpose, b, sb, tid, accumulate):
    """out[o] (+)= P b[sb] (P = p[slot, h], or its transpose), P shared by the lanes.
    (Loop order i, j, k: the sum over k stays in registers.)"""
    n, m, kk = out.shape[2], out.shape[3], b.shape[2]
    for i in range(n):
        for j in range(m):
            if not accumulate:
                for t in range(LANES):
                    out[tid, o, i, j, t] = 0.0
            for k in range(kk):
                coef = p[slot, h, k, i] if transpose else p[slot, h, i, k]
                for t in range(LANES):
                    out[tid, o, i, j, t] += coef * b[tid, sb, k, j, t]


@njit(cache=True, fastmath=FAST, inline="always")
def _shared_right(out, o, a, sa, r, slot, h, transpose, tid, accumulate):
    """out[o] (+)= a[sa] R (R = r[slot, h], or its transpose), R shared by the lanes."""
    n, m, kk = out.shape[2], out.shape[3], a.shape[3]
    for i in range(n):
        for j in range(m):
            if not accumulate:
                for t in range(LANES):
                    out[tid, o, i, j, t] = 0.0
            for k in range(kk):
                coef = r[slot, h, j, k] if transpose else r[slot, h, k, j]
                for t in range(LANES):
                    out[tid, o, i, j, t] += a[tid, sa, i, k, t] * coef


@njit(cache=True, fastmath=FAST, inline="always")
def _next_gram(out, o, w, sw, y, sy, tid):
    """out[o] = W + Y^T W (symmetric: the lower triangle, mirrored), W = w[sw], Y = y[sy]."""
    n, kk = out.shape[2], y.shape[2]
    for i in range(n):
        for j in range(i + 1):
            for t in range(LANES):
                out[tid, o, i, j, t] = w[tid, sw, i, j, t]
            for k in range(kk):
                for t in range(LANES):
                    out[tid, o, i, j, t] += y[tid, sy, k, i, t] * w[tid, sw, k, j, t]
    _mirror(out, o, tid)


@njit(cache=True, fastmath=FAST, inline="always")
def _next_gram_bar(out, o, tm, st, y, sy, z, sz, tid):
    """out[o] = T + T Y^T + Z + Z^T (symmetric: the lower triangle, mirrored)."""
    n, kk = out.shape[2], y.shape[3]
    for i in range(n):
        for j in range(i + 1):
            for t in range(LANES):
                out[tid, o, i, j, t] = tm[tid, st, i, j, t] + z[tid, sz, i, j, t] + z[tid, sz, j, i, t]
            for k in range(kk):
                for t in range(LANES):
                    out[tid, o, i, j, t] += tm[tid, st, i, k, t] * y[tid, sy, j, k, t]
    _mirror(out, o, tid)


@njit(cache=True, fastmath=FAST, inline="always")
def _zero(out, o, tid):
    """out[o] = 0."""
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            for t in range(LANES):
                out[tid, o, i, j, t] = 0.0


@njit(cache=True, fastmath=FAST, inline="always")
def _add_symmetric_part(out, o, z, sz, tid):
    """out[o] += z[sz] + z[sz]^T."""
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            for t in range(LANES):
                out[tid, o, i, j, t] += z[tid, sz, i, j, t] + z[tid, sz, j, i, t]


@njit(cache=True, fastmath=FAST, inline="always")
def _mirror(out, o, tid):
    """Copy the lower triangle of out[o] onto its upper triangle."""
    for i in range(out.shape[2]):
        for j in range(i):
            for t in range(LANES):
                out[tid, o, j, i, t] = out[tid, o, i, j, t]


# --- products with per-lane vectors: vec[tid, slot, i, lane] ----------------------------------------


@njit(cache=True, fastmath=FAST, inline="always")
def _vec_mat(out, o, v, sv, m, sm, tid, transpose):
    """out[o] = v[sv] M (row vector times M = m[sm], or M^T) in every lane."""
    n, kk = out.shape[2], v.shape[2]
    for j in range(n):
        for t in range(LANES):
            out[tid, o, j, t] = 0.0
        for k in range(kk):
            for t in range(LANES):
                out[tid, o, j, t] += v[tid, sv, k, t] * (m[tid, sm, j, k, t] if transpose else m[tid, sm, k, j, t])


@njit(cache=True, fastmath=FAST, inline="always")
def _vec_plus_mat_vec(out, o, v, sv, m, sm, tid):
    """out[o] = v + M v (M = m[sm]) in every lane: (I + M) v."""
    n, kk = out.shape[2], v.shape[2]
    for i in range(n):
        for t in range(LANES):
            out[tid, o, i, t] = v[tid, sv, i, t]
        for k in range(kk):
            for t in range(LANES):
                out[tid, o, i, t] += m[tid, sm, i, k, t] * v[tid, sv, k, t]


@njit(cache=True, fastmath=FAST, inline="always")
def _vec_plus_vec_mat(out, o, v, sv, m, sm, tid):
    """out[o] = v + v M (row vector, M = m[sm]) in every lane: v (I + M)."""
    n, kk = out.shape[2], v.shape[2]
    for j in range(n):
        for t in range(LANES):
            out[tid, o, j, t] = v[tid, sv, j, t]
        for k in range(kk):
            for t in range(LANES):
                out[tid, o, j, t] += v[tid, sv, k, t] * m[tid, sm, k, j, t]


@njit(cache=True, fastmath=FAST, inline="always")
def _vec_shared(out, o, v, sv, p, slot, h, transpose, tid, accumulate):
    """out[o] (+)= v[sv] P (row vector times P = p[slot, h], or P^T), P shared by the lanes."""
    n, kk = out.shape[2], v.shape[2]
    for j in range(n):
        if not accumulate:
            for t in range(LANES):
                out[tid, o, j, t] = 0.0
        for k in range(kk):
            coef = p[slot, h, j, k] if transpose else p[slot, h, k, j]
            for t in range(LANES):
                out[tid, o, j, t] += v[tid, sv, k, t] * coef


@njit(cache=True, fastmath=FAST, inline="always")
def _add_outer(out, o, u, su, v, sv, tid, both):
    """out[o] += u v^T (and + v u^T when ``both``) in every lane."""
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            for t in range(LANES):
                out[tid, o, i, j, t] += u[tid, su, i, t] * v[tid, sv, j, t]
                if both:
                    out[tid, o, i, j, t] += v[tid, sv, i, t] * u[tid, su, j, t]


# --- NumPy's PCG64 stream, drawn inside the kernel ------------------------------------------------
# A Generator's ``uniform(low, high, size)`` on a PCG64 bit generator is, draw by draw (C order):
#     s <- s M + c  (mod 2^128),   out = rotr64(hi(s) xor lo(s), hi(s) >> 58),
#     U = (out >> 11) 2^-53,       x = low + (high - low) U
# (M the multiplier above, c the stream's increment).  Jumping ahead by n draws is the same LCG
# composed n times, found in O(log n) steps (Brown 1994).  A chunk jumps to its first task and
# draws its tasks' inputs in order: the numbers of ``rng.uniform`` exactly, in parallel.


@intrinsic
def _mul_wide(typingctx, a, b):
    """(high, low) 64-bit halves of the 128-bit product of two uint64 (one multiply instruction)."""
    def codegen(context, builder, signature, args):
        wide, word = ir.IntType(128), ir.IntType(64)
        product = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        high = builder.trunc(builder.lshr(product, ir.Constant(wide, 64)), word)
        return context.make_tuple(builder, signature.return_type, (high, builder.trunc(product, word)))
    return types.UniTuple(types.uint64, 2)(types.uint64, types.uint64), codegen


@njit(cache=True, inline="always")
def _mul128(a_hi, a_lo, b_hi, b_lo):
    """(a b) mod 2^128 on (high, low) uint64 halves."""
    high, low = _mul_wide(a_lo, b_lo)
    return high + a_hi * b_lo + a_lo * b_hi, low


@njit(cache=True, inline="always")
def _add128(a_hi, a_lo, b_hi, b_lo):
    """(a + b) mod 2^128 on (high, low) uint64 halves."""
    lo = a_lo + b_lo
    return a_hi + b_hi + (_ONE if lo < a_lo else _ZERO), lo


@njit(cache=True, inline="always")
def _pcg64_jump(inc_hi, inc_lo, n_steps):
    """(A_hi, A_lo, C_hi, C_lo): n_steps (>= 0) draws map a PCG64 state s to A s + C (mod 2^128)."""
    mult_hi, mult_lo, plus_hi, plus_lo = _PCG_MULT_HI, _PCG_MULT_LO, inc_hi, inc_lo
    acc_mult_hi, acc_mult_lo, acc_plus_hi, acc_plus_lo = _ZERO, _ONE, _ZERO, _ZERO
    n = np.uint64(n_steps)
    while n > _ZERO:
        if n & _ONE:
            acc_mult_hi, acc_mult_lo = _mul128(acc_mult_hi, acc_mult_lo, mult_hi, mult_lo)
            acc_plus_hi, acc_plus_lo = _mul128(acc_plus_hi, acc_plus_lo, mult_hi, mult_lo)
            acc_plus_hi, acc_plus_lo = _add128(acc_plus_hi, acc_plus_lo, plus_hi, plus_lo)
        sum_hi, sum_lo = _add128(mult_hi, mult_lo, _ZERO, _ONE)
        plus_hi, plus_lo = _mul128(sum_hi, sum_lo, plus_hi, plus_lo)
        mult_hi, mult_lo = _mul128(mult_hi, mult_lo, mult_hi, mult_lo)
        n = n >> _ONE
    return acc_mult_hi, acc_mult_lo, acc_plus_hi, acc_plus_lo


@njit(cache=True, inline="always")
def _pcg64_advance(state_hi, state_lo, inc_hi, inc_lo, n_steps):
    """The PCG64 state n_steps (>= 0) draws later."""
    a_hi, a_lo, c_hi, c_lo = _pcg64_jump(inc_hi, inc_lo, n_steps)
    state_hi, state_lo = _mul128(a_hi, a_lo, state_hi, state_lo)
    return _add128(state_hi, state_lo, c_hi, c_lo)


@intrinsic
def _bits_xor(typingctx, x, bits):
    """The float64 whose bit pattern is x's xor bits (uint64)."""
    def codegen(context, builder, signature, args):
        word = builder.xor(builder.bitcast(args[0], ir.IntType(64)), args[1])
        return builder.bitcast(word, ir.DoubleType())
    return types.float64(types.float64, types.uint64), codegen


@intrinsic
def _float_bits(typingctx, x):
    """The bit pattern of a float64, as a uint64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.uint64(types.float64), codegen


@intrinsic
def _bits_float(typingctx, bits):
    """The float64 whose bit pattern is the uint64 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.uint64), codegen


@njit(cache=True, inline="always")
def _pcg64_uniform(state_hi, state_lo, inc_hi, inc_lo, low, span, zero_bits):
    """One draw: (the next state, low + span U) as NumPy's Generator.uniform computes it: U is
    exact (53 bits times 2^-53), span U is rounded, then the sum.

    Written for LLVM to vectorise a loop of draws over lanes: the 128-bit product with the
    multiplier on 32-bit limbs (products of 32-bit halves fit 64 bits), and the rounded product
    passed through an xor with ``zero_bits``, a zero LLVM cannot see (the caller reads it from
    an array): numba's fastmath flags reach every float instruction it compiles (this function
    included) and would otherwise let LLVM fuse the product into the sum (one rounding, not
    NumPy's two)."""
    a0, a1 = state_lo & _LOW_32, state_lo >> _THIRTY_TWO
    p00, p01, p10, p11 = a0 * _PCG_MULT_LO0, a0 * _PCG_MULT_LO1, a1 * _PCG_MULT_LO0, a1 * _PCG_MULT_LO1
    middle = (p00 >> _THIRTY_TWO) + (p01 & _LOW_32) + (p10 & _LOW_32)
    high = p11 + (p01 >> _THIRTY_TWO) + (p10 >> _THIRTY_TWO) + (middle >> _THIRTY_TWO)
    product_lo = state_lo * _PCG_MULT_LO
    product_hi = high + state_hi * _PCG_MULT_LO + state_lo * _PCG_MULT_HI
    state_lo = product_lo + inc_lo
    state_hi = product_hi + inc_hi + (_ONE if state_lo < product_lo else _ZERO)
    word = state_hi ^ state_lo
    rotation = state_hi >> _FIFTY_EIGHT
    word = (word >> rotation) | (word << ((_ZERO - rotation) & _SIXTY_THREE))
    product = span * (np.float64(word >> _ELEVEN) * _TWO_TO_MINUS_53)
    return state_hi, state_lo, low + _bits_xor(product, zero_bits)


@njit(cache=True, fastmath=FAST)
def pcg64_uniform_fill(stream, first, low, span, out):
    """out[:] = the draws first, first + 1, ... of ``uniform(low, low + span)`` on the PCG64
    stream whose state and increment are stream = (s_hi, s_lo, c_hi, c_lo, 0): the kernel's
    draws, for tests against NumPy."""
    state_hi, state_lo = _pcg64_advance(stream[0], stream[1], stream[2], stream[3], first)
    for i in range(out.shape[0]):
        state_hi, state_lo, out[i] = _pcg64_uniform(state_hi, state_lo, stream[2], stream[3], low, span, stream[4])


# --- Philox4x32-10 draws ----------------------------------------------------------------------------
# The stream of iclgd.backends.numba_philox (its docstring defines which block a number comes from
# and how words become numbers); here so that the kernel draws its tasks itself, lanes = tasks.


@njit(cache=True, inline="always")
def philox_block(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1), uint32 words in and out:
    10 rounds of  (hi0, lo0) = M0 c0,  (hi1, lo1) = M1 c2  (64-bit products in 32-bit halves),
    c <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0),  then k <- k + (W0, W1) mod 2^32.
    (Words widened only for the products, so that a loop over lanes is vectorised: the 32 x 32
    -> 64-bit products are one SIMD instruction; no tuples inside the loop, see the docstring.)"""
    for _ in range(PHILOX_ROUNDS):
        p0 = np.uint64(c0) * _PH_M0
        p1 = np.uint64(c2) * _PH_M1
        high1 = np.uint32(np.uint32(p1 >> _THIRTY_TWO) ^ c1 ^ k0)
        high0 = np.uint32(np.uint32(p0 >> _THIRTY_TWO) ^ c3 ^ k1)
        c0, c1, c2, c3 = high1, np.uint32(p1), high0, np.uint32(p0)
        k0 = np.uint32(k0 + _PH_W0)  # mod 2^32
        k1 = np.uint32(k1 + _PH_W1)
    return c0, c1, c2, c3


@njit(cache=True)
def philox_blocks(counters, keys, out):
    """out[i] = Philox4x32-10 of counters[i] (4 words) under keys[i] (2 words), uint32."""
    for i in range(counters.shape[0]):
        w0, w1, w2, w3 = philox_block(counters[i, 0], counters[i, 1], counters[i, 2], counters[i, 3], keys[i, 0],
                                      keys[i, 1])
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = w0, w1, w2, w3


@njit(cache=True, inline="always")
def _philox_lanes(words, tid, block, first, n_lanes, c2, c3, k0, k1):
    """words[tid, :, t] = block ``block`` of task first + t: counter (block, first + t, c2, c3)."""
    for t in range(n_lanes):
        w0, w1, w2, w3 = philox_block(np.uint32(block), np.uint32(first + t), c2, c3, k0, k1)
        words[tid, 0, t], words[tid, 1, t], words[tid, 2, t], words[tid, 3, t] = w0, w1, w2, w3


def _wide_draws(e):
    """1 if tasks in e's dtype take 53-bit draws (float64), 0 for 24-bit (float32); compiled code only."""
    raise NotImplementedError("_wide_draws runs inside numba-compiled code only")


@overload(_wide_draws, inline="always")
def _wide_draws_typed(e):
    wide = 1 if e.dtype == types.float64 else 0  # a constant of the compiled code, so that LLVM drops the other branch
    return lambda e: wide


@njit(cache=True, inline="always")
def _philox_bits(words, tid, q, t, wide):
    """Draw q of lane t's block as an int64 of random bits: wide (53 bits, two draws a block):
    (word 2q >> 5) 2^26 + (word 2q+1 >> 6); else (24 bits, four a block): word q >> 8."""
    bits = np.uint64(words[tid, q, t]) >> _EIGHT
    if wide:
        bits = (np.uint64(words[tid, 2 * q, t]) >> _FIVE) << _TWENTY_SIX | (np.uint64(words[tid, 2 * q + 1, t]) >> _SIX)
    return np.int64(bits)


@njit(cache=True, inline="always")
def _log_unit(u):
    """ln u for a normal float64 u in (0, 1], by series (no libm call, so that a loop of them is
    vectorised): u = 2^e f with f in [sqrt(1/2), sqrt(2)] (from u's bits), s = (f - 1) / (f + 1)
    (|s| <= 0.1716; f - 1 is exact), and

        ln u = e ln 2 + 2 atanh s = e ln 2 + 2 s (1 + s^2/3 + s^4/5 + ... + s^20/21),

    truncated where the next term is below 1e-18 of the sum; within a few units in the last
    place (ln 2 split in two, hi with 21 zero low bits, so that e ln2_hi is exact)."""
    bits = _float_bits(u)
    e = np.int64(bits >> _FIFTY_TWO) - 1023
    f = _bits_float((bits & _MANTISSA) | _EXPONENT_OF_ONE)  # in [1, 2)
    if f > _SQRT2:
        f = 0.5 * f
        e += 1
    s = (f - 1.0) / (f + 1.0)
    z = s * s
    series = 1.0 / 21.0
    series = series * z + 1.0 / 19.0
    series = series * z + 1.0 / 17.0
    series = series * z + 1.0 / 15.0
    series = series * z + 1.0 / 13.0
    series = series * z + 1.0 / 11.0
    series = series * z + 1.0 / 9.0
    series = series * z + 1.0 / 7.0
    series = series * z + 1.0 / 5.0
    series = series * z + 1.0 / 3.0
    series = series * z + 1.0
    return e * _LN2_HI + (e * _LN2_LO + 2.0 * s * series)


@njit(cache=True, inline="always")
def _cos_turn(u, sine):
    """cos 2 pi u (sine = 0) or sin 2 pi u (sine = 1) for u in [0, 1], by series (no libm call):
    q = round(4u), v = u - q/4 in [-1/8, 1/8] (exact), theta = 2 pi v in [-pi/4, pi/4], and with
    2 pi u = q pi/2 + theta the quadrant q mod 4 picks +-cos theta or +-sin theta, each by its
    Taylor series (to theta^18 and theta^17: the next terms are below 1e-19).  Within a few
    units in the last place, also near the zeros (there it is theta's own series)."""
    q = np.floor(4.0 * u + 0.5)
    theta = _TWO_PI * (u - 0.25 * q)
    z = theta * theta
    quadrant = (np.int64(q) - sine) & 3  # sin x = cos(x - pi/2): a quarter turn back
    if quadrant & 1:  # +-sin theta
        value = 1.0 / 355687428096000.0  # 1/17!
        value = value * z - 1.0 / 1307674368000.0
        value = value * z + 1.0 / 6227020800.0
        value = value * z - 1.0 / 39916800.0
        value = value * z + 1.0 / 362880.0
        value = value * z - 1.0 / 5040.0
        value = value * z + 1.0 / 120.0
        value = value * z - 1.0 / 6.0
        value = theta + theta * (value * z)
    else:  # +-cos theta
        value = 1.0 / 6402373705728000.0  # 1/18!
        value = value * z - 1.0 / 20922789888000.0
        value = value * z + 1.0 / 87178291200.0
        value = value * z - 1.0 / 479001600.0
        value = value * z + 1.0 / 3628800.0
        value = value * z - 1.0 / 40320.0
        value = value * z + 1.0 / 720.0
        value = value * z - 1.0 / 24.0
        value = value * z + 0.5
        value = 1.0 - value * z
    return -value if quadrant == 1 or quadrant == 2 else value


@njit(cache=True, fastmath=FAST, inline="always")
def _draw_block_philox(e, stream, x_scale, first, n_lanes, lane, labels, w_drawn, words, tid):
    """Tasks first .. first + n_lanes - 1 of the Philox stream of (seed, step) = stream[0], stream[1]:
    w ~ N(0, I_d) into w_drawn[tid] (d, LANES) and x ~ U(-x_scale, x_scale) into e[tid] with
    labels (x_i, w.x_i), (x_q, 0) and targets w.x_q in lane[tid, 1], all in e's dtype (53-bit
    draws for float64, 24-bit for float32); labels summed in float64 over k = 0 .. d - 1 from
    the rounded w and x, rounded once (as numba_philox.tokens_and_targets does; the products
    pass _bits_xor with the zero stream[4], so that they are not fused into the sums).

    Block j of task b: counter (j, b, seed >> 32, step >> 32), key (seed, step) mod 2^32; the
    weights first (Box-Muller on pairs of unit draws U = (2k + 1) 2^-(m+1)), then the inputs row
    by row, x = x_scale (2k + 1 - 2^m) 2^-m; a block's draws past the last weight are dropped."""
    n_tokens, dim = e.shape[1], e.shape[2]
    d = dim - 1
    wide = _wide_draws(e)
    per_block = 2 if wide else 4
    m_int = np.int64(9007199254740992 if wide else 16777216)  # 2^m
    inv_m_pow = 1.0 / np.float64(m_int)
    unit_scale = 0.5 * inv_m_pow
    k0, k1 = np.uint32(stream[0] & _LOW_32), np.uint32(stream[1] & _LOW_32)
    c2, c3 = np.uint32(stream[0] >> _THIRTY_TWO), np.uint32(stream[1] >> _THIRTY_TWO)
    n_weight_blocks = (d + per_block - 1) // per_block
    for j in range(n_weight_blocks):
        _philox_lanes(words, tid, j, first, n_lanes, c2, c3, k0, k1)
        for pair in range(per_block // 2):
            i = per_block * j + 2 * pair
            if i < d:
                for t in range(n_lanes):
                    u1 = np.float64(2 * _philox_bits(words, tid, 2 * pair, t, wide) + 1) * unit_scale
                    u2 = np.float64(2 * _philox_bits(words, tid, 2 * pair + 1, t, wide) + 1) * unit_scale
                    radius = np.sqrt(-2.0 * _log_unit(u1))
                    w_drawn[tid, i, t] = radius * _cos_turn(u2, 0)
                    if i + 1 < d:
                        w_drawn[tid, i + 1, t] = radius * _cos_turn(u2, 1)
    for row in range(n_tokens):  # (rows and coordinates as loops, the block's words fetched as needed: vectorised)
        for t in range(n_lanes):
            labels[tid, t] = 0.0
        for k in range(d):
            f = row * d + k  # the input's place in the task's inputs
            q = f % per_block
            if q == 0:
                _philox_lanes(words, tid, n_weight_blocks + f // per_block, first, n_lanes, c2, c3, k0, k1)
            for t in range(n_lanes):
                e[tid, row, k, t] = np.float64(2 * _philox_bits(words, tid, q, t, wide) + 1 - m_int) * inv_m_pow * x_scale
                labels[tid, t] += _bits_xor(np.float64(e[tid, row, k, t]) * np.float64(w_drawn[tid, k, t]), stream[4])
        for t in range(n_lanes):
            e[tid, row, d, t] = labels[tid, t] if row < n_tokens - 1 else 0.0
    for t in range(n_lanes):
        lane[tid, 1, t] = labels[tid, t]


@njit(cache=True, fastmath=FAST, error_model="numpy", forceinline=True)
def _philox_fill_block(block, tid, stream, x_scale, weights, inputs, e, lane, labels, w_drawn, words):
    """Tasks of block ``block`` (LANES tasks) drawn into e[tid] and w_drawn[tid], then copied out."""
    batch, n_tokens, d = inputs.shape
    first = block * LANES
    n_lanes = min(LANES, batch - first)
    _draw_block_philox(e, stream, x_scale, first, n_lanes, lane, labels, w_drawn, words, tid)
    for t in range(n_lanes):
        for k in range(d):
            weights[first + t, k] = w_drawn[tid, k, t]
        for row in range(n_tokens):
            for k in range(d):
                inputs[first + t, row, k] = e[tid, row, k, t]


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def philox_task_fill(stream, x_scale, weights, inputs, n_threads):
    """weights (B, d) and inputs (B, T, d) of one float dtype: the batch of (seed, step) =
    stream[0], stream[1] of the Philox stream (_draw_block_philox), in parallel over blocks of
    LANES tasks; n_threads as for _lane_pass."""
    batch, n_tokens, d = inputs.shape
    dt = inputs.dtype
    e = np.empty((n_threads, n_tokens, d + 1, LANES), dt)
    lane = np.empty((n_threads, 3, LANES), dt)
    labels = np.empty((n_threads, LANES))
    w_drawn = np.empty((n_threads, d, LANES), dt)
    words = np.empty((n_threads, 4, LANES), np.uint32)
    for block in prange((batch + LANES - 1) // LANES):
        _philox_fill_block(np.int64(block), numba.get_thread_id(), stream, x_scale, weights, inputs, e, lane, labels,
                           w_drawn, words)


# --- loading a block of tasks ----------------------------------------------------------------------


@njit(cache=True, fastmath=FAST, inline="always")
def _load_block(e, source, weights, targets_in, load, stream, jump, low, span, first, n_lanes, lane, labels, w_lanes,
                pcg, pcg_next, w_drawn, words, tid):
    """Write tasks first .. first + n_lanes - 1 into e[tid] (T, D, LANES) and their targets into
    lane[tid, 1]; the lanes past n_lanes get zero tokens and target 0.  LOAD_TOKENS: source
    holds the tokens (B, T, D), targets_in the targets; LOAD_PCG64 and LOAD_PHILOX: the tasks
    are drawn (_draw_block, _draw_block_philox).  Values are rounded to e's dtype."""
    n_tokens, dim = e.shape[1], e.shape[2]
    for row in range(n_tokens):
        for k in range(dim):
            for t in range(n_lanes, LANES):
                e[tid, row, k, t] = 0.0
    for t in range(n_lanes, LANES):
        lane[tid, 1, t] = 0.0
    if load == LOAD_TOKENS:
        for row in range(n_tokens):
            for k in range(dim):
                for t in range(n_lanes):
                    e[tid, row, k, t] = source[first + t, row, k]
        for t in range(n_lanes):
            lane[tid, 1, t] = targets_in[first + t]
    elif load == LOAD_PCG64:
        _draw_block(e, weights, stream, jump, low, span, first, n_lanes, lane, labels, w_lanes, pcg, pcg_next, tid)
    else:
        _draw_block_philox(e, stream, span, first, n_lanes, lane, labels, w_drawn, words, tid)


@njit(cache=True, fastmath=FAST, inline="always")
def _draw_block(e, weights, stream, jump, low, span, first, n_lanes, lane, labels, w_lanes, pcg, pcg_next, tid):
    """Noise-free tasks with weights w (B, d) and inputs x ~ uniform(low, low + span) drawn from
    the PCG64 stream whose state pcg_next[tid] is at task ``first``'s first draw (and is left
    at the next block's): tokens (x_i, w.x_i), (x_q, 0), labels summed in float64
    (labels[tid]) as task.sample does, target w.x_q.  Every lane runs its own copy of the
    stream from its task's first draw (pcg[tid], found with ``jump``: the affine map of one
    task's T d draws), so that the lanes' draws are independent and LLVM vectorises them over
    the lanes.  (No tuple results from branches or several exits here: numba counts those as
    array aliases, see the module docstring.)"""
    n_tokens, dim = e.shape[1], e.shape[2]
    d = dim - 1
    for k in range(d):
        for t in range(n_lanes):
            w_lanes[tid, k, t] = weights[first + t, k]
    state_hi, state_lo = pcg_next[tid, 0], pcg_next[tid, 1]
    for t in range(n_lanes):
        pcg[tid, 0, t], pcg[tid, 1, t] = state_hi, state_lo
        state_hi, state_lo = _mul128(jump[0], jump[1], state_hi, state_lo)
        state_hi, state_lo = _add128(state_hi, state_lo, jump[2], jump[3])
    pcg_next[tid, 0], pcg_next[tid, 1] = state_hi, state_lo
    for row in range(n_tokens):
        for t in range(n_lanes):
            labels[tid, t] = 0.0
        for k in range(d):
            for t in range(n_lanes):
                pcg[tid, 0, t], pcg[tid, 1, t], x = _pcg64_uniform(pcg[tid, 0, t], pcg[tid, 1, t], stream[2], stream[3], low,
                                                                   span, stream[4])
                e[tid, row, k, t] = x
                labels[tid, t] += x * w_lanes[tid, k, t]
        for t in range(n_lanes):
            e[tid, row, d, t] = labels[tid, t] if row < n_tokens - 1 else 0.0
    for t in range(n_lanes):
        lane[tid, 1, t] = labels[tid, t]


# --- the kernel ------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _plan(mode, n_layers, n_heads, dim):
    """Which parts of the pass run (ints, not bools: see the module docstring):
    (n_full, the layers whose M is formed; grad; propagate, the last layer's dL/d a_{K-1};
    low_rank, layer K - 2 on the rank-2H vectors; form_gamma, the last layer's Gs formed)."""
    grad = 1 if mode == MODE_GRAD else 0
    n_full = n_layers if mode == MODE_MAPS else n_layers - 1
    propagate = 1 if n_layers > 1 or not grad else 0  # dL/dE_l: l > 0, or the sensitivity
    low_rank = 1 if n_layers > 1 and 4 * n_heads < dim and mode != MODE_MAPS else 0
    form_gamma = 1 if (n_layers > 1 and not low_rank) or (n_layers == 1 and not grad) else 0
    return n_full, grad, propagate, low_rank, form_gamma


@njit(cache=True, fastmath=FAST, error_model="numpy", forceinline=True)
def _chunk_pass(chunk, tid, source, weights, targets_in, load, stream, jump, low, span, include_query, p, r, slots,
                mode, yhat, targets, sens, maps, d_p, d_r, e, gs, xs, ys, ws, a_rows, us, ss, vecs, sbars, v1s, v2s,
                w1s, w2s, lane, labels, w_lanes, pcg, pcg_next, w_drawn, words, mbar, tm, qs, zs, gam, dp_acc, dr_acc):
    """Chunk ``chunk`` of _lane_pass on scratch row ``tid``: its blocks of LANES tasks, forward and
    backward, and its gradient summed over its lanes into d_p[chunk], d_r[chunk].  A function of
    its own, so that numba's parallel-loop passes see a one-line loop body (on the inlined body
    they took over a minute a dtype), and ``forceinline`` (LLVM's alwaysinline), so that LLVM
    still compiles it inside the loop, where the arrays are ``noalias``."""
    batch, n_tokens = weights.shape[0], source.shape[1]
    n_heads, dim = p.shape[1], p.shape[2]
    d = dim - 1
    n_layers = slots.shape[0]
    n_attended = n_tokens if include_query else n_tokens - 1
    n_chunks = d_p.shape[0]
    n_full, grad, propagate, low_rank, form_gamma = _plan(mode, n_layers, n_heads, dim)
    n_acc = dp_acc.shape[1]
    inv_batch = 1.0 / batch
    start, stop = chunk * batch // n_chunks, (chunk + 1) * batch // n_chunks
    for hs in range(n_acc):
        for i in range(dim):
            for j in range(dim):
                for t in range(LANES):
                    dp_acc[tid, hs, i, j, t] = 0.0
                    dr_acc[tid, hs, i, j, t] = 0.0
    if load == LOAD_PCG64:  # jump to the chunk's first draw
        pcg_next[tid, 0], pcg_next[tid, 1] = _pcg64_advance(stream[0], stream[1], stream[2], stream[3],
                                                            start * n_tokens * (dim - 1))
    for first in range(start, stop, LANES):
        n_lanes = min(LANES, stop - first)
        _load_block(e, source, weights, targets_in, load, stream, jump, low, span, first, n_lanes, lane, labels, w_lanes,
                    pcg, pcg_next, w_drawn, words, tid)
        for t in range(n_lanes):
            targets[first + t] = lane[tid, 1, t]

        # forward: G_0 (lower triangle, mirrored) and the query row
        for i in range(dim):
            for j in range(i + 1):
                for t in range(LANES):
                    gs[tid, 0, i, j, t] = 0.0
                for row in range(n_attended):
                    for t in range(LANES):
                        gs[tid, 0, i, j, t] += e[tid, row, i, t] * e[tid, row, j, t]
        _mirror(gs, 0, tid)
        for k in range(dim):
            for t in range(LANES):
                a_rows[tid, 0, k, t] = e[tid, n_tokens - 1, k, t]

        for layer in range(n_full):
            slot = slots[layer]
            for h in range(n_heads):
                _shared_left(xs, layer * n_heads + h, p, slot, h, False, gs, layer, tid, False)
                _shared_right(ys, layer, xs, layer * n_heads + h, r, slot, h, False, tid, h > 0)
            if mode == MODE_MAPS:
                for t in range(n_lanes):
                    for i in range(dim):
                        for j in range(dim):
                            maps[first + t, layer, i, j] = ys[tid, layer, i, j, t] + (1.0 if i == j else 0.0)
            if layer < n_layers - 1:
                if layer < n_layers - 2 or not low_rank:
                    _ab_from(ws, layer, gs, layer, gs, layer, ys, layer, tid)  # W = G + G Y
                    _next_gram(gs, layer + 1, ws, layer, ys, layer, tid)  # G' = W + Y^T W
                _vec_plus_vec_mat(a_rows, layer + 1, a_rows, layer, ys, layer, tid)  # a' = a + a Y
        if mode == MODE_MAPS:
            continue

        # the last layer, at the query row
        last = n_layers - 1
        slot = slots[last]
        for t in range(LANES):
            lane[tid, 2, t] = a_rows[tid, last, d, t]
        for h in range(n_heads):
            _vec_shared(us, h, a_rows, last, p, slot, h, False, tid, False)  # u = a P
            if low_rank:  # s = u G_{K-1} = ((u M^T) G) M, M = I + Y_{K-2}, G = G_{K-2}
                _vec_plus_mat_vec(v1s, h, us, h, ys, last - 1, tid)
                _vec_mat(v2s, h, v1s, h, gs, last - 1, tid, False)
                _vec_plus_vec_mat(ss, h, v2s, h, ys, last - 1, tid)
            else:
                _vec_mat(ss, h, us, h, gs, last, tid, False)  # s = u G
            for k in range(dim):
                coef = r[slot, h, k, d]
                for t in range(LANES):
                    lane[tid, 2, t] += ss[tid, h, k, t] * coef
        for t in range(LANES):
            lane[tid, 2, t] = -lane[tid, 2, t]
        for t in range(n_lanes):
            yhat[first + t] = lane[tid, 2, t]
        if mode == MODE_PREDICT:
            continue

        # backward; upstream c = dL/dyhat (zero in padded lanes: yhat = target = 0 there)
        for t in range(LANES):
            lane[tid, 0, t] = (lane[tid, 2, t] - lane[tid, 1, t]) * inv_batch if grad else 1.0
        for k in range(dim):
            for t in range(LANES):
                vecs[tid, 0, k, t] = 0.0
        for t in range(LANES):
            vecs[tid, 0, d, t] = -lane[tid, 0, t]
        if form_gamma:
            _zero(gam, 0, tid)
        for h in range(n_heads):
            hs = slot * n_heads + h
            for k in range(dim):
                coef = r[slot, h, k, d]
                for t in range(LANES):
                    sbars[tid, h, k, t] = -lane[tid, 0, t] * coef  # sbar = R abar
            if grad:
                for k in range(dim):
                    for t in range(LANES):
                        dr_acc[tid, hs, k, d, t] -= ss[tid, h, k, t] * lane[tid, 0, t]
            if low_rank:  # ubar = G_{K-1} sbar = M^T (G (M sbar))
                _vec_plus_mat_vec(w1s, h, sbars, h, ys, last - 1, tid)
                _vec_mat(w2s, h, w1s, h, gs, last - 1, tid, False)
                _vec_plus_vec_mat(vecs, 3, w2s, h, ys, last - 1, tid)
            else:
                _vec_mat(vecs, 3, sbars, h, gs, last, tid, False)  # ubar = G sbar (G symmetric)
            if grad:
                _add_outer(dp_acc, hs, a_rows, last, vecs, 3, tid, False)
            if form_gamma:
                _add_outer(gam, 0, us, h, sbars, h, tid, True)
            if propagate:
                _vec_shared(vecs, 0, vecs, 3, p, slot, h, True, tid, True)  # abar += P ubar
        cur = 0
        for layer in range(n_layers - 2, -1, -1):
            slot = slots[layer]
            carry = 1 if layer > 0 else 1 - int(grad)  # dL/dE_l is needed
            # Mbar = W Gs + a^T abar, and T = M Gs where carried; Gs of rank 2H at layer K - 2
            if low_rank and layer == n_layers - 2:
                _zero(mbar, 0, tid)
                for h in range(n_heads):  # W u_h = G M u_h, W sbar_h = G M sbar_h
                    _add_outer(mbar, 0, v2s, h, sbars, h, tid, False)
                    _add_outer(mbar, 0, w2s, h, us, h, tid, False)
            else:
                _ab(mbar, 0, ws, layer, gam, cur, tid, False)
                if carry:
                    _ab_from(tm, 0, gam, cur, ys, layer, gam, cur, tid)  # T = Gs + Y Gs
            _add_outer(mbar, 0, a_rows, layer, vecs, 0, tid, False)
            if carry:
                _vec_mat(vecs, 1, vecs, 0, ys, layer, tid, True)  # abar + Y abar
                for k in range(dim):
                    for t in range(LANES):
                        vecs[tid, 0, k, t] += vecs[tid, 1, k, t]
            for h in range(n_heads):
                hs = slot * n_heads + h
                _shared_right(qs, 0, mbar, 0, r, slot, h, True, tid, False)  # Q = Mbar R^T
                if grad:
                    _ab(dp_acc, hs, qs, 0, gs, layer, tid, True)  # dP += Q G
                    _atb_acc(dr_acc, hs, xs, layer * n_heads + h, mbar, 0, tid)  # dR += X^T Mbar
                if carry:
                    _shared_left(zs, 0, p, slot, h, True, qs, 0, tid, h > 0)  # Z += P^T Q
            if carry:  # Gs <- M Gs M^T + Z + Z^T
                if low_rank and layer == n_layers - 2:  # sum_h (M u_h)(M sbar_h)^T + transposed
                    _zero(gam, 1 - cur, tid)
                    for h in range(n_heads):
                        _add_outer(gam, 1 - cur, v1s, h, w1s, h, tid, True)
                    _add_symmetric_part(gam, 1 - cur, zs, 0, tid)
                else:
                    _next_gram_bar(gam, 1 - cur, tm, 0, ys, layer, zs, 0, tid)
                cur = 1 - cur
        if mode == MODE_SENSITIVITY:
            for t in range(n_lanes):
                for i in range(dim):
                    acc = vecs[tid, 0, i, t]
                    if n_attended == n_tokens:  # the query is one of G_0's rows
                        for j in range(dim):
                            acc += gam[tid, cur, i, j, t] * e[tid, n_tokens - 1, j, t]
                    sens[first + t, i] = acc

    for hs in range(n_acc):  # this chunk's gradient: its lanes summed in order
        for i in range(dim):
            for j in range(dim):
                acc_p = dp_acc[tid, hs, i, j, 0]
                acc_r = dr_acc[tid, hs, i, j, 0]
                for t in range(1, LANES):
                    acc_p += dp_acc[tid, hs, i, j, t]
                    acc_r += dr_acc[tid, hs, i, j, t]
                d_p[chunk, hs // n_heads, hs % n_heads, i, j] = acc_p
                d_r[chunk, hs // n_heads, hs % n_heads, i, j] = acc_r


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def _lane_pass(source, weights, targets_in, load, stream, low, span, include_query, p, r, slots, mode, n_threads,
               yhat, targets, sens, maps, d_p, d_r):
    """All tasks of a batch, in the dtype of p and r (S, H, D, D); fills the outputs.

    load (see _load_block): LOAD_TOKENS: source the tokens (B, T, D), targets_in their targets
    (B,), both in p's dtype, weights (B, 0); LOAD_PCG64: noise-free tasks with weights w (B, d)
    and inputs x drawn from the PCG64 stream = (s_hi, s_lo, c_hi, c_lo, 0) (uint64: its state
    before the batch's first input, its increment, and a zero, see _pcg64_uniform) as
    uniform(low, low + span) (float64, rounded to p's dtype on load); LOAD_PHILOX: noise-free
    tasks drawn from the Philox stream of (seed, step) = stream[0], stream[1] (stream[4] a zero)
    with x ~ U(-span, span) (_draw_block_philox), weights (B, 0) giving B; for both, source an
    empty (0, T, d) array of p's dtype giving T, targets_in empty.  slots (K,): each layer's index
    into p and r; n_threads: at least the number of threads numba may run
    (``numba.config.NUMBA_NUM_THREADS``: the scratch has a row per thread;
    ``numba.get_num_threads()`` in here would keep numba from caching the kernel, and np.empty
    leaves the rows of idle threads untouched).

    Outputs (zeros on entry, in p's dtype; allocated by the caller, as np.zeros here would be a
    parallel loop of its own): yhat (B,); targets (B,) those used (w.x_q when drawn); sens
    (B, D) d yhat / d e_q (mode SENSITIVITY; else (0, D)); maps (B, K, D, D) every layer's
    M_l = I + Y_l (mode MAPS, which computes nothing else; else (0, K, D, D)); d_p, d_r
    (n_chunks, S, H, D, D), n_chunks = min(N_CHUNKS, B): each chunk's dL/dP, dL/dR of the
    half-MSE (mode GRAD), for the caller to add in order."""
    n_tokens, n_chunks = source.shape[1], d_p.shape[0]
    n_slots, n_heads, dim = p.shape[0], p.shape[1], p.shape[2]
    n_layers = slots.shape[0]
    n_full, grad, _, low_rank, _ = _plan(mode, n_layers, n_heads, dim)
    dt = p.dtype

    # scratch, one row per thread (all allocated here, outside the parallel loop)
    n_acc = n_slots * n_heads if grad else 0
    n_bwd = 0 if mode == MODE_PREDICT or mode == MODE_MAPS else 1
    e = np.empty((n_threads, n_tokens, dim, LANES), dt)
    gs = np.empty((n_threads, n_layers, dim, dim, LANES), dt)
    xs = np.empty((n_threads, n_full * n_heads, dim, dim, LANES), dt)
    ys = np.empty((n_threads, n_full, dim, dim, LANES), dt)
    ws = np.empty((n_threads, n_full, dim, dim, LANES), dt)
    a_rows = np.empty((n_threads, n_layers, dim, LANES), dt)
    us = np.empty((n_threads, n_heads, dim, LANES), dt)
    ss = np.empty((n_threads, n_heads, dim, LANES), dt)
    vecs = np.empty((n_threads, 4, dim, LANES), dt)  # abar, abar (next), -, ubar
    sbars = np.empty((n_threads, n_heads, dim, LANES), dt)
    # per-head vectors of the rank-2H step: M u, G M u, M sbar, G M sbar
    v1s = np.empty((n_threads, n_heads * low_rank, dim, LANES), dt)
    v2s = np.empty((n_threads, n_heads * low_rank, dim, LANES), dt)
    w1s = np.empty((n_threads, n_heads * low_rank, dim, LANES), dt)
    w2s = np.empty((n_threads, n_heads * low_rank, dim, LANES), dt)
    lane = np.empty((n_threads, 3, LANES), dt)  # upstream c, target, yhat
    labels = np.empty((n_threads, LANES))  # float64 label sums
    w_lanes = np.empty((n_threads, weights.shape[1], LANES))  # float64 weights of the block's tasks
    pcg = np.empty((n_threads, 2, LANES), np.uint64)  # each lane's PCG64 state
    pcg_next = np.empty((n_threads, 2), np.uint64)  # the next block's first draw
    w_drawn = np.empty((n_threads, dim - 1 if load == LOAD_PHILOX else 0, LANES), dt)  # Philox weights, rounded
    words = np.empty((n_threads, 4, LANES), np.uint32)  # a Philox block of every lane
    jump = np.empty(4, np.uint64)  # the affine map of one task's draws
    jump[0], jump[1], jump[2], jump[3] = _pcg64_jump(stream[2], stream[3], n_tokens * (dim - 1))
    mbar = np.empty((n_threads, n_bwd, dim, dim, LANES), dt)
    tm = np.empty((n_threads, n_bwd, dim, dim, LANES), dt)
    qs = np.empty((n_threads, n_bwd, dim, dim, LANES), dt)
    zs = np.empty((n_threads, n_bwd, dim, dim, LANES), dt)
    gam = np.empty((n_threads, 2 * n_bwd, dim, dim, LANES), dt)
    dp_acc = np.empty((n_threads, n_acc, dim, dim, LANES), dt)
    dr_acc = np.empty((n_threads, n_acc, dim, dim, LANES), dt)

    for chunk in prange(n_chunks):  # (the index is uint64 in the compiled loop: one signature of _chunk_pass)
        _chunk_pass(np.int64(chunk), numba.get_thread_id(), source, weights, targets_in, load, stream, jump, low, span,
                    include_query, p, r, slots, mode, yhat, targets, sens, maps, d_p, d_r, e, gs, xs, ys, ws, a_rows,
                    us, ss, vecs, sbars, v1s, v2s, w1s, w2s, lane, labels, w_lanes, pcg, pcg_next, w_drawn, words, mbar,
                    tm, qs, zs, gam, dp_acc, dr_acc)
