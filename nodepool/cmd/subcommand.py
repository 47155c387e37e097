"""What every ``nodepool`` subcommand stands on: its clean failure, the
configuration and ZooKeeper store it opens, its output, and how it is
added to the parser."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from nodepool import tables
from nodepool.cmd.common import add_config_options, print_problems
from nodepool.config import validate
from nodepool.driver import registry


class CommandError(Exception):
    """A clean, expected failure: printed without a traceback, exit 1."""


# -- output ---------------------------------------------------------------------------

def emit(args: argparse.Namespace, view: tables.View) -> None:
    """The table, or with --json every key of every row (the status API's JSON)."""
    if args.json:
        print(tables.dumps(tables.view_json(view)))
    else:
        print(tables.view_table(view))


# -- connecting -----------------------------------------------------------------------

def load(args: argparse.Namespace, check_clouds: bool = False):
    config, problems = validate(args.config, args.clouds, args.secure,
                                check_clouds=check_clouds, drivers=registry.drivers())
    if config is None:
        print_problems(problems)
        raise CommandError(f"cannot use {args.config}: it has errors")
    return config


def open_store(args: argparse.Namespace, check_clouds: bool = False):
    from nodepool.zk.client import ZooKeeperUnavailable, connect
    from nodepool.zk.store import ZooKeeperStore

    config = load(args, check_clouds)
    if config.zookeeper is None:
        raise CommandError(f"{args.config}: zookeeper-servers is required")
    try:
        client = connect(config.zookeeper, ensure_chroot=False)
    except ZooKeeperUnavailable as e:
        raise CommandError(str(e)) from None
    return config, ZooKeeperStore(client)


def close_store(store) -> None:
    from nodepool.zk.client import disconnect
    disconnect(store.client)


# -- the parser -----------------------------------------------------------------------

def add_command(sub: Any, name: str, func: Callable[[argparse.Namespace], int],
                help_text: str, description: str | None = None,
                json_option: bool = True) -> argparse.ArgumentParser:
    """Add subcommand ``name`` to ``sub`` (the main parser's subparsers):
    it takes the config options again and, unless told otherwise,
    ``--json``; ``func(args)`` runs it."""
    p = sub.add_parser(name, help=help_text, description=description or help_text)
    add_config_options(p, suppress=True)
    if json_option:
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=func)
    return p
