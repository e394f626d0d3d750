r"""The jax backend: jit-compiled forward, autodiff gradients, optax Adam, data-parallel and
many-seed training.  Held to the NumPy oracle (iclgd.backends.numpy_backend) by
tests/test_jax_backend.py.

The math (row vectors; B batch, T = N + 1 tokens, D = d + 1, H heads).  A layer only
right-multiplies every token by one D x D matrix per task.  With C (B, N_k, D) the attended
rows (the N context rows; all T rows when ``include_query``):

    G   = C^T C                                     (B, D, D)  the attended rows' Gram matrix
    P_h = W_q[h] W_k[h]^T,   R_h = W_v[h] W_o[h]    (H, D, D)
    E'  = E + sum_h (E P_h C^T)(C R_h) = E M,       M = I + sum_h P_h G R_h      (B, D, D)
    G'  = (C M)^T (C M) = M^T G M                   (the attended rows of E' are C M)

The last layer is read at the query row a = E[:, N] (B, D) only:

    a_K = a + sum_h (a P_h) G R_h,     yhat = -a_K[:, d]

and when the last layer is also the first (K = 1), G is never formed:
(a P_h) G = ((a P_h) C^T) C.  For K = 1, B = 2048, N = d = 10 the loss then costs ~1.5 MFLOP
and loss plus gradient ~4.5, against ~77 for a step in the token-by-token form.  Gradients
are jax autodiff through these products (exact math, so they agree with the oracle to
float64 round-off); the sensitivity d yhat / d x_q is the autodiff gradient with respect to
the query token's x-part (its y-slot held fixed, as in the oracle).

Precision: everything is computed in ``cfg.dtype``.  float64 needs jax's x64 mode, so
constructing ``JaxBackend()`` calls ``jax.config.update("jax_enable_x64", True)`` (a process-wide
jax setting; importing iclgd never imports jax).  Arrays cross the API as NumPy arrays.

Devices: a backend computes on ``devices`` (default ``jax.devices()``: every device of every
process).  A batch whose size is divisible by the number of devices is sharded along axis 0
over a 1-d ``Mesh`` (axis "batch") with params and optimiser state replicated; XLA then
all-reduces the batch mean, so losses and gradients equal the one-device ones up to the order
of summation.  Other batch sizes run on the first local device.  For several hosts, call
``initialize_distributed(...)`` in every process before anything else touches jax; every
process must then make the same calls with the same host arrays (each process supplies the
shards on its own devices; with sampler "numpy" every process draws the whole batch from the
same seed, with sampler "jax" each device draws its own shard).

Training (``trainer(config).advance(state, n)``), with ``config.train.sampler``:
  "numpy": batch t is ``config.task.sample(batch_size, batch_rng(seed, t))`` drawn on the host
      (the same numbers as the numpy and numba backends) and fed to one jitted update;
  "jax":   the whole step - sampling from ``fold_in(PRNGKey(seed), t)`` in ``cfg.dtype``,
      gradient, optax update - is one jitted function, and the n steps of a call run in one
      ``lax.scan`` with params on the devices.  ``JaxBackend.sample_batch`` reproduces any
      batch t.  (Another stream than "numpy": the two samplers give different runs.)
The optimiser is ``optax.chain(optax.clip_by_global_norm(c), optax.adam(schedule, b1, b2, eps))``
(no clipping when clip_norm is 0), the schedule being ``AdamConfig.learning_rate``; its state
maps to and from ``iclgd.optim.AdamState`` so checkpoints move between backends.
``seeds_trainer(config, seeds)`` vmaps the same step over many seeds in one program.

LLC estimates (``iclgd.analysis.llc``): ``sgld_chains`` runs an estimate's SGLD chains, for both
families, as one compiled program (the chains vmapped, the steps in a ``lax.scan``) fed the host
runner's draws; see ``iclgd.backends.jax_sgld``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from iclgd._checks import float_dtype, nonnegative_int, positive_int
from iclgd.backends.base import Backend
from iclgd.backends.training import StepRecord, TrainState, initial_state
from iclgd.models import LSAConfig, TransformerConfig, attention_products, check_params, layer_prefixes
from iclgd.optim import AdamConfig, AdamState, one_cycle_parts
from iclgd.streams import batch_rng, jax_base_key, jax_batch_key
from iclgd.tasks import Batch, LinearRegressionTask
from iclgd.tasks.inputs import draw_inputs_jax, flat_draw

BATCH_AXIS = "batch"


def initialize_distributed(**kwargs) -> None:
    """Join a multi-host jax job: ``jax.distributed.initialize(**kwargs)`` (coordinator_address,
    num_processes, process_id, ...; on managed clusters (SLURM, TPU pods) no arguments are needed).
    Call it in every process before any other jax call; a ``JaxBackend`` built afterwards spans
    the devices of all processes."""
    jax.distributed.initialize(**kwargs)


# --- the model --------------------------------------------------------------------------------


def _attended(cfg: LSAConfig, tokens):
    """C: the rows that are keys and values, (B, N_k, D)."""
    return tokens if cfg.include_query else tokens[:, :-1]


def _layer_maps(params: dict, prefix: str):
    """P_h = W_q[h] W_k[h]^T and R_h = W_v[h] W_o[h], each (H, D, D) (built by the models module)."""
    return attention_products(params, prefix)


def _gram(rows):
    """G = C^T C per task, (B, N_k, D) -> (B, D, D)."""
    return jnp.einsum("bni,bnj->bij", rows, rows)


def _mixing(gram, p, r):
    """M = I + sum_h P_h G R_h, (B, D, D)."""
    pg = jnp.einsum("hij,bjk->bhik", p, gram)
    return jnp.eye(gram.shape[-1], dtype=gram.dtype) + jnp.einsum("bhik,hkl->bil", pg, r)


def _next_gram(gram, m):
    """G' = M^T G M, (B, D, D)."""
    return jnp.einsum("bji,bjk,bkl->bil", m, gram, m, optimize=[(0, 1), (0, 1)])


