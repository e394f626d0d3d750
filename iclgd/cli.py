"""The `iclgd` command: check, train, reproduce."""
from __future__ import annotations

import argparse
import sys


def _check(args: argparse.Namespace) -> int:
    from iclgd.checks import format_rows, run_checks

    rows = run_checks(seed=args.seed, n_tasks=args.tasks)
    print(format_rows(rows))
    return 0 if all(row.ok for row in rows) else 1


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from iclgd.config import load_run_config
    from iclgd.train import TrainConfig, train

    config = load_run_config(args.config)
    if args.backend is not None:
        try:
            train_cfg = dataclasses.replace(config.train, backend=args.backend)
        except ValueError as error:
            raise ValueError(f"--backend: {error}") from None
        config = dataclasses.replace(config, train=train_cfg)
    assert isinstance(config.train, TrainConfig)
    state = train(args.out, config, quiet=args.quiet)
    print(f"trained {state.step} steps; checkpoints in {args.out}/checkpoints")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from iclgd.experiments import one_layer

    setting = one_layer.OneLayerSetting(
        steps=args.steps, seed=args.seed, x_scale=args.x_scale, backend=args.backend, val_tasks=args.val_tasks
    )
    setting.run_config()  # validate everything before DIR is touched
    results = one_layer.run(args.out, setting, quiet=args.quiet)
    print(one_layer.table(results))
    print(f"\nwrote {args.out}/results.json, report.md, params.npz and {len(results['figures'])} figures")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iclgd", description="Transformers learn in context by gradient descent: executable and checkable."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser("check", help="verify the oracle's identities (construction = GD, gradients, optimum)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--tasks", type=int, default=200_000, help="Monte Carlo tasks for the optimum check")
    check.set_defaults(run=_check)

    train = commands.add_parser("train", help="train an LSA model from a TOML config ([task], [model], [train])")
    train.add_argument("--config", required=True, help="TOML file")
    train.add_argument("--out", required=True, help="run directory (resumed if it holds an unfinished run)")
    train.add_argument("--backend", default=None, help="override [train] backend")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    reproduce = commands.add_parser("reproduce", help="reproduce a claim of the paper")
    claims = reproduce.add_subparsers(dest="claim", metavar="CLAIM", required=True)
    one = claims.add_parser("one-layer", help="a trained LSA layer = one GD step with the best rate (the main job)")
    one.add_argument("--out", default="runs/one-layer")
    one.add_argument("--backend", default="numpy")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--steps", type=int, default=5000)
    one.add_argument("--x-scale", type=float, default=1.0, help="inputs ~ U(-a, a); 1 = paper's text, 0.5 = authors' code")
    one.add_argument("--val-tasks", type=int, default=10_000)
    one.add_argument("--quiet", action="store_true")
    one.set_defaults(run=_reproduce)
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
