"""Rows, tables and JSON for the ``nodepool`` CLI and the status API.

One module below both, so ``nodepool list`` and ``GET /node-list`` print
the same thing.  The column keys (JSON) and headers (tables) and their order
are upstream Nodepool's: scripts and dashboards that read upstream's output
read ours.  A view is ``(rows, columns)``: ``rows`` are dicts keyed by the
column keys, ``columns`` is an ordered list of ``(key, header)``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Container, Iterable, Mapping, Sequence

from prettytable import PrettyTable

Columns = list[tuple[str, str]]
View = tuple[list[dict[str, Any]], Columns]

NODE_COLUMNS: Columns = [
    ("id", "ID"), ("provider", "Provider"), ("label", "Label"),
    ("server_id", "Server ID"), ("public_ipv4", "Public IPv4"), ("ipv6", "IPv6"),
    ("state", "State"), ("age", "Age"), ("locked", "Locked"),
]
# ``nodepool list --detail`` (and the status API's table) add these.
NODE_DETAIL_COLUMNS: Columns = [
    ("pool", "Pool"), ("hostname", "Hostname"), ("private_ipv4", "Private IPv4"),
    ("AZ", "AZ"), ("username", "Username"), ("connection_port", "Port"),
    ("launcher", "Launcher"), ("allocated_to", "Allocated To"), ("hold_job", "Hold Job"),
    ("comment", "Comment"), ("user_data", "User Data"), ("driver_data", "Driver Data"),
]
REQUEST_COLUMNS: Columns = [
    ("id", "Request ID"), ("relative_priority", "Priority"), ("state", "State"),
    ("requestor", "Requestor"), ("node_types", "Node Types"), ("nodes", "Nodes"),
    ("declined_by", "Declined By"), ("event_id", "Event ID"),
]
LABEL_COLUMNS: Columns = [("label", "Label")]
# The images upstream's nodepool-builder keeps in ZooKeeper.  As upstream,
# the JSON's ages are epoch seconds (``int(state_time)``), shown as
# DD:HH:MM:SS only in tables.
IMAGE_LIST_COLUMNS: Columns = [
    ("id", "Build ID"), ("upload_id", "Upload ID"), ("provider", "Provider"),
    ("image", "Image"), ("external_name", "Provider Image Name"),
    ("external_id", "Provider Image ID"), ("state", "State"), ("age", "Age"),
]
DIB_IMAGE_LIST_COLUMNS: Columns = [
    ("id", "ID"), ("image", "Image"), ("builder", "Builder"), ("formats", "Formats"),
    ("state", "State"), ("age", "Age"),
]
IMAGE_STATUS_COLUMNS: Columns = [
    ("image", "Image"), ("paused", "Paused"), ("build_request", "Build Request"),
    ("build_request_age", "Build Request Age"),
]


def age(ts: float | None, now: float | None = None) -> str:
    """``DD:HH:MM:SS`` since ``ts``; empty when unknown."""
    if not ts:
        return ""
    seconds = int((now or time.time()) - ts)
    d, rem = divmod(max(0, seconds), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d:02d}:{h:02d}:{m:02d}:{s:02d}"


def safe_port(port: Any) -> Any:
    """A port that is not a number may carry credentials (a kubeconfig):
    shown as ``redacted``."""
    try:
        int(port)
    except (TypeError, ValueError):
        return "redacted"
    return port


def node_row(node: Any, locked: bool) -> dict[str, Any]:
    """Every column of one node record (``zk.records.Node``)."""
    return {
        "id": node.id, "provider": node.provider, "label": list(node.type or []),
        "server_id": node.external_id, "public_ipv4": node.public_ipv4,
        "ipv6": node.public_ipv6, "state": node.state, "age": age(node.state_time),
        "locked": "locked" if locked else "unlocked", "pool": node.pool,
        "hostname": node.hostname, "private_ipv4": node.private_ipv4, "AZ": node.az,
        "username": node.username, "connection_port": safe_port(node.connection_port),
        "launcher": node.launcher, "allocated_to": node.allocated_to,
        "hold_job": node.hold_job, "comment": node.comment, "user_data": node.user_data,
        "driver_data": node.driver_data,
    }


def node_columns(detail: bool = True) -> Columns:
    return NODE_COLUMNS + (NODE_DETAIL_COLUMNS if detail else [])


def node_view(nodes: Iterable[Any], is_locked, detail: bool = True) -> View:
    """Nodes sorted by id; ``is_locked(node_id)`` says whether one is locked."""
    rows = [node_row(n, is_locked(n.id)) for n in sorted(nodes, key=lambda n: n.id or "")]
    return rows, node_columns(detail)


def request_view(requests: Iterable[Any]) -> View:
    """Requests in the order given (the CLI and the API pass priority order)."""
    rows = [{"id": r.id, "relative_priority": r.relative_priority, "state": r.state,
             "requestor": r.requestor, "node_types": list(r.node_types),
             "nodes": list(r.nodes), "declined_by": list(r.declined_by),
             "event_id": r.event_id} for r in requests]
    return rows, REQUEST_COLUMNS


def label_view(labels: Iterable[str]) -> View:
    return [{"label": name} for name in labels], LABEL_COLUMNS


def _epoch(t: float | None) -> int | None:
    return None if t is None else int(t)


def image_list_view(uploads: Iterable[Any]) -> View:
    """Uploads (``zk.image_records.ImageUpload``) in the order given."""
    rows = [{"id": u.build_id, "upload_id": u.upload_id, "provider": u.provider_name,
             "image": u.image_name, "external_name": u.external_name,
             "external_id": u.external_id, "state": u.state, "age": _epoch(u.state_time)}
            for u in uploads]
    return rows, IMAGE_LIST_COLUMNS


def dib_image_list_view(builds: Iterable[Any], paused: Container[str]) -> View:
    """Builds (``zk.image_records.ImageBuild``) in the order given; a paused
    image's builds show the state ``paused``, as upstream's."""
    rows = [{"id": f"{b.image_name}-{b.build_id}", "image": b.image_name,
             "builder": b.builder, "formats": list(b.formats),
             "state": "paused" if b.image_name in paused else b.state,
             "age": _epoch(b.state_time)}
            for b in builds]
    return rows, DIB_IMAGE_LIST_COLUMNS


def image_status_view(images: Iterable[str], paused: Container[str],
                      requests: Mapping[str, Any]) -> View:
    """Per image: paused, and its build request (``pending`` until the
    builder takes it, then ``building``) with the request's age."""
    rows = []
    for name in images:
        req = requests.get(name)
        rows.append({"image": name, "paused": name in paused,
                     "build_request": None if req is None
                     else ("pending" if req.pending else "building"),
                     "build_request_age": None if req is None else int(req.created)})
    return rows, IMAGE_STATUS_COLUMNS


