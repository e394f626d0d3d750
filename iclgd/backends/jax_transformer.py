r"""The developmental-landscape transformer in jax: jit-compiled forward, autodiff gradients, and a
trainer that runs the steps of a call in one compiled ``lax.scan``.

The model is the one specified in ``iclgd.models.transformer`` (its module docstring gives every
formula, parameter name and shape); ``iclgd.backends.numpy_transformer.TransformerOracle`` is the
hand-written NumPy oracle this engine is held to (tests/test_jax_transformer.py).

Formulation (the same math, arranged for XLA's CPU runtime; every change is exact algebra, so
the engine agrees with the oracle to round-off):

* LayerNorm is ``_normalise`` (no affine part) followed by the next linear map with the LN's
  weight and bias folded into it: (n w_ln + b_ln) W + b = n (w_ln[:, None] W) + (b_ln W + b).
  ``_normalise`` carries the textbook gradient inverse (g - mean(g) - n mean(g n)) as a
  ``jax.custom_vjp``; every other gradient is jax autodiff.
* Q, K and V are three einsums ``btc,chd->bhtd`` with the thirds of W_qkv (columns [Q | K | V],
  head j = columns j c .. (j+1) c inside each third), so the heads come out ahead of the tokens
  without a transpose of their own; 1/sqrt(c) is folded into W_q; the scores are q k^T per
  (sequence, head), the weighted values p v, and the output projection the einsum
  ``bhqd,hdc->bqc`` with W_o viewed as (H, c, C) (without it, the heads are concatenated).
* Causal mask: a constant (T, T) boolean.  Softmax attention puts -inf at the masked scores before
  ``jax.nn.softmax`` (every row keeps its diagonal); linear attention sets them to 0.
* The loss reads only yhat_k = out[:, 2k - 2, 0]: the last block's queries, its MLP, the final
  LayerNorm and the unembedding are evaluated at the K even (x) positions only (keys and values at
  all 2K; ``_forward`` computes every position).
* The loss of a batch is the sum of the squared errors of ``n_chunks`` independent parts of it
  over B K (``batch_chunks``: one part per core on the CPU platform): XLA's CPU runtime runs
  independent parts of a program concurrently but keeps most single operations of this size on
  one core.

Precision: everything is computed in ``cfg.dtype``.  float64 needs jax's x64 mode, so
constructing ``JaxTransformerEngine()`` or ``JaxTransformerTrainer`` calls
``jax.config.update("jax_enable_x64", True)`` (process-wide, as ``JaxBackend()`` does).

Training (``JaxTransformerTrainer(config).advance(state, n)``) follows ``HostTrainer`` exactly:
batch t is ``config.task.sample(batch_size, batch_rng(seed, t))`` drawn on the host, the update is
``make_optimizer(adam)`` of the jax backend (clipping, Adam, the schedule), each step gives a
``StepRecord`` and the run stops at the first non-finite update (its record last, the state from
before it).  The n batches of a call are drawn first, stacked and sent once; the n updates then
run as one jitted ``lax.scan`` whose carry (params, optimiser state, step, alive) is donated, and
the state and records come back once at the end.  (A record's grad_norm is computed in
``cfg.dtype``; HostTrainer accumulates it in float64: equal in float64, round-off apart in
float32.)  A call is cut into scans whose lengths are powers of two of at most
``max_scan_steps`` steps (``scan_lengths``; the carry stays on the device between them), so a
run compiles a scan for at most about log2(max_scan_steps) lengths whatever its checkpoint grid.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from iclgd._checks import nonnegative_int
from iclgd.backends.base import sample_loss_and_grad
from iclgd.backends.jax_backend import _records, from_optax_state, guarded_update, make_optimizer, to_optax_state
from iclgd.backends.training import StepRecord, TrainState
from iclgd.models.transformer import LN_EPS, TransformerConfig, check_params, check_targets, check_tokens
from iclgd.optim import AdamConfig
from iclgd.streams import batch_rng


def enable_x64() -> None:
    """Turn on jax's float64 support (process-wide), as the jax backend does."""
    jax.config.update("jax_enable_x64", True)


