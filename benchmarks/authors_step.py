r"""The authors' formulation of a training step, timed next to iclgd's:
`python benchmarks/authors_step.py [--layers 1,3] [--batch-size 2048] [--repeats 15] [--block 10]
[--numba-threads N] [--json PATH]`.

Our re-implementation, not their code: a jax program written for this benchmark that computes a
training step the way von Oswald et al. formulate it in their code
(google-research/self-organising-systems, transformers_learn_icl_by_gd; the conventions are read
in docs/authors_code_notes.md), so that the README can say how iclgd's engines compare with that
formulation on the same machine.  What it does, per step (float32, B = 2048, d = N = 10):

* data, drawn in jax inside the step as their data creation does it: one key per task
  (``split(key, B)``, the task function vmapped), per task w ~ N(0, I_d), x_1..x_N ~ U(-a, a)^d,
  x_q ~ U(-a, a)^d from separate keys; tokens e_i = [x_i, w.x_i], the query [x_q, 0],
  target w.x_q (a = 0.5: their input_range 1; no distractors);
* the LSA token by token, rows as vectors, H heads of size k (= D = d + 1 here):
  Q = E W_q, K = E_ctx W_k, V = E_ctx W_v (B, T, H, k), the keys and values from the N context
  rows only (they drop the query row from keys and values, which is the same as masking the
  query's column of the scores), scores S = Q K^T (B, H, T, N) with no softmax and no 1/N,
  E <- E + concat_h(S V) W_o; K layers with one set of weights (their recurrent ``deq`` model);
* read-out -E[query, last], half-MSE 0.5 mean (yhat - y)^2;
* optax: clip_by_global_norm(1e10) (their config's clip, a no-op kept for its cost) then Adam
  (lr 1e-3, b1 0.9, b2 0.98; their adamw with weight decay 0 is the same update);
* one jitted function from (params, optimiser state, key) to the next, data creation included,
  called once per step from Python, as their training loop calls its update.

Timed in the same process, in rounds (each round one block of ``--block`` steps per engine, so
that all see the same load of a shared machine): this step, and iclgd's train step
(``backend.trainer(config).advance``) on numpy, numba (host sampler, as ``iclgd bench``, and
its Philox stream, sampler "philox", drawn inside the kernel) and jax (on-device sampler), at
the same size, float32, one layer and K tied layers.  Printed: the median ms per step of each, and how many times faster each engine is than the authors' formulation.
``deviation``: the relative difference between this formulation's loss and iclgd's NumPy
oracle's on the same weights and tasks (the same model, up to float32 round-off).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class AuthorsSetting:
    """The step's sizes and optimiser, as in their config for the linear-regression LSA."""

    d: int = 10
    n_context: int = 10
    n_layers: int = 1
    n_heads: int = 1
    batch_size: int = 2048
    x_half_range: float = 0.5  # their input_range = 1: x ~ U(-0.5, 0.5)
    init_scale: float = 0.002  # their VarianceScaling scale
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.98
    clip_norm: float = 1e10

    @property
    def token_size(self) -> int:
        return self.d + 1


# --- the formulation ---------------------------------------------------------------------------------


def create_task(key, setting: AuthorsSetting):
    """One task: tokens (N + 1, D) = rows [x_i, w.x_i] then [x_q, 0], target w.x_q, and w (float32)."""
    import jax
    import jax.numpy as jnp

    k_w, k_x, k_q, _, _ = jax.random.split(key, 5)  # the last two: their distractor keys, unused here
    a, d, n = setting.x_half_range, setting.d, setting.n_context
    w = jax.random.normal(k_w, (d,), jnp.float32)
    x = jax.random.uniform(k_x, (n, d), jnp.float32, -a, a)
    x_q = jax.random.uniform(k_q, (1, d), jnp.float32, -a, a)
    context = jnp.concatenate([x, (x @ w)[:, None]], axis=1)
    query = jnp.concatenate([x_q, jnp.zeros((1, 1), jnp.float32)], axis=1)
    return jnp.concatenate([context, query], axis=0), (x_q @ w)[0], w


def create_batch(key, setting: AuthorsSetting):
    """B tasks, one key each: tokens (B, N + 1, D), targets (B,), w (B, d)."""
    import jax

    keys = jax.random.split(key, setting.batch_size)
    return jax.vmap(lambda k: create_task(k, setting))(keys)


def init_weights(key, setting: AuthorsSetting) -> dict:
    """W_q, W_k, W_v (D, H k) and W_o (H k, D): truncated normals (2 sigma) with variance
    init_scale / fan_in, fan_in = D for the projections, H k for W_o."""
    import jax
    import jax.numpy as jnp

    dim, width = setting.token_size, setting.n_heads * setting.token_size
    shapes = {"w_q": (dim, width), "w_k": (dim, width), "w_v": (dim, width), "w_o": (width, dim)}
    keys = dict(zip(shapes, jax.random.split(key, len(shapes))))
    unit_std = 0.87962566103423978  # the standard deviation of a standard normal truncated at +-2
    return {name: jnp.sqrt(setting.init_scale / shape[0]) / unit_std
            * jax.random.truncated_normal(keys[name], -2.0, 2.0, shape, jnp.float32)
            for name, shape in shapes.items()}


