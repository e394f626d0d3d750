"""Training state and the host-side trainer shared by the NumPy and numba backends.

The data stream is stateless: batch t is drawn from ``batch_rng(seed, t)``, a PCG64 generator
keyed by (seed, t), so a run continues from its step alone, on any backend (every stream is
defined in iclgd.streams).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd import gd_models
from iclgd.models import TransformerConfig, init_params
from iclgd.models import transformer
from iclgd.optim import AdamState, adam_chain, adam_chain_state, adam_state_of, apply_updates, gradient_norm
from iclgd.streams import batch_rng, init_rng, init_seed  # noqa: F401 (init_seed re-exported)


@dataclass
class TrainState:
    """Everything a run needs to continue: the step, params and Adam's state (host NumPy arrays).
    The data stream is stateless (batch t depends only on the seed and t), so no RNG state is carried."""

    step: int
    params: dict[str, np.ndarray]
    adam: AdamState


@dataclass(frozen=True)
class StepRecord:
    """What one update reports: the step it started from, the batch loss there, the rate used,
    the gradient's global norm (before clipping) and whether every parameter the update
    produced is finite.  ``finite``: all of loss, grad_norm and the new params are; a trainer
    stops at the first update that is not, keeping the state from before it."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    params_finite: bool = True

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.loss) and np.isfinite(self.grad_norm) and self.params_finite)


def initial_state(config) -> TrainState:
    """Step 0 of a run: params (LSA weights at ``init_scale``, the rates of a learned-rate GD
    model, or a transformer's PyTorch-default init) from ``init_seed(seed)``, zero Adam moments."""
    if isinstance(config.model, TransformerConfig):
        params = transformer.init_params(config.model, init_rng(config.train.seed))
    else:
        init = gd_models.init_params if isinstance(config.model, gd_models.LearnedGDConfig) else init_params
        params = init(config.model, init_rng(config.train.seed), scale=config.train.init_scale)
    return TrainState(0, params, AdamState.zeros_like(params))


class ThroughLSA:
    """A backend seen by the training loop for a ``LearnedGDConfig`` model: its rates are written
    into the LSA weights of the GD/GD++ construction, the wrapped backend computes the LSA's loss
    and gradient on the batch, and the chain rule (``gd_models.pullback``) returns the rates' gradient."""

    def __init__(self, backend):
        self.backend = backend
        self.name = backend.name

    def sample_loss_and_grad(self, cfg, task, params, batch_size, rng):
        lsa_cfg, lsa_params = gd_models.as_lsa(cfg, params)
        loss, lsa_grads = self.backend.sample_loss_and_grad(lsa_cfg, task, lsa_params, batch_size, rng)
        return loss, gd_models.pullback(cfg, lsa_grads)


def trainer_for(backend, config):
    """The object whose ``advance`` trains ``config``: the backend's own trainer for an LSA; for a
    learned-rate GD model, the host loop on the backend's LSA gradient (``ThroughLSA``)."""
    if isinstance(config.model, gd_models.LearnedGDConfig):
        if config.train.sampler != "numpy":
            raise ValueError(f"learned-rate GD models train on the host data stream (sampler 'numpy'); got sampler {config.train.sampler!r}")
        return HostTrainer(ThroughLSA(backend), config)
    return backend.trainer(config)


class HostTrainer:
    """Updates on the host: batch t from ``batch_rng(seed, t)``, the backend's
    ``sample_loss_and_grad`` (which may fuse sampling and the gradient; with sampler "philox",
    numba_philox.philox_gradient on batch t of the Philox stream, drawn inside the kernel), then
    the NumPy optimiser ``adam_chain`` (clipping, Adam, the rate schedule) through its update and
    ``apply_updates``.  Backends return one from ``trainer(config)``; the jax backend has its own."""

    def __init__(self, backend, config):
        self.backend, self.config, self.adam = backend, config, config.train.adam()
        self.optimizer = adam_chain(self.adam)

    def advance(self, state: TrainState, n_steps: int) -> tuple[TrainState, list[StepRecord]]:
        """Up to ``n_steps`` updates; stops at the first non-finite one (a NaN/inf loss, gradient
        norm or new parameter value): its record is last and the state is the one before it."""
        cfg, task, train_cfg = self.config.model, self.config.task, self.config.train
        records = []
        philox_gradient_at = None
        if getattr(train_cfg, "sampler", "numpy") == "philox":  # RunConfig allows it on numba with plain tasks only
            from iclgd.backends.numba_philox import philox_gradient

            # checked once: the updates keep the params' names, shapes and dtype
            philox_gradient_at = philox_gradient(cfg, state.params, train_cfg.seed, train_cfg.batch_size, task.n_context,
                                                 task.x_scale)
        for _ in range(n_steps):
            if philox_gradient_at is not None:
                loss, grads = philox_gradient_at(state.params, state.step)
            else:
                rng = batch_rng(train_cfg.seed, state.step)
                loss, grads = self.backend.sample_loss_and_grad(cfg, task, state.params, train_cfg.batch_size, rng)
            lr = self.adam.learning_rate(state.adam.count)
            updates, opt_state = self.optimizer.update(grads, adam_chain_state(state.adam), state.params)
            params = apply_updates(state.params, updates)
            params_finite = all(bool(np.isfinite(p).all()) for p in params.values())
            records.append(StepRecord(state.step, loss, lr, gradient_norm(opt_state), params_finite))
            if not records[-1].finite:
                break
            state = TrainState(state.step + 1, params, adam_state_of(opt_state))
        return state, records