def _forward(cfg: LSAConfig, params: dict, tokens) -> list:
    """[E_0, ..., E_K], every row of every layer: E_l = E_{l-1} M_l, each (B, T, D)."""
    states, gram = [tokens], _gram(_attended(cfg, tokens))
    for prefix in layer_prefixes(cfg):
        m = _mixing(gram, *_layer_maps(params, prefix))
        states.append(jnp.einsum("bti,bij->btj", states[-1], m))
        gram = _next_gram(gram, m)
    return states


def _predict(cfg: LSAConfig, params: dict, tokens):
    """yhat = -a_K[:, d], (B,), following the query row a only (see the module docstring)."""
    attended, query, gram = _attended(cfg, tokens), tokens[:, -1], None
    prefixes = layer_prefixes(cfg)
    for prefix in prefixes[:-1]:
        gram = _gram(attended) if gram is None else gram
        m = _mixing(gram, *_layer_maps(params, prefix))
        query = jnp.einsum("bi,bij->bj", query, m)
        gram = _next_gram(gram, m)
    p, r = _layer_maps(params, prefixes[-1])
    u = jnp.einsum("bi,hij->bhj", query, p)  # a P_h (B, H, D)
    if gram is None:  # first layer: (a P_h) C^T C without forming G
        ug = jnp.einsum("bhn,bnk->bhk", jnp.einsum("bhj,bnj->bhn", u, attended), attended)
    else:
        ug = jnp.einsum("bhj,bjk->bhk", u, gram)
    return -(query[:, -1] + jnp.einsum("bhk,hk->b", ug, r[:, :, -1]))


def _loss(cfg: LSAConfig, params: dict, tokens, targets):
    """Half-MSE 0.5 mean_b (yhat_b - y_b)^2."""
    return 0.5 * jnp.mean(jnp.square(_predict(cfg, params, tokens) - targets))


def _sensitivity(cfg: LSAConfig, params: dict, tokens):
    """d yhat_b / d x_q,b (B, d): the gradient of sum_b yhat_b in the tokens (tasks are independent),
    read at the query's x-part."""
    return jax.grad(lambda t: jnp.sum(_predict(cfg, params, t)))(tokens)[:, -1, :-1]


