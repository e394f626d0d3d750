r"""Choosing a backend, and numba's thread count, by measuring them on the load of the moment.

A fixed speed order (``SPEED_ORDER``: numba, jax, numpy) holds on a quiet machine only.  When
another process keeps the cores busy, numba's parallel kernels wait for threads that do not get
a core: on the 2-core development machine, with one busy process, numba's one-layer
forward+backward went from 1.0 to 3.6 ms while jax's stayed at 1.1 ms.  So the choice here is
measured, when asked for (never at import), among these candidates:

* numba at 1 thread, at the cores that look free (``free_cores``) and at all usable cores;
* jax and the NumPy oracle as they come (their thread pools are fixed when they load);

each timed on the work a training step does: ``loss_and_grad`` of the one-layer LSA at the
paper's size (B = 2048, N = d = 10, float64) unless told otherwise.  Every candidate is warmed
up (numba's kernels load, jax compiles), then the candidates are timed in rounds, one call of
each per round, so that all see the same load; the choice is the smallest median, ties going
to the earlier candidate (numba, fewest threads first; then jax, then numpy).

Why measure rather than read the load: ``os.getloadavg`` is a one-minute mean that lags a
process starting or stopping by tens of seconds, and the run queue of the moment
(``/proc/loadavg``'s running count) is one noisy sample; neither says how an engine fares
under it (numba at all threads can lose 3x, jax loses little).  The free-core estimate only
adds a candidate thread count; the measurement decides.  A choice holds for the load it saw:
re-measure after the load changes (nothing is cached: the load is not a constant, and a
module-level cache would be global state).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

#: candidate order, which also breaks ties: numba (fewest threads first), then jax, then the oracle
CANDIDATE_ORDER = ("numba", "jax", "numpy")


@dataclass(frozen=True)
class Probe:
    """One candidate's measurement: the median seconds of one ``loss_and_grad`` call."""

    backend: str
    n_threads: int
    seconds: float


@dataclass(frozen=True)
class Choice:
    """The fastest candidate and every measurement behind it.

    ``n_threads`` is the thread count to run numba's parallel loops with; for jax and numpy it
    is the usable core count (their own pools, which the choice does not set)."""

    backend: str
    n_threads: int
    probes: tuple[Probe, ...]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, else cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def runnable_elsewhere() -> float:
    """How many other tasks want a core now: the run queue of ``/proc/loadavg`` less this
    process's own reading thread (Linux); elsewhere the one-minute load average."""
    try:
        with open("/proc/loadavg") as file:
            running = int(file.read().split()[3].split("/")[0])
        return float(max(0, running - 1))
    except (OSError, ValueError, IndexError):
        try:
            return float(os.getloadavg()[0])
        except (OSError, AttributeError):
            return 0.0


def free_cores(cores: int | None = None, busy: float | None = None) -> int:
    """Usable cores not taken by other runnable tasks, at least 1: ``max(1, cores - round(busy))``."""
    cores = usable_cores() if cores is None else cores
    busy = runnable_elsewhere() if busy is None else busy
    if cores < 1 or busy < 0:
        raise ValueError(f"expected cores >= 1 and busy >= 0; got cores = {cores}, busy = {busy}")
    return max(1, cores - int(round(busy)))


def installed(name: str) -> bool:
    """Whether backend ``name``'s engines are importable (found, not imported)."""
    import importlib.util

    from iclgd.backends import _REGISTRY

    return all(importlib.util.find_spec(engine) is not None for engine in _REGISTRY[name][3])


def numba_max_threads() -> int:
    """The most threads numba may run here: its pool size, within the usable cores."""
    import numba

    return max(1, min(usable_cores(), int(numba.config.NUMBA_NUM_THREADS)))


def candidates(backends: Sequence[str] | None = None, free: int | None = None) -> list[tuple[str, int]]:
    """(backend, n_threads) pairs to measure, in ``CANDIDATE_ORDER``: numba at 1, ``free`` and all
    of its threads; jax and numpy once each, at the usable core count.  ``backends`` (default:
    every installed one) must name known backends; those not installed are left out."""
    from iclgd.backends import available_backends

    names = list(CANDIDATE_ORDER) if backends is None else list(backends)
    unknown = [name for name in names if name not in available_backends()]
    if unknown:
        raise ValueError(f"unknown backend {unknown[0]!r}; expected names from {available_backends()}")
    pairs = []
    for name in CANDIDATE_ORDER:
        if name not in names or not installed(name):
            continue
        if name == "numba":
            most = numba_max_threads()
            counts = {1, most, min(most, free_cores() if free is None else max(1, free))}
            pairs.extend(("numba", n) for n in sorted(counts))
        else:
            pairs.append((name, usable_cores()))
    return pairs