# --- the model --------------------------------------------------------------------------------------


@jax.custom_vjp
def _normalise(h):
    """(h - mean) / sqrt(var + eps) over the last axis (biased variance): LayerNorm without its
    affine part, with the textbook gradient (two reductions instead of autodiff's chain)."""
    return _normalise_fwd(h)[0]


def _normalise_fwd(h):
    centred = h - jnp.mean(h, axis=-1, keepdims=True)
    inverse = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + LN_EPS)
    normalised = centred * inverse
    return normalised, (normalised, inverse)


def _normalise_bwd(residuals, grad):
    """d/dh of <grad, normalise(h)> = inverse (g - mean(g) - n mean(g n)), n = normalise(h)."""
    normalised, inverse = residuals
    mean_grad = jnp.mean(grad, axis=-1, keepdims=True)
    mean_projection = jnp.mean(grad * normalised, axis=-1, keepdims=True)
    return (inverse * (grad - mean_grad - normalised * mean_projection),)


_normalise.defvjp(_normalise_fwd, _normalise_bwd)


def _norm_linear(cfg: TransformerConfig, params: dict, ln: str, h, w, b=None):
    """LN(h) w + b with the LayerNorm's affine part folded into the map:
    (n weight + bias) w + b = n (weight[:, None] w) + (bias w + b), n = normalise(h);
    without layer_norm, h w + b."""
    if cfg.layer_norm:
        h, shift = _normalise(h), params[ln + ".bias"] @ w
        w = params[ln + ".weight"].reshape((-1,) + (1,) * (w.ndim - 1)) * w
        b = shift if b is None else shift + b
    out = h @ w
    return out if b is None else out + b


def _causal_mask(n_queries: int, n_keys: int, stride: int):
    """mask[q, k] = key k <= token position of query q, the queries at positions 0, stride, 2 stride, ..."""
    positions = np.arange(n_queries)[:, None] * stride
    return np.arange(n_keys)[None, :] <= positions


def _heads(cfg: TransformerConfig, params: dict, prefix: str, h, part: int, scale: float = 1.0):
    """Third ``part`` (0 Q, 1 K, 2 V) of LN1(h) W_qkv, times ``scale``, per head: (B, H, T, c).
    The einsum puts the heads ahead of the tokens as part of the product (no separate transpose)."""
    c, heads, size = cfg.d_model, cfg.n_heads, cfg.head_size
    w = params[prefix + ".attn.w_qkv"][:, part * c:(part + 1) * c]
    if scale != 1.0:
        w = w * scale
    if cfg.layer_norm:
        shift = (params[prefix + ".ln1.bias"] @ w).reshape(heads, 1, size)
        w = params[prefix + ".ln1.weight"][:, None] * w
        return jnp.einsum("btc,chd->bhtd", h, w.reshape(c, heads, size)) + shift
    return jnp.einsum("btc,chd->bhtd", h, w.reshape(c, heads, size))


def _attention(cfg: TransformerConfig, params: dict, prefix: str, h, query_stride: int = 1):
    """The attention update concat_j(Z_j) [W_o] of block ``prefix`` for the queries at positions
    0, s, 2s, ... (s = query_stride), keys and values at every position: h (B, T, C) the block's
    input (normalised here when layer_norm) -> (B, T / s, C).  1/sqrt(c) is folded into W_q."""
    t, c = h.shape[1], cfg.d_model
    a = _normalise(h) if cfg.layer_norm else h
    q = _heads(cfg, params, prefix, a[:, ::query_stride] if query_stride > 1 else a, 0, 1.0 / math.sqrt(cfg.head_size))
    k, v = _heads(cfg, params, prefix, a, 1), _heads(cfg, params, prefix, a, 2)
    scores = q @ jnp.swapaxes(k, -1, -2)  # (B, H, T / s, T)
    mask = _causal_mask(q.shape[2], t, query_stride)
    if cfg.attention == "softmax":
        weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
    else:
        weights = jnp.where(mask, scores, 0.0)
    z = weights @ v  # (B, H, T / s, c)
    if cfg.output_projection:
        return jnp.einsum("bhqd,hdc->bqc", z, params[prefix + ".attn.w_out"].reshape(cfg.n_heads, cfg.head_size, c))
    return jnp.swapaxes(z, 1, 2).reshape(z.shape[0], z.shape[2], c)