_forward_jit = jax.jit(_forward, static_argnums=0)
_predict_jit = jax.jit(_predict, static_argnums=0)
_loss_jit = jax.jit(_loss, static_argnums=0)
_loss_and_grad_jit = jax.jit(jax.value_and_grad(_loss, argnums=1), static_argnums=0)
_sensitivity_jit = jax.jit(_sensitivity, static_argnums=0)


# --- data ---------------------------------------------------------------------------------------


def _sample(task: LinearRegressionTask, dtype: str, key, batch_size: int):
    """One batch of ``task`` drawn with jax.random from ``key`` in ``dtype``:
    w (B, d) ~ N(0, w_scale^2), x (B, N + 1, d) from ``task.x_distribution`` (the jax twin of
    the input law, ``iclgd.tasks.inputs.draw_inputs_jax``),
    y = x w + noise_std * N(0, 1); then n_distractors context labels per task (positions uniform
    without replacement) replaced by N(0, 1).  Returns tokens (B, N + 1, d + 1), targets (B,) = y_q,
    weights (B, d)."""
    n, d = task.n_context, task.d
    k_w, k_x, k_noise, k_pos, k_val = jax.random.split(key, 5)
    weights = task.w_scale * flat_draw(jax.random.normal, k_w, (batch_size, d), dtype)
    x = draw_inputs_jax(task.x_distribution, task.x_scale, k_x, (batch_size, n + 1, d), dtype)
    y = jnp.einsum("btd,bd->bt", x, weights)
    if task.noise_std > 0:
        y = y + task.noise_std * flat_draw(jax.random.normal, k_noise, (batch_size, n + 1), dtype)
    context = y[:, :n]
    if task.n_distractors > 0:
        # the n_distractors context positions with the smallest uniform scores get N(0, 1) labels
        scores = flat_draw(jax.random.uniform, k_pos, (batch_size, n), dtype)
        rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
        noise = flat_draw(jax.random.normal, k_val, (batch_size, n), dtype)
        context = jnp.where(rank < task.n_distractors, noise, context)
    labels = jnp.concatenate([context, jnp.zeros((batch_size, 1), dtype)], axis=1)
    return jnp.concatenate([x, labels[:, :, None]], axis=2), y[:, n], weights


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sample_jit(task, dtype, batch_size, seed, step):
    return _sample(task, dtype, jax_batch_key(seed, step), batch_size)


# --- the optimiser ------------------------------------------------------------------------------


def learning_rate_schedule(adam: AdamConfig):
    """``AdamConfig.learning_rate`` as a jax function of the update count (float64 under x64),
    the same operations in the same order."""

    def schedule(count):
        step = jnp.asarray(count).astype(float)
        if adam.schedule == "constant":
            return jnp.full((), adam.lr, dtype=float)
        if adam.schedule == "one_cycle":
            initial, peak_step, final, last_step = one_cycle_parts(adam.lr, adam.total_steps)
            rising = initial + (adam.lr - initial) * (step / peak_step if peak_step > 0 else 1.0)
            falling = adam.lr + (final - adam.lr) * jnp.minimum(1.0, (step - peak_step) / max(1e-12, last_step - peak_step))
            return jnp.where(step <= peak_step, rising, falling)
        start = adam.warmup_steps if adam.schedule == "warmup_cosine" else 0
        progress = jnp.minimum(1.0, (step - start) / max(1, adam.total_steps - start))
        rate = adam.lr * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        if adam.schedule == "warmup_cosine" and adam.warmup_steps > 0:
            rate = jnp.where(step < adam.warmup_steps, adam.lr * (step + 1) / adam.warmup_steps, rate)
        return rate

    return schedule


def make_optimizer(adam: AdamConfig) -> optax.GradientTransformation:
    """clip_by_global_norm(c) (when clip_norm is set) followed by Adam with the schedule."""
    core = optax.adam(learning_rate_schedule(adam), b1=adam.beta1, b2=adam.beta2, eps=adam.eps)
    return core if adam.clip_norm is None else optax.chain(optax.clip_by_global_norm(adam.clip_norm), core)


def _map_state(node, adam_fn, schedule_fn):
    """Rebuild an optax state tree, transforming its ScaleByAdamState and ScaleByScheduleState nodes."""
    if isinstance(node, optax.ScaleByAdamState):
        return adam_fn(node)
    if isinstance(node, optax.ScaleByScheduleState):
        return schedule_fn(node)
    if isinstance(node, tuple) and not hasattr(node, "_fields"):
        return tuple(_map_state(child, adam_fn, schedule_fn) for child in node)
    return node


