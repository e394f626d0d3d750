"""The `iclgd` command."""
from __future__ import annotations

import argparse
import sys


def _check(args: argparse.Namespace) -> int:
    from iclgd.checks import format_rows, run_checks

    rows = run_checks(seed=args.seed, n_tasks=args.tasks)
    print(format_rows(rows))
    return 0 if all(row.ok for row in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iclgd", description="Transformers learn in context by gradient descent: executable and checkable."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("check", help="verify the oracle's identities (construction = GD, gradients, optimum)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--tasks", type=int, default=200_000, help="Monte Carlo tasks for the optimum check")
    check.set_defaults(run=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
