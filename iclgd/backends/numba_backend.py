r"""The numba backend: the oracle's functions, compiled and parallel over the batch.

It computes the same model as the NumPy oracle by re-associating its products.  A layer
updates every token by ``E' = E + sum_h (E P_h C^T)(C R_h)`` with ``P_h = W_q[h] W_k[h]^T``
and ``R_h = W_v[h] W_o[h]`` (D x D), C the attended rows; so with the Gram matrix
``G = C^T C`` (D x D),

    E' = E M,    M = I + sum_h P_h G R_h,    and the next layer's   G' = M^T G M.

Per task, the whole forward pass runs on D x D matrices; N enters only in G_0 = C_0^T C_0.
The last layer is read at the query row a only:  a_K = a + sum_h (a P_h) G R_h,
yhat = -a_K[d].  A one-layer step at B = 2048, N = d = 10 drops from ~77 to ~4 MFLOP.

Backward, per task (bars are dL/d.; G symmetric; upstream abar, Gbar of layer l + 1):

    last layer, u_h = a P_h, s_h = u_h G:   dR_h += s_h^T abar,  sbar = R_h abar,  ubar = G sbar,
                                             Gbar += u_h^T sbar,  dP_h += a^T ubar,  abar += P_h ubar
    layer l < K - 1:  Mbar = a_l^T abar + G_l M_l (Gbar + Gbar^T);   abar <- M_l abar;
                      Gbar <- M_l Gbar M_l^T + sum_h P_h^T Mbar R_h^T;
                      dP_h += Mbar R_h^T G_l;   dR_h += G_l P_h^T Mbar
    input (query):    d yhat / d e_q = abar + (Gbar + Gbar^T) e_q   (the second term only when the
                      query is attended, i.e. part of G_0)

and finally dW_q = dP W_k, dW_k = dP^T W_q, dW_v = dR W_o^T, dW_o = W_v^T dR per head.

Parallelism: the batch is cut into a fixed number of chunks (not the thread count), each
chunk sums its tasks' gradients in order, and the chunks are added in order; so results do
not depend on the number of threads.  Tests hold every function to the oracle.

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
from numba import njit, prange

from iclgd.backends.base import Backend
from iclgd.models import WEIGHT_NAMES, LSAConfig, attention_products, layer_prefixes

N_CHUNKS = 32  # fixed partition of the batch: results are the same on any number of threads
FAST = {"reassoc", "contract"}  # vectorised sums and fused multiply-adds; NaN and inf still propagate

MODE_PREDICT, MODE_GRAD, MODE_SENSITIVITY = 0, 1, 2


# --- small dense kernels on D x D matrices and D-vectors ----------------------------------------


@njit(cache=True, fastmath=FAST)
def _mm(a, b, out):
    """out = a @ b (pass a.T or b.T for the transposed products: numba views, no copies)."""
    n, k, m = a.shape[0], a.shape[1], b.shape[1]
    for i in range(n):
        for j in range(m):
            acc = 0.0
            for t in range(k):
                acc += a[i, t] * b[t, j]
            out[i, j] = acc


@njit(cache=True, fastmath=FAST)
def _mv(a, v, out):
    """out = a @ v."""
    for i in range(a.shape[0]):
        acc = 0.0
        for t in range(a.shape[1]):
            acc += a[i, t] * v[t]
        out[i] = acc


@njit(cache=True, fastmath=FAST, inline="always")
def _gram_apply(e, n_attended, v, out, row_dots):
    """out = v G with G = C^T C, as (v C^T) C: 4 N D flops instead of forming G (N D^2)."""
    dim = e.shape[1]
    for row in range(n_attended):
        acc = 0.0
        for k in range(dim):
            acc += v[k] * e[row, k]
        row_dots[row] = acc
    for k in range(dim):
        acc = 0.0
        for row in range(n_attended):
            acc += row_dots[row] * e[row, k]
        out[k] = acc


@njit(cache=True, fastmath=FAST, inline="always")
def _task_tokens(inputs, weights, b, e):
    """Write task b's tokens into e (T, D): rows (x_i, w.x_i), then (x_q, 0), labels summed in
    float64 as task.sample does; return its target w.x_q."""
    n_tokens, d = inputs.shape[1], inputs.shape[2]
    label = 0.0
    for row in range(n_tokens):
        label = 0.0
        for k in range(d):
            e[row, k] = inputs[b, row, k]
            label += inputs[b, row, k] * weights[b, k]
        e[row, d] = label if row < n_tokens - 1 else 0.0
    return label


@njit(cache=True, fastmath=FAST, inline="always")
def _add_outer(out, u, v):
    """out += u v^T."""
    for i in range(u.shape[0]):
        for j in range(v.shape[0]):
            out[i, j] += u[i] * v[j]


# --- one task ------------------------------------------------------------------------------------


@njit(cache=True, fastmath=FAST)
def _task_pass(e, n_attended, p, r, slots, mode, target, inv_batch, d_p, d_r, sens_out, gs, ms, a_rows, u, s, work, vecs):
    """Forward (and, for mode != PREDICT, backward) of one task whose tokens are ``e`` (T, D).

    Returns yhat.  mode GRAD: with dL/dyhat = (yhat - target) * inv_batch (the half-MSE's), adds
    this task's dL/dP, dL/dR into d_p, d_r.  mode SENSITIVITY: writes d yhat / d e_q into sens_out (D,).  gs (K, D, D), ms (K, D, D),
    a_rows (K, D), u, s (H, D), work (6, D, D) and vecs (5, max(D, T)) are scratch."""
    n_layers, n_heads, dim = slots.shape[0], p.shape[1], e.shape[1]
    row_dots = vecs[4]
    if n_layers > 1:  # G_0 = C^T C: the lower triangle, then mirrored (one layer never forms it)
        g0 = gs[0]
        g0[:] = 0.0
        for row in range(n_attended):
            for i in range(dim):
                for j in range(i + 1):
                    g0[i, j] += e[row, i] * e[row, j]
        for i in range(dim):
            for j in range(i):
                g0[j, i] = g0[i, j]
    for i in range(dim):
        a_rows[0, i] = e[e.shape[0] - 1, i]
    t1, t2 = work[0], work[1]
    for layer in range(n_layers - 1):  # full layers: M_l, G_{l+1}, a_{l+1}
        slot = slots[layer]
        m = ms[layer]
        for i in range(dim):
            for j in range(dim):
                m[i, j] = 1.0 if i == j else 0.0
        for h in range(n_heads):
            _mm(p[slot, h], gs[layer], t1)
            _mm(t1, r[slot, h], t2)
            m += t2
        _mm(gs[layer], m, t1)
        _mm(m.T, t1, gs[layer + 1])
        _mv(m.T, a_rows[layer], a_rows[layer + 1])
    last = n_layers - 1
    slot = slots[last]
    a = a_rows[last]
    y_out = a[dim - 1]
    for h in range(n_heads):  # query row of the last layer
        _mv(p[slot, h].T, a, u[h])
        if n_layers == 1:
            _gram_apply(e, n_attended, u[h], s[h], row_dots)
        else:
            _mv(gs[last].T, u[h], s[h])  # s = u G
        for t in range(dim):
            y_out += s[h, t] * r[slot, h, t, dim - 1]
    yhat = -y_out
    if mode == MODE_PREDICT:
        return yhat
    upstream = (yhat - target) * inv_batch if mode == MODE_GRAD else 1.0

    # backward: abar = dL/da_K is -upstream at the y-slot and 0 elsewhere
    abar_out, abar, sbar, ubar = vecs[0, :dim], vecs[1, :dim], vecs[2, :dim], vecs[3, :dim]
    gbar = work[3]
    gbar[:] = 0.0
    abar[:] = 0.0
    abar[dim - 1] = -upstream
    # at the input of a one-layer model only the weight gradients are needed
    need_input_grads = mode == MODE_SENSITIVITY or n_layers > 1
    for h in range(n_heads):
        if mode == MODE_GRAD:
            for i in range(dim):  # dR_h += s_h^T abar: only the y column
                d_r[slot, h, i, dim - 1] -= s[h, i] * upstream
        for i in range(dim):  # sbar = R_h abar
            sbar[i] = -r[slot, h, i, dim - 1] * upstream
        if n_layers == 1:
            _gram_apply(e, n_attended, sbar, ubar, row_dots)
        else:
            _mv(gs[last], sbar, ubar)
        if mode == MODE_GRAD:
            _add_outer(d_p[slot, h], a, ubar)
        if need_input_grads:
            _add_outer(gbar, u[h], sbar)
            for i in range(dim):
                acc = 0.0
                for j in range(dim):
                    acc += p[slot, h, i, j] * ubar[j]
                abar[i] += acc
    mbar, gsym, gbar_new = work[4], work[5], work[1]
    for layer in range(n_layers - 2, -1, -1):
        slot = slots[layer]
        m, g = ms[layer], gs[layer]
        for i in range(dim):
            for j in range(dim):
                gsym[i, j] = gbar[i, j] + gbar[j, i]
        _mm(g, m, t1)
        _mm(t1, gsym, mbar)
        _add_outer(mbar, a_rows[layer], abar)
        _mv(m, abar, abar_out)  # abar_out now holds abar_l
        abar[:] = abar_out
        _mm(m, gbar, t1)
        _mm(t1, m.T, gbar_new)
        for h in range(n_heads):
            _mm(p[slot, h].T, mbar, t1)
            _mm(t1, r[slot, h].T, gsym)  # gsym reused as scratch: P^T Mbar R^T
            gbar_new += gsym
            if mode == MODE_GRAD:
                _mm(mbar, r[slot, h].T, t1)
                _mm(t1, g, gsym)
                d_p[slot, h] += gsym
                _mm(g, p[slot, h].T, t1)
                _mm(t1, mbar, gsym)
                d_r[slot, h] += gsym
        gbar[:] = gbar_new
    if mode == MODE_SENSITIVITY:
        for i in range(dim):
            sens_out[i] = abar[i]
        if n_attended == e.shape[0]:  # the query is one of G_0's rows
            q = e[e.shape[0] - 1]
            for i in range(dim):
                acc = 0.0
                for j in range(dim):
                    acc += (gbar[i, j] + gbar[j, i]) * q[j]
                sens_out[i] += acc
    return yhat


@njit(cache=True, fastmath=FAST)
def _scratch(n_layers, n_heads, dim, n_tokens, dtype_example):
    dt = dtype_example.dtype
    return (
        np.zeros((n_layers, dim, dim), dt),
        np.zeros((n_layers, dim, dim), dt),
        np.zeros((n_layers, dim), dt),
        np.zeros((n_heads, dim), dt),
        np.zeros((n_heads, dim), dt),
        np.zeros((6, dim, dim), dt),
        np.zeros((5, max(dim, n_tokens)), dt),
    )


@njit(parallel=True, cache=True, fastmath=FAST)
def _batch_pass(tokens, targets, include_query, p, r, slots, mode):
    """All tasks: returns (yhat (B,), dP (S, H, D, D), dR, sensitivity (B, D)).
    mode GRAD uses dL/dyhat = (yhat - y) / B for the half-MSE."""
    batch, n_tokens, dim = tokens.shape
    n_attended = n_tokens if include_query else n_tokens - 1
    n_layers, n_heads = slots.shape[0], p.shape[1]
    yhat = np.zeros(batch, tokens.dtype)
    sens = np.zeros((batch, dim), tokens.dtype)
    n_chunks = min(N_CHUNKS, batch)
    d_p = np.zeros((n_chunks,) + p.shape, p.dtype)
    d_r = np.zeros((n_chunks,) + r.shape, r.dtype)
    for chunk in prange(n_chunks):
        gs, ms, a_rows, u, s, work, vecs = _scratch(n_layers, n_heads, dim, n_tokens, tokens[0, 0])
        for b in range(chunk * batch // n_chunks, (chunk + 1) * batch // n_chunks):
            yhat[b] = _task_pass(tokens[b], n_attended, p, r, slots, mode, targets[b], 1.0 / batch,
                                 d_p[chunk], d_r[chunk], sens[b], gs, ms, a_rows, u, s, work, vecs)
    return yhat, d_p.sum(axis=0), d_r.sum(axis=0), sens


@njit(parallel=True, cache=True, fastmath=FAST)
def _sampled_grad_pass(weights, inputs, include_query, p, r, slots):
    """The GRAD pass of _batch_pass on noise-free tasks given as w (B, d) and x (B, N + 1, d)
    (float64 draws), building each task's tokens (x_i, w.x_i), (x_q, 0) and target w.x_q in
    the parameters' dtype on the fly.  Returns (yhat, dP, dR, targets)."""
    batch, n_tokens, d = inputs.shape
    dim = d + 1
    n_attended = n_tokens if include_query else n_tokens - 1
    n_layers, n_heads = slots.shape[0], p.shape[1]
    yhat = np.zeros(batch, p.dtype)
    targets = np.zeros(batch, p.dtype)
    n_chunks = min(N_CHUNKS, batch)
    d_p = np.zeros((n_chunks,) + p.shape, p.dtype)
    d_r = np.zeros((n_chunks,) + r.shape, r.dtype)
    for chunk in prange(n_chunks):
        e = np.zeros((n_tokens, dim), p.dtype)
        sens = np.zeros(dim, p.dtype)
        gs, ms, a_rows, u, s, work, vecs = _scratch(n_layers, n_heads, dim, n_tokens, e[0])
        for b in range(chunk * batch // n_chunks, (chunk + 1) * batch // n_chunks):
            targets[b] = _task_tokens(inputs, weights, b, e)
            yhat[b] = _task_pass(e, n_attended, p, r, slots, MODE_GRAD, targets[b], 1.0 / batch, d_p[chunk], d_r[chunk],
                                 sens, gs, ms, a_rows, u, s, work, vecs)
    return yhat, d_p.sum(axis=0), d_r.sum(axis=0), targets


@njit(parallel=True, cache=True, fastmath=FAST)
def _one_layer_sampled_grad_pass(weights, inputs, include_query, p, r):
    """The training hot path for one layer: _sampled_grad_pass with the one-layer algebra
    written out (no G: v G = (v C^T) C), about 800 multiply-adds a task.

    Per task, a = (x_q, 0); per head u = a P_h, s = (u C^T) C, yhat = -(s R_h)[d];
    with c = (yhat - y) / B:  dR_h[:, d] += -c s,  sbar = -c R_h[:, d],  ubar = (sbar C^T) C,
    dP_h += a^T ubar."""
    batch, n_tokens, d = inputs.shape
    dim, n_heads = d + 1, p.shape[1]
    n_attended = n_tokens if include_query else n_tokens - 1
    dtype = p.dtype
    yhat = np.zeros(batch, dtype)
    targets = np.zeros(batch, dtype)
    n_chunks = min(N_CHUNKS, batch)
    d_p = np.zeros((n_chunks, n_heads, dim, dim), dtype)
    d_r = np.zeros((n_chunks, n_heads, dim), dtype)
    for chunk in prange(n_chunks):
        e = np.zeros((n_tokens, dim), dtype)
        u = np.zeros((n_heads, dim), dtype)
        s = np.zeros((n_heads, dim), dtype)
        dots = np.zeros(n_tokens, dtype)
        sbar = np.zeros(dim, dtype)
        ubar = np.zeros(dim, dtype)
        for b in range(chunk * batch // n_chunks, (chunk + 1) * batch // n_chunks):
            targets[b] = _task_tokens(inputs, weights, b, e)
            q = e[n_tokens - 1]
            out = 0.0
            for h in range(n_heads):
                for j in range(dim):  # u = q P_h (row-major: the inner loop walks a row of P)
                    u[h, j] = 0.0
                for k in range(dim):
                    for j in range(dim):
                        u[h, j] += q[k] * p[0, h, k, j]
                _gram_apply(e, n_attended, u[h], s[h], dots)
                for k in range(dim):
                    out += s[h, k] * r[0, h, k, d]
            yhat[b] = -(q[d] + out)
            c = (yhat[b] - targets[b]) / batch
            for h in range(n_heads):
                for k in range(dim):
                    d_r[chunk, h, k] -= c * s[h, k]
                    sbar[k] = -c * r[0, h, k, d]
                _gram_apply(e, n_attended, sbar, ubar, dots)
                _add_outer(d_p[chunk, h], q, ubar)
    full_d_r = np.zeros((1, n_heads, dim, dim), dtype)
    full_d_r[0, :, :, d] = d_r.sum(axis=0)
    return yhat, d_p.sum(axis=0).reshape((1, n_heads, dim, dim)), full_d_r, targets


@njit(parallel=True, cache=True, fastmath=FAST)
def _layer_maps(tokens, include_query, p, r, slots):
    """Every layer's M_l (B, K, D, D), for ``forward``: E_{l+1} = E_l M_l."""
    batch, n_tokens, dim = tokens.shape
    n_attended = n_tokens if include_query else n_tokens - 1
    n_layers, n_heads = slots.shape[0], p.shape[1]
    maps = np.zeros((batch, n_layers, dim, dim), tokens.dtype)
    for b in prange(batch):
        g = np.zeros((dim, dim), tokens.dtype)
        t1 = np.zeros((dim, dim), tokens.dtype)
        t2 = np.zeros((dim, dim), tokens.dtype)
        for i in range(dim):
            for j in range(dim):
                acc = 0.0
                for row in range(n_attended):
                    acc += tokens[b, row, i] * tokens[b, row, j]
                g[i, j] = acc
        for layer in range(n_layers):
            m = maps[b, layer]
            for i in range(dim):
                m[i, i] = 1.0
            for h in range(n_heads):
                _mm(p[slots[layer], h], g, t1)
                _mm(t1, r[slots[layer], h], t2)
                m += t2
            _mm(g, m, t1)
            _mm(m.T, t1, g)
    return maps


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


def _entry_kernels():
    """The kernels the backend calls from Python (the others are compiled into them)."""
    return (_batch_pass, _sampled_grad_pass, _one_layer_sampled_grad_pass, _layer_maps)


def uncached_kernels() -> list[str]:
    """Names of the entry kernels with no compiled copy in numba's on-disk cache yet.

    Every kernel is compiled with ``cache=True``: the first process on a machine compiles them
    (about a minute on 2 cores) and writes them next to this file (``__pycache__``, or numba's
    user cache when that folder is read-only); later processes load them in well under a second."""
    missing = []
    for kernel in _entry_kernels():
        cache = getattr(kernel, "_cache", None)
        folder = Path(getattr(cache, "cache_path", "") or "")
        name = kernel.py_func.__name__
        if not folder.is_dir() or not any(folder.glob(f"numba_backend.{name}-*.nbi")):
            missing.append(name)
    return missing


class NumbaBackend(Backend):
    """Compiled, batch-parallel backend: the public methods of ``Backend`` validate the inputs,
    these run the kernels above.  Constructing it says on stderr when the kernels are not in
    numba's disk cache yet, i.e. when the first calls will compile them."""

    name = "numba"

    def __init__(self):
        # idle OpenMP threads spin briefly, then sleep (module doc); an explicit setting wins
        if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
            os.environ["GOMP_SPINCOUNT"] = "10000"
        if uncached_kernels():
            print("iclgd: compiling the numba kernels for this machine (once, about a minute on 2 cores); "
                  "later runs load them from numba's disk cache", file=sys.stderr)

    def _run(self, cfg, params, tokens, targets, mode):
        p, r, slots, prefixes = _products(cfg, params)
        yhat, d_p, d_r, sens = _batch_pass(np.ascontiguousarray(tokens), targets, cfg.include_query, p, r, slots, mode)
        return yhat, d_p, d_r, sens, prefixes

    def _forward(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> list[np.ndarray]:
        """Every layer's tokens [E_0, ..., E_K], each (B, N + 1, d + 1)."""
        p, r, slots, _ = _products(cfg, params)
        maps = _layer_maps(np.ascontiguousarray(tokens), cfg.include_query, p, r, slots)
        states = [tokens]
        for layer in range(cfg.n_layers):
            states.append(states[-1] @ maps[:, layer])
        return states

    def _predict(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        dummy = np.zeros(tokens.shape[0], tokens.dtype)
        return self._run(cfg, params, tokens, dummy, MODE_PREDICT)[0]

    def _loss_and_grad(self, cfg: LSAConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        yhat, d_p, d_r, _, prefixes = self._run(cfg, params, tokens, targets, MODE_GRAD)
        return float(0.5 * np.mean((yhat - targets) ** 2)), _weight_grads(params, prefixes, d_p, d_r)

    def _sensitivity(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        dummy = np.zeros(tokens.shape[0], tokens.dtype)
        return self._run(cfg, params, tokens, dummy, MODE_SENSITIVITY)[3][:, :-1]

    def _sample_loss_and_grad(self, cfg, task, params, batch_size, rng):
        """Noise-free float64 tasks: the same draws as ``task.sample`` (w, then x), with labels,
        tokens and the gradient built in one compiled pass; other tasks go through ``task.sample``."""
        if task.noise_std > 0 or task.n_distractors > 0 or task.dtype != "float64":
            return super()._sample_loss_and_grad(cfg, task, params, batch_size, rng)
        weights, inputs = task.draw_weights_and_inputs(batch_size, rng)
        p, r, slots, prefixes = _products(cfg, params)
        if cfg.n_layers == 1:
            yhat, d_p, d_r, targets = _one_layer_sampled_grad_pass(weights, inputs, cfg.include_query, p, r)
        else:
            yhat, d_p, d_r, targets = _sampled_grad_pass(weights, inputs, cfg.include_query, p, r, slots)
        return float(0.5 * np.mean((yhat - targets) ** 2)), _weight_grads(params, prefixes, d_p, d_r)


def set_threads(n: int) -> None:
    """numba's thread count for the parallel loops (results do not depend on it)."""
    numba.set_num_threads(n)