def _adam_node(opt_state) -> optax.ScaleByAdamState:
    found = []
    _map_state(opt_state, lambda node: found.append(node), lambda node: node)
    if len(found) != 1:
        raise ValueError(f"expected one ScaleByAdamState in the optax state; found {len(found)}")
    return found[0]


def to_optax_state(optimizer: optax.GradientTransformation, adam: AdamState, params: dict):
    """AdamState(m, v, count) -> the optax state of ``optimizer`` (host NumPy leaves): mu = m,
    nu = v, and every count (Adam's and the schedule's) = count."""
    for name, moment in (("m", adam.m), ("v", adam.v)):
        if set(moment) != set(params):
            raise ValueError(f"Adam's {name} must have the parameter names {sorted(params)}; got {sorted(moment)}")
    count = np.asarray(adam.count, np.int32)

    def like_params(moment):
        return {k: np.asarray(moment[k], dtype=np.asarray(p).dtype).reshape(np.shape(p)) for k, p in params.items()}

    return _map_state(
        jax.eval_shape(optimizer.init, params),
        lambda node: node._replace(count=count, mu=like_params(adam.m), nu=like_params(adam.v)),
        lambda node: node._replace(count=count),
    )


def from_optax_state(opt_state) -> AdamState:
    """The optax state -> AdamState(m = mu, v = nu, count), NumPy arrays on the host."""
    node = _adam_node(opt_state)
    return AdamState({k: _host(v) for k, v in node.mu.items()}, {k: _host(v) for k, v in node.nu.items()}, int(_host(node.count)))


# --- devices ------------------------------------------------------------------------------------


def _put(array, sharding):
    """A host array as a jax array laid out by ``sharding`` (each process supplies its own shards)."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _host(array) -> np.ndarray:
    """A jax array as one host NumPy array (gathered from every process when needed)."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        if array.is_fully_replicated:
            return np.asarray(array.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


# --- training -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything static about a training step (hashable: the jit cache key)."""

    cfg: LSAConfig
    task: LinearRegressionTask
    adam: AdamConfig
    batch_size: int
    batch_sharding: NamedSharding | None  # constraint on sampled batches; None on one device


def _global_norm(tree):
    """sqrt(sum of every squared entry), in the leaves' dtype (what clip_by_global_norm uses)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def guarded_update(adam: AdamConfig, carry, loss, grads):
    """The clipped-Adam update of ``carry = (params, opt_state, step, alive)`` by ``grads``, kept
    only if it is finite.

    A non-finite loss, gradient norm or new parameter value leaves params, optimiser state and
    step unchanged and sets alive = False, after which every later step is a no-op too (as
    HostTrainer stops).  Returns the new carry and the record (loss, lr, grad_norm, alive before
    this step, whether every new parameter value is finite).  Every jax trainer's step ends here."""
    params, opt_state, step, alive = carry
    grad_norm = _global_norm(grads)
    lr = learning_rate_schedule(adam)(_adam_node(opt_state).count)
    updates, new_opt_state = make_optimizer(adam).update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(new_params)]))
    keep = alive & jnp.isfinite(loss) & jnp.isfinite(grad_norm) & params_finite

    def choose(new, old):
        return jnp.where(keep, new, old)

    new_carry = (
        jax.tree_util.tree_map(choose, new_params, params),
        jax.tree_util.tree_map(choose, new_opt_state, opt_state),
        step + keep.astype(step.dtype),
        keep,
    )
    return new_carry, (loss, lr, grad_norm, alive, params_finite)


def _train_step(plan: _Plan, carry, tokens, targets):
    """One clipped-Adam update on a batch (``guarded_update``).  carry = (params, opt_state, step, alive)."""
    loss, grads = jax.value_and_grad(_loss, argnums=1)(plan.cfg, carry[0], tokens, targets)
    return guarded_update(plan.adam, carry, loss, grads)


def _constrain(plan: _Plan, array):
    return array if plan.batch_sharding is None else jax.lax.with_sharding_constraint(array, plan.batch_sharding)


