r"""The numba backend: the oracle's functions, compiled and parallel over the batch.

It computes the same model as the NumPy oracle by re-associating its products.  A layer
updates every token by ``E' = E + sum_h (E P_h C^T)(C R_h)`` with ``P_h = W_q[h] W_k[h]^T``
and ``R_h = W_v[h] W_o[h]`` (D x D), C the attended rows; so with the Gram matrix
``G = C^T C`` (D x D),

    E' = E M,    M = I + sum_h P_h G R_h,    and the next layer's   G' = M^T G M.

Per task, the whole forward pass runs on D x D matrices; N enters only in G_0 = C_0^T C_0.
The last layer is read at the query row a only:  a_K = a + sum_h (a P_h) G R_h,
yhat = -a_K[d].

Backward, per task (bars are dL/d.; G symmetric; upstream abar, Gbar of layer l + 1):

    last layer, u_h = a P_h, s_h = u_h G:   dR_h += s_h^T abar,  sbar = R_h abar,  ubar = G sbar,
                                             Gbar += u_h^T sbar,  dP_h += a^T ubar,  abar += P_h ubar
    layer l < K - 1:  Mbar = a_l^T abar + G_l M_l (Gbar + Gbar^T);   abar <- M_l abar;
                      Gbar <- M_l Gbar M_l^T + sum_h P_h^T Mbar R_h^T;
                      dP_h += Mbar R_h^T G_l;   dR_h += G_l P_h^T Mbar
    input (query):    d yhat / d e_q = abar + (Gbar + Gbar^T) e_q   (the second term only when the
                      query is attended, i.e. part of G_0)

and finally dW_q = dP W_k, dW_k = dP^T W_q, dW_v = dR W_o^T, dW_o = W_v^T dR per head.

The kernel (iclgd.backends.numba_lanes, its docstring has the details) computes this for
blocks of LANES = 64 tasks at once, the task index innermost in every per-task array ("tasks
as SIMD lanes"), and drops the work that is not needed: only the y column of the last R, the
identity part of M never multiplied, symmetric matrices as lower triangles, no dL/dE_0 in
training, and, when 4 H < D, neither G_{K-1} nor W_{K-2} = G_{K-2} M_{K-2}: the last layer's
Gbar has rank 2H, so G_{K-1} enters only through products with the last layer's vectors.
One kernel serves predict, loss_and_grad, sensitivity, forward (the layer maps M_l) and the
training step, in float32 and float64 (two compiled specialisations in all).

FLOPs (2 per multiply-add, ``step_flops``) of one task's training step, labels included:

    K = 1:  2 [(N+1) d + N_k D(D+1)/2 + H (4 D^2 + 3 D)]
    K > 1:  the above's labels and G_0, per full layer l < K - 1:  2 H D^3 + D^2 (X, Y, a')
            + D^3 + D^2(D+1)/2 (W, G') unless l = K - 2 with 4 H < D; then the last layer and
            the backward of every layer (``step_flops`` spells out each term).

At d = N = 10 (D = 11), one head: K = 1: 2.6 kFLOP a task (5.3 MFLOP a step of B = 2048);
K = 3: 42.0 kFLOP a task (86 MFLOP a step); the per-task code this replaces did about
0.8 and 50 thousand multiply-adds (3.3 and 205 MFLOP a step).

Training draws: ``_sample_loss_and_grad`` draws w with NumPy (``task.sample``'s first draw),
then lets the kernel draw the inputs x ~ U(-a, a) itself from the same PCG64 stream, each
chunk jumping ahead to its tasks (bit for bit ``rng.uniform``'s numbers; ``_pcg64_stream``),
so that the largest draw of the step is parallel and never stored.

Parallelism: the batch is cut into a fixed number of chunks (not the thread count), each
chunk adds its blocks' gradients per lane and then its lanes in a fixed order, and the
chunks are added in order; so results do not depend on the number of threads.  Tests hold
every function to the oracle.

Threads: numba's OpenMP layer (libgomp) lets idle threads spin for a long while before they
sleep, which slows a step when another process shares the cores.  Constructing a NumbaBackend
therefore sets ``GOMP_SPINCOUNT=10000`` (a short spin, then sleep) in ``os.environ`` unless
GOMP_SPINCOUNT or OMP_WAIT_POLICY is already set; ``benchmarks/omp_wait.py`` measures every
setting, quiet and with a busy process (README, "numba threads").  OpenMP reads it when its
runtime loads (here: at the first parallel kernel), so it has no effect if another library
loaded OpenMP earlier; being an environment variable, it also reaches subprocesses.  Speed
only: results do not depend on it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numba
import numpy as np

from iclgd._checks import positive_int
from iclgd.backends.base import Backend
from iclgd.backends.numba_lanes import (
    LOAD_PCG64, LOAD_PHILOX, LOAD_TOKENS, MODE_GRAD, MODE_MAPS, MODE_PREDICT, MODE_SENSITIVITY, N_CHUNKS, _lane_pass,
)
from iclgd.models import WEIGHT_NAMES, LSAConfig, attention_products, layer_prefixes
from iclgd.tasks.inputs import INPUT_LAWS

COMPILE_NOTE = "about a minute for each dtype used, float32 and float64"
_NO_STREAM = np.zeros(5, np.uint64)
_LOW_64 = (1 << 64) - 1


# --- the backend ------------------------------------------------------------------------------------


def _products(cfg: LSAConfig, params: dict):
    """P (S, H, D, D), R (S, H, D, D) for the S distinct layers, and each layer's slot (K,)."""
    prefixes = list(dict.fromkeys(layer_prefixes(cfg)))
    products = [attention_products(params, x) for x in prefixes]
    p, r = np.stack([pr[0] for pr in products]), np.stack([pr[1] for pr in products])
    slots = np.array([prefixes.index(x) for x in layer_prefixes(cfg)], dtype=np.int64)
    return np.ascontiguousarray(p), np.ascontiguousarray(r), slots, prefixes


