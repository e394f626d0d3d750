r"""The attention stack in jax: jit-compiled forward, read-outs and autodiff gradients, and a jitted
clipped-Adam train step.

The model is the one specified in ``iclgd.models.stack`` (its module docstring gives every formula,
parameter name and shape); ``iclgd.backends.numpy_stack`` is the hand-written NumPy oracle this
engine is held to (tests/test_stack_jax.py: every function below agrees with it to 1e-9 relative in
float64).  Row vectors; B batch, T tokens (the last is the query), D the raw token size, C the
width, H heads, N_k the attended rows (T - 1, or T when ``query_attended``):

    h_0 = [X | PE]   or   h_0 = E + GELU(E W_in + b_in) W_out + b_out,  E = X W_embed     (B, T, C)
    per layer:  a = LN(h);  A_j = softmax(Q_j K_j^T / sqrt(C)) or Q_j K_j^T          (B, H, T, N_k)
                h <- h + sum_j (A_j V_j) W_o[j];   with mlp  h <- h + GELU(LN'(h) W1 + b1) W2 + b2
    yhat = -h_L[:, T - 1, C - 1],   loss = 0.5 mean_b (yhat_b - y_b)^2

The functions (the oracle's, with the same names and arguments):

    forward(cfg, params, tokens)                     [h_0, ..., h_L], each (B, T, C)
    attention_maps(cfg, params, tokens)              per layer A (B, H, T, N_k): softmax weights, or the raw Q K^T
    predict(cfg, params, tokens)                     yhat (B,)
    loss(cfg, params, tokens, targets)               a 0-d array
    loss_and_grad(cfg, params, tokens, targets)      (loss, dict name -> d loss / d param)
    stream_vjp(cfg, params, tokens, layer, upstream) d <upstream, h_layer> / d X       (B, T, D)
    prediction_input_grad(cfg, params, tokens)       d yhat_b / d X_b                  (B, T, D)

Every gradient is jax autodiff (``jax.value_and_grad`` / ``jax.vjp``) of the forward above; none is
written by hand, and the tests hold them to the oracle's hand-written backward.  stream_vjp and
prediction_input_grad differentiate with respect to the raw tokens X only (the positional
encoding is a constant); sequences are independent, so d yhat_b / d X_b is the gradient of
sum_b yhat_b.

Arrays: NumPy or jax arrays in, jax arrays out (``np.asarray`` brings them to the host), so the
functions compose with jax transformations (jit, grad, vmap) too.  Concrete inputs are validated
by the checks of ``iclgd.models.stack`` (ValueError naming what was expected); traced inputs (inside
a caller's jit) are only cast.  Unlike the oracle, outputs are not checked for overflow (that
would wait for the device): a pass that overflows ``cfg.dtype`` gives inf/NaN.  Everything is computed in ``cfg.dtype``; float64 needs jax's x64
mode, so every function here given a float64 config first calls
``jax.config.update("jax_enable_x64", True)`` (a process-wide jax setting, as the jax backend
does when constructed; importing this module changes nothing).

Training: ``make_train_step(cfg, lr=...)`` gives (init_opt_state, step), the step one jitted
update: the gradient of the loss, then ``optax.chain(clip_by_global_norm(clip_norm),
scale_by_adam(b1, b2, eps), scale(-lr))`` (the numpy engine's ``iclgd.optim`` chain, the same
arithmetic).  Parameters outside ``trainable`` are masked: their gradient is set to zero before
the chain (so it neither counts in the clipping norm nor enters Adam's moments, which stay zero)
and their update to zero after it, so they never move.  ``adam_state_of`` / ``with_adam_state``
move the optimiser state to and from ``iclgd.optim.AdamState`` (what checkpoints hold).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iclgd._checks import finite_array
from iclgd.models.stack import (
    LN_EPS,
    StackConfig,
    check_config,
    check_params,
    check_targets,
    check_tokens,
    param_shapes,
    sinusoidal_encoding,
)
from iclgd.optim import AdamState
from iclgd.train.stack_training import check_optimiser, check_trainable


def enable_x64() -> None:
    """Turn on jax's float64 support (process-wide), as the jax backend does."""
    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def _prepare(cfg: StackConfig) -> StackConfig:
    """``cfg`` checked, with x64 turned on when it computes in float64."""
    check_config(cfg)
    if cfg.dtype == "float64":
        enable_x64()
    return cfg


