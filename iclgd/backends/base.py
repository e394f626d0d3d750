"""What every backend offers, and the shared default for training on the host.

A backend has ``name`` and, with the same signatures and NumPy arrays in and out:
``forward(cfg, params, tokens)``, ``predict``, ``loss(cfg, params, batch)``, ``loss_and_grad``,
``sensitivity``; and for training ``trainer(config)``, an object whose
``advance(state, n_steps)`` performs updates (see iclgd.train).  Optionally
``seeds_trainer(config, seeds)``, whose ``advance(states, n_steps)`` updates many seeds at once
(the jax backend vmaps them into one program).
"""
from __future__ import annotations

import numpy as np

from iclgd.backends.training import HostTrainer
from iclgd.models import check_batch, check_targets


class HostBackend:
    """Backends that train on the host with NumPy Adam: batch t is sampled by the task from
    ``iclgd.train.batch_rng(seed, t)``; a backend may override ``sample_loss_and_grad`` to fuse
    sampling with the gradient, as long as it draws the same numbers."""

    name = "host"

    def loss(self, cfg, params, batch) -> float:
        """Half-MSE 0.5 * mean_b (yhat_b - y_b)^2 of ``predict``."""
        check_batch(batch)
        yhat = self.predict(cfg, params, batch.tokens)
        targets = check_targets(cfg, batch.targets, yhat.shape[0])
        return float(0.5 * np.mean((yhat - targets) ** 2))

    def sample_loss_and_grad(self, cfg, task, params, batch_size, rng):
        """(loss, grads) on a fresh batch ``task.sample(batch_size, rng)``."""
        return self.loss_and_grad(cfg, params, task.sample(batch_size, rng))

    def trainer(self, config):
        return HostTrainer(self, config)
