r"""Backend-parity benchmarks: every installed backend on the same work, timed and checked.

For 1- and 4-layer LSA at B = 2048, N = d = 10, in float32 and float64, three operations:

* ``forward``:  ``predict`` on a fixed batch;
* ``forward+backward``: ``loss_and_grad`` on a fixed batch;
* ``train step``: one full update including sampling, through the backend's trainer
  (host sampler for numpy / numba; jax's on-device sampler for jax), timed over blocks of steps.

Reported: the median over repeats after warm-up (ms), GFLOP/s against the FLOP count of the
naive formulation (below; the fast backends do far fewer), and the largest deviation from the
NumPy oracle on the same inputs (relative to the oracle's largest value; for ``train step``,
the params after one step from the same state on the same batch, host sampler).

Naive FLOPs (2 per multiply-add) of one layer and head, B tasks, T = N + 1 rows, N_k attended rows:

    forward   2 B [T D k (Q) + N_k D k (K) + N_k D v (V) + T N_k k (S) + T N_k v (Z) + T v D (out)]
    backward  2 B [T D v (dZ) + T v N_k (dS) + N_k T v (dV) + T N_k k (dQ) + N_k T k (dK)
                   + T v D (dW_o) + T D k (dW_q) + N_k D k (dW_k) + N_k D v (dW_v)]
              + 2 B [T k D + N_k k D + N_k v D]  (the gradient to the layer's input; not for layer 0)

summed over layers and heads.  For one layer at B = 2048, N = d = 10 a training step is
76.8 MFLOP, the design notes' "~77".
"""
from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path

import numpy as np

from iclgd import runio
from iclgd.backends import available_backends, get_backend
from iclgd.checks import relative_error
from iclgd.backends.training import initial_state
from iclgd.config import RunConfig, TrainConfig
from iclgd.models import LSAConfig, init_params
from iclgd.tasks import LinearRegressionTask

OPERATIONS = ("forward", "forward+backward", "train step")
#: where `iclgd bench` writes without --out (the recorded results are in benchmarks/results)
DEFAULT_OUT = "runs/bench"


def naive_flops(cfg: LSAConfig, batch_size: int, n_context: int) -> tuple[float, float]:
    """(forward, backward) FLOPs of the naive token-by-token formulation (module doc)."""
    t, dim, k, v = n_context + 1, cfg.token_size, cfg.key_size, cfg.value_size
    n_k = t if cfg.include_query else n_context
    forward = t * dim * k + n_k * dim * k + n_k * dim * v + t * n_k * k + t * n_k * v + t * v * dim
    backward = t * dim * v + 2 * t * v * n_k + 2 * t * n_k * k + t * v * dim + t * dim * k + n_k * dim * k + n_k * dim * v
    input_grad = t * k * dim + n_k * k * dim + n_k * v * dim
    per_head = 2 * batch_size * cfg.n_heads
    return (float(per_head * forward * cfg.n_layers),
            float(per_head * (backward * cfg.n_layers + input_grad * (cfg.n_layers - 1))))


def installed_backends() -> list[str]:
    names = []
    for name in available_backends():
        try:
            get_backend(name)
        except ImportError:
            continue
        names.append(name)
    return names


def median_seconds(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _relative_deviation(ours, truth) -> float:
    """max |ours - truth| / max |truth| (over every parameter for dicts)."""
    if isinstance(truth, dict):
        return relative_error(ours, truth)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - truth)) / max(float(np.max(np.abs(truth))), 1e-300))


def run_config(n_layers: int, dtype: str, backend: str, batch_size: int) -> RunConfig:
    task = LinearRegressionTask(d=10, n_context=10)
    model = LSAConfig(d=10, n_layers=n_layers, n_context=10, dtype=dtype)
    sampler = "jax" if backend == "jax" else "numpy"
    train = TrainConfig(steps=10**6, batch_size=batch_size, lr=1e-3, backend=backend, sampler=sampler)
    return RunConfig(task, model, train)


def bench_case(name: str, n_layers: int, dtype: str, batch_size: int, repeats: int, warmup: int, block: int) -> list[dict]:
    """The three operations of one backend, model depth and dtype."""
    backend, oracle = get_backend(name), get_backend("numpy")
    config = run_config(n_layers, dtype, name, batch_size)
    cfg = config.model
    params = init_params(cfg, seed=0, scale=0.2)  # O(1) predictions through 4 layers
    batch = config.task.sample(batch_size, seed=1)
    forward_flops, backward_flops = naive_flops(cfg, batch_size, config.task.n_context)
    rows = []

    seconds = median_seconds(lambda: backend.predict(cfg, params, batch.tokens), repeats, warmup)
    deviation = _relative_deviation(backend.predict(cfg, params, batch.tokens), oracle.predict(cfg, params, batch.tokens))
    rows.append(("forward", seconds, forward_flops, deviation))

    seconds = median_seconds(lambda: backend.loss_and_grad(cfg, params, batch), repeats, warmup)
    deviation = _relative_deviation(backend.loss_and_grad(cfg, params, batch)[1], oracle.loss_and_grad(cfg, params, batch)[1])
    rows.append(("forward+backward", seconds, forward_flops + backward_flops, deviation))

    trainer = backend.trainer(config)
    state = initial_state(config)
    state, _ = trainer.advance(state, block)  # compile and warm up
    per_step = median_seconds(lambda: trainer.advance(state, block), repeats, 1) / block
    host = dataclasses.replace(config, train=dataclasses.replace(config.train, sampler="numpy"))
    one_step, _ = backend.trainer(host).advance(initial_state(host), 1)
    truth, _ = oracle.trainer(host).advance(initial_state(host), 1)
    rows.append(("train step", per_step, forward_flops + backward_flops, _relative_deviation(one_step.params, truth.params)))
    return [
        {"backend": name, "n_layers": n_layers, "dtype": dtype, "operation": op, "batch_size": batch_size,
         "ms": 1e3 * s, "naive_gflops_per_s": f / s / 1e9, "max_rel_deviation_from_oracle": dev}
        for op, s, f, dev in rows
    ]


def run(backends: list[str] | None = None, layers=(1, 4), dtypes=("float32", "float64"), batch_size: int = 2048,
        repeats: int = 30, warmup: int = 3, block: int = 10) -> dict:
    backends = backends or installed_backends()
    rows = []
    for name in backends:
        for n_layers in layers:
            for dtype in dtypes:
                rows.extend(bench_case(name, n_layers, dtype, batch_size, repeats, warmup, block))
    return {"machine": machine_description(), "batch_size": batch_size, "repeats": repeats, "rows": rows}


def machine_description() -> str:
    import os

    parts = [platform.processor() or platform.machine(), f"{os.cpu_count()} cores", f"python {platform.python_version()}",
             f"numpy {np.__version__}"]
    try:
        import jax

        parts.append(f"jax {jax.__version__} on {jax.devices()[0].platform} x{len(jax.devices())}")
    except ImportError:
        pass
    try:
        import numba

        parts.append(f"numba {numba.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; B = {results['batch_size']}, N = d = 10; median of {results['repeats']} repeats.", "",
             "| backend | layers | dtype | operation | ms | GFLOP/s (naive count) | max rel. deviation from oracle |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['backend']} | {r['n_layers']} | {r['dtype']} | {r['operation']} | {r['ms']:.3f} | "
                     f"{r['naive_gflops_per_s']:.1f} | {r['max_rel_deviation_from_oracle']:.1e} |")
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    runio.write_json(json_path, results)
    runio.atomic_write_text(md_path, markdown(results))
    return json_path, md_path

