"""``nodepool``: look at and fix what the launchers keep in ZooKeeper."""

from __future__ import annotations

import argparse
import sys

from nodepool.cmd.common import add_config_options, print_problems
from nodepool.config import validate


def cmd_config_validate(args: argparse.Namespace) -> int:
    config, problems = validate(args.config, args.clouds, args.secure)
    print_problems(problems)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        print(f"{len(errors)} error(s) found", file=sys.stderr)
        return 1
    warnings = len(problems) - len(errors)
    print(f"{args.config}: OK" + (f" ({warnings} warning(s))" if warnings else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodepool",
        description="Inspect and manage the nodes and node requests that nodepool "
                    "launchers keep in ZooKeeper.")
    add_config_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "config-validate", help="check nodepool.yaml and clouds.yaml",
        description="Check nodepool.yaml and the clouds.yaml entries its providers use "
                    "(api_timeout, caching) and print every problem found. Exits 1 if "
                    "any is an error, 0 otherwise.")
    add_config_options(p, suppress=True)
    p.set_defaults(func=cmd_config_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
