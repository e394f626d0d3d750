r"""Input laws: how the coordinates of every input x are drawn, for every engine.

The coordinates are i.i.d. draws of one law at range ``a`` (``x_scale``).  The default is the
paper's ``U(-a, a)``; the others (for the out-of-distribution tests) are rescaled "to the same
norm", every coordinate having the uniform law's second moment ``E[x_k^2] = a^2 / 3``:

    uniform      U(-a, a)                                   mean 0,  E[x^2] = a^2 / 3
    gaussian     (a / sqrt 3) N(0, 1)                       mean 0,  E[x^2] = a^2 / 3
    laplace      (a / sqrt 6) Laplace(0, 1)                 mean 0,  E[x^2] = 2 a^2 / 6
    exponential  (a / sqrt 6) Exp(1)                        mean a / sqrt 6,  E[x^2] = 2 a^2 / 6

The exponential inputs are deliberately not centred: they lie in [0, inf), a one-sided shift
of the input distribution, where the other three are symmetric about 0.

Each law is written once here (``INPUT_LAWS``) and drawn by two engines: ``draw_inputs`` with
a NumPy Generator (the numpy and numba backends, and the host sampler of jax) and
``draw_inputs_jax`` with a jax key inside compiled code.  Input range: the paper's text says
``a = 1`` (``x_scale="paper"``); the authors' code draws ``U(-input_range / 2, input_range / 2)``
with ``input_range = 1``, i.e. ``a = 0.5`` (``x_scale="authors_code"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from iclgd._checks import finite_float

#: Named input ranges ``a`` for ``x ~ U(-a, a)``.
X_SCALES = {"paper": 1.0, "authors_code": 0.5}


@dataclass(frozen=True)
class InputLaw:
    """One law: a standard draw (``standard``: "uniform" on [-a, a], "normal", "laplace" or
    "exponential") multiplied by ``a / divisor`` (the uniform is drawn on [-a, a] directly)."""

    name: str
    description: str
    standard: str
    divisor: float

    def scale(self, a: float) -> float:
        """The factor of the standard draw at range a (a / divisor)."""
        return a / self.divisor


INPUT_LAWS = {
    "uniform": InputLaw("uniform", "U(-a, a)", "uniform", 1.0),
    "gaussian": InputLaw("gaussian", "N(0, a^2/3)", "normal", math.sqrt(3.0)),
    "exponential": InputLaw("exponential", "(a/sqrt(6)) Exp(1), one-sided", "exponential", math.sqrt(6.0)),
    "laplace": InputLaw("laplace", "Laplace(0, a/sqrt(6))", "laplace", math.sqrt(6.0)),
}

#: Input distributions, name -> law (as text), each with E[x_k^2] = a^2 / 3.
X_DISTRIBUTIONS = {name: law.description for name, law in INPUT_LAWS.items()}


def x_distribution_name(name: object) -> str:
    """``name`` if it is one of X_DISTRIBUTIONS, else ValueError naming the known ones."""
    if not isinstance(name, str) or name not in INPUT_LAWS:
        raise ValueError(f"x_distribution must be one of {list(X_DISTRIBUTIONS)}; got {name!r}")
    return name


def resolve_x_scale(x_scale: float | str) -> float:
    """Map a named input range ("paper" -> 1.0, "authors_code" -> 0.5) or a number to ``a``."""
    if isinstance(x_scale, str):
        if x_scale not in X_SCALES:
            raise ValueError(f"x_scale must be a positive number or one of {sorted(X_SCALES)}; got {x_scale!r}")
        return X_SCALES[x_scale]
    return finite_float("x_scale", x_scale, positive=True)


def draw_inputs(distribution: str, x_scale: float, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Inputs of ``shape`` with i.i.d. coordinates from ``distribution`` at range ``a = x_scale``
    (float64; one call of the generator, so "uniform" is exactly ``rng.uniform(-a, a, shape)``)."""
    law, a = INPUT_LAWS[x_distribution_name(distribution)], x_scale
    if law.standard == "uniform":
        return rng.uniform(-a, a, size=shape)
    standard = {"normal": rng.standard_normal, "exponential": rng.standard_exponential}.get(law.standard)
    if standard is None:  # laplace
        return law.scale(a) * rng.laplace(0.0, 1.0, size=shape)
    return law.scale(a) * standard(shape)


def draw_inputs_jax(distribution: str, x_scale: float, key, shape: tuple[int, ...], dtype: str):
    """The jax twin of ``draw_inputs``: the same law drawn with ``jax.random`` from ``key`` in
    ``dtype`` (other numbers than NumPy's: another generator).

    The draw is made as one flat vector and reshaped: with ``jax_threefry_partitionable`` (the
    default since jax 0.5) these are the same numbers as a draw of ``shape``, but XLA's CPU code
    for a 1-d counter is about 4x faster than for a 3-d one (0.9 vs 3.9 ms for 2048 x 11 x 10)."""
    import jax

    law, a = INPUT_LAWS[x_distribution_name(distribution)], x_scale
    if law.standard == "uniform":
        return flat_draw(jax.random.uniform, key, shape, dtype, -a, a)
    standard = {"normal": jax.random.normal, "laplace": jax.random.laplace, "exponential": jax.random.exponential}
    return law.scale(a) * flat_draw(standard[law.standard], key, shape, dtype)


def flat_draw(draw, key, shape, dtype, *args):
    """``draw(key, shape, dtype, *args)`` drawn as one flat vector and reshaped (see draw_inputs_jax)."""
    return draw(key, (math.prod(shape),), dtype, *args).reshape(shape)