def _weight_grads(params: dict, prefixes: list[str], d_p: np.ndarray, d_r: np.ndarray) -> dict:
    """Chain dL/dP, dL/dR to the four weights of every distinct layer."""
    grads = {}
    for slot, x in enumerate(prefixes):
        w_q, w_k, w_v, w_o = (params[f"{x}.{n}"] for n in WEIGHT_NAMES)
        grads[f"{x}.w_q"] = d_p[slot] @ w_k
        grads[f"{x}.w_k"] = d_p[slot].swapaxes(-1, -2) @ w_q
        grads[f"{x}.w_v"] = d_r[slot] @ w_o.swapaxes(-1, -2)
        grads[f"{x}.w_o"] = w_v.swapaxes(-1, -2) @ d_r[slot]
    return grads


def step_flops(n_layers: int, n_heads: int, d: int, n_context: int, include_query: bool) -> int:
    """FLOPs (2 per multiply-add) of one task's training step in the lane kernel: the labels
    w.x_i, G_0, the forward and the backward exactly as numba_lanes computes them (plain
    additions, copies and the PCG64 draws not counted).  A step of B tasks costs B times this."""
    layers, heads = positive_int("n_layers", n_layers), positive_int("n_heads", n_heads)
    d, n_context = positive_int("d", d), positive_int("n_context", n_context)
    if not isinstance(include_query, (bool, np.bool_)):
        raise ValueError(f"include_query must be a bool; got {include_query!r}")
    dim = d + 1
    cube, square, triangle = dim**3, dim**2, dim * (dim + 1) // 2
    low_rank = layers > 1 and 4 * heads < dim  # numba_lanes: G_{K-1}, W_{K-2} never formed
    macs = (n_context + 1) * d + (n_context + int(include_query)) * triangle  # labels, G_0
    for layer in range(layers - 1):  # forward of the full layers: X_h, Y, a' (and W, G')
        macs += 2 * heads * cube + square
        if not (low_rank and layer == layers - 2):
            macs += cube + dim * triangle
    vector_products = 3 if low_rank else 1  # s = u G_{K-1}, ubar = G_{K-1} sbar: 1 or 3 products
    macs += heads * ((1 + vector_products) * square + dim)  # last layer: u, s, yhat
    macs += heads * (2 * dim + (vector_products + 1) * square)  # sbar, dR's column, ubar, dP
    if layers > 1:
        macs += heads * square  # abar += P ubar
        if not low_rank:
            macs += heads * 2 * square  # Gbar, symmetrised
    for layer in range(layers - 2, -1, -1):
        carry = layer > 0  # dL/dE_0 is not needed in training
        if low_rank and layer == layers - 2:
            macs += 2 * heads * square + square + (2 * heads * square if carry else 0)  # Mbar; Gbar'
        else:
            macs += cube + square + ((cube + dim * triangle) if carry else 0)  # Mbar; T, Gbar'
        macs += heads * 3 * cube + (square + heads * cube if carry else 0)  # Q, dP, dR; abar, Z
    return 2 * macs


