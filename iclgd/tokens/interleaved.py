r"""The "interleaved" token format of the developmental-landscape paper (Hoogland et al.).

A sequence of K pairs (x_k, y_k), x_k in R^d, becomes 2K tokens of size d + 1, an x-token
then a y-token per pair:

    tokens[b, 2k - 2] = (0, x_k1, ..., x_kd)       the x-token of pair k   (even 0-based indices)
    tokens[b, 2k - 1] = (y_k, 0, ..., 0)            the y-token of pair k   (odd 0-based indices)

for k = 1..K, shape (B, 2K, d + 1).  A causal model's output at the x_k token has seen
x_1, y_1, ..., x_{k-1}, y_{k-1}, x_k and nothing after, so the prediction of y_k is read there,
in the first coordinate:

    yhat[b, k - 1] = outputs[b, 2k - 2, 0]          (``predictions_from_outputs``: outputs[:, 0::2, 0])

which makes the model a per-prefix predictor in the sense of ``iclgd.predictors``: column k - 1
predicts y_k from pairs 1..k-1 and x_k.  ``decode`` is the inverse of ``encode``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd._checks import finite_array, float_dtype
from iclgd.tasks.examples import Examples


@dataclass(frozen=True)
class InterleavedBatch:
    """A batch of sequences in the interleaved format.

    tokens:  (B, 2K, d + 1)  x-tokens (0, x_k) at even indices, y-tokens (y_k, 0, ..., 0) at odd ones
    targets: (B, K)          the labels y_k, the model's targets at every position
    weights: (B, d)          the task vectors w
    """

    tokens: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_examples(self) -> int:
        """K, the number of (x, y) pairs per sequence (half the number of tokens)."""
        return self.tokens.shape[1] // 2

    @property
    def d(self) -> int:
        return self.tokens.shape[2] - 1


def encode(examples: Examples, dtype: str = "float64") -> InterleavedBatch:
    """Examples (xs (B, K, d), ys (B, K), weights (B, d)) -> an InterleavedBatch: tokens
    (B, 2K, d + 1) with (0, x_k) at index 2k - 2 and (y_k, 0, ..., 0) at index 2k - 1, the
    labels as targets (B, K); all cast to ``dtype`` ("float32" or "float64")."""
    if not isinstance(examples, Examples):
        raise ValueError(f"examples must be an iclgd.tasks.Examples; got {type(examples).__name__}")
    dtype = float_dtype("dtype", dtype)
    xs, ys = examples.xs, examples.ys
    batch_size, length, d = xs.shape
    if ys.shape != (batch_size, length):
        raise ValueError(f"examples.ys must have shape (B, K) = {(batch_size, length)} to match xs {xs.shape}; got {ys.shape}")
    tokens = np.zeros((batch_size, 2 * length, d + 1), dtype=dtype)
    tokens[:, 0::2, 1:] = xs
    tokens[:, 1::2, 0] = ys
    return InterleavedBatch(tokens, ys.astype(dtype, copy=False), examples.weights.astype(dtype, copy=False))


def predictions_from_outputs(outputs: object) -> np.ndarray:
    """A model's outputs (B, 2K, d + 1) -> its predictions (B, K): the first coordinate at each
    x-token, ``outputs[:, 0::2, 0]`` (a copy, in the outputs' dtype).  The values are not
    checked for finiteness (a diverged model's NaN stays visible); the shape is."""
    try:
        array = np.asarray(outputs)
    except (ValueError, TypeError) as error:
        raise ValueError(f"outputs must be a rectangular real-valued array; got {type(outputs).__name__} ({error})") from None
    if array.dtype.kind not in "fiu":
        raise ValueError(f"outputs must be a real-valued array; got dtype {array.dtype}")
    if array.ndim != 3 or array.shape[1] < 2 or array.shape[1] % 2 or array.shape[2] < 1:
        raise ValueError(f"outputs must have shape (B, 2K, d + 1) with an even number 2K >= 2 of tokens; got {array.shape}")
    return np.ascontiguousarray(array[:, 0::2, 0])


def decode(tokens: object) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``encode``: tokens (B, 2K, d + 1) -> (xs (B, K, d), ys (B, K)), float64.

    Raises ValueError on a wrong shape (B, K, d >= 1 and an even number of tokens), on NaN/inf,
    and when a token breaks the layout: an x-token whose first entry is not 0, or a y-token with
    a non-zero entry after the first (the message gives the first offending token)."""
    tokens = finite_array("tokens", tokens, ndim=3)
    batch_size, n_tokens, width = tokens.shape
    if batch_size < 1 or n_tokens < 2 or n_tokens % 2 or width < 2:
        raise ValueError(
            f"tokens must have shape (B, 2K, d + 1) with B, K, d >= 1 (an even number of tokens); got {tokens.shape}"
        )
    tokens = tokens.astype(np.float64, copy=False)
    x_tokens, y_tokens = tokens[:, 0::2], tokens[:, 1::2]
    for name, stray, parity in (("x-token", x_tokens[:, :, :1], 0), ("y-token", y_tokens[:, :, 1:], 1)):
        bad = stray != 0
        if bad.any():
            b, k, _ = np.unravel_index(int(np.argmax(bad)), bad.shape)
            slot = "its first entry (the y-slot)" if parity == 0 else "entries 1..d (the x-slots)"
            raise ValueError(
                f"tokens are not in the interleaved format: the {name} of pair {k + 1} (token {2 * k + parity}) "
                f"of sequence {b} must have 0 in {slot}; got {tokens[b, 2 * k + parity].tolist()}"
            )
    return x_tokens[:, :, 1:].copy(), y_tokens[:, :, 0].copy()
