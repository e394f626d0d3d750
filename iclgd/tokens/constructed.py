r"""The "constructed" token format of von Oswald et al. (2023).

A sequence of K = N + 1 pairs, the last being the query, becomes N + 1 tokens of size d + 1:

    tokens[b] = [(x_1, y_1), ..., (x_N, y_N), (x_q, 0)]      shape (N + 1, d + 1)

and the model must predict ``targets[b] = y_q``.  ``split`` is the inverse for the context
and the query input (baselines read tokens with it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd._checks import finite_array
from iclgd.tasks.examples import Examples


@dataclass(frozen=True)
class Batch:
    """A batch of tasks in the constructed format.

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


def encode(examples: Examples, dtype: str = "float64") -> Batch:
    """Examples with K = N + 1 pairs -> a Batch: the first N pairs as context tokens (x_i, y_i),
    the last input as the query token (x_q, 0), its label as the target; cast to ``dtype``."""
    xs, ys = examples.xs, examples.ys
    batch_size, length, d = xs.shape
    if length < 2:
        raise ValueError(f"the constructed format needs K >= 2 pairs (N >= 1 context pairs and a query); got K = {length}")
    n = length - 1
    tokens = np.empty((batch_size, n + 1, d + 1))
    tokens[:, :, :d] = xs
    tokens[:, :n, d] = ys[:, :n]
    tokens[:, n, d] = 0.0
    dtype = np.dtype(dtype)
    return Batch(tokens.astype(dtype, copy=False), ys[:, n].astype(dtype, copy=False), examples.weights.astype(dtype, copy=False))


def prefix_tokens(examples: Examples, k: int, dtype: str = "float64") -> np.ndarray:
    """The tokens that ask for y_k (1-based) from the pairs before it: (B, k, d + 1), the
    context (x_i, y_i) for i < k, then the query token (x_k, 0).  k = 1 has no context."""
    if not 1 <= k <= examples.length:
        raise ValueError(f"k must be in 1..{examples.length} (the number of pairs); got {k}")
    xs, ys = examples.xs[:, :k], examples.ys[:, :k]
    tokens = np.concatenate([xs, ys[:, :, None]], axis=2)
    tokens[:, -1, -1] = 0.0
    return tokens.astype(dtype, copy=False)


def split(tokens: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, N + 1, d + 1) tokens -> context inputs X (B, N, d), labels y (B, N), query x_q (B, d),
    all float64.  Raises ValueError on a wrong shape or non-finite values."""
    tokens = finite_array("tokens", tokens, ndim=3)
    if tokens.shape[0] < 1 or tokens.shape[1] < 2 or tokens.shape[2] < 2:
        raise ValueError(f"tokens must have shape (B, N + 1, d + 1) with B, N, d >= 1; got {tokens.shape}")
    tokens = tokens.astype(np.float64, copy=False)
    return tokens[:, :-1, :-1], tokens[:, :-1, -1], tokens[:, -1, :-1]