def _mlp(cfg: TransformerConfig, params: dict, prefix: str, h):
    """ReLU(LN2(h) W_in + b_in) W_out + b_out."""
    hidden = jax.nn.relu(_norm_linear(cfg, params, prefix + ".ln2", h, params[prefix + ".mlp.w_in"], params[prefix + ".mlp.b_in"]))
    return hidden @ params[prefix + ".mlp.w_out"] + params[prefix + ".mlp.b_out"]


def _embed(params: dict, tokens):
    """h_0 = tokens W_embed + P, (B, T, C)."""
    return tokens @ params["embed.w"] + params["embed.pos"]


def _block(cfg: TransformerConfig, params: dict, layer: int, h, query_stride: int = 1):
    """One pre-LN block; with query_stride s, only the positions 0, s, 2s, ... come out."""
    prefix = f"block{layer}"
    h_out = h[:, ::query_stride] if query_stride > 1 else h
    h_out = h_out + _attention(cfg, params, prefix, h, query_stride)
    return h_out + _mlp(cfg, params, prefix, h_out)


def _forward(cfg: TransformerConfig, params: dict, tokens) -> list:
    """[h_0, h_1, ..., h_L, out]: the residual stream after the embedding and after each block
    (B, T, C), and the output LN_f(h_L) W_unembed + b_unembed (B, T, D + 1)."""
    states = [_embed(params, tokens)]
    for layer in range(cfg.n_layers):
        states.append(_block(cfg, params, layer, states[-1]))
    states.append(_norm_linear(cfg, params, "unembed.ln", states[-1], params["unembed.w"], params["unembed.b"]))
    return states


def _predict(cfg: TransformerConfig, params: dict, tokens):
    """yhat (B, K) = out[:, 0::2, 0], the last block evaluated at the even positions only."""
    h = _embed(params, tokens)
    for layer in range(cfg.n_layers - 1):
        h = _block(cfg, params, layer, h)
    h = _block(cfg, params, cfg.n_layers - 1, h, query_stride=2)  # (B, K, C)
    return _norm_linear(cfg, params, "unembed.ln", h, params["unembed.w"][:, 0], params["unembed.b"][0])