def lsa_layer(weights: dict, tokens, n_heads: int):
    """E + concat_h((Q_h K_h^T) V_h) W_o with Q from all rows, K and V from the context rows."""
    import jax.numpy as jnp

    batch, n_tokens, dim = tokens.shape
    context = tokens[:, :-1, :]
    q = (tokens @ weights["w_q"]).reshape(batch, n_tokens, n_heads, -1)
    k = (context @ weights["w_k"]).reshape(batch, n_tokens - 1, n_heads, -1)
    v = (context @ weights["w_v"]).reshape(batch, n_tokens - 1, n_heads, -1)
    scores = jnp.einsum("bthk,bshk->bhts", q, k)
    mixed = jnp.einsum("bhts,bshv->bthv", scores, v).reshape(batch, n_tokens, -1)
    return tokens + mixed @ weights["w_o"]


def predict(weights: dict, tokens, setting: AuthorsSetting):
    """K layers with the same weights; yhat = -E_K[query, last]."""
    for _ in range(setting.n_layers):
        tokens = lsa_layer(weights, tokens, setting.n_heads)
    return -tokens[:, -1, -1]


def half_mse(weights: dict, tokens, targets, setting: AuthorsSetting):
    import jax.numpy as jnp

    return 0.5 * jnp.mean((predict(weights, tokens, setting) - targets) ** 2)


def make_optimizer(setting: AuthorsSetting):
    import optax

    return optax.chain(optax.clip_by_global_norm(setting.clip_norm),
                       optax.adam(setting.lr, b1=setting.beta1, b2=setting.beta2))


def make_step(setting: AuthorsSetting):
    """The jitted update (weights, opt_state, key) -> (weights, opt_state, key, loss), data included."""
    import jax
    import optax

    optimizer = make_optimizer(setting)

    def step(weights, opt_state, key):
        key, data_key = jax.random.split(key)
        tokens, targets, _ = create_batch(data_key, setting)
        loss, grads = jax.value_and_grad(half_mse)(weights, tokens, targets, setting)
        updates, opt_state = optimizer.update(grads, opt_state, weights)
        return optax.apply_updates(weights, updates), opt_state, key, loss

    return optimizer, jax.jit(step, donate_argnums=(0, 1))


def as_iclgd_params(weights: dict, setting: AuthorsSetting) -> dict[str, np.ndarray]:
    """The same weights in iclgd's layout (prefix ``shared``: tied): w_q[h] = W_q[:, h k:(h + 1) k],
    w_o[h] = W_o[h k:(h + 1) k, :]."""
    h, dim = setting.n_heads, setting.token_size
    host = {name: np.asarray(value, np.float64) for name, value in weights.items()}
    split_columns = lambda w: np.stack([w[:, i * dim:(i + 1) * dim] for i in range(h)])  # noqa: E731
    params = {name: split_columns(host[name]) for name in ("w_q", "w_k", "w_v")}
    params["w_o"] = np.stack([host["w_o"][i * dim:(i + 1) * dim, :] for i in range(h)])
    prefix = "shared" if setting.n_layers > 1 else "layer0"
    return {f"{prefix}.{name}": value for name, value in params.items()}


def deviation_from_oracle(setting: AuthorsSetting, seed: int = 0) -> float:
    """|loss here - loss of iclgd's oracle| / loss of the oracle, on the same weights and tasks
    (scale 0.2 weights, so that the model's output is not just the read-out's sign flip)."""
    import jax

    from iclgd.backends import get_backend
    from iclgd.models import LSAConfig
    from iclgd.tasks import Batch

    weights = init_weights(jax.random.PRNGKey(seed), replace(setting, init_scale=0.2))
    tokens, targets, w = create_batch(jax.random.PRNGKey(seed + 1), setting)
    ours = float(half_mse(weights, tokens, targets, setting))
    cfg = LSAConfig(d=setting.d, n_layers=setting.n_layers, n_heads=setting.n_heads, tied=setting.n_layers > 1,
                    n_context=setting.n_context)
    batch = Batch(*(np.asarray(array, np.float64) for array in (tokens, targets, w)))
    truth = get_backend("numpy").loss(cfg, as_iclgd_params(weights, setting), batch)
    return abs(ours - truth) / abs(truth)


# --- engines: name -> run(n_steps), each blocking until its n steps are done -------------------------


