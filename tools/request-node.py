#!/usr/bin/env python3
"""Ask the launchers for nodes the way Zuul does, and print what they built.

    .venv/bin/python tools/request-node.py -c .quickstart/nodepool.yaml ubuntu-jammy [LABEL ...]

It speaks only ZooKeeper, with the project's own records, and follows Zuul's
steps (see doc/protocol.rst, "The sequence as Zuul drives it"):

1. create ``/nodepool/requests/<priority>-<seq>`` with ``state: requested``
   and one label per node wanted;
2. wait, up to ``--timeout`` seconds, until a launcher sets it ``fulfilled``
   or ``failed``;
3. as Zuul's executor: lock each node, check that it is allocated to the
   request, delete the request, set the nodes ``in-use`` and print them;
4. then either hold them (the default): state ``hold``, kept until
   ``nodepool delete ID`` or ``max-hold-age``; or with ``--return`` hand
   them back as a finished job does: state ``used``, and the launcher
   deletes their servers.

A request that fails or times out is deleted again, as Zuul cancels its
requests.  Exit status: 0 fulfilled, 1 failed, timed out or unusable
configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nodepool.config import validate  # noqa: E402
from nodepool.driver import registry  # noqa: E402
from nodepool.zk import paths  # noqa: E402
from nodepool.zk.client import (ZooKeeperUnavailable, connect,  # noqa: E402
                                disconnect)
from nodepool.zk.locks import LockNotAcquired  # noqa: E402
from nodepool.zk.records import (FAILED, FULFILLED, HOLD, IN_USE,  # noqa: E402
                                 REQUESTED, USED, NodeRequest)
from nodepool.zk.store import ZooKeeperStore  # noqa: E402

REQUESTOR = "request-node.py"
# Zuul's executor waits this long for each node lock.
NODE_LOCK_TIMEOUT = 30.0
POLL_INTERVAL = 0.25
COLUMNS = ["id", "label", "state", "interface_ip", "username", "connection_port",
           "provider", "external_id", "hostname"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="request-node.py",
        description="Submit a Zuul-like node request to ZooKeeper, wait for it, print "
                    "the nodes, then hold them or (--return) hand them back.")
    p.add_argument("labels", nargs="+", metavar="LABEL", help="one label per node wanted")
    p.add_argument("-c", "--config", required=True,
                   help="nodepool.yaml whose zookeeper-servers (and TLS) to use")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the request to be fulfilled (default 300)")
    p.add_argument("--priority", type=int, default=200,
                   help="request priority, as Zuul's pipelines set it (default 200)")
    p.add_argument("--tenant", default="quickstart",
                   help="tenant_name of the request (default quickstart)")
    p.add_argument("--return", dest="return_nodes", action="store_true",
                   help="hand the nodes back at once (state used) so the launcher deletes "
                        "them; default: hold them")
    p.add_argument("--json", action="store_true", help="print the nodes as JSON")
    return p


def wait_for_result(store: ZooKeeperStore, request_id: str, deadline: float
                    ) -> NodeRequest | None:
    """The request once fulfilled or failed; None at the deadline or if it vanished."""
    while time.monotonic() < deadline:
        request = store.get_request(request_id)
        if request is None:
            return None
        if request.state in (FULFILLED, FAILED):
            return request
        time.sleep(POLL_INTERVAL)
    return None


def delete_request(store: ZooKeeperStore, request_id: str) -> None:
    store.client.delete(paths.request_path(request_id))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config, problems = validate(args.config, check_clouds=False, drivers=registry.drivers())
    if config is None or config.zookeeper is None:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"request-node.py: cannot use {args.config}", file=sys.stderr)
        return 1
    try:
        client = connect(config.zookeeper)
    except ZooKeeperUnavailable as e:
        print(f"request-node.py: {e}", file=sys.stderr)
        return 1
    store = ZooKeeperStore(client)
    try:
        return run(args, store)
    finally:
        disconnect(client)


def run(args: argparse.Namespace, store: ZooKeeperStore) -> int:
    request = NodeRequest(state=REQUESTED, node_types=list(args.labels), requestor=REQUESTOR,
                          requestor_data={"tool": REQUESTOR}, provider=None,
                          relative_priority=0, event_id=uuid.uuid4().hex,
                          tenant_name=args.tenant)
    store.create_request(request, args.priority)
    print(f"request {request.id} for {', '.join(args.labels)} submitted; waiting up to "
          f"{args.timeout:g}s", file=sys.stderr)
    try:
        result = wait_for_result(store, request.id, time.monotonic() + args.timeout)
    except KeyboardInterrupt:
        result = None
    if result is None or result.state != FULFILLED:
        if result is None:
            why = f"not fulfilled within {args.timeout:g}s (or cancelled)"
        else:
            why = f"failed (declined by: {', '.join(result.declined_by) or 'nobody'})"
        print(f"request-node.py: request {request.id} {why}; deleting it", file=sys.stderr)
        if store.get_request(request.id) is not None:
            delete_request(store, request.id)
        return 1

    locks = []
    nodes = []
    try:
        for node_id in result.nodes:
            try:
                lock = store.lock_node(node_id, NODE_LOCK_TIMEOUT)
            except LockNotAcquired as e:
                print(f"request-node.py: {e}", file=sys.stderr)
                return 1
            locks.append(lock)
            node = store.get_node(node_id)
            if node is None or node.allocated_to != result.id:
                print(f"request-node.py: node {node_id} is not allocated to request "
                      f"{result.id}", file=sys.stderr)
                return 1
            nodes.append((node, lock))
        # Zuul deletes its request once it holds the nodes.
        delete_request(store, result.id)
        for node, lock in nodes:
            node.set_state(IN_USE)
            node.user_data = {"requestor": REQUESTOR}
            store.store_node(node, lock)
        for node, lock in nodes:
            if args.return_nodes:
                node.set_state(USED)
            else:
                node.set_state(HOLD)
                node.comment = f"held by {REQUESTOR} (request {result.id})"
            store.store_node(node, lock)
        show(args, [n for n, _ in nodes])
    finally:
        for lock in locks:
            lock.release()
        if store.get_request(result.id) is not None:
            delete_request(store, result.id)
    ids = " ".join(n.id for n, _ in nodes)
    if args.return_nodes:
        print(f"returned node(s) {ids} (state used): the launcher deletes them",
              file=sys.stderr)
    else:
        print(f"holding node(s) {ids}; release with: nodepool -c {args.config} delete ID",
              file=sys.stderr)
    return 0


def show(args: argparse.Namespace, nodes: list) -> None:
    rows = [{"id": n.id, "label": ",".join(n.type or []), "state": n.state,
             "interface_ip": n.interface_ip, "username": n.username,
             "connection_port": n.connection_port, "provider": n.provider,
             "external_id": n.external_id, "hostname": n.hostname} for n in nodes]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return
    from nodepool.tables import render
    print(render(COLUMNS, [[r[c] for c in COLUMNS] for r in rows]))


if __name__ == "__main__":
    sys.exit(main())
