"""``nodepool``: look at and fix what the launchers keep in ZooKeeper.

A command that reads or writes ZooKeeper connects with the settings of
nodepool.yaml (TLS included) and fails within the configured timeout, with
a clear message, when it cannot (``config-validate``, ``quota`` and
``migrate`` need no ZooKeeper).
Tables are upstream's (nodepool/tables.py); ``--json`` prints the same rows
for scripts.

Here are the parser and the commands for nodes, requests, labels,
providers and the configuration; the builder's image commands are in
image_commands.py, ``migrate`` in migrate_command.py, and what every
command stands on in subcommand.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import sys
from typing import Any, Iterator

from nodepool import tables
from nodepool.cmd.common import (add_config_options, add_version_option,
                                 apply_logging_file, print_problems)
from nodepool.cmd.image_commands import add_image_commands
from nodepool.cmd.migrate_command import add_migrate_command
from nodepool.cmd.subcommand import (CommandError, add_command, close_store, emit, load,
                                     open_store)
from nodepool.config import validate
from nodepool.driver import registry

# ``delete --now`` gives up waiting for the cloud after this long; the node
# stays ``deleting`` and a launcher finishes the job.
DELETE_NOW_TIMEOUT = 300.0


# -- commands -------------------------------------------------------------------------

def node_view(store, node_id: str | None = None, detail: bool = False) -> tables.View:
    """All nodes, or the one with ``node_id`` (none when it is gone)."""
    if node_id is None:
        nodes = store.list_nodes()
    else:
        nodes = [n for n in [store.get_node(node_id)] if n is not None]
    # Pipelined reads: thousands of nodes in about one round trip, not one each.
    locked = store.locked_nodes([n.id for n in nodes])
    return tables.node_view(nodes, locked.__contains__, detail)


def launcher_node_rows(config) -> list[dict] | None:
    """The node rows of the local launcher's status API (``/node-list``), or
    None when no launcher answers there.

    The launcher answers from its watch-fed cache, so thousands of nodes
    cost one HTTP request instead of two ZooKeeper reads per node (kazoo
    spends about 0.3 ms of client time per read: 2,000 nodes took seconds
    even pipelined)."""
    import urllib.error
    import urllib.request

    from nodepool.launcher.webapp import zookeeper_tag

    port = config.webapp.port if config.webapp is not None else None
    if not port:
        return None
    host = config.webapp.listen_address
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    try:
        # A short deadline: when nothing answers, ZooKeeper is read instead.
        with urllib.request.urlopen(f"http://{host}:{port}/node-list.json", timeout=2) as r:
            # Only a launcher of the same ZooKeeper (hosts and chroot) whose
            # cache is in step with it.
            if config.zookeeper is None \
                    or r.headers.get("X-Nodepool-ZooKeeper") != \
                    zookeeper_tag(config.zookeeper.hosts) \
                    or r.headers.get("X-Nodepool-Cache-Synced") != "true":
                return None
            rows = json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return None
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    rows = None if args.zookeeper else launcher_node_rows(load(args))
    if rows is not None:
        view: tables.View = (rows, tables.node_columns(args.detail))
    else:
        _, store = open_store(args)
        try:
            view = node_view(store, detail=args.detail)
        finally:
            close_store(store)
    emit(args, view)
    return 0


def cmd_request_list(args: argparse.Namespace) -> int:
    from nodepool.zk.cache import sorted_requests

    _, store = open_store(args)
    try:
        view = tables.request_view(sorted_requests(store.list_requests()))
    finally:
        close_store(store)
    emit(args, view)
    return 0


def cmd_label_list(args: argparse.Namespace) -> int:
    _, store = open_store(args)
    try:
        view = tables.label_view(store.label_names())
    finally:
        close_store(store)
    emit(args, view)
    return 0


@contextlib.contextmanager
def operator_errors() -> Iterator[None]:
    """An unknown node, or one locked by someone else, is a clean error."""
    from nodepool.zk.locks import LockNotAcquired
    from nodepool.zk.store import RecordNotFound
    try:
        yield
    except (RecordNotFound, LockNotAcquired) as e:
        raise CommandError(e.args[0] if e.args else str(e)) from None


def delete_now(config, store, node_id: str, timeout: float = DELETE_NOW_TIMEOUT) -> None:
    """Delete the node's servers in the foreground, holding its lock, then
    its record.  On a timeout the node stays ``deleting`` for a launcher."""
    from nodepool.driver.delete_now import delete_node_servers
    from nodepool.requests.builder import DeleteSpec, DeleteState
    from nodepool.zk.node_admin import operator_lock

    with operator_errors():
        node, lock = operator_lock(store, node_id)
    try:
        provider = config.providers.get(node.provider)
        if provider is None:
            raise CommandError(
                f"node {node.id}: provider {node.provider!r} is not in {config.config_file}; "
                f"'nodepool erase {node.provider}' removes the records of a removed provider")
        spec = DeleteSpec.for_node(node, state=store.begin_delete(node, lock))
        status = delete_node_servers(provider, spec, timeout)
        if status.state is not DeleteState.DONE:
            raise CommandError(
                f"node {node.id}: server {node.external_id} not deleted within {timeout:g}s"
                + (f" ({status.reason})" if status.reason else "")
                + "; the node stays 'deleting' and a launcher finishes the deletion")
        store.delete_node(node, lock)
    finally:
        lock.release()


def cmd_delete(args: argparse.Namespace) -> int:
    config, store = open_store(args, check_clouds=args.now)
    try:
        if args.now:
            delete_now(config, store, args.id)
        else:
            from nodepool.zk.node_admin import mark_node_deleting
            with operator_errors():
                mark_node_deleting(store, args.id)
        # As upstream: the node's row (none left after --now).
        print(tables.view_table(node_view(store, args.id)))
    finally:
        close_store(store)
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    from nodepool.zk.node_admin import hold_node

    _, store = open_store(args)
    try:
        with operator_errors():
            hold_node(store, args.id, args.reason)
        print(tables.view_table(node_view(store, args.id)))
    finally:
        close_store(store)
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    config, store = open_store(args)
    try:
        count = sum(1 for n in store.list_nodes() if n.provider == args.provider)
        if args.provider in config.providers:
            print(f"warning: provider {args.provider} is still in {args.config}; its "
                  "launchers will find servers without node records and delete them as "
                  "leaked", file=sys.stderr)
        if not args.force:
            print(f"This removes the {count} node record(s) of provider {args.provider} "
                  "from ZooKeeper and cannot be undone; the cloud is not touched.")
            try:
                answer = input(f"Erase provider {args.provider}'s data? [N/y] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() != "y":
                print("Nothing erased.")
                return 0
        from nodepool.zk.node_admin import erase_provider_nodes
        erased = erase_provider_nodes(store, args.provider)
    finally:
        close_store(store)
    print(f"Erased {len(erased)} node record(s) of provider {args.provider}.")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    config, store = open_store(args)
    try:
        if args.provider not in config.providers:
            known = ", ".join(sorted(config.providers)) or "none"
            raise CommandError(f"no provider {args.provider!r} in {args.config} "
                               f"(providers: {known})")
        nodes = [n for n in store.list_nodes() if n.provider == args.provider]
        pools = [p for p in store.registered_pools() if p.provider_name == args.provider]
    finally:
        close_store(store)
    provider = config.providers[args.provider]
    try:
        live = fetch_status(config, "/providers.json").get(args.provider)
        live_error = None
    except CommandError as e:
        live, live_error = None, str(e)
    data = {
        "provider": args.provider, "cloud": provider.cloud,
        "pools": [{"name": name, "max_servers": None if pool.max_servers == float("inf")
                   else pool.max_servers, "labels": sorted(pool.labels),
                   "registered": [{"id": p.id, "hostname": p.hostname, "paused": p.paused}
                                  for p in pools if p.name == name]}
                  for name, pool in provider.pools.items()],
        "nodes": [{"id": n.id, "state": n.state, "label": ",".join(n.type or []),
                   "external_id": n.external_id, "pool": n.pool} for n in nodes],
        "launcher": None if live is None else {
            "api_calls": live.get("api_calls"), "api_in_flight": live.get("api_in_flight"),
            "api_budget": live.get("api_budget"),
            "server_list": live.get("server_list"), "catalog": live.get("catalog"),
            "counters": live.get("counters")},
        "launcher_error": live_error,
    }
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print(f"provider {args.provider} (cloud {provider.cloud})")
    print(tables.render(["pool", "max-servers", "labels", "launchers", "paused"], [
        [p["name"], p["max_servers"] or "unlimited", ",".join(p["labels"]),
         len(p["registered"]), ",".join(str(r["paused"]) for r in p["registered"])]
        for p in data["pools"]]))
    print(tables.render(["id", "state", "label", "pool", "external_id"], [
        [n["id"], n["state"], n["label"], n["pool"], n["external_id"]] for n in data["nodes"]]))
    live = data["launcher"]
    if live is None:
        print(f"launcher figures unavailable: {live_error}")
        return 0
    sl = live["server_list"] or {}
    print(f"server list: {sl.get('servers')} servers, {tables.fmt_age(sl.get('age'))}, "
          f"{sl.get('refreshes')} refreshes, {sl.get('failures')} failures"
          + (f", last error: {sl['last_error']}" if sl.get("last_error") else ""))
    print(tables.render(["cache", "items", "age", "error"], [
        [k, v.get("items"), tables.fmt_age(v.get("age")), v.get("error") or ""]
        for k, v in sorted((live["catalog"] or {}).items())]))
    budget = live.get("api_budget")
    if budget:
        print(_budget_line(budget))
    print(tables.render(["API call", "count", "errors", "timeouts", "total s", "max s",
                         "wait s", "max wait s", "in flight"], [
        [k, v["count"], v["errors"], v["timeouts"], v["total_seconds"], v["max_seconds"],
         v.get("wait_seconds", ""), v.get("max_wait_seconds", ""), v.get("in_flight", "")]
        for k, v in sorted((live["api_calls"] or {}).items())]))
    for call in live["api_in_flight"] or []:
        print(f"in flight: {call['kind']} for {call['age']}s"
              + (" (past its deadline)" if call.get("expired") else ""))
    return 0


def _budget_line(b: dict) -> str:
    """The API budget in one line: mode, concurrency, queue, hold."""
    if b.get("mode") == "rate":
        mode = f"rate: a create or delete every {b['rate']:g}s, a read every " \
               f"{b['read_rate']:g}s"
    else:
        mode = "adaptive (no rate set)"
    queued = ", ".join(f"{k} {v}" for k, v in (b.get("queued") or {}).items() if v) or "none"
    line = (f"API budget: {mode}; {b['in_flight']} of at most {b['concurrency_limit']} "
            f"calls in flight (floor {b['concurrency_floor']}, ceiling "
            f"{b['concurrency_ceiling']}); queued: {queued}; overload signals: "
            f"{b['overloads']}")
    if b.get("held_for"):
        line += f"; held {b['held_for']:g}s for the cloud's Retry-After"
    return line


def fetch_status(config, path: str) -> Any:
    """GET a JSON document from the local launcher's status API."""
    import urllib.error
    import urllib.request

    host = config.webapp.listen_address
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host}:{config.webapp.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            detail = json.load(e).get("error")
        except ValueError:
            detail = e.reason
        raise CommandError(f"{url}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CommandError(f"no launcher status API at {url} ({reason}); is "
                           "nodepool-launcher running with this configuration?") from None


def cmd_quota(args: argparse.Namespace) -> int:
    config = load(args)
    query = f"?provider={args.provider}" if args.provider else ""
    view = fetch_status(config, f"/quota.json{query}")
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
    else:
        print(tables.format_quota(view))
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    config, problems = validate(args.config, args.clouds, args.secure,
                                drivers=registry.drivers())
    print_problems(problems)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        print(f"{len(errors)} error(s) found", file=sys.stderr)
        return 1
    warnings = len(problems) - len(errors)
    print(f"{args.config}: OK" + (f" ({warnings} warning(s))" if warnings else ""))
    return 0


def setup_logging(args: argparse.Namespace) -> None:
    """As upstream's CLI: --debug logs DEBUG to stderr, -l reads a logging
    file, otherwise INFO with the ZooKeeper client's chatter at WARNING."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format=fmt)
    elif args.logconfig:
        apply_logging_file(args.logconfig)
    else:
        logging.basicConfig(level=logging.INFO, format=fmt)
        logging.getLogger("kazoo").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodepool",
        description="Inspect and manage the nodes and node requests that nodepool "
                    "launchers keep in ZooKeeper.")
    add_config_options(parser)
    add_version_option(parser)
    parser.add_argument("-l", dest="logconfig", metavar="PATH",
                        help="logging configuration: a .yaml/.yml/.json dictConfig file, "
                             "else an INI file for logging.config.fileConfig")
    parser.add_argument("--debug", action="store_true",
                        help="log at DEBUG level to stderr (instead of -l)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    command = functools.partial(add_command, sub)

    p = command("list", cmd_list, "list nodes")
    p.add_argument("--detail", action="store_true",
                   help="also show pool, hostname, addresses, user, port, launcher, "
                        "allocation and hold details")
    p.add_argument("--zookeeper", action="store_true",
                   help="read ZooKeeper even when a launcher's status API answers on this "
                        "configuration's webapp port (by default its cache is used: one "
                        "request instead of two ZooKeeper reads per node)")
    command("request-list", cmd_request_list, "list node requests in priority order")
    command("label-list", cmd_label_list, "list the labels registered pools serve")
    p = command("delete", cmd_delete, "mark a node for deletion",
                "Mark a node 'deleting'; a launcher deletes its server and then the node. "
                "With --now, delete its server here and wait, then the node record. "
                "Prints the node's row.", json_option=False)
    p.add_argument("id", help="node id (see 'nodepool list')")
    p.add_argument("--now", action="store_true",
                   help="delete the server in the foreground (needs clouds.yaml; gives up "
                        f"after {DELETE_NOW_TIMEOUT:g}s and leaves the node to a launcher)")
    p = command("hold", cmd_hold, "hold a node so nothing deletes it",
                "Set a node to 'hold' so it is kept until released or until max-hold-age. "
                "Prints the node's row.", json_option=False)
    p.add_argument("id", help="node id (see 'nodepool list')")
    p.add_argument("--reason", help="why; stored as the node's comment")
    p = command("erase", cmd_erase, "remove a removed provider's node records",
                "Remove every node record of PROVIDER from ZooKeeper, locked or not, "
                "without touching the cloud: for a provider that no longer exists. "
                "Asks first unless --force.", json_option=False)
    p.add_argument("provider", metavar="PROVIDER", help="provider name")
    p.add_argument("--force", action="store_true", help="do not ask")
    p = command("info", cmd_info, "show a provider's pools and nodes")
    p.add_argument("provider", help="provider name from nodepool.yaml")
    p = command("quota", cmd_quota, "show quota figures from the running launcher",
                "Per provider and resource: the cloud limit, nova's reported usage, our "
                "ledger, creates in flight, headroom, pool limits, paused and backoff "
                "state, and how old the figures are.  Read from the launcher's status API "
                "(webapp in nodepool.yaml).")
    p.add_argument("provider", nargs="?", help="only this provider")
    add_image_commands(sub)
    command("config-validate", cmd_config_validate, "check nodepool.yaml and clouds.yaml",
            "Check nodepool.yaml and the clouds.yaml entries its providers use "
            "(api_timeout, caching) and print every problem found. Exits 1 if any is "
            "an error, 0 otherwise.", json_option=False)
    add_migrate_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # As upstream's CLI: the help, and a failure status scripts can test.
        parser.print_help()
        return 1
    try:
        setup_logging(args)
    except ValueError as e:
        print(f"nodepool: {e}", file=sys.stderr)
        return 1
    try:
        return args.func(args)
    except CommandError as e:
        print(f"nodepool {args.command}: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if type(e).__name__ != "NoAuthError":   # kazoo's, imported only with ZooKeeper
            raise
        print(f"nodepool {args.command}: ZooKeeper refused it (NoAuth): the znode's ACL "
              f"does not admit this identity; give {args.config} the zookeeper-auth of "
              "the launchers (doc/operations.rst, \"ZooKeeper ACLs\")", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
