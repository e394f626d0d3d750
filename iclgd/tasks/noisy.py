r"""Noisy in-context linear regression of the developmental-landscape paper (Hoogland et al.).

A sequence is K pairs (x_k, y_k), k = 1..K, with

    x_k ~ N(0, x_scale^2 I_d)                 (x_scale = 1 in the paper)
    y_k = w . x_k + eps_k,   eps_k ~ N(0, sigma^2)     (sigma^2 = ``noise_variance``)

and one task vector w per sequence, drawn from the task prior:

    n_tasks = None   "M = infinity": a fresh w ~ N(0, I_d) for every sequence (the Gaussian prior);
    n_tasks = M      a finite pool t_1..t_M drawn once from N(0, I_d) (``pool``), and every
                     sequence picks one of them uniformly at random.

The paper trains on D = d = 4, K = 8, sigma^2 = 0.125 for a range of task diversities M, and
evaluates on the pretraining distribution (the pool; ``pretraining_distribution``) and on the
Gaussian prior ("true"; ``true_distribution``).  Their Bayes predictors are dMMSE and ridge
(``iclgd.baselines.bayes``).

Random streams (``iclgd.streams``):

- the pool comes from its own stream, ``streams.pool_rng(pool_seed)``: it depends on
  (d, n_tasks, pool_seed) only, never on the seed of a batch.  Its rows are drawn in order, so
  the pool of M tasks is the first M rows of the pool of any M' > M tasks (same d and seed).
- a batch draws from three independent children of the given generator
  (``streams.child_rngs(rng, 3)``): the task draw (w, or the pool index), the inputs and the
  noise.  So the same seed gives the same inputs x whatever n_tasks, noise_variance and pool_seed
  are (and the same x / x_scale whatever x_scale is), the same tasks whatever noise_variance
  is, and the same noise eps / sigma whatever n_tasks is: paired comparisons across task
  diversities and noise levels see the same inputs.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from iclgd import limits
from iclgd._checks import DRAW_BOUND, finite_float, float_dtype, largest, nonnegative_int, positive_int
from iclgd.streams import as_generator, child_rngs, pool_rng
from iclgd.tasks.examples import Examples
from iclgd.tokens.interleaved import InterleavedBatch, encode

#: How many pools ``pool`` keeps (the last ones asked for; a pool is M x d float64).
POOL_CACHE_SIZE = 8

_TASK, _INPUTS, _NOISE = 0, 1, 2  # the children of a batch's generator (module docstring)


@dataclass(frozen=True)
class NoisyRegressionTask:
    """The distribution of noisy regression sequences (see the module docstring).

    d:              D, the input dimension
    n_examples:     K, (x, y) pairs per sequence
    noise_variance: sigma^2 >= 0, the variance of the label noise
    n_tasks:        M, the size of the task pool, or None for M = infinity (w ~ N(0, I_d) fresh)
    pool_seed:      the seed of the pool's stream (``iclgd.streams.pool_rng``)
    x_scale:        x ~ N(0, x_scale^2 I_d); 1 is the paper's (others: out-of-distribution inputs)
    dtype:          "float64" or "float32", the dtype of ``sample``'s tokens (draws are float64)
    """

    d: int = 4
    n_examples: int = 8
    noise_variance: float = 0.125
    n_tasks: int | None = None
    pool_seed: int = 0
    x_scale: float = 1.0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise fields once, here
        set_(self, "d", positive_int("d", self.d))
        set_(self, "n_examples", positive_int("n_examples", self.n_examples))
        set_(self, "noise_variance", finite_float("noise_variance", self.noise_variance, nonnegative=True))
        if self.n_tasks is not None:
            try:
                set_(self, "n_tasks", positive_int("n_tasks", self.n_tasks))
            except ValueError as error:
                raise ValueError(f"{error} (or None for M = infinity, a fresh w per sequence)") from None
        set_(self, "pool_seed", nonnegative_int("pool_seed", self.pool_seed))
        set_(self, "x_scale", finite_float("x_scale", self.x_scale, positive=True))
        set_(self, "dtype", float_dtype("dtype", self.dtype).name)
        self._check_magnitudes()

    def _check_magnitudes(self) -> None:
        """Refuse scales whose draws could overflow the task's dtype.

        Every standard normal draw is below ``DRAW_BOUND`` = 50 in magnitude (iclgd._checks), so
        |x| <= 50 x_scale, |w| <= 50 and |y| <= d (50)(50 x_scale) + 50 sigma; each bound must be
        a finite number of the task's dtype."""
        top, dtype, bound = largest(self.dtype), self.dtype, DRAW_BOUND
        if bound * self.x_scale > top:
            raise ValueError(
                f"x_scale = {self.x_scale:.3g} is too large for {dtype}: its draws can reach {bound:g} * x_scale = "
                f"{bound * self.x_scale:.3g}, above the largest {dtype} {top:.3g}"
            )
        signal = self.d * bound * (bound * self.x_scale)
        noise = bound * float(np.sqrt(self.noise_variance))
        if signal + noise > top:
            culprit = "noise_variance is" if noise >= signal else "x_scale is"
            raise ValueError(
                f"{culprit} too large for {dtype}: labels y = w.x + noise can reach d (50)(50 x_scale) + 50 sigma = "
                f"{signal + noise:.3g} (d = {self.d}, x_scale = {self.x_scale:.3g}, noise_variance = "
                f"{self.noise_variance:.3g}), above the largest {dtype} {top:.3g}"
            )

    # --- the task prior -----------------------------------------------------------------------

    def pool(self) -> np.ndarray:
        """The finite pool t_1..t_M, (M, d) float64, rows ~ N(0, I_d) drawn from
        ``streams.pool_rng(pool_seed)``; read-only and cached (the last ``POOL_CACHE_SIZE``
        pools).  Raises ValueError when n_tasks is None (there is no pool) or when the pool
        would not fit in memory (``iclgd.limits``)."""
        if self.n_tasks is None:
            raise ValueError("n_tasks is None (M = infinity: a fresh w ~ N(0, I_d) per sequence), so there is no pool; "
                             "set n_tasks to a positive integer M for a finite pool")
        return _pool(self.d, self.n_tasks, self.pool_seed)

    def true_distribution(self) -> "NoisyRegressionTask":
        """The same task under the Gaussian prior (n_tasks = None): the paper's "true" distribution."""
        return dataclasses.replace(self, n_tasks=None)

    def pretraining_distribution(self) -> "NoisyRegressionTask":
        """The distribution a model is trained on: this task itself."""
        return self

    # --- sampling -------------------------------------------------------------------------------

    def sample_examples(self, batch_size: int, seed: int | np.random.Generator) -> Examples:
        """Draw ``batch_size`` independent sequences as Examples: xs (B, K, d), ys (B, K),
        weights (B, d), float64.

        ``seed`` (an int >= 0, or a Generator, which is advanced) is split into three
        independent streams (``streams.child_rngs``): the tasks (w ~ N(0, I_d) (B, d) for
        M = infinity, else pool indices (B,) uniform in 0..M-1, the weights being those pool
        rows), the inputs (B, K, d) standard normal times x_scale, and the noise (B, K)
        standard normal times sigma (not drawn when sigma = 0).  See the module docstring for
        what this keeps fixed across tasks."""
        batch_size = positive_int("batch_size", batch_size)
        limits.check_bytes(
            f"batch_size = {batch_size} (with n_examples = {self.n_examples}, d = {self.d})",
            sample_bytes(self, batch_size),
            f"sampling {batch_size} sequences of 2K x (d + 1) = {2 * self.n_examples} x {self.d + 1} tokens",
        )
        pool = None if self.n_tasks is None else self.pool()
        task_rng, input_rng, noise_rng = child_rngs(as_generator(seed), 3)
        shape = (batch_size, self.n_examples)
        if pool is None:
            weights = task_rng.standard_normal((batch_size, self.d))
        else:
            weights = pool[task_rng.integers(0, self.n_tasks, size=batch_size)]
        xs = input_rng.standard_normal((*shape, self.d))
        if self.x_scale != 1.0:
            xs *= self.x_scale
        ys = np.einsum("bkd,bd->bk", xs, weights)
        if self.noise_variance > 0:
            ys += np.sqrt(self.noise_variance) * noise_rng.standard_normal(shape)
        return Examples(xs, ys, weights)

    def sample(self, batch_size: int, seed: int | np.random.Generator) -> InterleavedBatch:
        """Draw ``batch_size`` sequences (``sample_examples``) in the interleaved token format:
        tokens (B, 2K, d + 1), targets (B, K), weights (B, d), cast to the task's dtype."""
        return encode(self.sample_examples(batch_size, seed), self.dtype)


