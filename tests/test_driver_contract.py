"""The provider contract, checked the same way against every registered driver.

Each driver brings a setup below (``SETUPS``, keyed by its ``driver:``
value) that writes a nodepool.yaml with one provider ``p1``, pool ``main``
and label ``small``, plus whatever the driver serves nodes from (the
fakecloud for OpenStack, a listening socket for a static host).  The checks
only use what the launcher, stats and the status API use:
``nodepool.driver.base.LaunchProvider``.  A driver
registered without a setup fails ``test_every_registered_driver_is_checked``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Callable

import pytest
import yaml

from nodepool.config import load_config
from nodepool.driver import registry
from nodepool.driver.base import LaunchProvider, ProviderMetrics
from nodepool.quota import QuotaLedger
from nodepool.requests.builder import (BuildSpec, BuildState, Capacity, DeleteSpec,
                                       DeleteState)
from tests.fixtures.fakecloud import wait_for

pytestmark = pytest.mark.timeout(90)


def _openstack(request: pytest.FixtureRequest, tmp_path) -> tuple[dict, str | None]:
    cloud = request.getfixturevalue("make_fakecloud")()
    clouds = cloud.write_clouds_yaml(os.path.join(tmp_path, "clouds.yaml"), api_timeout=5)
    prov = {"name": "p1", "cloud": "fakecloud", "rate": 0.01,
            "cloud-images": [{"name": "img", "image-name": "cirros"}],
            "pools": [{"name": "main", "max-servers": 5, "host-key-checking": False,
                       "auto-floating-ip": False,
                       "labels": [{"name": "small", "cloud-image": "img",
                                   "flavor-name": "m1.small"}]}]}
    return prov, clouds


def _static(request: pytest.FixtureRequest, tmp_path) -> tuple[dict, str | None]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # the kernel completes the handshakes; nothing need accept
    request.addfinalizer(sock.close)
    prov = {"name": "p1", "pools": [{"name": "main", "nodes": [
        {"name": "127.0.0.1", "labels": ["small"], "connection-port": sock.getsockname()[1],
         "host-key-checking": False, "timeout": 2}]}]}
    return prov, None


# driver name -> setup(request, tmp_path) -> (provider entry, clouds.yaml or None)
SETUPS: dict[str, Callable[[pytest.FixtureRequest, Any], tuple[dict, str | None]]] = {
    "openstack": _openstack,
    "static": _static,
}


def test_every_registered_driver_is_checked():
    assert set(registry.drivers()) == set(SETUPS)


@pytest.fixture(params=sorted(SETUPS))
def served(request, tmp_path):
    """(driver, provider config, started provider, ledger)."""
    name = request.param
    entry, clouds = SETUPS[name](request, tmp_path)
    entry = dict(entry, driver=name)
    path = os.path.join(tmp_path, "nodepool.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"zookeeper-servers": [{"host": "127.0.0.1"}],
                        "labels": [{"name": "small"}], "providers": [entry]}, f)
    config, _ = load_config(path, clouds, drivers=registry.drivers())
    provider_cfg = config.providers["p1"]
    ledger = QuotaLedger()
    provider = registry.provider_class(provider_cfg)(provider_cfg, ledger,
                                                     server_list_interval=0.2)
    provider.start()
    try:
        yield registry.get(name), provider_cfg, provider, ledger
    finally:
        provider.stop(wait=5)


def _build(provider: LaunchProvider, node_id: str, label: str = "small"):
    handle = provider.start_build(BuildSpec(node_id=node_id, label=label,
                                            provider_name="p1", pool_name="main"))
    return handle, wait_for(
        lambda: (st := provider.poll_build(handle)).state is not BuildState.BUILDING and st,
        timeout=30, what=f"build of {node_id} to finish")


def test_config_is_the_drivers_model_and_the_provider_its_class(served):
    driver, provider_cfg, provider, _ = served
    assert isinstance(provider_cfg, driver.model)
    assert provider_cfg.driver == driver.name
    assert isinstance(provider, driver.load_provider_class())
    assert isinstance(provider, LaunchProvider)
    assert provider.name == "p1"
    assert provider_cfg.pool_priority(provider_cfg.pools["main"]) == 100


def test_loop_status_and_metrics(served):
    _, _, provider, _ = served
    age = wait_for(lambda: provider.tick_age() is not None, timeout=10,
                   what="a first pass of the provider loop")
    assert age
    status = provider.status()
    json.dumps(status)  # the status API serves it as it is
    assert status["name"] == "p1"
    assert isinstance(status["builds"], list)
    metrics = provider.metrics()
    assert isinstance(metrics, ProviderMetrics)
    assert metrics.quota_errors == 0
    assert all(isinstance(v, int) for v in metrics.leaks_deleted.values())


def test_unknown_label_never_fits(served):
    _, _, provider, _ = served
    assert provider.capacity(["no-such-label"], pool="main") is Capacity.NEVER


def test_a_node_is_served_then_deleted(served):
    """Built to READY (a cloud), or offered as a standing node (static
    hosts); either way it has an address, and its delete completes."""
    _, provider_cfg, provider, _ = served
    standing = getattr(provider, "standing_nodes", None)
    if callable(standing):
        slots = wait_for(lambda: standing(), timeout=15, what="a standing node")
        assert [s.labels for s in slots] == [("small",)]
        info = slots[0].info
        assert provider.capacity(["small"], pool="main") is Capacity.WAIT
    else:
        wait_for(lambda: provider.capacity(["small"], pool="main") is Capacity.AVAILABLE,
                 timeout=15, what="capacity AVAILABLE")
        handle, status = _build(provider, "0000000001")
        assert status.state is BuildState.READY, status.reason
        # A finished build answers the same until it is forgotten.
        assert provider.poll_build(handle).state is BuildState.READY
        provider.forget_build(handle)
        info = status.info
    assert info.external_id and info.interface_ip
    # A reload with the same section changes nothing in flight.
    provider.update_config(provider_cfg)
    delete = provider.start_delete(DeleteSpec(
        node_id="0000000001", provider_name="p1", pool_name="main", labels=("small",),
        external_id=info.external_id, state="used"))
    deadline = time.monotonic() + 30
    while provider.poll_delete(delete).state is not DeleteState.DONE:
        assert time.monotonic() < deadline, "delete not done within 30s"
        time.sleep(0.05)
    assert provider.status()["builds"] == []
