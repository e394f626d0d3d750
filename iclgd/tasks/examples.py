"""What a task draws, before any token format: sequences of (x, y) pairs and their task vectors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Examples:
    """A batch of regression sequences, format-free.

    xs:      (B, K, d)  inputs x_1 .. x_K (for an LSA task the last one is the query, K = N + 1)
    ys:      (B, K)     labels y_k = w . x_k + noise (context labels possibly corrupted, e.g. distractors)
    weights: (B, d)     the task vector w of each sequence

    Token formats (iclgd.tokens) turn Examples into a model's input; predictors answer per
    prefix, (B, K): column k predicts y_k from pairs 1 .. k - 1 and x_k, the query being the
    last column.
    """

    xs: np.ndarray
    ys: np.ndarray
    weights: np.ndarray

    @property
    def batch_size(self) -> int:
        return self.xs.shape[0]

    @property
    def length(self) -> int:
        """K, the number of (x, y) pairs per sequence."""
        return self.xs.shape[1]

    @property
    def d(self) -> int:
        return self.xs.shape[2]
