r"""Every random stream of iclgd, in one place.

A run is reproducible because each use of randomness has its own stream, derived from the
run's seed and nothing else (no global state):

    stream                         NumPy (PCG64)                                 jax twin
    training batch t               SeedSequence(seed, spawn_key=(0, t))          fold_in(PRNGKey(seed), t)
    model init                     SeedSequence(seed, spawn_key=(1,))            (the init is drawn on the host)
    a finite task pool             SeedSequence(pool_seed, spawn_key=(2,))       (drawn once, on the host)
    SGLD chain c (LLC estimation)  SeedSequence(seed, spawn_key=(3, c))          (drawn on the host, fed to jax)
    evaluation, by purpose         SeedSequence([seed, crc32(purpose)])          -
    an explicit seed or generator  default_rng(seed), or the Generator as is     -
    children of a generator        SeedSequence(128-bit key drawn from it,       -
                                   spawn_key=(i,)), i = 0 .. n - 1

Streams are stateless where a run must resume: batch t depends only on (seed, t), so a run
continues from its step alone, on any backend.  Purposes ("validation", "line_search", ...)
keep evaluation tasks disjoint from each other and from training.  ``child_rngs`` splits one
generator into independent streams, one per kind of draw (NoisyRegressionTask draws the task,
the inputs and the noise from three), so that changing one kind of draw leaves the others as
they were.  The jax twins are what the
jax backend draws inside its compiled step (another stream: the two samplers give different
runs); their functions import jax only when called.
"""
from __future__ import annotations

import zlib

import numpy as np

from iclgd._checks import nonnegative_int

#: How each sampler's batch stream is written in a checkpoint (the stream's name; its state is (seed, t)).
DATA_STREAMS = {"numpy": "iclgd.train.batch_rng(seed, t)", "jax": "jax.random.fold_in(PRNGKey(seed), t)",
                "philox": ("iclgd.backends.numba_philox v2: Philox4x32-10, key (seed, t) mod 2^32, counter (block, task, "
                           "(seed, t) div 2^32), Box-Muller by the kernel's series")}  # = numba_philox.STREAM (tested)

_BATCH, _INIT, _POOL, _SGLD = 0, 1, 2, 3  # spawn keys of the training streams, the task pool and SGLD chains


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of training batch ``step``: PCG64 keyed by (seed, step), independent of
    every other step, so a run resumes, on any backend, from its step alone."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_BATCH, step)))


def init_seed(seed: int) -> np.random.SeedSequence:
    """The model-init stream of a run (independent of every batch)."""
    return np.random.SeedSequence(seed, spawn_key=(_INIT,))


def init_rng(seed: int) -> np.random.Generator:
    """A generator on ``init_seed(seed)``."""
    return np.random.default_rng(init_seed(seed))


def pool_rng(pool_seed: int) -> np.random.Generator:
    """The generator of a finite task pool (``iclgd.tasks.NoisyRegressionTask.pool``): PCG64 on
    SeedSequence(pool_seed, spawn_key=(2,)), independent of every batch and init stream of a run
    that uses the same number as its seed."""
    return np.random.default_rng(np.random.SeedSequence(nonnegative_int("pool_seed", pool_seed), spawn_key=(_POOL,)))


def sgld_rng(seed: int, chain: int) -> np.random.Generator:
    """The generator of SGLD chain ``chain`` of an LLC estimate with ``seed``: PCG64 on
    SeedSequence(seed, spawn_key=(3, chain)).  Each step draws its minibatch's indices, then
    the standard normals of its noise (``iclgd.analysis.llc``), so chains are independent of
    each other and of how many chains run."""
    return np.random.default_rng(np.random.SeedSequence(nonnegative_int("seed", seed), spawn_key=(_SGLD, nonnegative_int("chain", chain))))


def purpose_rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent generator for each (seed, purpose) pair, e.g. ("validation") or ("line_search")."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(purpose.encode())]))


def as_generator(seed: int | np.random.Generator) -> np.random.Generator:
    """An explicit seed (int >= 0) becomes a fresh PCG64 generator; a Generator is used as is."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(nonnegative_int("seed", seed))


def child_rngs(rng: np.random.Generator, n: int) -> tuple[np.random.Generator, ...]:
    """``n`` independent generators derived from ``rng``: one 128-bit key is drawn from ``rng``
    (four uint32 words; this advances ``rng`` by the same amount whatever ``n`` is), and child i
    is PCG64 on SeedSequence(key, spawn_key=(i,)).  The same as ``Generator.spawn`` in spirit,
    but the same on every NumPy >= 1.17 and for any bit generator."""
    n = nonnegative_int("n", n)
    key = rng.integers(0, 2**32, size=4, dtype=np.uint64)
    entropy = [int(word) for word in key]
    return tuple(np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(i,))) for i in range(n))


def jax_batch_key(seed, step):
    """The jax key of batch ``step`` of a run with ``seed``: fold_in(PRNGKey(seed), step)
    (traceable: seed and step may be traced values inside jit)."""
    import jax

    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def jax_base_key(seed):
    """PRNGKey(seed), the key every batch key of a jax-sampled run folds its step into."""
    import jax

    return jax.random.PRNGKey(seed)
