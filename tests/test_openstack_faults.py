"""OpenStackProvider's side of the fault handling: a finished build's result
stays until the handler has recorded it, a build whose node vanished is
cancelled and its server deleted, capacity is checked against the pool being
served, and a changed cloud entry makes the provider reconnect.

The simulated cloud over HTTP through the real openstacksdk; no ZooKeeper.
"""

from __future__ import annotations

import pytest

from nodepool.requests.builder import BuildState, Capacity, DeleteSpec
from tests.fixtures.fakecloud import wait_for
from tests.test_openstack_provider import (CREATE_ROUTE, Harness, harness,  # noqa: F401
                                          limited, provider_config)

pytestmark = pytest.mark.timeout(90)


def test_finished_build_answers_until_forgotten(harness):
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


def test_cancelled_build_deletes_its_server_without_a_poll(harness):
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


def test_capacity_is_that_of_the_pool_being_served(harness):
    config = provider_config(pool={"max-servers": 1})
    pools = config["providers"][0]["pools"]
    pools.append(dict(pools[0], name="second", **{"max-servers": 5}))
    h = harness(config=config)
    h.wait_available()
    spec = h.spec()
    h.provider.start_build(spec)  # pool main is now full
    assert h.provider.capacity(["small"], pool="main") is Capacity.WAIT
    assert h.provider.capacity(["small"], pool="second") is Capacity.AVAILABLE


def test_changed_cloud_entry_reconnects(harness, tmp_path):
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


def test_adopted_server_still_counts_for_its_tenant(harness, tmp_path):
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


def test_rotated_credentials_leave_no_old_connections_behind(harness, tmp_path):
    from nodepool.config import load_config
    from nodepool.driver import registry
    h = harness()
    h.wait_available()
    h.provider.retired_close_after = 0.5   # the gate's deadline, shortened
    for n in range(3):   # three rotations, each a new connection
        before = h.provider.cloud
        clouds = h.cloud.write_clouds_yaml(tmp_path / f"clouds{n}.yaml", api_timeout=7 + n)
        config, _ = load_config(str(tmp_path / "nodepool.yaml"), clouds,
                                drivers=registry.drivers())
        h.provider.update_config(config.providers["p1"])
        wait_for(lambda: h.provider.cloud is not before, timeout=20, what="a new connection")
    wait_for(lambda: not h.provider._retired_clouds, timeout=10,
             what="the replaced connections to be closed")
    (handle,) = h.start(1)
    assert h.finish_builds([handle])[handle].state is BuildState.READY