def _entry_kernels():
    """The kernels the backend calls from Python (the others are compiled into them)."""
    return (_lane_pass,)


def uncached_kernels() -> list[str]:
    """Names of the entry kernels with no compiled copy in numba's on-disk cache yet.

    Every kernel is compiled with ``cache=True``: the first process on a machine compiles them
    (about a minute for each dtype) and writes them next to their source file (``__pycache__``,
    or numba's user cache when that folder is read-only); later processes load them in well
    under a second.
    A kernel's index file is ``<source module>.<kernel>-<line>.pyXY.nbi``."""
    missing = []
    for kernel in _entry_kernels():
        cache = getattr(kernel, "_cache", None)
        folder = Path(getattr(cache, "cache_path", "") or "")
        name = kernel.py_func.__name__
        if not folder.is_dir() or not any(folder.glob(f"*.{name}-*.nbi")):
            missing.append(name)
    return missing


def _kernel_input(array: np.ndarray, dtype) -> np.ndarray:
    """Tokens or targets as the kernel takes them: in the weights' dtype, C-contiguous and
    writeable (one compiled specialisation per dtype, whatever the caller's array)."""
    return np.require(array, dtype, ("C", "A", "W"))


class NumbaBackend(Backend):
    """Compiled, batch-parallel backend: the public methods of ``Backend`` validate the inputs,
    these run the kernel (iclgd.backends.numba_lanes).  Constructing it says on stderr when the
    kernel is not in numba's disk cache yet, i.e. when the first call will compile it."""

    name = "numba"

    def __init__(self):
        # idle OpenMP threads spin briefly, then sleep (module doc); an explicit setting wins
        if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
            os.environ["GOMP_SPINCOUNT"] = "10000"
        if uncached_kernels():
            print(f"iclgd: compiling the numba kernels for this machine (once, {COMPILE_NOTE}); "
                  "later runs load them from numba's disk cache", file=sys.stderr)

    def _forward(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> list[np.ndarray]:
        """Every layer's tokens [E_0, ..., E_K], each (B, N + 1, d + 1): E_{l+1} = E_l M_l."""
        maps = run_on_tokens(cfg, params, tokens, np.zeros(tokens.shape[0]), MODE_MAPS)[4]
        states = [tokens]
        for layer in range(cfg.n_layers):
            states.append(states[-1] @ maps[:, layer])
        return states

    def _predict(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        return run_on_tokens(cfg, params, tokens, np.zeros(tokens.shape[0]), MODE_PREDICT)[0]

    def _loss_and_grad(self, cfg: LSAConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        return loss_and_grad_on_tokens(cfg, params, tokens, targets)

    def _sensitivity(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        return run_on_tokens(cfg, params, tokens, np.zeros(tokens.shape[0]), MODE_SENSITIVITY)[3][:, :-1]

    def _sample_loss_and_grad(self, cfg, task, params, batch_size, rng):
        """Noise-free float64 tasks with uniform inputs on NumPy's PCG64 (the training stream): the
        same numbers as ``task.sample`` (w, then x), w drawn here and x inside the compiled pass,
        which builds labels, tokens (rounded to cfg.dtype) and the gradient (``_pcg64_stream``).
        Other tasks and generators go through ``task.sample``."""
        uniform = INPUT_LAWS[task.x_distribution].standard == "uniform"
        if (task.noise_std > 0 or task.n_distractors > 0 or task.dtype != "float64" or not uniform
                or type(rng.bit_generator) is not np.random.PCG64):
            return super()._sample_loss_and_grad(cfg, task, params, batch_size, rng)
        n_tokens = task.n_context + 1
        weights = task.w_scale * rng.standard_normal((batch_size, task.d))  # draw_weights_and_inputs' first draw
        stream = _pcg64_stream(rng, batch_size * n_tokens * task.d)  # and its second, uniform(-a, a)
        return _loss_and_grad_on_draws(cfg, params, n_tokens, weights, LOAD_PCG64, stream, -task.x_scale, 2 * task.x_scale)


def run_on_tokens(cfg: LSAConfig, params: dict, tokens: np.ndarray, targets: np.ndarray, mode: int):
    """The kernel on given tokens (B, N + 1, D) and targets (B,), params already checked:
    (yhat, dP, dR, sensitivity, maps, prefixes) (``_kernel``'s outputs)."""
    p, r, slots, prefixes = _products(cfg, params)
    no_weights = np.zeros((tokens.shape[0], 0))
    yhat, d_p, d_r, sens, maps, _ = _kernel(_kernel_input(tokens, p.dtype), no_weights, _kernel_input(targets, p.dtype),
                                            LOAD_TOKENS, _NO_STREAM, 0.0, 0.0, cfg.include_query, p, r, slots, mode)
    return yhat, d_p, d_r, sens, maps, prefixes


def loss_and_grad_on_tokens(cfg: LSAConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict]:
    """(half-MSE loss, gradient like params) on given tokens and targets, params already checked."""
    yhat, d_p, d_r, _, _, prefixes = run_on_tokens(cfg, params, tokens, targets, MODE_GRAD)
    return float(0.5 * np.mean((yhat - targets) ** 2)), _weight_grads(params, prefixes, d_p, d_r)


def loss_and_grad_on_philox(cfg: LSAConfig, params: dict, seed: int, step: int, batch_size: int, n_context: int,
                            x_scale: float) -> tuple[float, dict]:
    """(half-MSE loss, gradient like params) on batch ``step`` of the Philox stream of ``seed``
    (iclgd.backends.numba_philox), drawn inside the kernel; arguments already checked
    (0 <= seed, step < 2^64)."""
    stream = np.array([seed, step, 0, 0, 0], np.uint64)  # (seed, step, -, -, a zero); the kernel's span is x_scale here
    return _loss_and_grad_on_draws(cfg, params, n_context + 1, np.zeros((batch_size, 0)), LOAD_PHILOX, stream, 0.0, x_scale)


def _loss_and_grad_on_draws(cfg: LSAConfig, params: dict, n_tokens: int, weights: np.ndarray, load: int,
                            stream: np.ndarray, low: float, span: float) -> tuple[float, dict]:
    """(half-MSE loss, gradient like params) of the batch the kernel draws itself (``load``
    LOAD_PCG64 or LOAD_PHILOX, with its stream, low and span; see numba_lanes._lane_pass):
    weights (B, d) or (B, 0), the tasks of n_tokens rows, in the dtype of the params."""
    p, r, slots, prefixes = _products(cfg, params)
    no_tokens, no_targets = np.zeros((0, n_tokens, cfg.d), p.dtype), np.zeros(0, p.dtype)  # giving T and the dtype
    yhat, d_p, d_r, _, _, targets = _kernel(no_tokens, weights, no_targets, load, stream, low, span, cfg.include_query,
                                            p, r, slots, MODE_GRAD)
    return float(0.5 * np.mean((yhat - targets) ** 2)), _weight_grads(params, prefixes, d_p, d_r)


def _kernel(source, weights, targets_in, load, stream, low, span, include_query, p, r, slots, mode):
    """_lane_pass with its outputs allocated here: (yhat (B,), dP (S, H, D, D), dR, sensitivity
    (B or 0, D), maps (B or 0, K, D, D), targets (B,)); the chunks' gradients added in order."""
    batch, n_layers, dim, dtype = weights.shape[0], slots.shape[0], p.shape[2], p.dtype
    yhat, targets = np.zeros(batch, dtype), np.zeros(batch, dtype)
    sens = np.zeros((batch if mode == MODE_SENSITIVITY else 0, dim), dtype)
    maps = np.zeros((batch if mode == MODE_MAPS else 0, n_layers, dim, dim), dtype)
    d_p = np.zeros((min(N_CHUNKS, batch),) + p.shape, dtype)
    d_r = np.zeros_like(d_p)
    _lane_pass(source, weights, targets_in, load, stream, low, span, include_query, p, r, slots, mode,
               numba.config.NUMBA_NUM_THREADS, yhat, targets, sens, maps, d_p, d_r)
    return yhat, d_p.sum(axis=0), d_r.sum(axis=0), sens, maps, targets


def _pcg64_stream(rng: np.random.Generator, n_draws: int) -> np.ndarray:
    """The state and increment of rng's PCG64 as uint64 halves, and a zero: (s_hi, s_lo, c_hi,
    c_lo, 0), for the kernel to draw ``rng.uniform``'s next n_draws numbers itself; rng is
    advanced past them, as if it had drawn them."""
    state = rng.bit_generator.state["state"]
    words = [state["state"] >> 64, state["state"] & _LOW_64, state["inc"] >> 64, state["inc"] & _LOW_64, 0]
    rng.bit_generator.advance(n_draws)
    return np.array(words, np.uint64)


def set_threads(n: int) -> None:
    """numba's thread count for the parallel loops (results do not depend on it)."""
    numba.set_num_threads(n)
