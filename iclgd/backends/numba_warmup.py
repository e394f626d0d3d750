"""Compile every numba kernel now, into numba's disk cache, in one process.

numba compiles a kernel the first time it is called with a new type signature and, with
``cache=True``, writes the machine code next to its source file; later processes load it in
well under a second.  On a fresh install the first calls therefore cost minutes of CPU, and
several processes that start at once (pytest's workers, the subprocesses of the walkthrough
tests) would each compile the same kernels.  ``compile_kernels()`` calls each entry point once,
on tiny inputs, in every signature the library uses (float32 and float64; tokens given, tasks
drawn from NumPy's PCG64 stream, tasks drawn from the Philox stream):

    python -m iclgd.backends.numba_warmup        # prints what it compiled and how long it took
"""
from __future__ import annotations

import time

import numpy as np

from iclgd.backends.numba_backend import NumbaBackend
from iclgd.backends.numba_philox import philox4x32_10, philox_sampled_grad, philox_task_batch, tokens_and_targets
from iclgd.models import LSAConfig, init_params
from iclgd.tasks import LinearRegressionTask

DTYPES = ("float32", "float64")


def compile_kernels() -> dict[str, float]:
    """Call every numba entry point once per dtype; returns the seconds each dtype took (about
    a minute each when nothing is cached yet, well under a second when everything is)."""
    backend = NumbaBackend()
    seconds = {}
    for dtype in DTYPES:
        start = time.perf_counter()
        cfg = LSAConfig(d=2, n_layers=2, dtype=dtype)
        task = LinearRegressionTask(d=2, n_context=3)
        params = init_params(cfg, seed=0, scale=0.1)
        batch = task.sample(4, np.random.default_rng(0))
        backend.forward(cfg, params, batch.tokens)
        backend.predict(cfg, params, batch.tokens)
        backend.sensitivity(cfg, params, batch.tokens)
        backend.loss_and_grad(cfg, params, batch)
        backend.sample_loss_and_grad(cfg, task, params, 4, np.random.default_rng(0))
        tokens_and_targets(*philox_task_batch(0, 0, 4, 3, 2, 1.0, dtype))
        philox_sampled_grad(cfg, params, 0, 0, 4, 3, 1.0)
        if dtype == DTYPES[0]:
            philox4x32_10(np.zeros((1, 4), np.uint32), np.zeros((1, 2), np.uint32))  # integer words: one specialisation
        seconds[dtype] = time.perf_counter() - start
    return seconds


def main() -> None:
    for dtype, elapsed in compile_kernels().items():
        print(f"numba kernels ready for {dtype}: {elapsed:.1f} s")


if __name__ == "__main__":
    main()