def _fused_step(plan: _Plan, base_key, carry):
    """Sample batch t = carry's step from fold_in(base_key, t), then update: one traced step."""
    tokens, targets, _ = _sample(plan.task, plan.cfg.dtype, jax.random.fold_in(base_key, carry[2]), plan.batch_size)
    return _train_step(plan, carry, _constrain(plan, tokens), _constrain(plan, targets))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _run_fused(plan: _Plan, seed, carry, n_steps: int):
    """n_steps fused steps in one lax.scan; records stacked (n_steps,)."""
    base_key = jax_base_key(seed)
    return jax.lax.scan(lambda c, _: _fused_step(plan, base_key, c), carry, None, length=n_steps)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _run_fused_seeds(plan: _Plan, seeds, carries, n_steps: int):
    """The fused step vmapped over a leading seed axis, n_steps of it in one lax.scan; records (n_steps, S)."""
    base_keys = jax.vmap(jax_base_key)(seeds)
    step = jax.vmap(functools.partial(_fused_step, plan))
    return jax.lax.scan(lambda c, _: step(base_keys, c), carries, None, length=n_steps)


@functools.partial(jax.jit, static_argnums=0)
def _host_batch_step(plan: _Plan, carry, tokens, targets):
    return _train_step(plan, carry, tokens, targets)


@functools.partial(jax.jit, static_argnums=0)
def _host_batch_step_seeds(plan: _Plan, carries, tokens, targets):
    return jax.vmap(functools.partial(_train_step, plan))(carries, tokens, targets)


def _records(first_step: int, loss, lr, grad_norm, alive, params_finite) -> list[StepRecord]:
    """Host records of the steps that ran: up to and including the first non-finite one."""
    records = []
    for i in range(len(loss)):
        if not alive[i]:
            break
        records.append(StepRecord(first_step + i, float(loss[i]), float(lr[i]), float(grad_norm[i]), bool(params_finite[i])))
        if not records[-1].finite:
            break
    return records


class JaxTrainer:
    """``advance(state, n)``: n updates of ``config`` on the backend's devices (see the module
    docstring for the two samplers).  State crosses as host NumPy arrays (TrainState)."""

    def __init__(self, backend: "JaxBackend", config):
        train = config.train
        adam = train.adam()
        self.config, self.optimizer = config, make_optimizer(adam)
        self.replicated, self.batched = backend._shardings(train.batch_size)
        sharded = self.batched.mesh.size > 1
        self.plan = _Plan(config.model, config.task, adam, train.batch_size, self.batched if sharded else None)

    def _host_carry(self, state: TrainState):
        """TrainState -> the step's carry (params, opt_state, step, alive) as host arrays."""
        params = check_params(self.config.model, state.params)
        return params, to_optax_state(self.optimizer, state.adam, params), np.asarray(state.step, np.int64), np.asarray(True)

    def _carry(self, state: TrainState):
        return jax.tree_util.tree_map(lambda leaf: _put(leaf, self.replicated), self._host_carry(state))

    def _state(self, carry) -> TrainState:
        """A carry (device or host arrays) -> TrainState with host arrays."""
        params, opt_state, step, _ = carry
        return TrainState(int(_host(step)), {k: _host(v) for k, v in params.items()}, from_optax_state(opt_state))

    def _host_batch(self, step: int):
        batch = self.config.task.sample(self.plan.batch_size, batch_rng(self.config.train.seed, step))
        dtype = self.config.model.dtype
        return _put(batch.tokens.astype(dtype), self.batched), _put(batch.targets.astype(dtype), self.batched)

    def advance(self, state: TrainState, n_steps: int) -> tuple[TrainState, list[StepRecord]]:
        """Up to ``n_steps`` updates; stops after the first non-finite one (its record is last)."""
        n_steps = nonnegative_int("n_steps", n_steps)
        if n_steps == 0:
            return state, []
        carry = self._carry(state)
        if self.config.train.sampler == "jax":
            seed = _put(np.asarray(self.config.train.seed, np.int64), self.replicated)
            carry, outputs = _run_fused(self.plan, seed, carry, n_steps)
        else:  # host batches; steps are dispatched asynchronously, records fetched at the end
            outputs = []
            for i in range(n_steps):
                carry, record = _host_batch_step(self.plan, carry, *self._host_batch(state.step + i))
                outputs.append(record)
            outputs = [jnp.stack(column) for column in zip(*outputs)]
        records = _records(state.step, *(_host(x) for x in outputs))
        return self._state(carry), records