# --- the model (pure jnp; cfg is static) ---------------------------------------------------------------


def _layer_norm(h, weight, bias):
    """(h - mean) / sqrt(var + 1e-5) * weight + bias over the last axis (biased variance)."""
    centred = h - jnp.mean(h, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    return centred / jnp.sqrt(variance + LN_EPS) * weight + bias


def _gelu(u):
    """0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))) (jax.nn.gelu's tanh approximation)."""
    return jax.nn.gelu(u, approximate=True)


def _mlp(params: dict, prefix: str, a):
    """GELU(a W_in + b_in) W_out + b_out with the parameters ``prefix.w_in`` etc."""
    hidden = _gelu(a @ params[prefix + ".w_in"] + params[prefix + ".b_in"])
    return hidden @ params[prefix + ".w_out"] + params[prefix + ".b_out"]


def _embed(cfg: StackConfig, params: dict, tokens):
    """h_0 (B, T, C): [X | PE], or E + MLP(E) with E = X W_embed."""
    if cfg.embedding == "mlp":
        e = tokens @ params["embed.w"]
        return e + _mlp(params, "embed.mlp", e)
    if cfg.positional_size == 0:
        return tokens
    b, t = tokens.shape[0], tokens.shape[1]
    encoding = jnp.asarray(sinusoidal_encoding(t, cfg.positional_size), dtype=tokens.dtype)
    return jnp.concatenate([tokens, jnp.broadcast_to(encoding, (b, t, cfg.positional_size))], axis=-1)


def _maybe_norm(cfg: StackConfig, params: dict, name: str, h):
    """LN with the parameters ``name.weight``, ``name.bias``; the identity without layer_norm."""
    return _layer_norm(h, params[name + ".weight"], params[name + ".bias"]) if cfg.layer_norm else h


def _attention(cfg: StackConfig, params: dict, layer: int, a):
    """(sum_j (A_j V_j) W_o[j] (B, T, C), A (B, H, T, N_k)) of layer ``layer`` on its input a."""
    prefix = f"layer{layer}."
    keys = a if cfg.query_attended else a[:, :-1]
    q = jnp.einsum("btc,hcd->bhtd", a, params[prefix + "w_q"])
    k = jnp.einsum("bnc,hcd->bhnd", keys, params[prefix + "w_k"])
    v = jnp.einsum("bnc,hcd->bhnd", keys, params[prefix + "w_v"])
    scores = jnp.einsum("bhtd,bhnd->bhtn", q, k)
    if cfg.attention[layer] == "softmax":
        weights = jax.nn.softmax(scores / math.sqrt(cfg.width), axis=-1)
    else:
        weights = scores
    mixed = jnp.einsum("bhtn,bhnd->bhtd", weights, v)
    return jnp.einsum("bhtd,hdc->btc", mixed, params[prefix + "w_o"]), weights


def _layer(cfg: StackConfig, params: dict, layer: int, h):
    """h_{l+1} from h_l: the attention sublayer, then (with mlp) the MLP sublayer, each pre-LN."""
    update, _ = _attention(cfg, params, layer, _maybe_norm(cfg, params, f"layer{layer}.ln", h))
    h = h + update
    if cfg.mlp:
        h = h + _mlp(params, f"layer{layer}.mlp", _maybe_norm(cfg, params, f"layer{layer}.mlp_ln", h))
    return h


def _stream(cfg: StackConfig, params: dict, tokens, layer: int):
    """h_layer (B, T, C), computing only the layers below it."""
    h = _embed(cfg, params, tokens)
    for index in range(layer):
        h = _layer(cfg, params, index, h)
    return h


def _forward(cfg: StackConfig, params: dict, tokens) -> list:
    """[h_0, ..., h_L]."""
    states = [_embed(cfg, params, tokens)]
    for layer in range(cfg.n_layers):
        states.append(_layer(cfg, params, layer, states[-1]))
    return states


def _attention_maps(cfg: StackConfig, params: dict, tokens) -> list:
    """Per layer A (B, H, T, N_k)."""
    h, maps = _embed(cfg, params, tokens), []
    for layer in range(cfg.n_layers):
        maps.append(_attention(cfg, params, layer, _maybe_norm(cfg, params, f"layer{layer}.ln", h))[1])
        h = _layer(cfg, params, layer, h)
    return maps


def _predict(cfg: StackConfig, params: dict, tokens):
    """yhat = -h_L[:, T - 1, C - 1], (B,)."""
    return -_stream(cfg, params, tokens, cfg.n_layers)[:, -1, -1]


def _loss(cfg: StackConfig, params: dict, tokens, targets):
    """Half-MSE 0.5 mean_b (yhat_b - y_b)^2."""
    return 0.5 * jnp.mean(jnp.square(_predict(cfg, params, tokens) - targets))


def _stream_vjp(cfg: StackConfig, params: dict, tokens, layer: int, upstream):
    """d <upstream, h_layer> / d X, (B, T, D), by jax.vjp."""
    _, pullback = jax.vjp(lambda x: _stream(cfg, params, x, layer), tokens)
    return pullback(upstream)[0]


def _prediction_input_grad(cfg: StackConfig, params: dict, tokens):
    """d yhat_b / d X_b = d (sum_b yhat_b) / d X (the sequences are independent), (B, T, D)."""
    return jax.grad(lambda x: jnp.sum(_predict(cfg, params, x)))(tokens)


_forward_jit = jax.jit(_forward, static_argnums=0)
_attention_maps_jit = jax.jit(_attention_maps, static_argnums=0)
_predict_jit = jax.jit(_predict, static_argnums=0)
_loss_jit = jax.jit(_loss, static_argnums=0)
_loss_and_grad_jit = jax.jit(jax.value_and_grad(_loss, argnums=1), static_argnums=0)
_stream_vjp_jit = jax.jit(_stream_vjp, static_argnums=(0, 3))
_prediction_input_grad_jit = jax.jit(_prediction_input_grad, static_argnums=0)


# --- the public functions: checked inputs, jax arrays out ------------------------------------------------


def _traced(*trees) -> bool:
    """Whether any leaf is a jax tracer (the call is inside a caller's jax transformation)."""
    return any(isinstance(leaf, jax.core.Tracer) for tree in trees for leaf in jax.tree_util.tree_leaves(tree))


def _inputs(cfg: StackConfig, params, tokens, targets=None):
    """(params, tokens, targets) in ``cfg.dtype``: checked by iclgd.models.stack when concrete,
    only cast when traced."""
    _prepare(cfg)
    if _traced(params, tokens, targets):
        dtype, names = np.dtype(cfg.dtype), param_shapes(cfg)
        if not isinstance(params, dict) or set(params) != set(names):
            found = sorted(params, key=repr) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"params must be a dict with the names {list(names)}; got {found}")
        cast = {name: jnp.asarray(params[name], dtype) for name in names}
        return cast, jnp.asarray(tokens, dtype), None if targets is None else jnp.asarray(targets, dtype)
    params = check_params(cfg, {name: np.asarray(value) for name, value in params.items()} if isinstance(params, dict) else params)
    tokens = check_tokens(cfg, np.asarray(tokens))
    if targets is not None:
        targets = check_targets(cfg, np.asarray(targets), tokens.shape[0])
    return params, tokens, targets


