r"""Backend-parity benchmarks: every installed backend on the same work, timed, checked, and
set against the machine's floor.

For 1- and 4-layer LSA at B = 2048, N = d = 10, in float32 and float64, three operations:

* ``forward``:  ``predict`` on a fixed batch;
* ``forward+backward``: ``loss_and_grad`` on a fixed batch;
* ``train step``: one full update including sampling, through the backend's trainer
  (host sampler for numpy / numba; jax's on-device sampler for jax), timed over blocks of steps;
  numba also has ``train step (philox)``, the same on its Philox stream (sampler "philox": the
  batch drawn inside the kernel, iclgd.backends.numba_philox).

Reported per row: the median over repeats after warm-up (ms); GFLOP/s against the FLOP count of
the naive formulation (below; the fast backends do far fewer); the largest deviation from the
NumPy oracle on the same inputs (relative to the oracle's largest value; for ``train step``,
the params after one step from the same state on the same batch, host sampler; for ``train step
(philox)``, the gradient on the stream's first batch against the oracle's on the same draws, in
float64); and the floor.

Load.  With ``contended=True`` the same timings run a second time while busy-loop processes
(one per usable core by default, ``busy_cores``) keep every core busy; they are started before
and stopped after that pass, in a ``finally``.  Rows then carry both medians (``ms``,
``ms_contended``).  numba rows can be timed at several thread counts (``numba_threads``), and
``choose=True`` records what ``iclgd.backends.choice.choose_backend`` picks under each load.

The floor.  What a row's work costs at this machine's attainable rates, measured in the same run
(``calibrate``: a large matmul through NumPy's BLAS, in the row's dtype, for FLOP/s; NumPy's
generator for normal and uniform draws per second):

    floor = flops / (BLAS FLOP/s) + normals / (normals/s) + uniforms / (uniforms/s)

with flops the re-associated formulation's (``reassociated_flops``, the algebra of
iclgd/backends/numba_backend.py; a training step adds its labels, 2 B (N + 1) d) and the draws
those of a training step only: B d normals (w) and B (N + 1) d uniforms (x).  ``ms_over_floor``
= measured / floor (the contended pass against the same, quiet, floor).  It is a floor, not a
target: 11 x 11 products cannot run at a large matmul's rate, and the draw rate is one core's
(NumPy's generator is sequential, as is every host sampler here).

Naive FLOPs (2 per multiply-add) of one layer and head, B tasks, T = N + 1 rows, N_k attended rows:

    forward   2 B [T D k (Q) + N_k D k (K) + N_k D v (V) + T N_k k (S) + T N_k v (Z) + T v D (out)]
    backward  2 B [T D v (dZ) + T v N_k (dS) + N_k T v (dV) + T N_k k (dQ) + N_k T k (dK)
                   + T v D (dW_o) + T D k (dW_q) + N_k D k (dW_k) + N_k D v (dW_v)]
              + 2 B [T k D + N_k k D + N_k v D]  (the gradient to the layer's input; not for layer 0)

summed over layers and heads.  For one layer at B = 2048, N = d = 10 a training step is
76.8 MFLOP, the design notes' "~77".
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
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
#: numba's extra row: the training step on its own Philox stream (sampler "philox", drawn inside the kernel)
PHILOX_STEP = "train step (philox)"
#: where `iclgd bench` writes without --out (the recorded results are in benchmarks/results)
DEFAULT_OUT = "runs/bench"


# --- work counts --------------------------------------------------------------------------------


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


def reassociated_flops(cfg: LSAConfig, batch_size: int, n_context: int) -> tuple[float, float]:
    r"""(forward, backward) FLOPs of the re-associated formulation that the numba backend computes
    (its module docstring), as 2 x the multiply-adds (a lone multiply counts as one; lone additions
    are not counted).  D = d + 1, H heads, K layers, N_k attended rows, S distinct layers (1 when
    tied, else K), k, v the key and value sizes.  Per task:

    forward, K = 1 (G never formed: u G = (u C^T) C):
        H [D^2 (u = a P) + 2 N_k D (s = (u C^T) C) + D (yhat)]
    forward, K > 1:
        N_k D (D + 1) / 2 (G_0 = C^T C, one triangle)
        + (K - 1) [2 H D^3 (M = I + sum_h P_h G R_h) + 2 D^3 (G' = M^T G M) + D^2 (a' = a M)]
        + H [2 D^2 (u = a P, s = u G) + D (yhat)]
    backward, last layer, per head:
        2 D (dR's y column, sbar) + D^2 (dP += a^T ubar) + (2 N_k D if K = 1 else D^2) (ubar = G sbar)
        + (K > 1 only) 2 D^2 (Gbar += u^T sbar, abar += P ubar)
    backward, each layer l < K - 1:
        2 D^3 (Mbar) + D^2 (a^T abar) + D^2 (abar = M abar) + 2 D^3 (M Gbar M^T)
        + H [2 D^3 (P^T Mbar R^T) + 2 D^3 (dP) + 2 D^3 (dR)]

(as the docstring's algebra lists it: layer 0's Gbar and abar are computed though a weight
gradient does not need them).  Per step, not per task: the products P_h = W_q W_k^T and
R_h = W_v W_o, S H (D^2 k + D^2 v), in the forward; the chain rule to the weights,
S H (2 D^2 k + 2 D^2 v), in the backward.  For K = 1, d = N = 10 that is 352 + 363 multiply-adds
a task; at B = 2048, 2.9 MFLOP for loss and gradient against the naive 76.8."""
    if not isinstance(cfg, LSAConfig):
        raise ValueError(f"cfg must be an iclgd.LSAConfig; got {type(cfg).__name__}")
    for name, value in (("batch_size", batch_size), ("n_context", n_context)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    dim, h, n_layers, k, v = cfg.token_size, cfg.n_heads, cfg.n_layers, cfg.key_size, cfg.value_size
    n_k = n_context + 1 if cfg.include_query else n_context
    distinct = 1 if cfg.tied else n_layers
    if n_layers == 1:
        forward = h * (dim**2 + 2 * n_k * dim + dim)
        backward = h * (2 * dim + dim**2 + 2 * n_k * dim)
    else:
        forward = (n_k * dim * (dim + 1) // 2 + (n_layers - 1) * (2 * h * dim**3 + 2 * dim**3 + dim**2)
                   + h * (2 * dim**2 + dim))
        backward = (h * (2 * dim + dim**2 + dim**2 + 2 * dim**2)
                    + (n_layers - 1) * (4 * dim**3 + 2 * dim**2 + 6 * h * dim**3))
    per_step_forward = distinct * h * (dim * dim * k + dim * dim * v)
    per_step_backward = distinct * h * (2 * dim * dim * k + 2 * dim * dim * v)
    return (float(2 * (batch_size * forward + per_step_forward)), float(2 * (batch_size * backward + per_step_backward)))


def step_draws(task: LinearRegressionTask, batch_size: int) -> tuple[int, int]:
    """(normals, uniforms) a noise-free training step draws: w (B, d), x (B, N + 1, d)."""
    return batch_size * task.d, batch_size * (task.n_context + 1) * task.d


def label_flops(task: LinearRegressionTask, batch_size: int) -> float:
    """FLOPs of a step's labels y = x w: 2 B (N + 1) d."""
    return float(2 * batch_size * (task.n_context + 1) * task.d)


# --- the machine's rates and the floor --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Attainable rates measured on this machine: BLAS matmul FLOP/s per dtype, and NumPy
    generator (PCG64) draws per second, float64."""

    float32_flops_per_s: float
    float64_flops_per_s: float
    normals_per_s: float
    uniforms_per_s: float

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{field.name} must be a positive finite rate; got {value!r}")

    def flops_per_s(self, dtype: str) -> float:
        rates = {"float32": self.float32_flops_per_s, "float64": self.float64_flops_per_s}
        if dtype not in rates:
            raise ValueError(f"dtype must be float32 or float64; got {dtype!r}")
        return rates[dtype]


def calibrate(matmul_size: int = 1024, n_draws: int = 2**22, repeats: int = 5, seed: int = 0) -> Calibration:
    """Median rates over ``repeats`` after one warm-up: an n x n matmul (2 n^3 FLOPs) per dtype;
    ``n_draws`` standard normals and uniforms on (-1, 1) from ``np.random.default_rng(seed)``."""
    for name, value in (("matmul_size", matmul_size), ("n_draws", n_draws), ("repeats", repeats)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    rng = np.random.default_rng(seed)
    rates = {}
    for dtype in ("float32", "float64"):
        a = rng.standard_normal((matmul_size, matmul_size)).astype(dtype)
        b = rng.standard_normal((matmul_size, matmul_size)).astype(dtype)
        rates[dtype] = 2.0 * matmul_size**3 / median_seconds(lambda: a @ b, repeats, 1)
    normals = n_draws / median_seconds(lambda: rng.standard_normal(n_draws), repeats, 1)
    uniforms = n_draws / median_seconds(lambda: rng.uniform(-1.0, 1.0, n_draws), repeats, 1)
    return Calibration(rates["float32"], rates["float64"], normals, uniforms)


def floor_seconds(flops: float, normals: float, uniforms: float, dtype: str, calibration: Calibration) -> float:
    """flops / FLOP/s(dtype) + normals / normals/s + uniforms / uniforms/s."""
    if min(flops, normals, uniforms) < 0:
        raise ValueError(f"expected nonnegative counts; got flops = {flops}, normals = {normals}, uniforms = {uniforms}")
    return (flops / calibration.flops_per_s(dtype) + normals / calibration.normals_per_s
            + uniforms / calibration.uniforms_per_s)


def row_work(operation: str, cfg: LSAConfig, task: LinearRegressionTask, batch_size: int) -> tuple[float, int, int]:
    """(flops, normals, uniforms) of one operation in the re-associated formulation."""
    forward, backward = reassociated_flops(cfg, batch_size, task.n_context)
    if operation == "forward":
        return forward, 0, 0
    if operation == "forward+backward":
        return forward + backward, 0, 0
    if operation in ("train step", PHILOX_STEP):
        return (forward + backward + label_flops(task, batch_size), *step_draws(task, batch_size))
    raise ValueError(f"operation must be one of {OPERATIONS + (PHILOX_STEP,)}; got {operation!r}")


# --- load ---------------------------------------------------------------------------------------


def _spin(ready, stop) -> None:
    """A busy loop (a child process's whole life): report the pid, then spin until ``stop`` is set."""
    ready.put(os.getpid())
    while not stop.is_set():
        for _ in range(100_000):
            pass


@contextlib.contextmanager
def busy_cores(n_processes: int | None = None, start_timeout: float = 60.0):
    """Keep ``n_processes`` (default: one per usable core) busy-loop processes running for the
    body; yields their pids.  They are started (and spinning) before the body runs and are
    stopped, killed if need be, and reaped after it, also when it raises."""
    from iclgd.backends.choice import usable_cores

    n = usable_cores() if n_processes is None else n_processes
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n_processes must be a positive integer; got {n_processes!r}")
    context = multiprocessing.get_context("spawn")  # no fork of a process that runs numba / jax threads
    ready, stop = context.Queue(), context.Event()
    processes = []
    try:
        for _ in range(n):
            process = context.Process(target=_spin, args=(ready, stop), daemon=True)
            process.start()
            processes.append(process)
        pids = [ready.get(timeout=start_timeout) for _ in processes]
        yield pids
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=2.0)
            if process.is_alive():
                process.kill()
                process.join()
        ready.close()
        ready.join_thread()


# --- timing ---------------------------------------------------------------------------------------


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


@contextlib.contextmanager
def _numba_threads(name: str, threads: int | None):
    """numba's thread count ``threads`` for the body (restored after); yields the count in use
    (None for the other backends)."""
    if name != "numba":
        yield None
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(before if threads is None else threads)
    try:
        yield numba.get_num_threads()
    finally:
        numba.set_num_threads(before)


def bench_case(name: str, n_layers: int, dtype: str, batch_size: int, repeats: int, warmup: int, block: int,
               threads: int | None = None, check: bool = True) -> list[dict]:
    """The three operations of one backend, model depth and dtype (numba at ``threads`` threads,
    default its current count); ``check=False`` skips the comparison with the oracle."""
    backend, oracle = get_backend(name), get_backend("numpy")
    config = run_config(n_layers, dtype, name, batch_size)
    cfg = config.model
    params = init_params(cfg, seed=0, scale=0.2)  # O(1) predictions through 4 layers
    batch = config.task.sample(batch_size, seed=1)
    forward_flops, backward_flops = naive_flops(cfg, batch_size, config.task.n_context)
    rows = []
    with _numba_threads(name, threads) as n_threads:
        seconds = median_seconds(lambda: backend.predict(cfg, params, batch.tokens), repeats, warmup)
        deviation = (_relative_deviation(backend.predict(cfg, params, batch.tokens), oracle.predict(cfg, params, batch.tokens))
                     if check else None)
        rows.append(("forward", seconds, forward_flops, deviation))

        seconds = median_seconds(lambda: backend.loss_and_grad(cfg, params, batch), repeats, warmup)
        deviation = (_relative_deviation(backend.loss_and_grad(cfg, params, batch)[1], oracle.loss_and_grad(cfg, params, batch)[1])
                     if check else None)
        rows.append(("forward+backward", seconds, forward_flops + backward_flops, deviation))

        trainer = backend.trainer(config)
        state = initial_state(config)
        state, _ = trainer.advance(state, block)  # compile and warm up
        per_step = median_seconds(lambda: trainer.advance(state, block), repeats, 1) / block
        deviation = None
        if check:
            host = dataclasses.replace(config, train=dataclasses.replace(config.train, sampler="numpy"))
            one_step, _ = backend.trainer(host).advance(initial_state(host), 1)
            truth, _ = oracle.trainer(host).advance(initial_state(host), 1)
            deviation = _relative_deviation(one_step.params, truth.params)
        rows.append(("train step", per_step, forward_flops + backward_flops, deviation))
        if name == "numba":
            per_step, deviation = _philox_step(config, repeats, block, check)
            rows.append((PHILOX_STEP, per_step, forward_flops + backward_flops, deviation))
    return [
        {"backend": name, "threads": n_threads, "n_layers": n_layers, "dtype": dtype, "operation": op,
         "batch_size": batch_size, "ms": 1e3 * s, "naive_gflops_per_s": f / s / 1e9, "max_rel_deviation_from_oracle": dev}
        for op, s, f, dev in rows
    ]


def _philox_step(config: RunConfig, repeats: int, block: int, check: bool) -> tuple[float, float | None]:
    """(seconds a step, deviation) of numba's trainer on the Philox stream (sampler "philox"); the
    deviation is that of the gradient of step 0's batch from the oracle's on the same draws."""
    from iclgd.backends.numba_philox import philox_sampled_grad, philox_task_batch
    from iclgd.tasks.examples import Examples
    from iclgd.tokens.constructed import encode

    config = dataclasses.replace(config, train=dataclasses.replace(config.train, sampler="philox"))
    cfg, task, train = config.model, config.task, config.train
    trainer = get_backend("numba").trainer(config)
    state, _ = trainer.advance(initial_state(config), block)  # warm up
    per_step = median_seconds(lambda: trainer.advance(state, block), repeats, 1) / block
    if not check:
        return per_step, None
    params = init_params(cfg, seed=0, scale=0.2)
    w, x = philox_task_batch(train.seed, 0, train.batch_size, task.n_context, task.d, task.x_scale, cfg.dtype)
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    batch = encode(Examples(x64, np.einsum("btd,bd->bt", x64, w64), w64), "float64")
    cfg64 = dataclasses.replace(cfg, dtype="float64")
    truth = get_backend("numpy").loss_and_grad(cfg64, {k: v.astype(np.float64) for k, v in params.items()}, batch)[1]
    ours = philox_sampled_grad(cfg, params, train.seed, 0, train.batch_size, task.n_context, task.x_scale)[1]
    return per_step, _relative_deviation(ours, truth)


def _cases(backends, layers, dtypes, numba_threads) -> list[tuple[str, int | None, int, str]]:
    for n in numba_threads or ():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"numba_threads must be positive integers; got {numba_threads!r}")
    return [(name, threads, n_layers, dtype)
            for name in backends
            for threads in (tuple(numba_threads) if numba_threads and name == "numba" else (None,))
            for n_layers in layers for dtype in dtypes]