class JaxSeedsTrainer:
    """``advance(states, n)``: n updates of every seed's run at once - the (fused) step vmapped
    over a leading seed axis, one compiled program.  Seed s draws its batches from its own
    stream (fold_in(PRNGKey(seeds[s]), t) for sampler "jax", batch_rng(seeds[s], t) for
    "numpy"); ``initial_states()`` gives every seed's own init (iclgd.train.initial_state)."""

    def __init__(self, backend: "JaxBackend", config, seeds):
        if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
            raise ValueError(f"seeds must be a list of non-negative integers; got {seeds!r}")
        self.seeds = [nonnegative_int("seeds[i]", s) for s in seeds]
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed; got an empty list")
        self.single, self.config = JaxTrainer(backend, config), config
        # host batches stacked over seeds (S, B, ...): shard the batch axis, axis 1
        self.batched = NamedSharding(self.single.batched.mesh, PartitionSpec(None, BATCH_AXIS))

    def initial_states(self) -> list[TrainState]:
        """Step 0 of every seed's run: the init of initial_state with that seed."""
        from dataclasses import replace

        return [initial_state(replace(self.config, train=replace(self.config.train, seed=s))) for s in self.seeds]

    def advance(self, states: list[TrainState], n_steps: int) -> tuple[list[TrainState], list[list[StepRecord]]]:
        """Up to ``n_steps`` updates of each seed; each stops after its first non-finite step."""
        n_steps = nonnegative_int("n_steps", n_steps)
        if len(states) != len(self.seeds):
            raise ValueError(f"states must hold one TrainState per seed ({len(self.seeds)}); got {len(states)}")
        if n_steps == 0:
            return list(states), [[] for _ in states]
        single = self.single
        stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *(single._host_carry(state) for state in states))
        carry = jax.tree_util.tree_map(lambda leaf: _put(leaf, single.replicated), stacked)
        if self.config.train.sampler == "jax":
            seeds = _put(np.asarray(self.seeds, np.int64), single.replicated)
            carry, outputs = _run_fused_seeds(single.plan, seeds, carry, n_steps)
        else:
            outputs = []
            for i in range(n_steps):
                batches = [
                    self.config.task.sample(single.plan.batch_size, batch_rng(seed, state.step + i))
                    for seed, state in zip(self.seeds, states)
                ]
                dtype = self.config.model.dtype
                tokens = np.stack([b.tokens for b in batches]).astype(dtype)
                targets = np.stack([b.targets for b in batches]).astype(dtype)
                carry, record = _host_batch_step_seeds(single.plan, carry, _put(tokens, self.batched), _put(targets, self.batched))
                outputs.append(record)
            outputs = [jnp.stack(column) for column in zip(*outputs)]
        outputs = [_host(x) for x in outputs]  # each (n_steps, S)
        carry = jax.tree_util.tree_map(_host, carry)  # one transfer, then slice per seed
        new_states, records = [], []
        for s, state in enumerate(states):
            new_states.append(single._state(jax.tree_util.tree_map(lambda leaf: np.array(leaf[s]), carry)))
            records.append(_records(state.step, *(x[:, s] for x in outputs)))
        return new_states, records


# --- the backend --------------------------------------------------------------------------------


