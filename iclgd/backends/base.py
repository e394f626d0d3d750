"""The backend contract, as code: what every engine offers and what it must implement.

A backend computes a model family's forward pass, loss, gradients and input sensitivity with
NumPy arrays in and out.  The public methods below are written once, here: each validates its
inputs (the config's type, the parameters' names, shapes and values, the tokens and targets;
ValueError naming the argument), calls the engine's private method with checked arrays in
``cfg.dtype``, and checks its outputs (finite inputs whose products overflow the dtype inside
the engine give ValueError naming the inputs, never a silent inf/NaN).  An engine subclasses ``Backend`` and implements

    _forward(cfg, params, tokens)                  -> [E_0, ..., E_K], every layer's tokens
    _predict(cfg, params, tokens)                  -> yhat (B,)
    _loss_and_grad(cfg, params, tokens, targets)   -> (half-MSE, grads like params)
    _sensitivity(cfg, params, tokens)              -> d yhat / d x_q (B, d)

and may override ``_loss`` (default: the half-MSE of ``_predict``), ``_sample_loss_and_grad``
(fusing the sampling of a training batch with its gradient, as long as it draws the same
numbers), ``trainer`` (default: the host loop, ``iclgd.backends.training.HostTrainer``) and
``seeds_trainer`` (one program for many seeds; default None: train them one by one).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from iclgd.backends.training import HostTrainer
from iclgd.models import LSAConfig, check_batch, check_params, check_targets, check_tokens
from iclgd.models.lsa import check_outputs


class Backend(ABC):
    """An engine for the models of ``families`` (config classes); see the module docstring."""

    name = "backend"
    families: tuple[type, ...] = (LSAConfig,)

    # --- validation, once for every engine ----------------------------------------------------------

    def _check_config(self, cfg: object) -> None:
        if not isinstance(cfg, self.families):
            expected = " or ".join(f"iclgd.{family.__name__}" for family in self.families)
            raise ValueError(f"cfg must be an {expected}; got {type(cfg).__name__}")

    def _checked(self, cfg, params, tokens) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(params, tokens) validated against cfg and cast to cfg.dtype."""
        self._check_config(cfg)
        return check_params(cfg, params), check_tokens(cfg, tokens)

    def _checked_batch(self, cfg, params, batch) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """(params, tokens, targets) of a Batch validated against cfg and cast to cfg.dtype."""
        self._check_config(cfg)
        check_batch(batch)
        params, tokens = check_params(cfg, params), check_tokens(cfg, batch.tokens)
        return params, tokens, check_targets(cfg, batch.targets, tokens.shape[0])

    # --- the public API -------------------------------------------------------------------------------

    def forward(self, cfg, params: dict, tokens: np.ndarray) -> list[np.ndarray]:
        """Every layer's tokens: [E_0 = tokens, E_1, ..., E_K], each (B, N + 1, d + 1)."""
        params, tokens = self._checked(cfg, params, tokens)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, naming the inputs
            states = self._forward(cfg, params, tokens)
        return check_outputs(cfg, "forward pass", states, params, tokens)

    def predict(self, cfg, params: dict, tokens: np.ndarray) -> np.ndarray:
        """yhat = -E_K[:, N, d], (B,)."""
        params, tokens = self._checked(cfg, params, tokens)
        with np.errstate(over="ignore", invalid="ignore"):
            prediction = self._predict(cfg, params, tokens)
        return check_outputs(cfg, "prediction", prediction, params, tokens)

    def loss(self, cfg, params: dict, batch) -> float:
        """Half-MSE 0.5 * mean_b (yhat_b - y_b)^2."""
        params, tokens, targets = self._checked_batch(cfg, params, batch)
        with np.errstate(over="ignore", invalid="ignore"):
            value = float(self._loss(cfg, params, tokens, targets))
        return check_outputs(cfg, "loss", value, params, tokens, targets)

    def loss_and_grad(self, cfg, params: dict, batch) -> tuple[float, dict[str, np.ndarray]]:
        """The half-MSE and its gradient with respect to every parameter (a dict like params)."""
        params, tokens, targets = self._checked_batch(cfg, params, batch)
        with np.errstate(over="ignore", invalid="ignore"):
            loss, grads = self._loss_and_grad(cfg, params, tokens, targets)
        check_outputs(cfg, "loss and gradient", [loss, *grads.values()], params, tokens, targets)
        return float(loss), grads

    def sensitivity(self, cfg, params: dict, tokens: np.ndarray) -> np.ndarray:
        """d yhat_b / d x_q,b for every task, (B, d), the query's y-slot held fixed."""
        params, tokens = self._checked(cfg, params, tokens)
        with np.errstate(over="ignore", invalid="ignore"):
            value = self._sensitivity(cfg, params, tokens)
        return check_outputs(cfg, "sensitivity", value, params, tokens)

    def sample_loss_and_grad(self, cfg, task, params: dict, batch_size: int, rng: np.random.Generator):
        """(loss, grads) on a fresh training batch ``task.sample(batch_size, rng)``: what the
        host training loop calls each step (``iclgd.backends.training.HostTrainer``)."""
        self._check_config(cfg)
        return self._sample_loss_and_grad(cfg, task, check_params(cfg, params), batch_size, rng)

    def trainer(self, config):
        """The object whose ``advance(state, n_steps)`` trains ``config`` (a RunConfig)."""
        return HostTrainer(self, config)

    def seeds_trainer(self, config, seeds: list[int]):
        """One program that trains a run per seed at once, or None when the engine has none
        (the training loop then advances the seeds' own trainers one after the other)."""
        return None

    # --- what an engine implements ---------------------------------------------------------------------

    @abstractmethod
    def _forward(self, cfg, params: dict, tokens: np.ndarray) -> list[np.ndarray]: ...

    @abstractmethod
    def _predict(self, cfg, params: dict, tokens: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _loss_and_grad(self, cfg, params: dict, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict]: ...

    @abstractmethod
    def _sensitivity(self, cfg, params: dict, tokens: np.ndarray) -> np.ndarray: ...

    def _loss(self, cfg, params: dict, tokens: np.ndarray, targets: np.ndarray) -> float:
        return float(0.5 * np.mean((self._predict(cfg, params, tokens) - targets) ** 2))

    def _sample_loss_and_grad(self, cfg, task, params: dict, batch_size: int, rng: np.random.Generator):
        """(loss, grads) on ``task.sample(batch_size, rng)``; params are checked already, the batch
        is checked against cfg here (its N and d, cast to cfg.dtype)."""
        batch = task.sample(batch_size, rng)
        tokens = check_tokens(cfg, batch.tokens)
        return self._loss_and_grad(cfg, params, tokens, check_targets(cfg, batch.targets, tokens.shape[0]))


#: The name the host engines (numpy, numba) subclassed before the contract was written out.
HostBackend = Backend
