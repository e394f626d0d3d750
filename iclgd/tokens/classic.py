r"""The "classic" token format of von Oswald et al.'s code: x and y in separate tokens.

A sequence of K = N + 1 pairs, the last being the query, becomes 2N + 1 tokens of size d (no
extra slot for the label):

    tokens[b, 2i]     = x_{i+1}                      the x-token of pair i + 1   (i = 0..N-1)
    tokens[b, 2i + 1] = (0, ..., 0, y_{i+1})          its y-token: the label in the last coordinate
    tokens[b, 2N]     = x_q                           the query input, as it is (no zeroed slot)

shape (B, 2N + 1, d); the model must predict ``targets[b] = y_q``.  The label shares the last
coordinate with the inputs: a y-token's last entry is y_i, an x-token's is x_i's d-th component,
the query's is x_q's.  Only the position (even or odd) tells an input from a label, so a model
needs a positional encoding to read this format (the authors concatenate a sinusoidal one).

This is not Hoogland et al.'s "interleaved" format (``iclgd.tokens.interleaved``: tokens of size
d + 1 with separate slots for x and y, and a label at every position).

``encode`` takes ``Examples`` (or a pair (xs, ys)); ``decode`` is its inverse on the tokens:
(xs (B, N + 1, d) with the query last, context labels ys (B, N)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd._checks import finite_array, float_dtype
from iclgd.tasks.examples import Examples


@dataclass(frozen=True)
class ClassicBatch:
    """A batch of tasks in the classic format.

    tokens:  (B, 2N + 1, d)  x-tokens x_i at even indices, y-tokens (0, ..., 0, y_i) at odd ones,
                             the query x_q last
    targets: (B,)            the query label y_q
    weights: (B, d) or None  the task vectors w (None when encoded from a bare (xs, ys) pair)
    """

    tokens: np.ndarray
    targets: np.ndarray
    weights: np.ndarray | None

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_context(self) -> int:
        """N, the number of context pairs ((number of tokens - 1) / 2)."""
        return self.tokens.shape[1] // 2

    @property
    def d(self) -> int:
        return self.tokens.shape[2]


def x_token_indices(n_context: int) -> np.ndarray:
    """The indices 0, 2, ..., 2N - 2 of the context x-tokens."""
    return 2 * np.arange(n_context)


def y_token_indices(n_context: int) -> np.ndarray:
    """The indices 1, 3, ..., 2N - 1 of the y-tokens."""
    return 2 * np.arange(n_context) + 1


def _pairs(examples: object) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(xs, ys, weights) from Examples or from a pair (xs, ys), checked: xs (B, K, d), ys (B, K)."""
    if isinstance(examples, Examples):
        xs, ys, weights = examples.xs, examples.ys, examples.weights
    elif isinstance(examples, tuple) and len(examples) == 2:
        (xs, ys), weights = examples, None
    else:
        raise ValueError(f"examples must be an iclgd.tasks.Examples or a pair (xs, ys); got {type(examples).__name__}")
    xs = finite_array("xs", xs, ndim=3)
    ys = finite_array("ys", ys, ndim=2)
    batch_size, length, d = xs.shape
    if batch_size < 1 or length < 2 or d < 1:
        raise ValueError(f"xs must have shape (B, K, d) with B >= 1, K >= 2 pairs (N >= 1 context pairs and a query) "
                         f"and d >= 1; got {xs.shape}")
    if ys.shape != (batch_size, length):
        raise ValueError(f"ys must have shape (B, K) = {(batch_size, length)} to match xs {xs.shape}; got {ys.shape}")
    return xs, ys, weights


def encode(examples: object, dtype: str = "float64") -> ClassicBatch:
    """Examples (or a pair (xs (B, K, d), ys (B, K)), the query pair last) -> a ClassicBatch:
    tokens (B, 2N + 1, d) with N = K - 1 (module doc), targets y_q (B,), the task vectors when
    given; all cast to ``dtype`` ("float32" or "float64")."""
    xs, ys, weights = _pairs(examples)
    dtype = float_dtype("dtype", dtype)
    batch_size, length, d = xs.shape
    n = length - 1
    tokens = np.zeros((batch_size, 2 * n + 1, d), dtype=dtype)
    tokens[:, 0 : 2 * n : 2] = xs[:, :n]
    tokens[:, 1 : 2 * n : 2, d - 1] = ys[:, :n]
    tokens[:, 2 * n] = xs[:, n]
    weights = None if weights is None else np.asarray(weights).astype(dtype, copy=False)
    return ClassicBatch(tokens, ys[:, n].astype(dtype, copy=False), weights)


def decode(tokens: object) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``encode`` on the tokens: (B, 2N + 1, d) -> (xs (B, N + 1, d), the query
    input last; the context labels ys (B, N)), float64.  (The query's label is not in the tokens.)

    Raises ValueError on a wrong shape (B >= 1, an odd number 2N + 1 >= 3 of tokens, d >= 1), on
    NaN/inf, and on a y-token with a non-zero entry before its last (the first offending token
    is named)."""
    tokens = finite_array("tokens", tokens, ndim=3)
    batch_size, n_tokens, d = tokens.shape
    if batch_size < 1 or n_tokens < 3 or n_tokens % 2 == 0 or d < 1:
        raise ValueError(f"tokens must have shape (B, 2N + 1, d) with B, N, d >= 1 (an odd number of tokens); got {tokens.shape}")
    tokens = tokens.astype(np.float64, copy=False)
    n = n_tokens // 2
    y_tokens = tokens[:, 1 : 2 * n : 2]
    stray = y_tokens[:, :, : d - 1] != 0
    if stray.any():
        b, i, _ = np.unravel_index(int(np.argmax(stray)), stray.shape)
        raise ValueError(f"tokens are not in the classic format: the y-token of pair {i + 1} (token {2 * i + 1}) of sequence {b} "
                         f"must be (0, ..., 0, y); got {tokens[b, 2 * i + 1].tolist()}")
    xs = np.concatenate([tokens[:, 0 : 2 * n : 2], tokens[:, 2 * n :]], axis=1)
    return xs, y_tokens[:, :, d - 1].copy()