def forward(cfg: StackConfig, params: dict, tokens) -> list:
    """Every stage's stream [h_0, h_1, ..., h_L], each (B, T, C)."""
    params, tokens, _ = _inputs(cfg, params, tokens)
    return _forward_jit(cfg, params, tokens)


def attention_maps(cfg: StackConfig, params: dict, tokens) -> list:
    """Per layer (B, H, T, N_k): A after the softmax (softmax layers) or the raw scores Q K^T (linear)."""
    params, tokens, _ = _inputs(cfg, params, tokens)
    return _attention_maps_jit(cfg, params, tokens)


def predict(cfg: StackConfig, params: dict, tokens):
    """yhat = -h_L[:, T - 1, C - 1], (B,)."""
    params, tokens, _ = _inputs(cfg, params, tokens)
    return _predict_jit(cfg, params, tokens)


def loss(cfg: StackConfig, params: dict, tokens, targets):
    """0.5 mean_b (yhat_b - y_b)^2, a 0-d array (``float(...)`` for a number)."""
    params, tokens, targets = _inputs(cfg, params, tokens, targets)
    return _loss_jit(cfg, params, tokens, targets)


def loss_and_grad(cfg: StackConfig, params: dict, tokens, targets) -> tuple:
    """(loss, dict name -> d loss / d param), by jax.value_and_grad."""
    params, tokens, targets = _inputs(cfg, params, tokens, targets)
    return _loss_and_grad_jit(cfg, params, tokens, targets)


