r"""In-context linear regression tasks and their token format.

One task is a weight vector ``w ~ N(0, w_scale^2 I_d)`` and ``N + 1`` inputs
``x_i ~ U(-a, a)^d`` (i.i.d. coordinates; other input laws below), with labels ``y_i = w . x_i + eps_i``,
``eps_i ~ N(0, noise_std^2)``.  The first ``N`` pairs are the context, the last input is
the query.  In the "constructed" token format of von Oswald et al. (2023) a task becomes

    tokens[b] = [(x_1, y_1), ..., (x_N, y_N), (x_q, 0)]      shape (N + 1, d + 1)

and the model must predict ``targets[b] = y_q``.

Input range: the paper's text says ``a = 1`` (our default, ``x_scale="paper"``); the
authors' code draws ``U(-input_range / 2, input_range / 2)`` with ``input_range = 1``, i.e.
``a = 0.5`` (``x_scale="authors_code"``).

Input distribution (``x_distribution``, for the paper's out-of-distribution tests): the
coordinates of every input are i.i.d. draws of one of ``X_DISTRIBUTIONS``.  The default is
"uniform", ``U(-a, a)``.  The others are rescaled "to the same norm": every coordinate has the
uniform one's second moment ``E[x_k^2] = a^2 / 3`` (so ``E|x|^2 = d a^2 / 3``):

    uniform      U(-a, a)                                   mean 0,  E[x^2] = a^2 / 3
    gaussian     N(0, s^2),          s^2 = a^2 / 3          mean 0,  E[x^2] = s^2
    laplace      Laplace(0, b),      2 b^2 = a^2 / 3        mean 0,  E[x^2] = 2 b^2
    exponential  s * Exp(1),         2 s^2 = a^2 / 3        mean s,  E[x^2] = 2 s^2

The exponential inputs are deliberately not centred: they lie in [0, inf), a one-sided shift
of the input distribution (mean ``a / sqrt(6)``), where the other three are symmetric about 0.

Distractors (the paper's distractor experiment): ``n_distractors`` of the ``N`` context labels,
at positions drawn uniformly per task, are replaced by independent ``N(0, 1)`` noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd._checks import finite_float, float_dtype, nonnegative_int, positive_int

#: Named input ranges ``a`` for ``x ~ U(-a, a)``.
X_SCALES = {"paper": 1.0, "authors_code": 0.5}

#: Input distributions, each with E[x_k^2] = a^2 / 3 (see the module docstring): name -> law.
X_DISTRIBUTIONS = {
    "uniform": "U(-a, a)",
    "gaussian": "N(0, a^2/3)",
    "exponential": "(a/sqrt(6)) Exp(1), one-sided",
    "laplace": "Laplace(0, a/sqrt(6))",
}


def x_distribution_name(name: object) -> str:
    """``name`` if it is one of X_DISTRIBUTIONS, else ValueError naming the known ones."""
    if not isinstance(name, str) or name not in X_DISTRIBUTIONS:
        raise ValueError(f"x_distribution must be one of {list(X_DISTRIBUTIONS)}; got {name!r}")
    return name


def draw_inputs(distribution: str, x_scale: float, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Inputs of ``shape`` with i.i.d. coordinates from ``distribution`` at range ``a = x_scale``
    (float64; one call of the generator, so "uniform" is exactly ``rng.uniform(-a, a, shape)``)."""
    a = x_scale
    distribution = x_distribution_name(distribution)
    if distribution == "uniform":
        return rng.uniform(-a, a, size=shape)
    if distribution == "gaussian":
        return (a / np.sqrt(3.0)) * rng.standard_normal(shape)
    if distribution == "laplace":
        return rng.laplace(0.0, a / np.sqrt(6.0), size=shape)
    return (a / np.sqrt(6.0)) * rng.standard_exponential(shape)  # exponential


def resolve_x_scale(x_scale: float | str) -> float:
    """Map a named input range ("paper" -> 1.0, "authors_code" -> 0.5) or a number to ``a``."""
    if isinstance(x_scale, str):
        if x_scale not in X_SCALES:
            raise ValueError(f"x_scale must be a positive number or one of {sorted(X_SCALES)}; got {x_scale!r}")
        return X_SCALES[x_scale]
    return finite_float("x_scale", x_scale, positive=True)


