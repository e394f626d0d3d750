"""The `iclgd` command: check, train, reproduce."""
from __future__ import annotations

import argparse
import sys


def _check(args: argparse.Namespace) -> int:
    from iclgd.checks import format_rows, run_checks

    rows = run_checks(seed=args.seed, n_tasks=args.tasks)
    print(format_rows(rows))
    return 0 if all(row.ok for row in rows) else 1


def _override_train(config, **changes):
    """The config with [train] fields replaced by the command line's (validated again)."""
    import dataclasses

    changes = {key: value for key, value in changes.items() if value is not None}
    try:
        return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))
    except ValueError as error:
        raise ValueError(f"command line: {error}") from None


def _train(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from iclgd.config import load_run_config
    from iclgd.train import train_seeds

    config = _override_train(load_run_config(args.config), backend=args.backend, sampler=args.sampler)
    if args.seeds is None:
        run_dirs, configs = [Path(args.out)], [config]
    else:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be a positive integer; got {args.seeds}")
        seeds = [config.train.seed + i for i in range(args.seeds)]
        configs = [dataclasses.replace(config, train=dataclasses.replace(config.train, seed=s)) for s in seeds]
        run_dirs = [Path(args.out) / f"seed_{s}" for s in seeds]
    states = train_seeds(run_dirs, configs, quiet=args.quiet)
    for run_dir, state in zip(run_dirs, states):
        print(f"{run_dir}: trained {state.step} steps; checkpoints in {run_dir / 'checkpoints'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from iclgd import bench

    backends = args.backends.split(",") if args.backends else None
    layers = tuple(int(n) for n in args.layers.split(","))
    results = bench.run(backends, layers=layers, dtypes=tuple(args.dtypes.split(",")), repeats=args.repeats)
    json_path, md_path = bench.write(results, args.out)
    print(bench.markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from iclgd.experiments import one_layer

    setting = one_layer.OneLayerSetting(
        steps=args.steps, seed=args.seed, x_scale=args.x_scale, backend=args.backend, val_tasks=args.val_tasks,
        sampler=args.sampler,
    )
    results = one_layer.run(args.out, setting, quiet=args.quiet)  # the setting validated itself
    print(one_layer.table(results))
    print(f"\nwrote {args.out}/results.json, report.md, params.npz and {len(results['figures'])} figures")
    return 0 if all(row[3] for row in one_layer.comparison_rows(results)) else 1


def _reproduce_multi_layer(args: argparse.Namespace) -> int:
    from iclgd.experiments import multi_layer

    changes = {"layers": _depths(args.layers), "tied": args.tied, "steps_per_layer": args.steps_per_layer, "baseline_steps": args.baseline_steps,
               "seed": args.seed, "backend": args.backend, "val_tasks": args.val_tasks}
    changes = {key: value for key, value in changes.items() if value is not None}
    setting = multi_layer.MultiLayerSetting.quick(**changes) if args.quick else multi_layer.MultiLayerSetting(**changes)
    out = args.out or ("runs/multi-layer-tied" if args.tied else "runs/multi-layer")
    results = multi_layer.run(out, setting, quiet=args.quiet)
    print(multi_layer.table(results))
    print(f"\nwrote {out}/results.json, report.md and {len(results['figures'])} figures ({results['total_seconds']:.0f} s)")
    return 0 if all(row[3] for row in multi_layer.comparison_rows(results)) else 1


def _reproduce_ood(args: argparse.Namespace) -> int:
    from iclgd.experiments import ood

    changes = {"steps": args.steps, "seed": args.seed, "backend": args.backend, "val_tasks": args.val_tasks}
    changes = {key: value for key, value in changes.items() if value is not None}
    setting = ood.OODSetting.quick(**changes) if args.quick else ood.OODSetting(**changes)
    results = ood.run(args.out, setting, quiet=args.quiet)
    print(ood.table(results))
    print(f"\nwrote {args.out}/results.json, report.md and {len(results['figures'])} figures")
    return ood.exit_code(results)


def _depths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--layers must be comma-separated positive integers such as 1,2,3; got {text!r}") from None


def _x_scale(text: str) -> float:
    from iclgd.tasks import resolve_x_scale

    try:
        return resolve_x_scale(float(text))
    except ValueError:
        try:
            return resolve_x_scale(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iclgd", description="Transformers learn in context by gradient descent: executable and checkable."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser("check", help="verify the oracle's identities (construction = GD, gradients, optimum)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--tasks", type=int, default=200_000, help="Monte Carlo tasks for the optimum check")
    check.set_defaults(run=_check)

    train = commands.add_parser("train", help="train a model (an LSA, or GD/GD++ with learned rates) from a TOML config ([task], [model], [train])")
    train.add_argument("--config", required=True, help="TOML file")
    train.add_argument("--out", required=True, help="run directory (resumed if it holds an unfinished run)")
    train.add_argument("--backend", default=None, help="override [train] backend: numpy, numba or jax")
    train.add_argument("--sampler", default=None, help="override [train] sampler: numpy (host, same on every backend) or jax")
    train.add_argument("--seeds", type=int, default=None,
                       help="train this many seeds (seed, seed+1, ...) into OUT/seed_S; one vmapped program on jax")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    reproduce = commands.add_parser("reproduce", help="reproduce a claim of the paper")
    claims = reproduce.add_subparsers(dest="claim", metavar="CLAIM", required=True)
    one = claims.add_parser("one-layer", help="a trained LSA layer = one GD step with the best rate (the main job)")
    one.add_argument("--out", default="runs/one-layer")
    one.add_argument("--backend", default="numpy", help="numpy, numba or jax")
    one.add_argument("--sampler", default="numpy", help="numpy (host; the same tasks on every backend) or jax")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--steps", type=int, default=5000)
    one.add_argument("--x-scale", type=_x_scale, default=1.0,
                     help="a in x ~ U(-a, a): a number, 'paper' (1) or 'authors_code' (0.5)")
    one.add_argument("--val-tasks", type=int, default=10_000)
    one.add_argument("--quiet", action="store_true")
    one.set_defaults(run=_reproduce)
    deep = claims.add_parser("multi-layer", help="K-layer (or recurrent) LSA against K steps of GD and GD++")
    deep.add_argument("--out", default=None, help="run folder (default runs/multi-layer, or runs/multi-layer-tied)")
    deep.add_argument("--layers", default=None, help="comma-separated depths K (default 1,2,3,4,5)")
    deep.add_argument("--tied", action="store_true", help="recurrent LSA (one weight set) and shared GD/GD++ rates")
    deep.add_argument("--backend", default=None, help="numpy, numba or jax (default: the fastest installed)")
    deep.add_argument("--seed", type=int, default=None)
    deep.add_argument("--steps-per-layer", type=int, default=None,
                      help="the K-layer LSA trains 1000 + this * K steps (default 1000)")
    deep.add_argument("--baseline-steps", type=int, default=None, help="learned-rate GD/GD++ steps (default 2000)")
    deep.add_argument("--val-tasks", type=int, default=None)
    deep.add_argument("--quick", action="store_true", help="a run of seconds (K = 1, 2; short training), for tests")
    deep.add_argument("--quiet", action="store_true")
    deep.set_defaults(run=_reproduce_multi_layer)
    shift = claims.add_parser("ood", help="trained LSA layers and GD out of distribution: input scale, input law, distractors")
    shift.add_argument("--out", default="runs/ood")
    shift.add_argument("--backend", default=None, help="numpy, numba or jax (default: the fastest installed)")
    shift.add_argument("--seed", type=int, default=None)
    shift.add_argument("--steps", type=int, default=None, help="training steps of each model (default 5000)")
    shift.add_argument("--val-tasks", type=int, default=None)
    shift.add_argument("--quick", action="store_true", help="a run of seconds (short training), for tests")
    shift.add_argument("--quiet", action="store_true")
    shift.set_defaults(run=_reproduce_ood)
    bench = commands.add_parser("bench", help="time every installed backend on the same work, checked against the oracle")
    bench.add_argument("--out", default="benchmarks/results", help="folder for bench.json and bench.md")
    bench.add_argument("--backends", default=None, help="comma-separated (default: every installed one)")
    bench.add_argument("--layers", default="1,4", help="comma-separated model depths")
    bench.add_argument("--dtypes", default="float32,float64", help="comma-separated")
    bench.add_argument("--repeats", type=int, default=30)
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from iclgd.train import TrainingDiverged

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except TrainingDiverged as error:
        print(f"iclgd: {error}", file=sys.stderr)
        return 1
    except (ValueError, ImportError) as error:
        print(f"iclgd: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