def stream_vjp(cfg: StackConfig, params: dict, tokens, layer: int, upstream):
    """d <upstream, h_layer> / d X (B, T, D): upstream (B, T, C), layer 0 .. L (h_0 the embedded
    stream); the gradient with respect to the raw tokens X, not the positional encoding."""
    params, tokens, _ = _inputs(cfg, params, tokens)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= cfg.n_layers:
        raise ValueError(f"layer must be an int in 0 .. {cfg.n_layers} (0: the embedded stream h_0); got {layer!r}")
    expected = (tokens.shape[0], tokens.shape[1], cfg.width)
    if not _traced(upstream):
        upstream = finite_array("upstream", np.asarray(upstream), ndim=3, dtype=cfg.dtype)
    if tuple(np.shape(upstream)) != expected:
        raise ValueError(f"upstream must have the shape of the stream (B, T, C) = {expected}; got {tuple(np.shape(upstream))}")
    upstream = jnp.asarray(upstream, np.dtype(cfg.dtype))
    return _stream_vjp_jit(cfg, params, tokens, int(layer), upstream)


def prediction_input_grad(cfg: StackConfig, params: dict, tokens):
    """d yhat_b / d X_b (B, T, D)."""
    params, tokens, _ = _inputs(cfg, params, tokens)
    return _prediction_input_grad_jit(cfg, params, tokens)


# --- training ---------------------------------------------------------------------------------------------


def optimiser(lr: float, b1: float, b2: float, eps: float, clip_norm: float) -> optax.GradientTransformation:
    """optax.chain(clip_by_global_norm(clip_norm), scale_by_adam(b1, b2, eps), scale(-lr))
    (clip_norm = inf never clips)."""
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.scale_by_adam(b1=b1, b2=b2, eps=eps), optax.scale(-lr))


def _masked(tree: dict, trainable: frozenset) -> dict:
    """``tree`` with the entries of names outside ``trainable`` replaced by zeros."""
    return {name: value if name in trainable else jnp.zeros_like(value) for name, value in tree.items()}


@dataclass(frozen=True)
class _Plan:
    """Everything static about a train step (hashable: the jit cache key, so that every
    make_train_step with the same settings shares one compiled step)."""

    cfg: StackConfig
    lr: float
    b1: float
    b2: float
    eps: float
    clip_norm: float
    trainable: frozenset


@functools.partial(jax.jit, static_argnums=0)
def _train_step(plan: _Plan, params: dict, opt_state, tokens, targets):
    """(params + u, new optimiser state, loss at params): see make_train_step."""
    dtype = np.dtype(plan.cfg.dtype)
    transform = optimiser(plan.lr, plan.b1, plan.b2, plan.eps, plan.clip_norm)
    params = {name: jnp.asarray(value, dtype) for name, value in params.items()}
    value, grads = jax.value_and_grad(_loss, argnums=1)(plan.cfg, params, jnp.asarray(tokens, dtype), jnp.asarray(targets, dtype))
    updates, opt_state = transform.update(_masked(grads, plan.trainable), opt_state, params)
    return optax.apply_updates(params, _masked(updates, plan.trainable)), opt_state, value