def probe_work(cfg=None, batch_size: int = 2048, n_context: int = 10, seed: int = 0):
    """(cfg, params, batch) of the probe: the one-layer LSA at d = N = 10, float64, by default."""
    from iclgd.models import LSAConfig, init_params
    from iclgd.tasks import LinearRegressionTask

    cfg = LSAConfig(d=10, n_context=n_context) if cfg is None else cfg
    task = LinearRegressionTask(d=cfg.d, n_context=n_context)
    rng = np.random.default_rng(seed)
    return cfg, init_params(cfg, rng, scale=0.2), task.sample(batch_size, rng)


def interleaved_medians(pairs: Sequence[tuple[str, int]], cfg=None, batch_size: int = 2048, n_context: int = 10,
                        repeats: int = 7, warmup: int = 2) -> dict[tuple[str, int], float]:
    """Median seconds of one ``loss_and_grad`` call for every (backend, n_threads) pair, timed in
    ``repeats`` rounds of one call each after ``warmup`` calls; numba's thread count is set before
    each of its calls and restored afterwards."""
    from iclgd.backends import get_backend

    if repeats < 1 or warmup < 0:
        raise ValueError(f"expected repeats >= 1 and warmup >= 0; got repeats = {repeats}, warmup = {warmup}")
    cfg, params, batch = probe_work(cfg, batch_size, n_context)
    engines = {name: get_backend(name) for name in dict.fromkeys(name for name, _ in pairs)}
    numba = None
    if "numba" in engines:
        import numba
        before = numba.get_num_threads()
    times: dict[tuple[str, int], list[float]] = {pair: [] for pair in pairs}
    try:
        def call(pair):
            name, n_threads = pair
            if name == "numba":
                numba.set_num_threads(n_threads)
            start = time.perf_counter()
            engines[name].loss_and_grad(cfg, params, batch)
            return time.perf_counter() - start

        for pair in pairs:
            for _ in range(warmup):
                call(pair)
        for _ in range(repeats):
            for pair in pairs:
                times[pair].append(call(pair))
    finally:
        if numba is not None:
            numba.set_num_threads(before)
    return {pair: float(np.median(values)) for pair, values in times.items()}


Measure = Callable[[list[tuple[str, int]]], dict[tuple[str, int], float]]


def choose_backend(backends: Sequence[str] | None = None, cfg=None, batch_size: int = 2048, n_context: int = 10,
                   repeats: int = 7, warmup: int = 2, free: int | None = None, measure: Measure | None = None) -> Choice:
    """The fastest (backend, n_threads) on this machine now (module doc).

    ``measure`` maps the candidate list to median seconds per candidate (default:
    ``interleaved_medians`` with the other arguments); tests inject fixed timings.  The smallest
    median wins; ties go to the earlier candidate.  Measuring takes about a second plus jax's
    first compilation."""
    pairs = candidates(backends, free)
    if not pairs:
        raise ValueError(f"none of the backends {list(backends or CANDIDATE_ORDER)} is installed")
    if measure is None:
        seconds = interleaved_medians(pairs, cfg, batch_size, n_context, repeats, warmup)
    else:
        seconds = measure(pairs)
    missing = [pair for pair in pairs if pair not in seconds]
    if missing:
        raise ValueError(f"the measurement has no time for candidate {missing[0]}; expected one for each of {pairs}")
    probes = tuple(Probe(name, n, float(seconds[(name, n)])) for name, n in pairs)
    best = min(range(len(probes)), key=lambda i: (probes[i].seconds, i))
    return Choice(probes[best].backend, probes[best].n_threads, probes)


def apply_choice(choice: Choice) -> None:
    """Run numba's parallel loops (in the calling thread) with the chosen thread count; for jax or
    numpy nothing is set."""
    if choice.backend == "numba":
        from iclgd.backends.numba_backend import set_threads

        set_threads(choice.n_threads)
