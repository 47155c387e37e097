"""OpenStackProvider's side of the fault handling: a finished build's result
stays until the handler has recorded it, a build whose node vanished is
cancelled and its server deleted, capacity is checked against the pool being
served, and a changed cloud entry makes the provider reconnect.

The simulated cloud over HTTP through the real openstacksdk; no ZooKeeper.
"""

from __future__ import annotations

import time

import pytest

from nodepool.requests.builder import BuildState, Capacity, DeleteSpec, DeleteState
from tests.fixtures.fakecloud import wait_for
from tests.test_openstack_provider import (CREATE_ROUTE, Harness, harness,  # noqa: F401
                                          limited, provider_config)

pytestmark = pytest.mark.timeout(90)


def test_finished_build_answers_until_forgotten(harness):  # noqa: F811
    h = harness()
    h.wait_available()
    (handle,) = h.start(1)
    done = h.finish_builds([handle])
    assert done[handle].state is BuildState.READY
    # The handler's write may have failed: it asks again and gets the same.
    again = h.provider.poll_build(handle)
    assert again.state is BuildState.READY
    assert again.info.external_id == done[handle].info.external_id
    h.provider.forget_build(handle)
    assert h.provider.poll_build(handle).state is BuildState.FAILED


def test_cancelled_build_deletes_its_server_without_a_poll(harness):  # noqa: F811
    h = harness(limited(instances=5, boot_seconds=[3, 3]))
    h.wait_available()
    (handle,) = h.start(1)
    wait_for(lambda: h.provider.poll_build(handle).info.external_id, timeout=20,
             what="the server to exist")
    server = h.provider.poll_build(handle).info.external_id
    h.provider.cancel_build(handle, DeleteSpec(node_id=handle, provider_name="p1",
                                               pool_name="main", labels=("small",),
                                               external_id=server, state="building"))
    wait_for(lambda: server not in {s["id"] for s in h.cloud.servers()}, timeout=30,
             what="the cancelled build's server to be deleted")
    wait_for(lambda: not h.provider._deletes, timeout=10, what="the deletion to be dropped")
    assert h.provider.poll_build(handle).state is BuildState.FAILED


def test_capacity_is_that_of_the_pool_being_served(harness):  # noqa: F811
    config = provider_config(pool={"max-servers": 1})
    pools = config["providers"][0]["pools"]
    pools.append(dict(pools[0], name="second", **{"max-servers": 5}))
    h = harness(config=config)
    h.wait_available()
    spec = h.spec()
    h.provider.start_build(spec)  # pool main is now full
    assert h.provider.capacity(["small"], pool="main") is Capacity.WAIT
    assert h.provider.capacity(["small"], pool="second") is Capacity.AVAILABLE


def test_changed_cloud_entry_reconnects(harness, tmp_path):  # noqa: F811
    h = harness()
    h.wait_available()
    first = h.provider.cloud
    same = h.config.providers["p1"]
    h.provider.update_config(same)
    assert h.provider.cloud is first
    clouds = h.cloud.write_clouds_yaml(tmp_path / "clouds2.yaml", api_timeout=7)
    from nodepool.config import load_config
    from nodepool.driver import registry
    config, _ = load_config(str(tmp_path / "nodepool.yaml"), clouds, drivers=registry.drivers())
    assert config.providers["p1"].cloud_settings != same.cloud_settings
    h.provider.update_config(config.providers["p1"])
    wait_for(lambda: h.provider.cloud is not first, timeout=20, what="a new connection")
    # The new connection works.
    (handle,) = h.start(1)
    assert h.finish_builds([handle])[handle].state is BuildState.READY


