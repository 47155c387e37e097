"""``nodepool``: look at and fix what the launchers keep in ZooKeeper.

Every command but ``config-validate`` connects to ZooKeeper with the
settings of nodepool.yaml (TLS included) and fails within the configured
timeout, with a clear message, when it cannot.  Tables are for people;
``--json`` prints the same data for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence

from nodepool.cmd.common import add_config_options, print_problems
from nodepool.config import validate


class CommandError(Exception):
    """A clean, expected failure: printed without a traceback, exit 1."""


# -- output ---------------------------------------------------------------------------

def table(headers: Sequence[str], rows: list[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line]
    for n, row in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if n == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


def age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return ""
    seconds = int((now or time.time()) - ts)
    d, rem = divmod(max(0, seconds), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d:02d}:{h:02d}:{m:02d}:{s:02d}"


def emit(args: argparse.Namespace, data: Any, headers: Sequence[str],
         rows: Callable[[], list[Sequence[Any]]]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(table(headers, rows()))


# -- connecting -----------------------------------------------------------------------

def open_store(args: argparse.Namespace):
    from nodepool.zk.client import ZooKeeperUnavailable, connect
    from nodepool.zk.store import ZooKeeperStore

    config, problems = validate(args.config, args.clouds, args.secure, check_clouds=False)
    if config is None:
        print_problems(problems)
        raise CommandError(f"cannot use {args.config}: it has errors")
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


# -- commands -------------------------------------------------------------------------

NODE_COLUMNS = ["id", "provider", "label", "external_id", "public_ipv4", "public_ipv6",
                "state", "age", "locked"]
NODE_DETAIL = ["pool", "hostname", "private_ipv4", "az", "username", "connection_port",
               "launcher", "allocated_to", "hold_job", "comment"]


def node_row(node, locked: bool, detail: bool) -> dict:
    row = {"id": node.id, "provider": node.provider, "label": ",".join(node.type or []),
           "external_id": node.external_id, "public_ipv4": node.public_ipv4,
           "public_ipv6": node.public_ipv6, "state": node.state,
           "age": age(node.state_time), "locked": "locked" if locked else "unlocked"}
    if detail:
        port = node.connection_port if isinstance(node.connection_port, int) else "redacted"
        row.update({"pool": node.pool, "hostname": node.hostname,
                    "private_ipv4": node.private_ipv4, "az": node.az,
                    "username": node.username, "connection_port": port,
                    "launcher": node.launcher, "allocated_to": node.allocated_to,
                    "hold_job": node.hold_job, "comment": node.comment})
    return row


def cmd_list(args: argparse.Namespace) -> int:
    _, store = open_store(args)
    try:
        nodes = sorted(store.list_nodes(), key=lambda n: n.id or "")
        rows = [node_row(n, store.node_locked(n.id), args.detail) for n in nodes]
    finally:
        close_store(store)
    columns = NODE_COLUMNS + (NODE_DETAIL if args.detail else [])
    emit(args, rows, columns, lambda: [[r[c] for c in columns] for r in rows])
    return 0


def cmd_request_list(args: argparse.Namespace) -> int:
    from nodepool.zk.cache import sorted_requests

    _, store = open_store(args)
    try:
        requests = sorted_requests(store.list_requests())
        locked = {r.id: bool(store.request_lock_holders(r.id)) for r in requests}
    finally:
        close_store(store)
    rows = [{"id": r.id, "relative_priority": r.relative_priority, "state": r.state,
             "requestor": r.requestor, "node_types": r.node_types, "nodes": r.nodes,
             "declined_by": r.declined_by, "event_id": r.event_id,
             "age": age(r.created_time or r.state_time), "locked": locked[r.id]}
            for r in requests]
    columns = ["id", "relative_priority", "state", "requestor", "node_types", "nodes",
               "declined_by", "event_id", "age"]
    emit(args, rows, columns, lambda: [
        [",".join(v) if isinstance(v, list) else v for v in (r[c] for c in columns)]
        for r in rows])
    return 0


def cmd_label_list(args: argparse.Namespace) -> int:
    _, store = open_store(args)
    try:
        labels = store.label_names()
    finally:
        close_store(store)
    emit(args, labels, ["label"], lambda: [[name] for name in labels])
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from nodepool.zk.locks import LockNotAcquired
    from nodepool.zk.store import RecordNotFound

    _, store = open_store(args)
    try:
        node = store.mark_node_deleting(args.id)
    except (RecordNotFound, LockNotAcquired) as e:
        raise CommandError(e.args[0] if e.args else str(e)) from None
    finally:
        close_store(store)
    print(f"node {node.id} marked for deletion; the launcher deletes its server")
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    from nodepool.zk.locks import LockNotAcquired
    from nodepool.zk.store import RecordNotFound

    _, store = open_store(args)
    try:
        node = store.hold_node(args.id, args.reason)
    except (RecordNotFound, LockNotAcquired) as e:
        raise CommandError(e.args[0] if e.args else str(e)) from None
    finally:
        close_store(store)
    print(f"node {node.id} held" + (f": {args.reason}" if args.reason else ""))
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
    print(table(["pool", "max-servers", "labels", "launchers", "paused"], [
        [p["name"], p["max_servers"] or "unlimited", ",".join(p["labels"]),
         len(p["registered"]), ",".join(str(r["paused"]) for r in p["registered"])]
        for p in data["pools"]]))
    print(table(["id", "state", "label", "pool", "external_id"], [
        [n["id"], n["state"], n["label"], n["pool"], n["external_id"]] for n in data["nodes"]]))
    live = data["launcher"]
    if live is None:
        print(f"launcher figures unavailable: {live_error}")
        return 0
    sl = live["server_list"] or {}
    print(f"server list: {sl.get('servers')} servers, {_age(sl.get('age'))}, "
          f"{sl.get('refreshes')} refreshes, {sl.get('failures')} failures"
          + (f", last error: {sl['last_error']}" if sl.get("last_error") else ""))
    print(table(["cache", "items", "age", "error"], [
        [k, v.get("items"), _age(v.get("age")), v.get("error") or ""]
        for k, v in sorted((live["catalog"] or {}).items())]))
    budget = live.get("api_budget")
    if budget:
        print(_budget_line(budget))
    print(table(["API call", "count", "errors", "timeouts", "total s", "max s", "wait s",
                 "max wait s", "in flight"], [
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


def _fmt(value: Any) -> str:
    if value is None:
        return "unlimited"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _age(value: Any) -> str:
    return "never" if value is None else f"{value:.0f}s ago"


def format_quota(view: dict) -> str:
    """The ``/quota.json`` figures as tables, one block per provider."""
    out = []
    for name, p in sorted(view.items()):
        limits, backoff = p.get("limits", {}), p.get("backoff", {})
        line = f"provider {name}: limits read {_age(limits.get('age'))}"
        if limits.get("error"):
            line += f" (last read failed: {limits['error']})"
        if backoff.get("in_backoff"):
            line += (f"; BACKING OFF after {backoff.get('consecutive_quota_errors')} quota "
                     f"error(s), {backoff.get('remaining', 0):.0f}s left")
        else:
            line += "; no backoff"
        out.append(line)
        rows = [[res, _fmt(f.get("limit")), _fmt(f.get("nova_used")),
                 _fmt(f.get("ledger_used")), _fmt(f.get("in_flight")),
                 _fmt(f.get("effective_headroom"))]
                for res, f in p.get("resources", {}).items()]
        out.append(table(["resource", "cloud limit", "nova used", "our ledger", "in flight",
                          "headroom"], rows))
        for pool, info in sorted(p.get("pools", {}).items()):
            worker = p.get("pool_workers", {}).get(pool, {})
            out.append(f"pool {pool}: paused={worker.get('paused', False)} "
                       f"active requests={worker.get('active_requests', 0)}"
                       + (" (ignores provider quota)" if info.get("ignore_provider_quota")
                          else ""))
            out.append(table(["resource", "pool limit", "used", "headroom"], [
                [res, _fmt(f.get("limit")), _fmt(f.get("used")), _fmt(f.get("headroom"))]
                for res, f in info.get("resources", {}).items()]))
        waiting = p.get("waiting_builds", [])
        if waiting:
            out.append(f"{len(waiting)} build(s) waiting for headroom, e.g.: "
                       f"{waiting[0].get('reason')}")
        out.append("")
    return "\n".join(out)


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
    config, problems = validate(args.config, args.clouds, args.secure, check_clouds=False)
    if config is None:
        print_problems(problems)
        raise CommandError(f"cannot use {args.config}: it has errors")
    query = f"?provider={args.provider}" if args.provider else ""
    view = fetch_status(config, f"/quota.json{query}")
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
    else:
        print(format_quota(view))
    return 0


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

    def command(name: str, func, help_text: str, description: str | None = None,
                json_option: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description or help_text)
        add_config_options(p, suppress=True)
        if json_option:
            p.add_argument("--json", action="store_true", help="print JSON for scripts")
        p.set_defaults(func=func)
        return p

    p = command("list", cmd_list, "list nodes")
    p.add_argument("--detail", action="store_true",
                   help="also show pool, hostname, addresses, user, port, launcher, "
                        "allocation and hold details")
    command("request-list", cmd_request_list, "list node requests in priority order")
    command("label-list", cmd_label_list, "list the labels registered pools serve")
    p = command("delete", cmd_delete, "mark a node for deletion",
                "Mark a node 'deleting'; a launcher deletes its server and then the node.",
                json_option=False)
    p.add_argument("id", help="node id (see 'nodepool list')")
    p = command("hold", cmd_hold, "hold a node so nothing deletes it",
                "Set a node to 'hold' so it is kept until released or until max-hold-age.",
                json_option=False)
    p.add_argument("id", help="node id (see 'nodepool list')")
    p.add_argument("--reason", help="why; stored as the node's comment")
    p = command("info", cmd_info, "show a provider's pools and nodes")
    p.add_argument("provider", help="provider name from nodepool.yaml")
    p = command("quota", cmd_quota, "show quota figures from the running launcher",
                "Per provider and resource: the cloud limit, nova's reported usage, our "
                "ledger, creates in flight, headroom, pool limits, paused and backoff "
                "state, and how old the figures are.  Read from the launcher's status API "
                "(webapp in nodepool.yaml).")
    p.add_argument("provider", nargs="?", help="only this provider")
    command("config-validate", cmd_config_validate, "check nodepool.yaml and clouds.yaml",
            "Check nodepool.yaml and the clouds.yaml entries its providers use "
            "(api_timeout, caching) and print every problem found. Exits 1 if any is "
            "an error, 0 otherwise.", json_option=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CommandError as e:
        print(f"nodepool {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
