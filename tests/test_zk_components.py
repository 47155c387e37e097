"""Pool and launcher registration against the real server."""

from __future__ import annotations

import json
import logging
import re

from nodepool.zk.components import (make_pool_id, read_components,
                                    register_launcher, register_pool)
from nodepool.zk.records import PoolComponent
from tests.fixtures.zk import expire_session, wait_for

POOL_KEYS = {"id", "kind", "state", "name", "provider_name", "supported_labels", "priority",
             "paused", "hostname", "version", "model_api"}


def pool_component(pool_id="np1-PoolWorker.cloud-main-abc", labels=("a", "b")):
    return PoolComponent(hostname="np1.example.org", version="0.1.0", id=pool_id, name="main",
                         provider_name="cloud", supported_labels=list(labels), priority=50)


def test_make_pool_id():
    pid = make_pool_id("cloud", "main", hostname="np1.example.org")
    assert re.fullmatch(r"np1\.example\.org-PoolWorker\.cloud-main-[0-9a-f]{32}", pid)
    assert make_pool_id("cloud", "main", "h") != make_pool_id("cloud", "main", "h")


def test_pool_registration_as_upstream_writes_it(zk):
    reg = register_pool(zk, pool_component())
    assert re.fullmatch(r"/nodepool/components/pool/np1\.example\.org\d{10}", reg.path)
    data, stat = zk.get(reg.path)
    assert stat.ephemeralOwner == zk.client_id[0]
    content = json.loads(data)
    assert set(content) == POOL_KEYS
    assert content == {"id": "np1-PoolWorker.cloud-main-abc", "kind": "pool", "state": "running",
                       "name": "main", "provider_name": "cloud", "supported_labels": ["a", "b"],
                       "priority": 50, "paused": False, "hostname": "np1.example.org",
                       "version": "0.1.0", "model_api": 0}
    assert data == json.dumps(content, sort_keys=True).encode()


def test_versioned_update_of_paused(zk):
    reg = register_pool(zk, pool_component())
    reg.update(paused=True)
    data, stat = zk.get(reg.path)
    assert json.loads(data)["paused"] is True and stat.version == 1
    reg.update(paused=True)          # no change, no write
    assert zk.exists(reg.path).version == 1
    # Someone bumped the version behind our back: we still converge.
    zk.set(reg.path, data)
    reg.update(paused=False)
    assert json.loads(zk.get(reg.path)[0])["paused"] is False


def test_reregistered_after_session_expiry(zk, zk_settings, zk_connect):
    reg = register_pool(zk, pool_component())
    launcher = register_launcher(zk, hostname="np1.example.org", version="0.1.0")
    old_pool, old_launcher = reg.path, launcher.path
    observer = zk_connect()
    expire_session(zk, zk_settings)
    wait_for(lambda: reg.registrations == 2 and launcher.registrations == 2,
             message="re-registration after the session expired")
    assert reg.path != old_pool and launcher.path != old_launcher
    wait_for(lambda: not observer.exists(old_pool), message="the old registration to vanish")
    assert observer.exists(reg.path).ephemeralOwner == zk.client_id[0]
    pools = read_components(observer, "pool")
    assert [p.id for p in pools] == ["np1-PoolWorker.cloud-main-abc"]
    assert [c.hostname for c in read_components(observer, "launcher")] == ["np1.example.org"]
    # ensure_registered is idempotent now, and updates go to the new znode.
    assert reg.ensure_registered() is False
    reg.update(paused=True)
    assert json.loads(observer.get(reg.path)[0])["paused"] is True


def test_ensure_registered_recreates_a_deleted_znode(zk):
    reg = register_pool(zk, pool_component())
    zk.delete(reg.path)
    assert reg.ensure_registered() is True
    assert zk.exists(reg.path)


def test_unregister(zk):
    reg = register_pool(zk, pool_component())
    path = reg.path
    reg.unregister()
    assert not zk.exists(path)
    assert read_components(zk, "pool") == []


def test_malformed_registrations_are_skipped(zk, caplog):
    register_pool(zk, pool_component())
    zk.create("/nodepool/components/pool/bad0000000009", b"{", ephemeral=True)
    zk.create("/nodepool/components/pool/noid0000000010", b'{"hostname": "x"}', ephemeral=True)
    with caplog.at_level(logging.ERROR):
        assert [p.id for p in read_components(zk, "pool")] == ["np1-PoolWorker.cloud-main-abc"]
    assert "/nodepool/components/pool/bad0000000009" in caplog.text
    assert "/nodepool/components/pool/noid0000000010" in caplog.text
