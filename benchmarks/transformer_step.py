"""Train-step speed of the developmental-landscape transformer, every engine side by side:
`python benchmarks/transformer_step.py [--batch-size 256] [--dtype float32] [--repeats 15] [--scan-steps 100] [--json PATH]`.

The model is the paper's (``TransformerConfig()``: 2 layers, 4 heads, d_model = d_mlp = 64, K = 8, D = 4),
trained with Adam (lr 1e-3, no clipping) on pre-drawn interleaved regression batches.  One "step" is
the loss, its gradient and the Adam update.  Engines (each row skipped when its package is missing):

* numpy:            the hand-written oracle's ``_loss_and_grad`` + ``iclgd.optim.adam_update``;
* jax, 1 step/call: one jitted update per Python call (the carry donated), blocked on every block;
* jax, scan:        ``--scan-steps`` updates in one jitted ``lax.scan`` (what ``JaxTransformerTrainer``
                    runs), per-step time = call time / scan steps; with the loss's batch in 1 part and
                    in ``batch_chunks(B)`` parts (one per core: XLA's CPU runtime runs independent
                    parts concurrently);
* jax, trainer:     ``JaxTransformerTrainer.advance(state, scan_steps)`` end to end: host sampling of
                    every batch, the state's round trip, the records;
* torch (manual / sdpa): the same model written with torch.nn (Linear, LayerNorm), torch.optim.Adam,
                    per step zero_grad, forward, backward, step; attention by hand (masked_fill, softmax)
                    or by ``F.scaled_dot_product_attention(is_causal=True)``.  torch is an optional,
                    benchmark-only dependency; it runs with ``torch.set_num_threads(--threads)``.

The engines are timed in rounds: every round times one block of each engine in turn, so that all
see the same load of a shared machine; reported is the median per-step time over the rounds and its
ratio to the faster torch row (or to the first jax scan when torch is missing).  ``deviation`` is the relative
deviation of the engine's first-step loss from the oracle's on the same params and batch.
Set XLA_FLAGS before running to try XLA's CPU options (they are read when jax loads).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from iclgd.models.transformer import TransformerConfig, init_params
from iclgd.optim import AdamConfig, AdamState, adam_update

PAPER_STEPS = 500_000


# --- data -------------------------------------------------------------------------------------------


def bench_task(cfg):
    """The paper's task (iclgd.tasks.noisy) at the config's D and K, in its dtype."""
    from iclgd.tasks.noisy import NoisyRegressionTask

    return NoisyRegressionTask(d=cfg.d, n_examples=cfg.n_examples, dtype=cfg.dtype)


# --- engines: each is (name, setup) where setup() returns (first_loss, run_block(n_steps)) --------------


def numpy_engine(cfg, params, batches, adam):
    from iclgd.backends.numpy_transformer import TransformerOracle

    oracle, state = TransformerOracle(), {"params": dict(params), "adam": AdamState.zeros_like(params), "i": 0}
    first = oracle._loss(cfg, params, *batches[0])

    def run(n):
        for _ in range(n):
            tokens, targets = batches[state["i"] % len(batches)]
            _, grads = oracle._loss_and_grad(cfg, state["params"], tokens, targets)
            state["params"], state["adam"], _ = adam_update(adam, state["params"], grads, state["adam"])
            state["i"] += 1

    return first, run


def _jax_carry(cfg, params, adam):
    import jax

    from iclgd.backends.jax_backend import make_optimizer, to_optax_state

    host = (params, to_optax_state(make_optimizer(adam), AdamState.zeros_like(params), params), np.asarray(0, np.int64), np.asarray(True))
    return jax.device_put(host)


def jax_step_engine(cfg, params, batches, adam, n_chunks):
    import jax

    from iclgd.backends.jax_transformer import JaxTransformerEngine, _one_step, _Plan

    first = JaxTransformerEngine()._loss(cfg, params, *batches[0])
    plan, state = _Plan(cfg, adam, n_chunks), {"carry": _jax_carry(cfg, params, adam), "i": 0}

    def run(n):
        for _ in range(n):
            tokens, targets = batches[state["i"] % len(batches)]
            state["carry"], record = _one_step(plan, state["carry"], tokens, targets)
            state["i"] += 1
        jax.block_until_ready((state["carry"], record))

    return first, run


def jax_scan_engine(cfg, params, batches, adam, scan_steps, n_chunks):
    import jax

    from iclgd.backends.jax_transformer import JaxTransformerEngine, _Plan, _run_steps

    first = JaxTransformerEngine()._loss(cfg, params, *batches[0])
    plan, state = _Plan(cfg, adam, n_chunks), {"carry": _jax_carry(cfg, params, adam)}
    picks = [batches[i % len(batches)] for i in range(scan_steps)]
    tokens, targets = np.stack([p[0] for p in picks]), np.stack([p[1] for p in picks])

    def run(n):
        if n % scan_steps:
            raise ValueError(f"the scan engine runs multiples of {scan_steps} steps; asked for {n}")
        for _ in range(n // scan_steps):
            state["carry"], records = _run_steps(plan, state["carry"], tokens, targets)
        jax.block_until_ready((state["carry"], records))

    return first, run


def jax_trainer_engine(cfg, params, batches, adam, scan_steps, batch_size):
    from types import SimpleNamespace

    from iclgd.backends.jax_transformer import JaxTransformerEngine, JaxTransformerTrainer
    from iclgd.backends.training import TrainState

    first = JaxTransformerEngine()._loss(cfg, params, *batches[0])
    train = SimpleNamespace(seed=0, batch_size=batch_size, adam=lambda: adam)
    trainer = JaxTransformerTrainer(SimpleNamespace(model=cfg, task=bench_task(cfg), train=train))
    state = {"state": TrainState(0, dict(params), AdamState.zeros_like(params))}

    def run(n):
        if n % scan_steps:
            raise ValueError(f"the trainer engine runs multiples of {scan_steps} steps; asked for {n}")
        for _ in range(n // scan_steps):
            state["state"], _ = trainer.advance(state["state"], scan_steps)

    return first, run


def torch_model(cfg: TransformerConfig, params: dict, attention: str):
    """The transformer in torch.nn, loaded with ``params`` (nn.Linear stores weight^T)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    dtype = getattr(torch, cfg.dtype)

    def linear(w, b=None):
        layer = nn.Linear(w.shape[0], w.shape[1], bias=b is not None, dtype=dtype)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            if b is not None:
                layer.bias.copy_(torch.from_numpy(b))
        return layer

    def layer_norm(prefix):
        norm = nn.LayerNorm(cfg.d_model, eps=1e-5, dtype=dtype)
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(params[prefix + ".weight"]))
            norm.bias.copy_(torch.from_numpy(params[prefix + ".bias"]))
        return norm

    class Block(nn.Module):
        def __init__(self, layer):
            super().__init__()
            p = f"block{layer}."
            self.ln1, self.ln2 = layer_norm(p + "ln1"), layer_norm(p + "ln2")
            self.qkv, self.out = linear(params[p + "attn.w_qkv"]), linear(params[p + "attn.w_out"])
            self.mlp_in = linear(params[p + "mlp.w_in"], params[p + "mlp.b_in"])
            self.mlp_out = linear(params[p + "mlp.w_out"], params[p + "mlp.b_out"])
            t = cfg.n_tokens
            self.register_buffer("masked", torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1))

        def forward(self, h):
            b, t, c = h.shape
            heads, size = cfg.n_heads, cfg.head_size
            q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, heads, size).permute(2, 0, 3, 1, 4)  # each (B, H, T, c)
            if attention == "sdpa":
                z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                scores = (q @ k.transpose(-1, -2)) / size**0.5
                z = torch.softmax(scores.masked_fill(self.masked, float("-inf")), dim=-1) @ v
            h = h + self.out(z.transpose(1, 2).reshape(b, t, c))
            return h + self.mlp_out(torch.relu(self.mlp_in(self.ln2(h))))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = linear(params["embed.w"])
            self.pos = nn.Parameter(torch.from_numpy(params["embed.pos"].copy()))
            self.blocks = nn.ModuleList([Block(layer) for layer in range(cfg.n_layers)])
            self.ln = layer_norm("unembed.ln")
            self.unembed = linear(params["unembed.w"], params["unembed.b"])

        def forward(self, tokens):
            h = self.embed(tokens) + self.pos
            for block in self.blocks:
                h = block(h)
            return self.unembed(self.ln(h))

    return Model()


