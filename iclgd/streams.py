r"""Every random stream of iclgd, in one place.

A run is reproducible because each use of randomness has its own stream, derived from the
run's seed and nothing else (no global state):

    stream                         NumPy (PCG64)                                 jax twin
    training batch t               SeedSequence(seed, spawn_key=(0, t))          fold_in(PRNGKey(seed), t)
    model init                     SeedSequence(seed, spawn_key=(1,))            (the init is drawn on the host)
    evaluation, by purpose         SeedSequence([seed, crc32(purpose)])          -
    an explicit seed or generator  default_rng(seed), or the Generator as is     -

Streams are stateless where a run must resume: batch t depends only on (seed, t), so a run
continues from its step alone, on any backend.  Purposes ("validation", "line_search", ...)
keep evaluation tasks disjoint from each other and from training.  The jax twins are what the
jax backend draws inside its compiled step (another stream: the two samplers give different
runs); their functions import jax only when called.
"""
from __future__ import annotations

import zlib

import numpy as np

from iclgd._checks import nonnegative_int

#: How each sampler's batch stream is written in a checkpoint (the stream's name; its state is (seed, t)).
DATA_STREAMS = {"numpy": "iclgd.train.batch_rng(seed, t)", "jax": "jax.random.fold_in(PRNGKey(seed), t)"}

_BATCH, _INIT = 0, 1  # spawn keys of the training streams


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


def purpose_rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent generator for each (seed, purpose) pair, e.g. ("validation") or ("line_search")."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(purpose.encode())]))


def as_generator(seed: int | np.random.Generator) -> np.random.Generator:
    """An explicit seed (int >= 0) becomes a fresh PCG64 generator; a Generator is used as is."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(nonnegative_int("seed", seed))


def jax_batch_key(seed, step):
    """The jax key of batch ``step`` of a run with ``seed``: fold_in(PRNGKey(seed), step)
    (traceable: seed and step may be traced values inside jit)."""
    import jax

    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def jax_base_key(seed):
    """PRNGKey(seed), the key every batch key of a jax-sampled run folds its step into."""
    import jax

    return jax.random.PRNGKey(seed)