def authors_engine(setting: AuthorsSetting, seed: int = 0):
    import jax

    optimizer, step = make_step(setting)
    weights = init_weights(jax.random.PRNGKey(seed), setting)
    carry = {"state": (weights, optimizer.init(weights), jax.random.PRNGKey(seed + 1))}

    def run(n_steps: int) -> None:
        weights, opt_state, key = carry["state"]
        for _ in range(n_steps):
            weights, opt_state, key, loss = step(weights, opt_state, key)
        loss.block_until_ready()
        carry["state"] = (weights, opt_state, key)

    return run


def iclgd_engine(name: str, setting: AuthorsSetting, seed: int = 0, sampler: str | None = None):
    """iclgd's trainer on the same task and model (tied layers), float32, on ``sampler`` (default:
    jax's on-device sampler for jax, the host's NumPy stream otherwise); each block starts from the
    same state, as ``iclgd bench`` times it."""
    from iclgd.backends import get_backend
    from iclgd.backends.training import initial_state
    from iclgd.config import RunConfig, TrainConfig
    from iclgd.models import LSAConfig
    from iclgd.tasks import LinearRegressionTask

    task = LinearRegressionTask(d=setting.d, n_context=setting.n_context, x_scale=setting.x_half_range)
    model = LSAConfig(d=setting.d, n_layers=setting.n_layers, n_heads=setting.n_heads, tied=setting.n_layers > 1,
                      n_context=setting.n_context, dtype="float32")
    train = TrainConfig(steps=10**6, batch_size=setting.batch_size, lr=setting.lr, seed=seed, backend=name,
                        sampler=sampler or ("jax" if name == "jax" else "numpy"), beta1=setting.beta1, beta2=setting.beta2)
    config = RunConfig(task, model, train)
    trainer = get_backend(name).trainer(config)
    state = initial_state(config)

    def run(n_steps: int) -> None:
        trainer.advance(state, n_steps)  # returns host arrays: the steps are done

    return run


def time_in_rounds(engines: dict, block: int, repeats: int, warmup_blocks: int = 1) -> dict[str, list[float]]:
    """Seconds per step of every engine, one block each per round, after warm-up blocks."""
    for run in engines.values():
        for _ in range(warmup_blocks):
            run(block)
    seconds = {name: [] for name in engines}
    for _ in range(repeats):
        for name, run in engines.items():
            start = time.perf_counter()
            run(block)
            seconds[name].append((time.perf_counter() - start) / block)
    return seconds


def installed_iclgd_backends(wanted: list[str]) -> list[str]:
    from iclgd.backends import get_backend

    names = []
    for name in wanted:
        try:
            get_backend(name)  # jax: also turns on x64 before anything here is compiled
        except ImportError:
            continue
        names.append(name)
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="1,3", help="comma-separated depths (tied layers)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--backends", default="numpy,numba,jax", help="iclgd backends to time next to it")
    parser.add_argument("--repeats", type=int, default=15, help="rounds (the median over rounds is reported)")
    parser.add_argument("--block", type=int, default=10, help="steps per timed block")
    parser.add_argument("--numba-threads", type=int, default=None,
                        help="numba's thread count (default: numba's own, all cores; see iclgd.backends.choice)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    backends = installed_iclgd_backends(args.backends.split(","))
    if args.numba_threads is not None and "numba" in backends:
        from iclgd.backends.numba_backend import set_threads

        set_threads(args.numba_threads)
    import jax

    print(f"Machine: {platform.machine()}, jax {jax.__version__} on {jax.devices()[0].platform}; B = {args.batch_size}, "
          f"d = N = 10, float32; median over {args.repeats} rounds of {args.block} steps.\n")
    print("| layers | engine | ms/step (median) | x faster than the authors' formulation | deviation from oracle |")
    print("|---|---|---|---|---|")
    rows = []
    for n_layers in (int(n) for n in args.layers.split(",")):
        setting = AuthorsSetting(n_layers=n_layers, batch_size=args.batch_size)
        engines = {"authors' formulation (our jax re-implementation)": authors_engine(setting)}
        engines |= {f"iclgd {name}": iclgd_engine(name, setting) for name in backends}
        if "numba" in backends:
            engines["iclgd numba, Philox stream"] = iclgd_engine("numba", setting, sampler="philox")
        seconds = time_in_rounds(engines, args.block, args.repeats)
        medians = {name: float(np.median(values)) for name, values in seconds.items()}
        reference = medians[next(iter(engines))]
        deviation = deviation_from_oracle(setting)
        for name, median in medians.items():
            row = {"n_layers": n_layers, "engine": name, "ms_per_step": 1e3 * median, "speedup_vs_authors": reference / median,
                   "authors_max_rel_deviation_from_oracle": deviation}
            rows.append(row)
            shown = f"{deviation:.1e}" if name == next(iter(engines)) else ""
            print(f"| {n_layers} | {name} | {row['ms_per_step']:.3f} | {row['speedup_vs_authors']:.2f} | {shown} |", flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"batch_size": args.batch_size, "repeats": args.repeats, "block": args.block, "rows": rows}, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