def as_generator(seed: int | np.random.Generator) -> np.random.Generator:
    """An explicit seed (int >= 0) becomes a fresh PCG64 generator; a Generator is used as is."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(nonnegative_int("seed", seed))


@dataclass(frozen=True)
class Batch:
    """A batch of tasks.

    tokens:  (B, N + 1, d + 1)  context tokens (x_i, y_i), then the query token (x_q, 0)
    targets: (B,)               the query label y_q
    weights: (B, d)             the task vectors w
    """

    tokens: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_context(self) -> int:
        return self.tokens.shape[1] - 1

    @property
    def d(self) -> int:
        return self.tokens.shape[2] - 1


@dataclass(frozen=True)
class LinearRegressionTask:
    """The distribution of in-context linear regression tasks (see the module docstring)."""

    d: int = 10
    n_context: int = 10
    x_scale: float | str = "paper"
    w_scale: float = 1.0
    noise_std: float = 0.0
    n_distractors: int = 0
    dtype: str = "float64"
    x_distribution: str = "uniform"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise fields once, here
        set_(self, "d", positive_int("d", self.d))
        set_(self, "n_context", positive_int("n_context", self.n_context))
        set_(self, "x_scale", resolve_x_scale(self.x_scale))
        set_(self, "w_scale", finite_float("w_scale", self.w_scale, nonnegative=True))
        set_(self, "noise_std", finite_float("noise_std", self.noise_std, nonnegative=True))
        set_(self, "n_distractors", nonnegative_int("n_distractors", self.n_distractors))
        if self.n_distractors > self.n_context:
            raise ValueError(
                f"n_distractors must be <= n_context = {self.n_context}; got {self.n_distractors}"
            )
        set_(self, "dtype", float_dtype("dtype", self.dtype).name)
        x_distribution_name(self.x_distribution)

    @classmethod
    def authors_code(cls, **kwargs) -> "LinearRegressionTask":
        """The task as the authors' code draws it: ``x ~ U(-0.5, 0.5)^d``."""
        return cls(x_scale="authors_code", **kwargs)

    def draw_weights_and_inputs(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The first draws of ``sample``: w (B, d) normal, then x (B, N + 1, d) from
        ``x_distribution`` (see ``draw_inputs``), float64.  Fast backends that build labels and
        tokens themselves start from these, to see the same tasks."""
        weights = self.w_scale * rng.standard_normal((batch_size, self.d))
        x = draw_inputs(self.x_distribution, self.x_scale, (batch_size, self.n_context + 1, self.d), rng)
        return weights, x

    def sample(self, batch_size: int, seed: int | np.random.Generator) -> Batch:
        """Draw ``batch_size`` independent tasks.

        Draw order (fixed, so a seed gives the same batch on every machine and in every dtype;
        numbers are drawn in float64 and cast at the end):
        w (B, d) normal; x (B, N + 1, d) from x_distribution; label noise (B, N + 1) normal if
        noise_std > 0; distractor positions and values if n_distractors > 0.
        """
        batch_size = positive_int("batch_size", batch_size)
        rng = as_generator(seed)
        n, d = self.n_context, self.d
        weights, x = self.draw_weights_and_inputs(batch_size, rng)
        y = np.einsum("btd,bd->bt", x, weights)
        if self.noise_std > 0:
            y += self.noise_std * rng.standard_normal((batch_size, n + 1))
        if self.n_distractors > 0:
            # the first n_distractors entries of a random permutation of the context positions
            positions = np.argsort(rng.random((batch_size, n)), axis=1)[:, : self.n_distractors]
            np.put_along_axis(y, positions, rng.standard_normal((batch_size, self.n_distractors)), axis=1)
        tokens = np.empty((batch_size, n + 1, d + 1))
        tokens[:, :, :d] = x
        tokens[:, :n, d] = y[:, :n]
        tokens[:, n, d] = 0.0
        dtype = np.dtype(self.dtype)
        return Batch(tokens.astype(dtype, copy=False), y[:, n].astype(dtype, copy=False), weights.astype(dtype, copy=False))