def _choice_record(backends: list[str], batch_size: int) -> dict:
    from iclgd.backends.choice import choose_backend

    chosen = choose_backend(backends, batch_size=batch_size)
    return {"backend": chosen.backend, "n_threads": chosen.n_threads,
            "probes_ms": [{"backend": p.backend, "n_threads": p.n_threads, "ms": 1e3 * p.seconds} for p in chosen.probes]}


def _with_floor(row: dict, calibration: Calibration) -> dict:
    config = run_config(row["n_layers"], row["dtype"], row["backend"], row["batch_size"])
    flops, normals, uniforms = row_work(row["operation"], config.model, config.task, row["batch_size"])
    floor = floor_seconds(flops, normals, uniforms, row["dtype"], calibration)
    row = dict(row, reassociated_mflop=flops / 1e6, draws=normals + uniforms, floor_ms=1e3 * floor,
               ms_over_floor=row["ms"] / (1e3 * floor))
    if "ms_contended" in row:
        row["ms_contended_over_floor"] = row["ms_contended"] / (1e3 * floor)
    return row


def run(backends: list[str] | None = None, layers=(1, 4), dtypes=("float32", "float64"), batch_size: int = 2048,
        repeats: int = 30, warmup: int = 3, block: int = 10, contended: bool = False, spinners: int | None = None,
        numba_threads: tuple[int, ...] | None = None, choose: bool = False, matmul_size: int = 1024,
        n_draws: int = 2**22) -> dict:
    """Every case quiet (and, with ``contended``, again under ``busy_cores(spinners)``), with the
    floor from a calibration made in the same run (module doc).  ``numba_threads``: the thread
    counts numba rows are timed at (default: numba's current count); ``choose``: record
    ``choose_backend``'s pick under each load."""
    backends = backends or installed_backends()
    cases = _cases(backends, layers, dtypes, numba_threads)
    calibration = calibrate(matmul_size, n_draws)
    rows = [row for name, threads, n_layers, dtype in cases
            for row in bench_case(name, n_layers, dtype, batch_size, repeats, warmup, block, threads)]
    results = {"machine": machine_description(), "batch_size": batch_size, "repeats": repeats,
               "calibration": {"quiet": dataclasses.asdict(calibration)}}
    if choose:
        results["choice"] = {"quiet": _choice_record(backends, batch_size)}
    if contended:
        with busy_cores(spinners) as pids:
            results["contention"] = {"processes": len(pids), "pids": pids}
            results["calibration"]["contended"] = dataclasses.asdict(calibrate(matmul_size, n_draws))
            busy = [row for name, threads, n_layers, dtype in cases
                    for row in bench_case(name, n_layers, dtype, batch_size, repeats, warmup, block, threads, check=False)]
            if choose:
                results["choice"]["contended"] = _choice_record(backends, batch_size)
        for row, busy_row in zip(rows, busy):
            row["ms_contended"] = busy_row["ms"]
    results["rows"] = [_with_floor(row, calibration) for row in rows]
    return results