def test_adopted_server_still_counts_for_its_tenant(harness, tmp_path):  # noqa: F811
    import dataclasses
    import math

    from nodepool.quota import QuotaLedger, Resources
    h = harness()
    h.wait_available()
    spec = dataclasses.replace(h.spec(), tenant_name="tenant-one")
    handle = h.provider.start_build(spec)
    assert h.finish_builds([handle])[handle].state is BuildState.READY
    h.provider.stop(wait=5)
    # A restart: a new ledger and provider adopt the server from nova's list.
    limits = Resources(instances=5, cores=math.inf, ram=math.inf, volumes=math.inf,
                       volume_gb=math.inf)
    ledger = QuotaLedger(tenant_limits={"tenant-one": limits})
    (tmp_path / "again").mkdir()
    again = Harness(h.cloud, str(tmp_path / "again"), provider_config(), ledger=ledger)
    try:
        def tenant_instances():
            return ledger.describe()["tenants"]["tenant-one"]["instances"]["used"]

        wait_for(lambda: tenant_instances() == 1, timeout=20,
                 what="the adopted server to count for tenant-one")
    finally:
        again.stop()


def test_rotated_credentials_leave_no_old_connections_behind(harness, tmp_path):  # noqa: F811
    from nodepool.config import load_config
    from nodepool.driver import registry
    h = harness()
    h.wait_available()
    h.provider.connection.retired_close_after = 0.5   # the gate's deadline, shortened
    for n in range(3):   # three rotations, each a new connection
        before = h.provider.cloud
        clouds = h.cloud.write_clouds_yaml(tmp_path / f"clouds{n}.yaml", api_timeout=7 + n)
        config, _ = load_config(str(tmp_path / "nodepool.yaml"), clouds,
                                drivers=registry.drivers())
        h.provider.update_config(config.providers["p1"])
        wait_for(lambda before=before: h.provider.cloud is not before, timeout=20,
                 what="a new connection")
    wait_for(lambda: not h.provider.connection.retired, timeout=10,
             what="the replaced connections to be closed")
    (handle,) = h.start(1)
    assert h.finish_builds([handle])[handle].state is BuildState.READY


def _down_cell_lists(h) -> int:
    return h.cloud.counters()["faults"].get("down_cell", 0)


def _freed_keys(h) -> list:
    """The ledger keys whose quota the provider frees from now on."""
    freed: list = []
    real = h.ledger.server_gone

    def server_gone(key):
        freed.append(key)
        return real(key)

    h.ledger.server_gone = server_gone
    return freed


def _ready_node_and_a_booting_one(h):
    """Two servers handed over (nothing follows them but the ledger) and a
    build still booting."""
    handles = h.start(2)
    for handle, st in h.finish_builds(handles).items():
        assert st.state is BuildState.READY, st.reason
        h.provider.forget_build(handle)
    h.cloud.set_server_behaviour(boot_seconds=3)
    (booting,) = h.start(1)
    wait_for(lambda: h.provider.poll_build(booting).info.external_id, timeout=20,
             what="the third server to exist")
    return booting


def test_a_down_cell_frees_no_quota_and_fails_no_build(harness):  # noqa: F811
    h = harness(limited(boot_seconds=0.2))
    h.wait_available()
    booting = _ready_node_and_a_booting_one(h)
    assert len(h.ledger.keys("p1")) == 3
    freed = _freed_keys(h)
    h.cloud.set_faults(down_cell_share=1.0)   # every server's cell is down
    start = _down_cell_lists(h)
    wait_for(lambda: _down_cell_lists(h) >= start + 3, timeout=20,
             what="three lists with the cell down")
    # Listed as partial records: still there, still counted, still building.
    assert len(h.ledger.keys("p1")) == 3 and freed == []
    assert h.provider.poll_build(booting).state is BuildState.BUILDING
    h.cloud.set_faults(down_cell_share=0.0)
    assert h.finish_builds([booting])[booting].state is BuildState.READY
    assert len(h.ledger.keys("p1")) == 3