def _table_value(key: str, value: Any) -> Any:
    """Upstream's tables show an ``age`` or ``*_age`` given in epoch seconds
    as DD:HH:MM:SS (node rows already carry that text)."""
    if (key == "age" or key.endswith("_age")) and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return age(value)
    return value


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def render(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A left-aligned prettytable; None is an empty cell, a list is comma-joined."""
    t = PrettyTable(list(headers))
    t.align = "l"
    for row in rows:
        t.add_row([_cell(v) for v in row])
    return t.get_string()


def view_table(view: View, fields: Sequence[str] | None = None) -> str:
    """The view as a table; ``fields`` keeps only those columns (in the
    view's order; unknown names are ignored), as upstream's ``?fields=``."""
    rows, columns = view
    if fields:
        columns = [c for c in columns if c[0] in fields]
    return render([h for _, h in columns],
                  ([_table_value(k, r.get(k)) for k, _ in columns] for r in rows))


def view_json(view: View) -> list[dict[str, Any]]:
    """The rows with every key, for JSON: what upstream's API returns."""
    return view[0]


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)


# -- quota figures (this project's addition) ---------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return "unlimited"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def fmt_age(value: Any) -> str:
    return "never" if value is None else f"{value:.0f}s ago"


def format_quota(view: dict) -> str:
    """The ``/quota.json`` figures as tables, one block per provider."""
    out = []
    for name, p in sorted(view.items()):
        limits, backoff = p.get("limits", {}), p.get("backoff", {})
        line = f"provider {name}: limits read {fmt_age(limits.get('age'))}"
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
        out.append(render(["resource", "cloud limit", "nova used", "our ledger", "in flight",
                           "headroom"], rows))
        for pool, info in sorted(p.get("pools", {}).items()):
            worker = p.get("pool_workers", {}).get(pool, {})
            out.append(f"pool {pool}: paused={worker.get('paused', False)} "
                       f"active requests={worker.get('active_requests', 0)}"
                       + (" (ignores provider quota)" if info.get("ignore_provider_quota")
                          else ""))
            out.append(render(["resource", "pool limit", "used", "headroom"], [
                [res, _fmt(f.get("limit")), _fmt(f.get("used")), _fmt(f.get("headroom"))]
                for res, f in info.get("resources", {}).items()]))
        waiting = p.get("waiting_builds", [])
        if waiting:
            out.append(f"{len(waiting)} build(s) waiting for headroom, e.g.: "
                       f"{waiting[0].get('reason')}")
        out.append("")
    return "\n".join(out)
