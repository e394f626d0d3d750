"""The numba training step on its two data streams, side by side: `python benchmarks/philox_step.py`.

For each depth, in interleaved rounds (so that a load change hits every row alike), the median
milliseconds of one loss-and-gradient step of a batch of B float32 tasks at d = N = 10:

- "pcg64": ``NumbaBackend.sample_loss_and_grad`` on NumPy's PCG64 stream (the default sampler:
  w drawn by NumPy, the inputs inside the lane kernel);
- "philox": ``numba_philox.philox_sampled_grad`` (the Philox stream, ``sampler = "philox"``);
- "philox batch only": ``numba_philox.philox_task_batch``, the draws alone.

It uses only those public entry points, so the same file can time an older checkout
(``PYTHONPATH=<checkout> python benchmarks/philox_step.py``).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="1,3", help="comma-separated depths (tied layers)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=30, help="rounds (the median over rounds is reported)")
    args = parser.parse_args(argv)

    import iclgd
    from iclgd.backends.numba_philox import philox_sampled_grad, philox_task_batch
    from iclgd.models import LSAConfig, init_params
    from iclgd.tasks import LinearRegressionTask

    backend = iclgd.get_backend("numba")
    d = n_context = 10
    task = LinearRegressionTask(d=d, n_context=n_context)
    print(f"iclgd at {iclgd.__file__}; B = {args.batch_size}, d = N = {d}, float32; median of {args.repeats} rounds\n")
    print("| layers | step | ms (median) |")
    print("|---|---|---|")
    for n_layers in (int(n) for n in args.layers.split(",")):
        cfg = LSAConfig(d=d, n_layers=n_layers, tied=n_layers > 1, dtype="float32")
        params = init_params(cfg, seed=0, scale=0.1)
        rng = np.random.default_rng(0)
        steps = {
            "pcg64": lambda: backend.sample_loss_and_grad(cfg, task, params, args.batch_size, rng),
            "philox": lambda: philox_sampled_grad(cfg, params, 0, 5, args.batch_size, n_context, 1.0),
            "philox batch only": lambda: philox_task_batch(0, 5, args.batch_size, n_context, d, 1.0, "float32"),
        }
        seconds = {name: [] for name in steps}
        for run in steps.values():  # compile (or load) and warm up
            run()
        for _ in range(args.repeats):
            for name, run in steps.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
        for name, values in seconds.items():
            print(f"| {n_layers} | {name} | {1e3 * float(np.median(values)):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
