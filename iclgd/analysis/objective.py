r"""What an SGLD chain samples: a loss over a fixed data set of n samples.

An objective offers, for params (a dict name -> array) and ``indices`` (a 1-D int array naming
a minibatch of the data set, or None for all of it):

    n_samples                                    n, the data set's size (nbeta defaults to n / log n)
    n_positions                                  K where the loss is a mean of K per-position losses, else None
    loss(params, indices)                        L_I(w) = mean over the samples i in I of the loss of sample i
    loss_and_grad(params, indices)               (L_I(w), grad_w L_I(w))
    per_position_loss(params, indices)           (L_{I,1}(w), .., L_{I,K}(w)), their mean being L_I(w)
    per_position_loss_and_grad(params, indices)  (the K losses, grad_w L_I(w))

``BackendObjective`` is the one for iclgd's model families (LSA, transformer): the data set is
a batch of tasks (an ``iclgd.Batch`` or ``iclgd.InterleavedBatch``, or a (tokens, targets)
pair), validated once, and every call goes to the backend engine's hooks on the rows named.
The toy models of ``iclgd.analysis.known_lc`` are objectives too.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from iclgd.models.families import module_of

#: the most rows one engine call computes (the whole data set's loss is taken in parts of this size)
CHUNK = 2048


class Objective(Protocol):
    """See the module docstring."""

    n_samples: int
    n_positions: int | None

    def loss(self, params: dict, indices: np.ndarray | None = None) -> float: ...

    def loss_and_grad(self, params: dict, indices: np.ndarray | None = None) -> tuple[float, dict]: ...


def as_tokens_and_targets(data: object) -> tuple[object, object]:
    """(tokens, targets) of a batch (anything with .tokens and .targets) or of a pair."""
    if hasattr(data, "tokens") and hasattr(data, "targets"):
        return data.tokens, data.targets
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise ValueError(
        "data must be a batch of tasks (an iclgd.Batch or iclgd.InterleavedBatch, e.g. task.sample(n, rng)) "
        f"or a (tokens, targets) pair; got {type(data).__name__}"
    )


class BackendObjective:
    """A model family's loss on a fixed data set, computed by ``backend``: the LSA's half-MSE or
    the transformer's MSE (``iclgd.backends.base``) on the rows ``indices`` of the data."""

    def __init__(self, backend, cfg, data):
        model = backend._check_config(cfg)
        tokens, targets = as_tokens_and_targets(data)
        self.tokens = model.check_tokens(cfg, tokens)
        self.targets = model.check_targets(cfg, targets, self.tokens.shape[0])
        self.backend, self.cfg, self.engine = backend, cfg, backend._engine(cfg)
        self.n_samples = int(self.tokens.shape[0])
        self.n_positions = getattr(cfg, "n_examples", None) if module_of(cfg).__name__.endswith("transformer") else None
        self.check_params = lambda params: model.check_params(cfg, params)

    def _chunks(self, indices):
        """The rows named by ``indices`` (all for None) as (tokens, targets, weight) parts of at
        most CHUNK rows, weight = the part's share of the rows: losses and gradients are means
        over rows, so the weighted sum of the parts' is the whole's (and memory stays bounded)."""
        rows = np.arange(self.n_samples) if indices is None else np.asarray(indices)
        if rows.size <= CHUNK:
            tokens, targets = (self.tokens, self.targets) if indices is None else (self.tokens[rows], self.targets[rows])
            return [(tokens, targets, 1.0)]
        return [(self.tokens[part], self.targets[part], part.size / rows.size)
                for part in np.array_split(rows, -(-rows.size // CHUNK))]

    def _combined(self, hook, params, indices):
        """sum over the parts of weight * hook(part), for hooks returning a value or (value, grads)."""
        total = None
        with np.errstate(all="ignore"):
            for tokens, targets, weight in self._chunks(indices):
                result = hook(self.cfg, params, tokens, targets)
                if isinstance(result, tuple):
                    value, grads = np.asarray(result[0], dtype=np.float64), result[1]
                    part = (weight * value, {k: weight * g for k, g in grads.items()})
                    total = part if total is None else (total[0] + part[0], {k: total[1][k] + part[1][k] for k in grads})
                else:
                    part = weight * np.asarray(result, dtype=np.float64)
                    total = part if total is None else total + part
        return total

    def loss(self, params: dict, indices: np.ndarray | None = None) -> float:
        return float(self._combined(self.engine._loss, params, indices))

    def loss_and_grad(self, params: dict, indices: np.ndarray | None = None) -> tuple[float, dict]:
        loss, grads = self._combined(self.engine._loss_and_grad, params, indices)
        return float(loss), grads

    def per_position_loss(self, params: dict, indices: np.ndarray | None = None) -> np.ndarray:
        return self._combined(self.engine._per_position_loss, params, indices)

    def per_position_loss_and_grad(self, params: dict, indices: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        return self._combined(self.engine._per_position_loss_and_grad, params, indices)
