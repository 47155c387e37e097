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


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """``--version``, printed as upstream's programs print theirs."""
    from nodepool.version import __version__
    parser.add_argument("--version", action="version",
                        version=f"Nodepool version: {__version__}",
                        help="print the version and exit")


def apply_logging_file(path: str) -> None:
    """Configure logging from ``path``, as upstream reads it: a ``.yaml``,
    ``.yml`` or ``.json`` file is a dictConfig, anything else an INI file
    for ``logging.config.fileConfig``.  ValueError names the file when it
    is missing or unreadable."""
    import logging.config
    import os

    if not os.path.exists(path):
        raise ValueError(f"{path}: logging configuration file not found")
    try:
        if os.path.splitext(path)[1] in (".yaml", ".yml", ".json"):
            import yaml  # JSON is YAML: one reader for both
            with open(path) as f:
                config = yaml.safe_load(f)
            if isinstance(config, dict):
                # Which loggers exist before this runs depends on import
                # order; keep them unless the file says otherwise.
                config.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(config)
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except Exception as e:  # noqa: BLE001 - yaml, configparser and dictConfig errors
        raise ValueError(f"{path}: not a usable logging configuration: {e}") from None
