"""The backend contract, as code: what every engine offers and what it must implement.

A backend computes a model family's forward pass, loss, gradients (and, for the LSA, input
sensitivity) with NumPy arrays in and out.  The public methods below are written once, here:
each validates its inputs through the family's model module (``iclgd.models.families``: the
config's type, the parameters' names, shapes and values, the tokens and targets; ValueError
naming the argument), calls the engine's private method with checked arrays in ``cfg.dtype``,
and checks its outputs (finite inputs whose products overflow the dtype inside the engine give
ValueError naming the inputs, never a silent inf/NaN).

An engine for a family implements these hooks (``_engine(cfg)`` returns the object that does:
the backend itself for the LSA, an engine object for other families):

    _forward(cfg, params, tokens)                  -> every stage's activations; the last is what
                                                      the prediction is read from
    _predict(cfg, params, tokens)                  -> LSA: yhat (B,); transformer: (B, K)
    _loss_and_grad(cfg, params, tokens, targets)   -> (the family's loss, grads like params)
    _sensitivity(cfg, params, tokens)              -> LSA: d yhat / d x_q (B, d)

and may override ``_loss`` (default: the LSA's half-MSE of ``_predict``), ``_per_position_loss``
and ``_per_position_loss_and_grad`` (families with a loss per position), ``_sample_loss_and_grad`` (fusing the sampling of a
training batch with its gradient, as long as it draws the same numbers), ``trainer`` (default:
the host loop, ``iclgd.backends.training.HostTrainer``) and ``seeds_trainer`` (one program for
many seeds; default None: train them one by one).

Losses by family: the LSA's is the half-MSE 0.5 mean_b (yhat_b - y_b)^2 of von Oswald et al.;
the transformer's the MSE mean_{b,k} (yhat_bk - y_bk)^2 of Hoogland et al.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from iclgd.backends.training import HostTrainer
from iclgd.models import LSAConfig, check_batch
from iclgd.models.families import module_of


class Backend(ABC):
    """An engine for the models of ``families`` (config classes); see the module docstring."""

    name = "backend"
    families: tuple[type, ...] = (LSAConfig,)
    _transformer_engine = None  # a subclass's engine object for TransformerConfig, made on first use

    # --- validation, once for every engine ----------------------------------------------------------

    def _check_config(self, cfg: object):
        """The model module of ``cfg``'s family, or ValueError unless this backend computes it."""
        if not isinstance(cfg, self.families):
            expected = " or ".join(f"iclgd.{family.__name__}" for family in self.families)
            raise ValueError(f"cfg must be an {expected} for the {self.name} backend; got {type(cfg).__name__}")
        return module_of(cfg)

    def _engine(self, cfg):
        """The object whose hooks compute ``cfg``'s family (the backend itself for the LSA)."""
        return self

    def _checked(self, cfg, params, tokens) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(params, tokens) validated against cfg and cast to cfg.dtype."""
        model = self._check_config(cfg)
        return model.check_params(cfg, params), model.check_tokens(cfg, tokens)

    def _checked_batch(self, cfg, params, batch) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """(params, tokens, targets) of a batch validated against cfg and cast to cfg.dtype."""
        model = self._check_config(cfg)
        check_batch(batch)
        params, tokens = model.check_params(cfg, params), model.check_tokens(cfg, batch.tokens)
        return params, tokens, model.check_targets(cfg, batch.targets, tokens.shape[0])

    def _outputs(self, cfg, what: str, outputs, params, tokens, targets=None):
        return module_of(cfg).check_outputs(cfg, what, outputs, params, tokens, targets)

    # --- the public API -------------------------------------------------------------------------------

    def forward(self, cfg, params: dict, tokens: np.ndarray) -> list[np.ndarray]:
        """Every stage's activations.  LSA: [E_0 = tokens, E_1, ..., E_K], each (B, N + 1, d + 1);
        transformer: [residual stream after the embedding, after each block, the output (B, 2K, D + 1)]."""
        params, tokens = self._checked(cfg, params, tokens)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, naming the inputs
            states = self._engine(cfg)._forward(cfg, params, tokens)
        return self._outputs(cfg, "forward pass", states, params, tokens)

    def predict(self, cfg, params: dict, tokens: np.ndarray) -> np.ndarray:
        """LSA: yhat = -E_K[:, N, d], (B,); transformer: the prediction of every y_k, (B, K)."""
        params, tokens = self._checked(cfg, params, tokens)
        with np.errstate(over="ignore", invalid="ignore"):
            prediction = self._engine(cfg)._predict(cfg, params, tokens)
        return self._outputs(cfg, "prediction", prediction, params, tokens)

    def loss(self, cfg, params: dict, batch) -> float:
        """LSA: the half-MSE 0.5 mean_b (yhat_b - y_b)^2; transformer: the MSE mean_{b,k} (yhat_bk - y_bk)^2."""
        params, tokens, targets = self._checked_batch(cfg, params, batch)
        with np.errstate(over="ignore", invalid="ignore"):
            value = float(self._engine(cfg)._loss(cfg, params, tokens, targets))
        return self._outputs(cfg, "loss", value, params, tokens, targets)

    def per_position_loss(self, cfg, params: dict, batch) -> np.ndarray:
        """The loss at each position, L_k = mean_b (yhat_bk - y_bk)^2, (K,) (families predicting
        every position: the transformer); ``loss`` is its mean."""
        params, tokens, targets = self._checked_batch(cfg, params, batch)
        with np.errstate(over="ignore", invalid="ignore"):
            value = self._engine(cfg)._per_position_loss(cfg, params, tokens, targets)
        return self._outputs(cfg, "per-position loss", value, params, tokens, targets)

    def loss_and_grad(self, cfg, params: dict, batch) -> tuple[float, dict[str, np.ndarray]]:
        """The loss (as ``loss``) and its gradient with respect to every parameter (a dict like params)."""
        params, tokens, targets = self._checked_batch(cfg, params, batch)
        with np.errstate(over="ignore", invalid="ignore"):
            loss, grads = self._engine(cfg)._loss_and_grad(cfg, params, tokens, targets)
        self._outputs(cfg, "loss and gradient", [loss, *grads.values()], params, tokens, targets)
        return float(loss), grads

    def per_position_loss_and_grad(self, cfg, params: dict, batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(L_k (K,), the gradient of ``loss`` = mean_k L_k) from one forward and backward pass
        (families predicting every position: the transformer)."""
        params, tokens, targets = self._checked_batch(cfg, params, batch)
        with np.errstate(over="ignore", invalid="ignore"):
            per_position, grads = self._engine(cfg)._per_position_loss_and_grad(cfg, params, tokens, targets)
        self._outputs(cfg, "per-position loss and gradient", [per_position, *grads.values()], params, tokens, targets)
        return per_position, grads

    def sensitivity(self, cfg, params: dict, tokens: np.ndarray) -> np.ndarray:
        """LSA: d yhat_b / d x_q,b for every task, (B, d), the query's y-slot held fixed."""
        params, tokens = self._checked(cfg, params, tokens)
        with np.errstate(over="ignore", invalid="ignore"):
            value = self._engine(cfg)._sensitivity(cfg, params, tokens)
        return self._outputs(cfg, "sensitivity", value, params, tokens)

    def sample_loss_and_grad(self, cfg, task, params: dict, batch_size: int, rng: np.random.Generator):
        """(loss, grads) on a fresh training batch ``task.sample(batch_size, rng)``: what the
        host training loop calls each step (``iclgd.backends.training.HostTrainer``)."""
        params = self._check_config(cfg).check_params(cfg, params)
        engine = self._engine(cfg)
        if hasattr(engine, "_sample_loss_and_grad"):  # a fused sampler, or the backend's own default
            return engine._sample_loss_and_grad(cfg, task, params, batch_size, rng)
        return sample_loss_and_grad(engine, cfg, task, params, batch_size, rng)

    def trainer(self, config):
        """The object whose ``advance(state, n_steps)`` trains ``config`` (a RunConfig)."""
        return HostTrainer(self, config)

    def seeds_trainer(self, config, seeds: list[int]):
        """One program that trains a run per seed at once, or None when the engine has none
        (the training loop then advances the seeds' own trainers one after the other)."""
        return None

    def sgld_chains(self, objective, center: dict, settings, mask, per_position: bool, init_loss: float,
                    init_per_position):
        """The SGLD chains of an LLC estimate (``iclgd.analysis.llc``) as one program, returning
        ``iclgd.sgld.ChainRecords``, or None when the engine has none: the estimator then advances
        the chains in lockstep on the host (``iclgd.sgld.run_host_chains``)."""
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

    def _per_position_loss(self, cfg, params: dict, tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
        raise ValueError(
            f"the per-position loss is defined for families that predict every position (iclgd.TransformerConfig); "
            f"the {type(cfg).__name__} predicts the query alone: use loss"
        )

    def _per_position_loss_and_grad(self, cfg, params: dict, tokens: np.ndarray, targets: np.ndarray):
        self._per_position_loss(cfg, params, tokens, targets)  # raises, naming the family, where there are no positions
        raise NotImplementedError(f"{type(self).__name__} computes per-position losses but not their gradient")

    def _sample_loss_and_grad(self, cfg, task, params: dict, batch_size: int, rng: np.random.Generator):
        """(loss, grads) on ``task.sample(batch_size, rng)``; params are checked already, the batch
        is checked against cfg here (its N and d, cast to cfg.dtype)."""
        return sample_loss_and_grad(self, cfg, task, params, batch_size, rng)


def sample_loss_and_grad(engine, cfg, task, params: dict, batch_size: int, rng: np.random.Generator):
    """``engine._loss_and_grad`` on ``task.sample(batch_size, rng)``, the batch checked against cfg
    (its shape; cast to cfg.dtype): the default ``_sample_loss_and_grad`` of every engine."""
    model = module_of(cfg)
    batch = task.sample(batch_size, rng)
    tokens = model.check_tokens(cfg, batch.tokens)
    return engine._loss_and_grad(cfg, params, tokens, model.check_targets(cfg, batch.targets, tokens.shape[0]))


#: The name the host engines (numpy, numba) subclassed before the contract was written out.
HostBackend = Backend
