"""Requests withdrawn at any moment of their builds leave no server behind.

The launcher, the fakecloud and ZooKeeper as in production; Zuul's side
submits requests, uses and returns the nodes of those fulfilled in time and
withdraws the others at a random moment (requested, pending, building,
ready, fulfilled), as the benchmark's wind-down does; then it hands back
the ready nodes nobody holds, and every server must be gone.  A leak here
was rare (one drain in several) and came from the node cache missing lock
releases (tests/test_zk_cache.py has the cheap, targeted case), so this is
a slow test.  WITHDRAW_SEED and WITHDRAW_REQUESTS vary it when hunting.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from nodepool.launcher import maintenance
from nodepool.launcher.launcher import Launcher
from nodepool.zk.store import RecordChanged, RecordGone
from tests.fixtures.fakecloud import wait_for
from tests.test_launcher import finished, store, write_config, zuul_request  # noqa: F401


def _hand_back_ready(zuul) -> None:
    """What Zuul's side of the benchmark's drain does: ready nodes nobody
    holds are returned as used, so that the launcher deletes them."""
    for node in zuul.list_nodes():
        if node.state != "ready" or node.allocated_to:
            continue
        got = zuul.lock_and_read_node(node.id)
        if got is None:
            continue
        fresh, lock = got
        try:
            if fresh.state == "ready" and not fresh.allocated_to:
                fresh.state = "used"
                zuul.store_node(fresh, lock)
        except (RecordGone, RecordChanged):
            pass
        finally:
            lock.release()


def _use_and_return(zuul, request) -> None:
    held = []
    for node_id in request.nodes:
        got = zuul.lock_and_read_node(node_id, timeout=10)
        if got is not None:
            held.append(got)
    zuul.client.delete(f"/nodepool/requests/{request.id}")
    for node, lock in held:
        node.state = "used"
        zuul.store_node(node, lock)
        lock.release()


@pytest.mark.slow
def test_requests_withdrawn_at_any_moment_leave_no_server(tmp_path, make_fakecloud,
                                                          zk_settings, store, monkeypatch):  # noqa: F811
    monkeypatch.setattr(maintenance, "HOUSEKEEPING_INTERVAL", 1.0)
    cloud = make_fakecloud({"servers": {"boot_seconds": [0.2, 1.5],
                                        "delete_seconds": [0.1, 0.5],
                                        "network_layout": "provider"}})
    config = write_config(tmp_path, cloud, zk_settings, pool={"max-servers": 8})
    # Production intervals for the server list and the leak cleaner: a
    # server whose node is gone must not be cleaned up behind our back.
    launcher = Launcher(config)
    launcher.start()
    try:
        rng = random.Random(int(os.environ.get("WITHDRAW_SEED", "3")))
        total = int(os.environ.get("WITHDRAW_REQUESTS", "60"))
        in_flight: dict[str, float] = {}   # request id -> when Zuul withdraws it
        submitted = 0
        deadline = time.monotonic() + 120
        while (submitted < total or in_flight) and time.monotonic() < deadline:
            while submitted < total and len(in_flight) < 8:
                req = zuul_request(store, ["small"])
                in_flight[req.id] = time.monotonic() + rng.uniform(0.0, 2.5)
                submitted += 1
            now = time.monotonic()
            for rid, withdraw_at in list(in_flight.items()):
                if now >= withdraw_at:
                    store.client.delete(f"/nodepool/requests/{rid}")
                    del in_flight[rid]
                    continue
                done = finished(store, rid)
                if done is not None:
                    if done.state == "fulfilled":
                        _use_and_return(store, done)
                    else:
                        store.client.delete(f"/nodepool/requests/{rid}")
                    del in_flight[rid]
            time.sleep(0.02)
        assert not in_flight

        def drained():
            _hand_back_ready(store)
            return not cloud.servers() and not store.list_nodes()

        try:
            wait_for(drained, 60, interval=0.2, what="every server deleted")
        except AssertionError:
            cache = launcher.store.nodes_cache
            left = [(n.id, n.state, n.allocated_to, n.external_id,
                     f"locked: {store.node_locked(n.id)}, "
                     f"in the launcher's cache: {cache.is_locked(n.id)}")
                    for n in store.list_nodes()]
            servers = [(s["id"], s["status"], s["metadata"]) for s in cloud.servers()]
            orphans = [w.handler.orphan_node_ids for w in launcher.pool_workers.values()]
            raise AssertionError(f"left behind: nodes {left}, servers {servers}, "
                                 f"orphan builds {orphans}") from None
    finally:
        launcher.stop(wait=10)