def test_one_list_missing_servers_is_not_proof_that_they_are_gone(harness):  # noqa: F811
    h = harness(limited(boot_seconds=0.2))
    h.wait_available()
    booting = _ready_node_and_a_booting_one(h)
    server = h.provider.poll_build(booting).info.external_id
    keys = set(h.ledger.keys("p1"))
    freed = _freed_keys(h)
    # A nova without microversion 2.69 leaves a down cell's servers out.
    h.provider.cloud.server_list_microversion = None
    h.cloud.set_faults(down_cell_share=1.0, down_cell_lists=1)
    wait_for(lambda: _down_cell_lists(h) == 1, timeout=20, what="one list with the cell down")
    seen = h.provider.servers.refreshes
    wait_for(lambda: h.provider.servers.refreshes >= seen + 2, timeout=20,
             what="two more lists")
    # Nothing was freed, failed or retried.
    assert freed == [] and set(h.ledger.keys("p1")) == keys
    done = h.finish_builds([booting])[booting]
    assert done.state is BuildState.READY and done.info.external_id == server
    assert set(h.ledger.keys("p1")) == keys and len(h.cloud.servers()) == 3


def test_a_server_whose_delete_we_sent_is_gone_with_the_first_list_that_misses_it(
        harness):  # noqa: F811
    """The second look is for servers that may still exist.  One whose
    DELETE nova accepted from us has gone as expected: a second list would
    keep its quota (and the retry of an ERROR boot) waiting a list more."""
    h = harness(limited(boot_seconds=0.2))
    h.wait_available()
    (handle,) = h.start(1)
    st = h.finish_builds([handle])[handle]
    assert st.state is BuildState.READY, st.reason
    h.provider.forget_build(handle)
    server = st.info.external_id
    # Gone at once: no list sees it being deleted.
    h.cloud.set_server_behaviour(delete_seconds=0)
    deleting = h.delete(handle, server, awaited=True)
    kept_unconfirmed = False
    deadline = time.monotonic() + 30
    while h.provider.poll_delete(deleting).state is not DeleteState.DONE:
        kept_unconfirmed |= server in h.provider.servers.snapshot.unconfirmed
        assert time.monotonic() < deadline, h.provider.status()["deletes"]
        time.sleep(0.02)
    assert not kept_unconfirmed


def test_a_server_missing_from_two_lists_is_gone():
    from nodepool.driver.gate import ApiGate
    from nodepool.driver.openstack.servers import is_deleting, is_partial
    from nodepool.driver.list_cache import ListCache
    lists = [[{"id": "a", "status": "ACTIVE", "metadata": {"k": "v"}},
              {"id": "b", "status": "ACTIVE", "metadata": {}},
              {"id": "c", "status": "ACTIVE", "OS-EXT-STS:task_state": "deleting"}],
             [{"id": "a", "status": "UNKNOWN"}],         # b, c missing, a partial
             [{"id": "a", "status": "ACTIVE", "metadata": {"k": "v"}}],   # b missing again
             []]
    now = [1000.0]
    gate = ApiGate("p", deadline=5, clock=lambda: now[0])
    cache = ListCache(gate, lambda: lists.pop(0), interval=1.0, clock=lambda: now[0],
                      confirm_gone=lambda s: not is_deleting(s),
                      is_partial=is_partial)
    snapshots = []
    try:
        while lists:
            cache.want_fresh()
            cache.tick()
            if cache._call is not None:
                cache._call.wait(5)
            now[0] += 1.1
            if cache.tick():
                snapshots.append(cache.snapshot)
    finally:
        gate.shutdown()
    first, second, third, fourth = snapshots
    assert set(first.items) == {"a", "b", "c"}
    # b is kept as last seen (c was being deleted: gone as expected); a
    # keeps its metadata though its cell said little.
    assert set(second.items) == {"a", "b"} and second.unconfirmed == {"b"}
    assert second.items["a"]["metadata"] == {"k": "v"}
    assert second.items["a"]["status"] == "UNKNOWN"
    assert set(third.items) == {"a"} and not third.unconfirmed
    assert set(fourth.items) == {"a"} and fourth.unconfirmed == {"a"}