def sample_bytes(task: NoisyRegressionTask, batch_size: int) -> int:
    """An upper estimate of the peak bytes of ``NoisyRegressionTask.sample``: the float64 draws
    (weights (B, d) and pool indices (B,), inputs (B, K, d), labels, noise and its scaled copy
    (B, K) each), the tokens (B, 2K, d + 1), and the cast targets and weights when the dtype is
    float32 (the pool itself is counted by ``pool``)."""
    b, k, d = batch_size, task.n_examples, task.d
    itemsize = np.dtype(task.dtype).itemsize
    draws = limits.FLOAT64 * b * (d + 1 + k * d + 3 * k)
    tokens = itemsize * b * 2 * k * (d + 1)
    cast = 0 if itemsize == limits.FLOAT64 else itemsize * b * (k + d)
    return draws + tokens + cast


@functools.lru_cache(maxsize=POOL_CACHE_SIZE)
def _pool(d: int, n_tasks: int, pool_seed: int) -> np.ndarray:
    """The pool of (d, n_tasks, pool_seed), drawn once per cache entry; read-only."""
    limits.check_bytes(f"n_tasks = {n_tasks} (with d = {d})", limits.FLOAT64 * n_tasks * d,
                       f"a pool of {n_tasks} task vectors of dimension {d}")
    pool = pool_rng(pool_seed).standard_normal((n_tasks, d))
    pool.setflags(write=False)
    return pool
