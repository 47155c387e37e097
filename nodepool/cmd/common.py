"""Options and error printing shared by the command-line programs."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from nodepool.config import DEFAULT_CONFIG, ConfigProblem


def add_config_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """``-c``, ``--clouds`` and ``-s``; with ``suppress`` a subcommand may
    repeat them without resetting what the main parser read."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "-c", "--config", dest="config",
        default=argparse.SUPPRESS if suppress else DEFAULT_CONFIG,
        help=f"path to nodepool.yaml (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--clouds", dest="clouds", default=default, metavar="PATH",
        help="path to clouds.yaml (default: found as openstacksdk finds it: "
             "$OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack/clouds.yaml, "
             "/etc/openstack/clouds.yaml)")
    parser.add_argument(
        "-s", "--secure", dest="secure", default=default, metavar="PATH",
        help="path to upstream's secure config file, whose zookeeper-servers and "
             "zookeeper-tls override nodepool.yaml's (optional)")


def print_problems(problems: Sequence[ConfigProblem], stream=None) -> None:
    stream = stream or sys.stderr
    for p in problems:
        print(str(p), file=stream)