def torch_engine(cfg, params, batches, adam, attention):
    import torch

    model = torch_model(cfg, params, attention)
    optimizer = torch.optim.Adam(model.parameters(), lr=adam.lr, betas=(adam.beta1, adam.beta2), eps=adam.eps)
    data = [(torch.from_numpy(t), torch.from_numpy(y)) for t, y in batches]

    def loss_of(tokens, targets):
        return torch.mean(torch.square(model(tokens)[:, 0::2, 0] - targets))

    with torch.no_grad():
        first = float(loss_of(*data[0]))
    state = {"i": 0}

    def run(n):
        for _ in range(n):
            tokens, targets = data[state["i"] % len(data)]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(tokens, targets)
            loss.backward()
            optimizer.step()
            state["i"] += 1

    return first, run


# --- the run ----------------------------------------------------------------------------------------------


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def machine_description(threads: int) -> str:
    parts = [platform.processor() or platform.machine(), f"{os.cpu_count()} cores", f"python {platform.python_version()}",
             f"numpy {np.__version__}"]
    if _have("jax"):
        import jax

        parts.append(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    if _have("torch"):
        import torch

        parts.append(f"torch {torch.__version__} ({threads} threads)")
    parts.append(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    return ", ".join(parts)


def run(batch_size: int, dtype: str, repeats: int, scan_steps: int, threads: int, engines: list[str] | None) -> dict:
    cfg = TransformerConfig(dtype=dtype)
    params = init_params(cfg, 0)
    task = bench_task(cfg)
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(8):
        batch = task.sample(batch_size, rng)
        batches.append((batch.tokens.astype(dtype), batch.targets.astype(dtype)))
    adam = AdamConfig(lr=1e-3)

    candidates = []  # (name, steps per block, setup)
    candidates.append(("numpy oracle", 2, lambda: numpy_engine(cfg, params, batches, adam)))
    if _have("jax") and _have("optax"):
        from iclgd.backends.jax_transformer import batch_chunks

        chunks = batch_chunks(batch_size)
        candidates.append((f"jax, 1 step/call, {chunks} chunks", scan_steps, lambda: jax_step_engine(cfg, params, batches, adam, chunks)))
        candidates.append((f"jax, scan of {scan_steps}, 1 chunk", scan_steps,
                           lambda: jax_scan_engine(cfg, params, batches, adam, scan_steps, 1)))
        candidates.append((f"jax, scan of {scan_steps}, {chunks} chunks", scan_steps,
                           lambda: jax_scan_engine(cfg, params, batches, adam, scan_steps, chunks)))
        candidates.append((f"jax, trainer.advance({scan_steps}) incl. sampling", scan_steps,
                           lambda: jax_trainer_engine(cfg, params, batches, adam, scan_steps, batch_size)))
    if _have("torch"):
        import torch

        torch.set_num_threads(threads)
        for attention in ("manual", "sdpa"):
            candidates.append((f"torch ({attention} attention)", scan_steps // 4 or 1,
                               lambda attention=attention: torch_engine(cfg, params, batches, adam, attention)))
    if engines:
        candidates = [c for c in candidates if any(e in c[0] for e in engines)]

    oracle_loss = None
    from iclgd.backends.numpy_transformer import TransformerOracle

    oracle_loss = TransformerOracle()._loss(cfg, params, *batches[0])
    setups, times = {}, {}
    for name, block, setup in candidates:
        first, run_block = setup()
        run_block(block)  # compile and warm up
        run_block(block)
        setups[name] = (block, run_block, abs(first - oracle_loss) / abs(oracle_loss))
        times[name] = []
    for _ in range(repeats):  # rounds: every engine once per round, so all see the same load
        for name, (block, run_block, _) in setups.items():
            start = time.perf_counter()
            run_block(block)
            times[name].append((time.perf_counter() - start) / block)
    rows = [{"engine": name, "ms_per_step": 1e3 * float(np.median(times[name])),
             "ms_quartiles": [1e3 * float(np.percentile(times[name], q)) for q in (25, 75)],
             "steps_per_block": setups[name][0], "first_loss_rel_deviation": setups[name][2]} for name in setups]
    torch_rows = [r for r in rows if r["engine"].startswith("torch")]
    reference = min(torch_rows, key=lambda r: r["ms_per_step"]) if torch_rows else next((r for r in rows if "scan" in r["engine"]), rows[0])
    for row in rows:
        row["ratio_to_reference"] = row["ms_per_step"] / reference["ms_per_step"]
        row["projected_paper_run_hours"] = row["ms_per_step"] * PAPER_STEPS / 3.6e6
    return {"machine": machine_description(threads), "config": repr(cfg), "batch_size": batch_size, "dtype": dtype,
            "repeats": repeats, "reference": reference["engine"], "rows": rows}


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}.", "",
             f"{results['config']}, B = {results['batch_size']}; median over {results['repeats']} rounds; "
             f"ratio to {results['reference']}; projection = {PAPER_STEPS:,} steps.", "",
             "| engine | ms/step (median) | IQR | ratio | projected 500k-step run, h | first-loss rel. deviation from oracle |",
             "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lo, hi = r["ms_quartiles"]
        lines.append(f"| {r['engine']} | {r['ms_per_step']:.2f} | {lo:.2f}-{hi:.2f} | {r['ratio_to_reference']:.2f} | "
                     f"{r['projected_paper_run_hours']:.1f} | {r['first_loss_rel_deviation']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=15, help="timing rounds (each engine one block per round)")
    parser.add_argument("--scan-steps", type=int, default=100, help="updates per lax.scan (and steps per jax block)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--engines", nargs="*", help="only the engines whose names contain one of these words")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results = run(args.batch_size, args.dtype, args.repeats, args.scan_steps, args.threads, args.engines)
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