def machine_description() -> str:
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


def _rates_text(rates: dict) -> str:
    return (f"BLAS {rates['float32_flops_per_s'] / 1e9:.1f} GFLOP/s float32, {rates['float64_flops_per_s'] / 1e9:.1f} float64; "
            f"{rates['normals_per_s'] / 1e6:.0f} M normals/s, {rates['uniforms_per_s'] / 1e6:.0f} M uniforms/s")


def _choice_text(record: dict) -> str:
    probes = ", ".join(f"{p['backend']}" + (f"@{p['n_threads']}" if p["backend"] == "numba" else "") + f" {p['ms']:.2f} ms"
                       for p in record["probes_ms"])
    return f"{record['backend']} at {record['n_threads']} threads ({probes})"


def markdown(results: dict) -> str:
    contended = "contention" in results
    lines = [f"Machine: {results['machine']}; B = {results['batch_size']}, N = d = 10; median of {results['repeats']} repeats.", ""]
    lines.append(f"Floor calibration (quiet, this run): {_rates_text(results['calibration']['quiet'])}.")
    if contended:
        lines.append(f"Contended: {results['contention']['processes']} busy-loop processes on the cores during the second pass; "
                     f"calibration then: {_rates_text(results['calibration']['contended'])}.")
    for load, record in results.get("choice", {}).items():
        lines.append(f"choose_backend ({load}): {_choice_text(record)}.")
    lines.append("")
    if contended:
        lines += ["| backend | threads | layers | dtype | operation | ms quiet | ms contended | floor ms | quiet / floor | "
                  "contended / floor | GFLOP/s (naive count) | max rel. deviation from oracle |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| backend | threads | layers | dtype | operation | ms | floor ms | ms / floor | GFLOP/s (naive count) | "
                  "max rel. deviation from oracle |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        threads = "-" if r["threads"] is None else str(r["threads"])
        timing = f"{r['ms']:.3f} | "
        if contended:
            timing += f"{r['ms_contended']:.3f} | "
        ratios = f"{r['ms_over_floor']:.1f} | " + (f"{r['ms_contended_over_floor']:.1f} | " if contended else "")
        lines.append(f"| {r['backend']} | {threads} | {r['n_layers']} | {r['dtype']} | {r['operation']} | {timing}"
                     f"{r['floor_ms']:.3f} | {ratios}{r['naive_gflops_per_s']:.1f} | {r['max_rel_deviation_from_oracle']:.1e} |")
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    runio.write_json(json_path, results)
    runio.atomic_write_text(md_path, markdown(results))
    return json_path, md_path
