"""Time per checkpoint of an LLC estimate of the developmental-landscape transformer, every engine side by side:
`python benchmarks/llc.py [--run DIR] [--step S] [--protocol scaled|paper] [--chains C] [--batch-size B] [--backends numpy,jax] [--repeats 1] [--json PATH]`.

The checkpoint: step ``--step`` of the run in ``--run``; without --run the script first trains the
paper's model (``TransformerConfig()``, 51,717 parameters, float32) for 3000 steps with the
README's short config (batch 256, one-cycle lr 0.003; jax when installed) into a temporary
directory and takes its last checkpoint (the model has then left the plateau and learns in context).

The data set: 8192 sequences of the run's task from ``purpose_rng(0, "llc/data")`` (what ``iclgd llc``
uses).  The SGLD hyperparameters are the paper's (timaeus-research/icl: eps = 3e-4, eps nbeta / 2 =
0.01, eps gamma / 2 = 0.001, i.e. nbeta = 66.7, gamma = 6.67), the score the minibatch loss, the
per-position losses recorded, MALA every 10th draw.  Protocols:

* scaled (default, what a CPU affords): 4 chains x (1000 burn-in + 500 draws), minibatch 64;
* paper: 10 chains x 5000 draws, no burn-in, minibatch 1024 (for a GPU).

Each engine's estimate is run ``--repeats`` times in rounds (every round runs each engine once in
turn, so all see the same load of a shared machine); reported: the median seconds per checkpoint,
per chain-step, the ratio to the fastest, and the estimate (they differ between float32 engines only
by round-off growing along the chains).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PAPER_SGLD = {"step_size": 3e-4, "nbeta": 2 * 0.01 / 3e-4, "localization": 2 * 0.001 / 3e-4}
PROTOCOLS = {
    "scaled": {"num_chains": 4, "num_burnin_steps": 1000, "num_draws": 500, "batch_size": 64},
    "paper": {"num_chains": 10, "num_burnin_steps": 0, "num_draws": 5000, "batch_size": 1024},
}
DATA_SIZE = 8192


def short_run(out: Path, backend: str) -> Path:
    """Train the paper's model for 3000 steps (the README's short config) into ``out``."""
    from iclgd.config import run_config_from_dict
    from iclgd.train import train

    config = run_config_from_dict({
        "task": {"d": 4, "n_examples": 8, "noise_variance": 0.125},
        "model": {"family": "transformer", "dtype": "float32"},
        "train": {"steps": 3000, "batch_size": 256, "lr": 0.003, "schedule": "one_cycle", "clip_norm": 0.0,
                  "checkpoint_every": 3000, "backend": backend},
    })
    train(out, config)
    return out


def load(run: Path, step: int | None):
    from iclgd.config import load_run_config
    from iclgd.runio import list_checkpoints, load_npz

    config = load_run_config(run / "config.toml")
    checkpoints = dict(list_checkpoints(run))
    step = max(checkpoints) if step is None else step
    arrays = load_npz(checkpoints[step])
    return config, step, {k.removeprefix("params/"): v for k, v in arrays.items() if k.startswith("params/")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="scaled")
    parser.add_argument("--backends", default="numpy,jax")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chains", type=int, default=None, help="override the protocol's chains")
    parser.add_argument("--batch-size", type=int, default=None, help="override the protocol's minibatch")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import iclgd
    from iclgd.analysis.llc import estimate_llc
    from iclgd.streams import purpose_rng

    backends = [name for name in args.backends.split(",") if name in iclgd.available_backends()]
    run = args.run
    if run is None:
        run = short_run(Path(tempfile.mkdtemp()) / "run", "jax" if "jax" in backends else "numpy")
    config, step, params = load(run, args.step)
    data = config.task.sample(DATA_SIZE, purpose_rng(0, "llc/data"))
    overrides = {k: v for k, v in (("num_chains", args.chains), ("batch_size", args.batch_size)) if v is not None}
    protocol = PROTOCOLS[args.protocol] | PAPER_SGLD | overrides
    times = {name: [] for name in backends}
    results = {}
    for _ in range(args.repeats):
        for name in backends:
            if name == "jax":  # compile outside the timing: one short estimate of the same shapes
                estimate_llc(name, config.model, params, data, **(protocol | {"num_draws": 1, "num_burnin_steps": 0}),
                             per_position=True, mala_every=10)
            started = time.perf_counter()
            results[name] = estimate_llc(name, config.model, params, data, **protocol, per_position=True, mala_every=10)
            times[name].append(time.perf_counter() - started)
            print(f"  {name}: {times[name][-1]:.1f} s, llc {results[name].llc_mean:.1f}", file=sys.stderr, flush=True)
    chain_steps = protocol["num_chains"] * (protocol["num_burnin_steps"] + protocol["num_draws"])
    medians = {name: float(np.median(t)) for name, t in times.items()}
    fastest = min(medians.values())
    rows = []
    for name in backends:
        r = results[name]
        rows.append({"backend": name, "seconds_per_checkpoint": medians[name], "ms_per_chain_step": 1e3 * medians[name] / chain_steps,
                     "ratio": medians[name] / fastest, "llc_mean": r.llc_mean, "llc_std_error": r.llc_std_error,
                     "per_position": r.per_position["llc_mean"].tolist(), "mala_acceptance": r.diagnostics["mala_acceptance"]})
    machine = f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, numpy {np.__version__}"
    print(f"Machine: {machine}.\n\nCheckpoint: step {step} of {run}; {config.model.dtype}; data {DATA_SIZE} sequences; "
          f"protocol {args.protocol}: {protocol}; per-position on, MALA every 10th draw; median of {args.repeats}.\n")
    print("| backend | s per checkpoint | ms per chain-step | ratio | llc +- s.e. | MALA | per-position llc (k = 1..K) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backend']} | {row['seconds_per_checkpoint']:.1f} | {row['ms_per_chain_step']:.2f} | {row['ratio']:.2f} | "
              f"{row['llc_mean']:.1f} +- {row['llc_std_error']:.1f} | {row['mala_acceptance']:.3f} | "
              + ", ".join(f"{v:.0f}" for v in row["per_position"]) + " |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "step": step, "protocol": protocol, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
