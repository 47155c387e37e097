"""``nodepool-launcher``: the daemon that serves node requests.

For now it loads and validates the configuration (refusing to start on any
error, with the same messages as ``nodepool config-validate``) and exits.
"""

from __future__ import annotations

import argparse
import sys

from nodepool.cmd.common import add_config_options, print_problems
from nodepool.config import validate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodepool-launcher",
        description="Serve Zuul's node requests on OpenStack clouds.")
    add_config_options(parser)
    parser.add_argument("-d", "--nodaemon", action="store_true",
                        help="stay in the foreground (for systemd's Type=simple)")
    parser.add_argument("-l", "--logconfig", metavar="PATH",
                        help="Python logging configuration (dictConfig YAML or INI); "
                             "default: INFO to stderr")
    parser.add_argument("-p", "--pidfile", metavar="PATH",
                        default="/var/run/nodepool/launcher.pid",
                        help="pid file when running as a daemon "
                             "(default: /var/run/nodepool/launcher.pid)")
    parser.add_argument("--validate-only", action="store_true",
                        help="load and check the configuration, then exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config, problems = validate(args.config, args.clouds, args.secure)
    print_problems(problems)
    if config is None:
        print("nodepool-launcher: refusing to start: the configuration has errors",
              file=sys.stderr)
        return 1
    print(f"nodepool-launcher: configuration {args.config} is valid "
          f"({len(config.providers)} provider(s), "
          f"{sum(1 for _ in config.pools())} pool(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
