r"""In-context sine regression (von Oswald et al. 2023, Sec. 5, "non-linear regression").

One task is a sine wave with an amplitude and a phase,

    f(x) = A sin(x + phi),     A in [A_lo, A_hi] = [0.1, 0.5],   phi in [phi_lo, phi_hi] = [0, pi],

and N + 1 inputs x_1 .. x_N, x_q ~ U(-a, a) i.i.d. (a = ``x_range`` = 5), labelled without
noise, y_i = f(x_i).  The first N pairs are the context, the last input is the query.  Tokens
are 2-dimensional, the query's label slot holding 0:

    tokens[b] = [(x_1, y_1), ..., (x_N, y_N), (x_q, 0)]      (N + 1, 2)
    targets[b] = y_q = A sin(x_q + phi)

How A and phi are drawn (``draws``):

    "authors"      one u ~ U(0, 1) per task gives both:
                   A = A_lo + (A_hi - A_lo) u,   phi = phi_lo + (phi_hi - phi_lo) u
    "independent"  two independent uniforms u, v:
                   A = A_lo + (A_hi - A_lo) u,   phi = phi_lo + (phi_hi - phi_lo) v

The authors' code (``create_reg_data_sin``) draws the amplitude U(0.1, 0.5) and the phase
pi U(0, 1) from the same jax key with the same shape, hence the same u: the amplitude and the
phase are perfectly correlated, A = 0.1 + 0.4 phi / pi, a one-parameter family of waves.
"authors" reproduces that; "independent" is the two-parameter family the paper's text
describes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from iclgd._checks import finite_float, float_dtype, largest, positive_int
from iclgd.streams import as_generator

#: How the amplitude and the phase are drawn (module docstring).
DRAWS = ("authors", "independent")


@dataclass(frozen=True)
class SineBatch:
    """A batch of sine-regression tasks.

    tokens:     (B, N + 1, 2)  context tokens (x_i, y_i), then the query token (x_q, 0)
    targets:    (B,)           the query label y_q = A sin(x_q + phi)
    amplitudes: (B,)           A of each task
    phases:     (B,)           phi of each task
    """

    tokens: np.ndarray
    targets: np.ndarray
    amplitudes: np.ndarray
    phases: np.ndarray

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_context(self) -> int:
        return self.tokens.shape[1] - 1


def sine(x: np.ndarray, amplitudes: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """f(x) = A sin(x + phi), broadcast: x (B, K) with amplitudes and phases (B,) gives (B, K)."""
    x = np.asarray(x, dtype=np.float64)
    amplitudes = np.asarray(amplitudes, dtype=np.float64)
    phases = np.asarray(phases, dtype=np.float64)
    extra = (1,) * (x.ndim - amplitudes.ndim)
    return amplitudes.reshape(amplitudes.shape + extra) * np.sin(x + phases.reshape(phases.shape + extra))


def _range(name: str, value: object) -> tuple[float, float]:
    """``value`` as (low, high) finite floats with low <= high, or ValueError."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{name} must be a pair (low, high); got {value!r}")
    low, high = (finite_float(f"{name}[{i}]", v) for i, v in enumerate(value))
    if low > high:
        raise ValueError(f"{name} must have low <= high; got ({low}, {high})")
    return low, high


@dataclass(frozen=True)
class SineRegressionTask:
    """The distribution of in-context sine-regression tasks (see the module docstring)."""

    n_context: int = 10
    x_range: float = 5.0
    amplitude_range: tuple[float, float] = (0.1, 0.5)
    phase_range: tuple[float, float] = (0.0, math.pi)
    draws: str = "authors"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise fields once, here
        set_(self, "n_context", positive_int("n_context", self.n_context, maximum=1_000_000))
        set_(self, "x_range", finite_float("x_range", self.x_range, positive=True))
        amplitudes = _range("amplitude_range", self.amplitude_range)
        if amplitudes[0] < 0:
            raise ValueError(f"amplitude_range must be non-negative; got {amplitudes}")
        set_(self, "amplitude_range", amplitudes)
        set_(self, "phase_range", _range("phase_range", self.phase_range))
        if not isinstance(self.draws, str) or self.draws not in DRAWS:
            raise ValueError(f"draws must be one of {list(DRAWS)}; got {self.draws!r}")
        set_(self, "dtype", float_dtype("dtype", self.dtype).name)
        top = largest(self.dtype)
        for name, value in (("x_range", self.x_range), ("amplitude_range", self.amplitude_range[1])):
            if value > top:
                raise ValueError(f"{name} = {value:.3g} does not fit {self.dtype} (largest {top:.3g})")

    def draw_waves(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(amplitudes, phases), each (B,) float64: one uniform per task ("authors": both from it),
        or two ("independent": the amplitude's, then the phase's)."""
        (a_lo, a_hi), (p_lo, p_hi) = self.amplitude_range, self.phase_range
        u = rng.random(batch_size)
        v = u if self.draws == "authors" else rng.random(batch_size)
        return a_lo + (a_hi - a_lo) * u, p_lo + (p_hi - p_lo) * v

    def sample(self, batch_size: int, rng: int | np.random.Generator) -> SineBatch:
        """Draw ``batch_size`` independent tasks: a SineBatch of tokens (B, N + 1, 2), targets (B,),
        amplitudes (B,) and phases (B,), computed in float64 and cast to the task's dtype at the end.

        Draw order (fixed, so a seed gives the same tasks in every dtype): the wave uniforms
        (``draw_waves``), then the inputs x (B, N + 1) ~ U(-a, a), the query last."""
        batch_size = positive_int("batch_size", batch_size, maximum=100_000_000)
        rng = as_generator(rng)
        amplitudes, phases = self.draw_waves(batch_size, rng)
        n = self.n_context
        x = rng.uniform(-self.x_range, self.x_range, size=(batch_size, n + 1))
        y = sine(x, amplitudes, phases)
        tokens = np.empty((batch_size, n + 1, 2))
        tokens[:, :, 0] = x
        tokens[:, :n, 1] = y[:, :n]
        tokens[:, n, 1] = 0.0
        dtype = np.dtype(self.dtype)
        return SineBatch(tokens.astype(dtype), y[:, n].astype(dtype), amplitudes.astype(dtype), phases.astype(dtype))