class JaxBackend(Backend):
    """The jax backend: the public methods of ``Backend`` validate the inputs (the same
    ValueErrors as the oracle); these place them on ``devices`` (default: all of
    ``jax.devices()``) and run jit-compiled programs.

    Constructing it turns on jax's float64 support (``jax_enable_x64``), process-wide."""

    name = "jax"
    families = (LSAConfig, TransformerConfig)

    def _engine(self, cfg):
        """The LSA is computed by this class; the transformer by iclgd.backends.jax_transformer."""
        if isinstance(cfg, TransformerConfig):
            if self._transformer_engine is None:  # built once, on first use
                from iclgd.backends.jax_transformer import JaxTransformerEngine

                self._transformer_engine = JaxTransformerEngine()
            return self._transformer_engine
        return self

    def __init__(self, devices=None):
        jax.config.update("jax_enable_x64", True)
        self.devices = list(jax.devices() if devices is None else devices)
        if not self.devices:
            raise ValueError("devices must hold at least one jax device; got none")
        self.mesh = Mesh(np.array(self.devices), (BATCH_AXIS,))
        local = [device for device in self.devices if device.process_index == jax.process_index()]
        self.single_mesh = Mesh(np.array(local[:1] or jax.local_devices()[:1]), (BATCH_AXIS,))

    def _shardings(self, batch_size: int) -> tuple[NamedSharding, NamedSharding]:
        """(replicated, batch-sharded) placements for a batch of ``batch_size``: over every device
        when it divides the batch, else on one local device."""
        mesh = self.mesh if batch_size % self.mesh.size == 0 else self.single_mesh
        return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(BATCH_AXIS))

    def _place(self, params: dict, *batched):
        """Checked host arrays on the devices: params replicated, tokens (and targets) sharded
        along the batch axis."""
        replicated, sharded = self._shardings(batched[0].shape[0])
        return ({k: _put(v, replicated) for k, v in params.items()},) + tuple(_put(x, sharded) for x in batched)

    def _forward(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> list[np.ndarray]:
        return [_host(state) for state in _forward_jit(cfg, *self._place(params, tokens))]

    def _predict(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        return _host(_predict_jit(cfg, *self._place(params, tokens)))

    def _loss(self, cfg: LSAConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> float:
        return float(_host(_loss_jit(cfg, *self._place(params, tokens, targets))))

    def _loss_and_grad(self, cfg: LSAConfig, params: dict, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = _loss_and_grad_jit(cfg, *self._place(params, tokens, targets))
        return float(_host(loss)), {k: _host(v) for k, v in grads.items()}

    def _sensitivity(self, cfg: LSAConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        return _host(_sensitivity_jit(cfg, *self._place(params, tokens)))

    def sample_batch(self, task: LinearRegressionTask, batch_size: int, seed: int, step: int, dtype: str | None = None) -> Batch:
        """Batch ``step`` of a run with ``seed`` as sampler "jax" draws it (in ``dtype``, default the
        task's), from ``fold_in(PRNGKey(seed), step)``: the same numbers as inside training."""
        if not isinstance(task, LinearRegressionTask):
            raise ValueError(f"task must be an iclgd.LinearRegressionTask; got {type(task).__name__}")
        batch_size = positive_int("batch_size", batch_size)
        seed, step = nonnegative_int("seed", seed), nonnegative_int("step", step)
        dtype = float_dtype("dtype", dtype or task.dtype).name
        tokens, targets, weights = _sample_jit(task, dtype, batch_size, np.int64(seed), np.int64(step))
        return Batch(_host(tokens), _host(targets), _host(weights))

    def trainer(self, config):
        """The object whose ``advance(state, n)`` trains ``config`` (a RunConfig) on this backend:
        JaxTrainer for the LSA, JaxTransformerTrainer (host batches, steps fused in lax.scan) for the transformer."""
        if isinstance(config.model, TransformerConfig):
            from iclgd.backends.jax_transformer import JaxTransformerTrainer

            return JaxTransformerTrainer(config)
        return JaxTrainer(self, config)

    def sgld_chains(self, objective, center: dict, settings, mask, per_position: bool, init_loss: float,
                    init_per_position):
        """The SGLD chains of an LLC estimate (both families) as one compiled program - all chains
        vmapped, the steps in a lax.scan, fed the host runner's draws: see iclgd.backends.jax_sgld."""
        from iclgd.backends.jax_sgld import sgld_chains

        return sgld_chains(objective, center, settings, mask, per_position, init_loss, init_per_position)

    def seeds_trainer(self, config, seeds: list[int]):
        """Train one run per seed at once (vmapped); see JaxSeedsTrainer.  None for the transformer
        (its seeds train one after the other)."""
        if isinstance(config.model, TransformerConfig):
            return None
        return JaxSeedsTrainer(self, config, seeds)