def make_train_step(cfg: StackConfig, *, lr, b1=0.9, b2=0.98, eps=1e-8, clip_norm=10.0, trainable=None):
    """(init_opt_state(params), step(params, opt_state, tokens, targets) -> (params, opt_state, loss)).

    ``step`` is one jitted update: g = d loss / d params; g[name] = 0 for names outside
    ``trainable`` (None: all); u = optimiser(lr, b1, b2, eps, clip_norm) applied to g (global-norm
    clipping, Adam, -lr; clip_norm None or inf: no clipping); u[name] = 0 outside ``trainable``;
    params + u.  ``loss`` is the loss at the params given (before the update).  Inputs may be
    NumPy or jax arrays (cast to ``cfg.dtype``, not otherwise checked: check batches with
    iclgd.models.stack.check_tokens / check_targets); outputs are jax arrays.  ValueError for a
    bad setting or a name in ``trainable`` that is not a parameter of ``cfg``."""
    _prepare(cfg)
    settings = check_optimiser(lr, b1, b2, eps, clip_norm)
    settings["clip_norm"] = math.inf if settings["clip_norm"] is None else settings["clip_norm"]
    plan = _Plan(cfg, trainable=frozenset(check_trainable(cfg, trainable)), **settings)

    def init_opt_state(params: dict):
        """The chain's initial state (zero moments, count 0) for ``params`` (checked, in cfg.dtype)."""
        _prepare(cfg)
        transform = optimiser(plan.lr, plan.b1, plan.b2, plan.eps, plan.clip_norm)
        return transform.init({name: jnp.asarray(value) for name, value in check_params(cfg, params).items()})

    def step(params: dict, opt_state, tokens, targets):
        """One update; returns (new params, new optimiser state, the loss before the update)."""
        _prepare(cfg)
        return _train_step(plan, params, opt_state, tokens, targets)

    return init_opt_state, step


def _adam_nodes(opt_state) -> list:
    return [node for node in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(node, optax.ScaleByAdamState)]


def adam_state_of(opt_state) -> AdamState:
    """The optax state of ``make_train_step`` -> AdamState(m = mu, v = nu, count), host NumPy arrays."""
    nodes = _adam_nodes(opt_state)
    if len(nodes) != 1:
        raise ValueError(f"expected one optax ScaleByAdamState in the optimiser state; found {len(nodes)}")
    node = nodes[0]
    return AdamState({k: np.asarray(v) for k, v in node.mu.items()}, {k: np.asarray(v) for k, v in node.nu.items()},
                     int(np.asarray(node.count)))


def with_adam_state(opt_state, adam: AdamState):
    """``opt_state`` (of ``make_train_step``'s init) with its Adam moments and count replaced by
    ``adam``'s (each moment cast to the dtype of the one it replaces)."""
    def replace(node):
        if not isinstance(node, optax.ScaleByAdamState):
            return node
        for name, moment in (("m", adam.m), ("v", adam.v)):
            if set(moment) != set(node.mu):
                raise ValueError(f"Adam's {name} must have the parameter names {sorted(node.mu)}; got {sorted(moment)}")

        def like(moments, reference):
            return {k: jnp.asarray(np.asarray(moments[k]).reshape(np.shape(r)), dtype=r.dtype) for k, r in reference.items()}

        return node._replace(count=jnp.asarray(adam.count, dtype=node.count.dtype), mu=like(adam.m, node.mu), nu=like(adam.v, node.nu))

    return jax.tree_util.tree_map(replace, opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))


__all__ = [
    "adam_state_of", "attention_maps", "enable_x64", "forward", "loss",
    "loss_and_grad", "make_train_step", "optimiser", "predict", "prediction_input_grad", "stream_vjp",
    "with_adam_state",
]
