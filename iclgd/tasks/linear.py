r"""In-context linear regression tasks of von Oswald et al. (2023).

One task is a weight vector ``w ~ N(0, w_scale^2 I_d)`` (the prior) and ``N + 1`` inputs
``x_i`` with i.i.d. coordinates from an input law (``iclgd.tasks.inputs``; default
``U(-a, a)``), with labels ``y_i = w . x_i + eps_i``, ``eps_i ~ N(0, noise_std^2)`` (the label
noise).  The first ``N`` pairs are the context, the last input is the query.
``sample_examples`` draws them format-free (``Examples``); ``sample`` returns them in the
"constructed" token format (``iclgd.tokens.constructed``).

Distractors (the paper's distractor experiment): ``n_distractors`` of the ``N`` context labels,
at positions drawn uniformly per task, are replaced by independent ``N(0, 1)`` noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd import limits
from iclgd._checks import DRAW_BOUND, finite_float, float_dtype, largest, nonnegative_int, positive_int
from iclgd.streams import as_generator
from iclgd.tasks.examples import Examples
from iclgd.tasks.inputs import draw_inputs, resolve_x_scale, x_distribution_name
from iclgd.tokens.constructed import Batch, encode


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
        self._check_magnitudes()

    def _check_magnitudes(self) -> None:
        """Refuse scales whose draws could overflow float64 or the task's dtype.

        Every standard draw is below ``DRAW_BOUND`` = 50 in magnitude (iclgd._checks), so
        |x| <= 50 x_scale, |w| <= 50 w_scale and |y| <= d (50 w_scale)(50 x_scale) + 50 noise_std
        (distractor labels are N(0, 1)); each bound must be a finite number of the task's dtype."""
        top, dtype, bound = largest(self.dtype), self.dtype, DRAW_BOUND
        for name in ("x_scale", "w_scale"):
            value = getattr(self, name)
            if bound * value > top:
                raise ValueError(
                    f"{name} = {value:.3g} is too large for {dtype}: its draws can reach {bound:g} * {name} = "
                    f"{bound * value:.3g}, above the largest {dtype} {top:.3g}"
                )
        signal = self.d * (bound * self.w_scale) * (bound * self.x_scale)  # may be inf: then refused
        noise = bound * self.noise_std
        if signal + noise > top:
            culprit = "noise_std is" if noise >= signal else "w_scale and x_scale are"
            raise ValueError(
                f"{culprit} too large for {dtype}: labels y = w.x + noise can reach d (50 w_scale)(50 x_scale) + "
                f"50 noise_std = {signal + noise:.3g} (d = {self.d}, w_scale = {self.w_scale:.3g}, "
                f"x_scale = {self.x_scale:.3g}, noise_std = {self.noise_std:.3g}), above the largest {dtype} {top:.3g}"
            )

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

    def sample_examples(self, batch_size: int, seed: int | np.random.Generator) -> Examples:
        """Draw ``batch_size`` independent tasks as Examples: xs (B, N + 1, d), ys (B, N + 1),
        weights (B, d), float64, the query pair last.

        Draw order (fixed, so a seed gives the same tasks on every machine and in every dtype):
        w (B, d) normal; x (B, N + 1, d) from x_distribution; label noise (B, N + 1) normal if
        noise_std > 0; distractor positions and values if n_distractors > 0.
        """
        batch_size = positive_int("batch_size", batch_size)
        limits.check_bytes(
            f"batch_size = {batch_size} (with n_context = {self.n_context}, d = {self.d})", limits.task_sample_bytes(self, batch_size),
            f"sampling {batch_size} tasks of (N + 1) x (d + 1) = {self.n_context + 1} x {self.d + 1} tokens",
        )
        rng = as_generator(seed)
        n = self.n_context
        weights, x = self.draw_weights_and_inputs(batch_size, rng)
        y = np.einsum("btd,bd->bt", x, weights)
        if self.noise_std > 0:
            y += self.noise_std * rng.standard_normal((batch_size, n + 1))
        if self.n_distractors > 0:
            # the first n_distractors entries of a random permutation of the context positions
            positions = np.argsort(rng.random((batch_size, n)), axis=1)[:, : self.n_distractors]
            np.put_along_axis(y, positions, rng.standard_normal((batch_size, self.n_distractors)), axis=1)
        return Examples(x, y, weights)

    def sample(self, batch_size: int, seed: int | np.random.Generator) -> Batch:
        """Draw ``batch_size`` independent tasks (``sample_examples``) in the constructed token
        format: a Batch of tokens (B, N + 1, d + 1), targets y_q (B,) and weights (B, d), cast
        to the task's dtype at the end (numbers are drawn in float64)."""
        return encode(self.sample_examples(batch_size, seed), self.dtype)