def _squared_error_sum(cfg: TransformerConfig, params: dict, tokens, targets, n_chunks: int = 1):
    """sum_{b,k} (yhat_bk - y_bk)^2, the batch cut into ``n_chunks`` independent parts (so that
    the CPU runtime can run their programs concurrently, one per core)."""
    b = tokens.shape[0]
    bounds = [b * i // n_chunks for i in range(n_chunks + 1)]
    return sum(
        jnp.sum(jnp.square(_predict(cfg, params, tokens[lo:hi]) - targets[lo:hi]))
        for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo
    )


def _per_position_loss(cfg: TransformerConfig, params: dict, tokens, targets):
    """L_k = mean_b (yhat_bk - y_bk)^2, (K,)."""
    return jnp.mean(jnp.square(_predict(cfg, params, tokens) - targets), axis=0)


def _loss(cfg: TransformerConfig, params: dict, tokens, targets, n_chunks: int = 1):
    """The paper's MSE, mean_{b,k} (yhat_bk - y_bk)^2 (no factor 1/2)."""
    return _squared_error_sum(cfg, params, tokens, targets, n_chunks) / targets.size


def _weighted_loss(cfg: TransformerConfig, params: dict, tokens, targets, position_weights):
    """sum_k w_k L_k."""
    return jnp.dot(_per_position_loss(cfg, params, tokens, targets), position_weights)


def _per_position_and_loss(cfg: TransformerConfig, params: dict, tokens, targets):
    """(L = mean_k L_k, L_k (K,)): the loss with the per-position losses as auxiliary output."""
    per_position = _per_position_loss(cfg, params, tokens, targets)
    return jnp.mean(per_position), per_position


_forward_jit = jax.jit(_forward, static_argnums=0)
_predict_jit = jax.jit(_predict, static_argnums=0)
_per_position_loss_and_grad_jit = jax.jit(jax.value_and_grad(_per_position_and_loss, argnums=1, has_aux=True), static_argnums=0)
_per_position_loss_jit = jax.jit(_per_position_loss, static_argnums=0)
_loss_jit = jax.jit(_loss, static_argnums=(0, 4))
_loss_and_grad_jit = jax.jit(jax.value_and_grad(_loss, argnums=1), static_argnums=(0, 4))
_weighted_loss_and_grad_jit = jax.jit(jax.value_and_grad(_weighted_loss, argnums=1), static_argnums=0)


#: the most parts a batch is cut into (``batch_chunks``), and the fewest sequences in a part
MAX_CHUNKS, MIN_CHUNK = 8, 32


def batch_chunks(batch_size: int) -> int:
    """How many independent parts the loss cuts a batch of ``batch_size`` into: on jax's CPU
    platform one per core this process may use (at most MAX_CHUNKS, each of at least MIN_CHUNK
    sequences), because XLA's CPU runtime runs independent programs on separate cores while it
    keeps most single operations of this model's size on one; elsewhere 1.  (Measured on 2
    cores: 2 parts take the paper's train step from ~17 to ~13 ms; 4 parts are slower than 2.)"""
    if jax.default_backend() != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_CHUNKS, batch_size // MIN_CHUNK))


def _host(tree):
    """jax arrays -> NumPy arrays (a list, dict or single array)."""
    return jax.tree_util.tree_map(np.asarray, tree)


class JaxTransformerEngine:
    """The transformer's hooks of the backend contract (``iclgd.backends.base``) in jax: NumPy
    arrays in (already validated and cast to ``cfg.dtype``) and NumPy arrays out.

    Constructing it turns on jax's float64 support (``jax_enable_x64``), process-wide."""

    name = "jax"

    def __init__(self):
        enable_x64()

    def _forward(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray) -> list[np.ndarray]:
        return _host(_forward_jit(cfg, params, tokens))

    def _predict(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        return _host(_predict_jit(cfg, params, tokens))

    def _per_position_loss(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return _host(_per_position_loss_jit(cfg, params, tokens, targets))

    def _loss(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> float:
        return float(_loss_jit(cfg, params, tokens, targets, batch_chunks(tokens.shape[0])))

    def _loss_and_grad(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = _loss_and_grad_jit(cfg, params, tokens, targets, batch_chunks(tokens.shape[0]))
        return float(loss), _host(grads)

    def _per_position_loss_and_grad(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray,
                                    targets: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(L_k (K,), the gradient of L = mean_k L_k)."""
        (_, per_position), grads = _per_position_loss_and_grad_jit(cfg, params, tokens, targets)
        return _host(per_position), _host(grads)

    def _loss_and_grad_weighted(self, cfg: TransformerConfig, params: dict, tokens: np.ndarray, targets: np.ndarray,
                                position_weights: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """(sum_k w_k L_k, its gradient), w = position_weights (K,)."""
        weights = np.asarray(position_weights, dtype=cfg.dtype)
        loss, grads = _weighted_loss_and_grad_jit(cfg, params, tokens, targets, weights)
        return float(loss), _host(grads)

    def _sensitivity(self, cfg, params: dict, tokens: np.ndarray) -> np.ndarray:
        raise ValueError(
            "the sensitivity d yhat / d x_q is defined for the LSA family (iclgd.LSAConfig), which predicts one "
            f"query; the {type(cfg).__name__} predicts every position"
        )

    def _sample_loss_and_grad(self, cfg: TransformerConfig, task, params: dict, batch_size: int, rng: np.random.Generator):
        """(loss, grads) on ``task.sample(batch_size, rng)``, the batch checked against cfg."""
        return sample_loss_and_grad(self, cfg, task, params, batch_size, rng)


# --- training ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything static about a training step (hashable: the jit cache key)."""

    cfg: TransformerConfig
    adam: AdamConfig
    n_chunks: int = 1  # the loss's independent batch parts (batch_chunks)


def _train_step(plan: _Plan, carry, batch):
    """One update on a batch; carry = (params, opt_state, step, alive); the update and the
    stop at a non-finite value are the LSA trainer's (``jax_backend.guarded_update``)."""
    tokens, targets = batch
    loss, grads = jax.value_and_grad(_loss, argnums=1)(plan.cfg, carry[0], tokens, targets, plan.n_chunks)
    return guarded_update(plan.adam, carry, loss, grads)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _run_steps(plan: _Plan, carry, tokens, targets):
    """len(tokens) updates in one lax.scan over the stacked batches (n, B, 2K, D + 1), (n, B, K);
    records stacked (n,)."""
    return jax.lax.scan(functools.partial(_train_step, plan), carry, (tokens, targets))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _one_step(plan: _Plan, carry, tokens, targets):
    """One update (no scan): what a step costs when each is its own call."""
    return _train_step(plan, carry, (tokens, targets))


def scan_lengths(n_steps: int, longest: int) -> list[int]:
    """``n_steps`` cut into scans of powers of two no longer than ``longest`` (largest first).
    A scan is compiled once per length, and checkpoint grids make calls of every length; powers
    of two bound the compilations of a whole run by about log2(longest)."""
    lengths, top = [], 1 << (max(1, longest).bit_length() - 1)
    while n_steps > 0:
        length = min(top, 1 << (n_steps.bit_length() - 1))
        lengths.append(length)
        n_steps -= length
    return lengths


class JaxTransformerTrainer:
    """``advance(state, n)``: n updates of ``config`` (a RunConfig whose model is a
    TransformerConfig), the host data stream and the semantics of ``HostTrainer`` (see the module
    docstring).  State crosses as host NumPy arrays (TrainState)."""

    #: the most steps one scan runs (a call with more is cut; the carry stays on the device)
    max_scan_steps = 1024

    def __init__(self, config, n_chunks: int | None = None):
        enable_x64()
        adam = config.train.adam()
        self.config, self.optimizer = config, make_optimizer(adam)
        chunks = batch_chunks(config.train.batch_size) if n_chunks is None else n_chunks
        self.plan = _Plan(config.model, adam, chunks)

    def _carry(self, state: TrainState):
        """TrainState -> the step's carry (params, opt_state, step, alive) as device arrays."""
        params = check_params(self.config.model, state.params)
        host = (params, to_optax_state(self.optimizer, state.adam, params), np.asarray(state.step, np.int64), np.asarray(True))
        return jax.device_put(host)

    def _state(self, carry) -> TrainState:
        params, opt_state, step, _ = carry
        return TrainState(int(step), {k: np.asarray(v) for k, v in params.items()}, from_optax_state(opt_state))

    def _batches(self, first_step: int, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Batches first_step .. first_step + n - 1 of the host stream, checked, cast and stacked."""
        cfg, train = self.config.model, self.config.train
        tokens, targets = [], []
        for step in range(first_step, first_step + n_steps):
            batch = self.config.task.sample(train.batch_size, batch_rng(train.seed, step))
            tokens.append(check_tokens(cfg, batch.tokens))
            targets.append(check_targets(cfg, batch.targets, tokens[-1].shape[0]))
        return np.stack(tokens), np.stack(targets)

    def advance(self, state: TrainState, n_steps: int) -> tuple[TrainState, list[StepRecord]]:
        """Up to ``n_steps`` updates; stops after the first non-finite one (its record is last,
        the state is the one before it)."""
        n_steps = nonnegative_int("n_steps", n_steps)
        if n_steps == 0:
            return state, []
        carry, outputs, start = self._carry(state), [], 0
        for length in scan_lengths(n_steps, self.max_scan_steps):
            tokens, targets = self._batches(state.step + start, length)
            carry, records = _run_steps(self.plan, carry, tokens, targets)  # dispatched asynchronously
            outputs.append(records)
            start += length
        columns = [np.concatenate([np.asarray(part[i]) for part in outputs]) for i in range(5)]
        return self._state(carry), _records(state.step, *columns)
