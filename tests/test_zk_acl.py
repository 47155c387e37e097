"""``zookeeper-auth``: the launcher's znodes get ACLs that let the CI's
launchers do everything, Zuul what the protocol needs and others at most
read (nodepool/zk/acls.py, doc/operations.rst "ZooKeeper ACLs").

The launcher side authenticates with a digest over the plain port; Zuul's
identity is the test server's client certificate (``x509:CN=...``), as Zuul
14 can authenticate only with TLS; the outsider connects without either.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import yaml
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE, Permissions, make_digest_acl_credential

from nodepool.config import validate
from nodepool.config.zookeeper import (ZooKeeperAuth, ZooKeeperTLS, parse_hosts,
                                       parse_identity)
from nodepool.driver import registry
from nodepool.launcher.launcher import Launcher
from nodepool.quota import Resources
from nodepool.requests.reaper import NodeReaper
from nodepool.zk import acls, paths
from nodepool.zk.client import ZooKeeperSettings, connect, disconnect, make_client
from nodepool.zk.records import Node
from nodepool.zk.project_book import ProjectBook
from nodepool.zk.store import ZooKeeperStore
from tests.conftest import TEST_ROOT
from tests.fixtures.fakecloud import wait_for
from tests.fixtures.zk import FakeBuilder, drive, start_pool, zuul_request
from tests.test_cli_zk import nodepool, write_config
from tests.test_config import EXAMPLE_CLOUDS, MINIMAL, errors, run
from tests.test_launcher import write_config as launcher_config

ZUUL_DN = "CN=nodepool-test-client"    # tools/zookeeper.py's client certificate
AUTH = ZooKeeperAuth(username="np-launcher", password="s3cret",
                     zuul=(parse_identity(f"x509:{ZUUL_DN}"),))
R, W, C, D, A = (Permissions.READ, Permissions.WRITE, Permissions.CREATE,
                 Permissions.DELETE, Permissions.ADMIN)


# -- configuration ------------------------------------------------------------------------

def test_zookeeper_auth_loads_into_the_settings(tmp_path):
    data = copy.deepcopy(MINIMAL)
    data["zookeeper-auth"] = {"username": "np", "password": "pw",
                              "zuul": [f"x509:{ZUUL_DN}"],
                              "launchers": ["x509:CN=launcher-2,O=Example"],
                              "world-readable": False}
    config, problems, _ = run(tmp_path, data)
    assert errors(problems) == []
    auth = config.zookeeper.auth
    assert auth.digest == "np:pw" and not auth.world_readable
    assert [str(i) for i in auth.zuul] == [f"x509:{ZUUL_DN}"]
    assert [(i.scheme, i.id) for i in auth.launchers] == [("x509", "CN=launcher-2,O=Example")]
    assert "pw" not in repr(auth)
    # Absent: no auth, as before.
    config, problems, _ = run(tmp_path, MINIMAL)
    assert config.zookeeper.auth is None


def test_zookeeper_auth_may_come_from_the_secure_file(tmp_path):
    secure = tmp_path / "secure.conf"
    secure.write_text(yaml.safe_dump({"zookeeper-auth": {
        "username": "np", "password": "from-secure", "zuul": [f"x509:{ZUUL_DN}"]}}))
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    config, problems = validate(str(path), EXAMPLE_CLOUDS, str(secure),
                                drivers=registry.drivers())
    assert errors(problems) == []
    assert config.zookeeper.auth.password == "from-secure"


@pytest.mark.parametrize("auth, where, words", [
    ({"username": "np", "zuul": ["x509:CN=z"]},
     "zookeeper-auth.password", ["is required with username", "TLS client certificate"]),
    ({"password": "pw", "zuul": ["x509:CN=z"]},
     "zookeeper-auth.username", ["is required with password"]),
    ({"zuul": ["x509:CN=z"]},
     "zookeeper-auth", ["no identity", "username and password", "zookeeper-tls"]),
    ({"username": "np", "password": "pw"},
     "zookeeper-auth.zuul", ["is required", "x509:CN=zuul.example.org"]),
    ({"username": "np", "password": "pw", "zuul": []},
     "zookeeper-auth.zuul", ["is required"]),
    ({"username": "np", "password": "pw", "zuul": ["zuul"]},
     "zookeeper-auth.zuul[0]", ["not <scheme>:<id>", "x509:CN="]),
    ({"username": "np", "password": "pw", "zuul": ["world:anyone"]},
     "zookeeper-auth.zuul[0]", ["scheme 'world'", "x509, digest"]),
    ({"username": "np", "password": "pw", "zuul": ["x509:CN=z"], "launchers": ["digest:np"]},
     "zookeeper-auth.launchers[0]", ["base64 SHA-1"]),
    ({"username": "n:p", "password": "pw", "zuul": ["x509:CN=z"]},
     "zookeeper-auth.username", ["cannot contain ':'"]),
    ({"username": "np", "password": "pw", "zuul": ["x509:CN=z"], "world-readable": "yes"},
     "zookeeper-auth.world-readable", ["expected true or false"]),
    ({"username": "np", "password": "pw", "zuul": ["x509:CN=z"], "acl": "open"},
     "zookeeper-auth.acl", [""]),
    ("digest", "zookeeper-auth", ["expected a mapping"]),
])
def test_bad_zookeeper_auth_names_file_key_and_fix(tmp_path, auth, where, words):
    data = copy.deepcopy(MINIMAL)
    data["zookeeper-auth"] = auth
    config, problems, path = run(tmp_path, data)
    assert config is None
    found = [e for e in errors(problems) if f"{path}: {where}:" in e]
    assert found, errors(problems)
    for w in words:
        assert w in found[0], found[0]


# -- the policy ---------------------------------------------------------------------------

def test_zuul_gets_what_the_protocol_needs_and_no_more():
    perms = acls.zuul_permissions
    assert perms("/nodepool/requests") == R | C | D
    assert perms("/nodepool/requests/200-0000000001") == R | W
    assert perms("/nodepool/requests-lock") == R | C
    assert perms("/nodepool/requests-lock/200-0000000001") == R | C | D
    assert perms("/nodepool/requests-lock/200-0000000001/ab__lock__0000000000") == R
    assert perms("/nodepool/nodes") == R
    assert perms("/nodepool/nodes/0000000001") == R | W | C
    assert perms("/nodepool/nodes/0000000001/lock") == R | C | D
    assert perms("/nodepool/nodes/0000000001/lock/ab__lock__0000000000") == R
    for path in ("/nodepool", "/nodepool/components/pool", "/nodepool/components/pool/h01",
                 "/nodepool/shared-quota", "/nodepool/shared-quota/p/claims/c"):
        assert perms(path) == R, path
    # The chroot (Zuul creates /zuul next to /nodepool), also when it is
    # named /nodepool: connect() creates it with an "outside" client.
    assert perms("/ci") == R | C
    settings = ZooKeeperSettings(parse_hosts("127.0.0.1:2181/nodepool"), auth=AUTH)
    bare = make_client(settings.with_chroot(""), outside=True)
    assert [(a.id.scheme, a.perms) for a in bare.acl_of("/nodepool")] == \
        [("auth", Permissions.ALL), ("x509", R | C), ("world", R)]
    assert [(a.id.scheme, a.perms) for a in make_client(settings).acl_of("/nodepool")] == \
        [("auth", Permissions.ALL), ("x509", R), ("world", R)]
    # A sequential create names its parent with a trailing slash.
    acl = acls.acl_for(AUTH, "/nodepool/nodes/")
    assert [(a.id.scheme, a.perms) for a in acl] == [("auth", Permissions.ALL),
                                                     ("x509", R | W | C), ("world", R)]


# -- against the real ZooKeeper -----------------------------------------------------------

@pytest.fixture
def acl_settings(zk_server, zk_settings):
    """zk_settings with ``zookeeper-auth``; the chroot itself is created by
    the launcher's client (its parent exists, open, as on a shared server)."""
    anon = connect(zk_settings.with_chroot(""), ensure_chroot=False)
    anon.ensure_path(TEST_ROOT)
    disconnect(anon)
    settings = dataclasses.replace(zk_settings, auth=AUTH)
    disconnect(connect(settings))   # creates the chroot
    yield settings
    # Only an authenticated client may empty the chroot.
    bare = connect(settings.with_chroot(""), ensure_chroot=False)
    try:
        bare.delete(settings.chroot, recursive=True)
    finally:
        disconnect(bare)


@pytest.fixture
def outsider(acl_settings, zk_settings):
    """No credentials, no certificate."""
    client = connect(zk_settings, ensure_chroot=False)
    yield client
    disconnect(client)


@pytest.fixture
def zuul_tls(acl_settings, zk_server):
    """A plain kazoo client with Zuul's identity: the test server's client
    certificate over TLS."""
    if "NODEPOOL_ZK_TLS_HOSTS" not in zk_server:
        pytest.skip("no TLS ZooKeeper")
    tls = ZooKeeperTLS(ca=zk_server["NODEPOOL_ZK_TLS_CA"], cert=zk_server["NODEPOOL_ZK_TLS_CERT"],
                       key=zk_server["NODEPOOL_ZK_TLS_KEY"])
    settings = ZooKeeperSettings(parse_hosts(zk_server["NODEPOOL_ZK_TLS_HOSTS"]), tls=tls)
    client = connect(settings.with_chroot(acl_settings.chroot), ensure_chroot=False)
    yield client
    disconnect(client)


def _acl(client, path):
    return sorted((a.id.scheme, a.id.id, a.perms) for a in client.get_acls(path)[0])


def _refused(call, *args, **kwargs):
    with pytest.raises(NoAuthError):
        call(*args, **kwargs)
    return True


def _launcher_id(settings):
    """The digest id ZooKeeper stores for the launcher's credentials."""
    return ("digest", make_digest_acl_credential(settings.auth.username,
                                                 settings.auth.password))


def test_launcher_znodes_get_acls_and_outsiders_cannot_write(acl_settings, zk_settings,
                                                             outsider):
    client = connect(acl_settings)
    try:
        # A root created open (by Zuul, or before zookeeper-auth was set).
        early = KazooClient(acl_settings.hosts, auth_data=[("digest", AUTH.digest)])
        early.start(10)
        early.ensure_path(paths.REQUEST_ROOT)
        assert early.get_acls(paths.REQUEST_ROOT)[0] == OPEN_ACL_UNSAFE
        early.stop()
        early.close()
        store = ZooKeeperStore(client)
        store.ensure_roots()
        handler = start_pool(store, labels=("small",))
        node = store.create_node(Node(state="building", type=["small"], provider="cloud",
                                      pool="main"))
        node_lock = store.try_lock_node(node.id)
        minready = store.create_min_ready_request("small")
        request_lock = store.try_lock_request(minready.id)
        book = ProjectBook(client, "proj", {"project": "proj"}, "launcher-1", lambda k: None)
        book.start()
        assert book.reserve("a/1", Resources(1, 1, 1), lambda names, members: []) == []
        claim = client.get_children(book.claims_path)[0]

        me = _launcher_id(acl_settings)
        zuul = ("x509", ZUUL_DN)

        def expect(path, zuul_perms):
            assert _acl(client, path) == sorted([(*me, Permissions.ALL), (*zuul, zuul_perms),
                                                 ("world", "anyone", R)]), path

        expect(paths.ROOT, R)
        expect(paths.REQUEST_ROOT, R | C | D)      # protected although it existed
        expect(paths.request_path(minready.id), R | W)
        expect(paths.REQUEST_LOCK_ROOT, R | C)
        expect(paths.request_lock_path(minready.id), R | C | D)
        expect(paths.NODE_ROOT, R)
        expect(paths.node_path(node.id), R | W | C)
        expect(paths.node_lock_path(node.id), R | C | D)
        expect(node_lock.path + "/" + client.get_children(node_lock.path)[0], R)
        expect(handler.registration.path, R)
        expect(f"{book.claims_path}/{claim}", R)
        expect(book.members_path, R)
        # The chroot, created by the launcher's bare client.
        bare = connect(acl_settings.with_chroot(""), ensure_chroot=False)
        assert sorted((a.id.scheme, a.perms) for a in bare.get_acls(acl_settings.chroot)[0]) \
            == [("digest", Permissions.ALL), ("world", R), ("x509", R | C)]
        disconnect(bare)

        # The outsider reads ...
        assert json.loads(outsider.get(paths.node_path(node.id))[0])["state"] == "building"
        assert outsider.get_children(paths.REQUEST_ROOT) == [minready.id]
        # ... but writes nothing: requests, nodes, locks, registrations, the book.
        assert _refused(outsider.create, paths.REQUEST_ROOT + "/100-", b"{}", sequence=True)
        assert _refused(outsider.set, paths.request_path(minready.id), b"{}")
        assert _refused(outsider.delete, paths.request_path(minready.id))
        assert _refused(outsider.create, paths.request_lock_path(minready.id) + "/x")
        assert _refused(outsider.create, paths.NODE_ROOT + "/", b"{}", sequence=True)
        assert _refused(outsider.set, paths.node_path(node.id), b"{}")
        assert _refused(outsider.delete, paths.node_path(node.id), recursive=True)
        assert _refused(outsider.create, paths.node_lock_path(node.id) + "/x", ephemeral=True)
        assert _refused(outsider.create, paths.POOL_COMPONENT_ROOT + "/evil", b"{}")
        assert _refused(outsider.set, handler.registration.path, b"{}")
        assert _refused(outsider.create, f"{book.claims_path}/evil", ephemeral=True)
        assert _refused(outsider.set, book.claims_path, b"")
        assert _refused(outsider.delete, f"{book.claims_path}/{claim}")
        assert _refused(outsider.create, paths.SHARED_QUOTA_ROOT + "/other")
        assert _refused(outsider.set_acls, paths.NODE_ROOT, OPEN_ACL_UNSAFE)
        node_lock.release()
        request_lock.release()
        book.stop()
        handler.registration.unregister()
    finally:
        disconnect(client)


def test_not_world_readable_hides_everything_from_outsiders(acl_settings, outsider):
    settings = dataclasses.replace(
        acl_settings, auth=dataclasses.replace(AUTH, world_readable=False))
    client = connect(settings)
    try:
        store = ZooKeeperStore(client)
        store.ensure_roots()
        node = store.create_node(Node(state="building", type=["small"]))
        assert _refused(outsider.get, paths.node_path(node.id))
        assert _refused(outsider.get_children, paths.NODE_ROOT)
        assert store.get_node(node.id).state == "building"
    finally:
        disconnect(client)


def test_without_zookeeper_auth_znodes_stay_open(zk):
    store = ZooKeeperStore(zk)
    store.ensure_roots()
    assert type(zk) is KazooClient
    node = store.create_node(Node(state="building", type=["small"]))
    lock = store.try_lock_node(node.id)
    for path in (paths.ROOT, paths.NODE_ROOT, paths.node_path(node.id),
                 paths.node_lock_path(node.id)):
        assert zk.get_acls(path)[0] == OPEN_ACL_UNSAFE, path
    lock.release()


def test_a_launcher_protects_zuuls_requests_it_locks(acl_settings, outsider, zuul_tls):
    client = connect(acl_settings)
    try:
        store = ZooKeeperStore(client)
        store.ensure_roots()
        # Zuul 14 creates its requests with the open ACL.
        rid = zuul_request(zuul_tls, ["small"])
        assert zuul_tls.get_acls(paths.request_path(rid))[0] == OPEN_ACL_UNSAFE
        outsider.set(paths.request_path(rid), zuul_tls.get(paths.request_path(rid))[0])
        lock = store.try_lock_request(rid)
        assert lock is not None
        assert _refused(outsider.set, paths.request_path(rid), b"{}")
        assert ("x509", ZUUL_DN, R | W) in _acl(client, paths.request_path(rid))
        # Zuul still revises it (relative priority) and deletes it.
        data, stat = zuul_tls.get(paths.request_path(rid))
        zuul_tls.set(paths.request_path(rid), data, version=stat.version)
        lock.release()
        zuul_tls.delete(paths.request_path(rid))
    finally:
        disconnect(client)


# -- Zuul's own client --------------------------------------------------------------------

def _zuul_tls_side(zk_server, chroot):
    from tests.test_request_zuul_e2e import HAVE_ZUUL
    if not HAVE_ZUUL:
        pytest.skip("zuul is not importable")
    if "NODEPOOL_ZK_TLS_HOSTS" not in zk_server:
        pytest.skip("no TLS ZooKeeper")
    from tests.test_request_zuul_e2e import ZuulSide
    hosts = ZooKeeperSettings(parse_hosts(zk_server["NODEPOOL_ZK_TLS_HOSTS"])
                              ).with_chroot(chroot).hosts
    return ZuulSide(hosts, tls_cert=zk_server["NODEPOOL_ZK_TLS_CERT"],
                    tls_key=zk_server["NODEPOOL_ZK_TLS_KEY"],
                    tls_ca=zk_server["NODEPOOL_ZK_TLS_CA"])


def test_zuul_with_its_certificate_still_gets_nodes(acl_settings, zk_server, outsider,
                                                    zuul_tracing):
    client = connect(acl_settings)
    side = None
    try:
        store = ZooKeeperStore(client)
        store.ensure_roots()
        store.start_caches()
        assert store.wait_synced(15)
        builder = FakeBuilder()
        handler = start_pool(store, labels=("small",), builder=builder)
        reaper = NodeReaper(store, {"cloud": builder})
        side = _zuul_tls_side(zk_server, acl_settings.chroot)
        import zuul.model
        zreq = side.submit(["small"])
        drive(store, handler, until=lambda: side.completed(zreq.id),
              message="Zuul's completion callback")
        fetched = side.nodepool.getNodeRequest(zreq.id)
        assert fetched.state == "fulfilled"
        # The launcher protected Zuul's request when it locked it.
        assert _refused(outsider.set, paths.request_path(zreq.id), b"{}")
        node = zuul.model.Node(["controller"], "small")
        side.nodepool.updateNode(node, fetched.nodes[0])
        side.nodepool.lockNode(node, timeout=30)
        assert side.nodepool.deleteNodeRequest(fetched.id)
        node.state = "in-use"
        side.nodepool.storeNode(node)
        assert store.get_node(node.id).state == "in-use"
        assert _refused(outsider.set, paths.node_path(node.id), b"{}")
        # What Zuul must not do: create or delete nodes, register a pool.
        assert _refused(side.client.client.create, paths.NODE_ROOT + "/", b"{}",
                        sequence=True)
        assert _refused(side.client.client.delete, paths.node_path(node.id),
                        recursive=True)
        assert _refused(side.client.client.create, paths.POOL_COMPONENT_ROOT + "/z", b"{}")
        node.state = "used"
        side.nodepool.storeNode(node)
        side.nodepool.unlockNode(node)
        drive(store, reaper, until=lambda: store.list_nodes() == [],
              message="the used node to be reaped")
        handler.registration.unregister()
        store.stop_caches()
    finally:
        if side is not None:
            side.close()
        disconnect(client)


@pytest.fixture
def zuul_tracing():
    from tests.test_request_zuul_e2e import HAVE_ZUUL
    if HAVE_ZUUL:
        import configparser

        import tests.test_request_zuul_e2e as e2e
        if not e2e._tracing_installed:
            e2e.tracing.Tracing(configparser.ConfigParser())
            e2e._tracing_installed = True


def test_the_launcher_daemon_with_zookeeper_auth_serves_zuul(
        tmp_path, make_fakecloud, acl_settings, zk_server, outsider, zuul_tracing):
    """The real launcher from nodepool.yaml, the fakecloud over HTTP, Zuul's
    own client with its certificate."""
    cloud = make_fakecloud()
    config = launcher_config(tmp_path, cloud, acl_settings, extra={"zookeeper-auth": {
        "username": AUTH.username, "password": AUTH.password, "zuul": [f"x509:{ZUUL_DN}"]}})
    assert config.zookeeper.auth is not None
    launcher = Launcher(config, provider_options={"server_list_interval": 0.5,
                                                  "leak_interval": 2.0})
    launcher.start()
    side = None
    try:
        side = _zuul_tls_side(zk_server, acl_settings.chroot)
        import zuul.model
        zreq = side.submit(["small"])
        wait_for(lambda: side.completed(zreq.id), 30, what="Zuul's completion callback")
        fetched = side.nodepool.getNodeRequest(zreq.id)
        assert fetched.state == "fulfilled"
        node = zuul.model.Node(["controller"], "small")
        side.nodepool.updateNode(node, fetched.nodes[0])
        side.nodepool.lockNode(node, timeout=30)
        assert side.nodepool.deleteNodeRequest(fetched.id)

        # (ZooKeeper shows digest ids only to those with ADMIN rights.)
        me = _launcher_id(acl_settings)
        assert _acl(launcher.client, paths.node_path(node.id)) == sorted(
            [(*me, Permissions.ALL), ("x509", ZUUL_DN, R | W | C), ("world", "anyone", R)])
        [pool] = outsider.get_children(paths.POOL_COMPONENT_ROOT)
        assert _acl(launcher.client, f"{paths.POOL_COMPONENT_ROOT}/{pool}") == sorted(
            [(*me, Permissions.ALL), ("x509", ZUUL_DN, R), ("world", "anyone", R)])
        assert _refused(outsider.set, paths.node_path(node.id), b"{}")
        assert _refused(outsider.create, paths.REQUEST_ROOT + "/100-", b"{}", sequence=True)

        node.state = "in-use"
        side.nodepool.storeNode(node)
        node.state = "used"
        side.nodepool.storeNode(node)
        side.nodepool.unlockNode(node)
        wait_for(lambda: not outsider.get_children(paths.NODE_ROOT), 30,
                 what="the used node deleted")
        wait_for(lambda: not cloud.servers(), 30, what="its server gone")
    finally:
        if side is not None:
            side.close()
        launcher.stop(wait=10)


# -- the CLI ------------------------------------------------------------------------------

def test_cli_uses_the_same_auth(tmp_path, acl_settings):
    client = connect(acl_settings)
    try:
        store = ZooKeeperStore(client)
        store.ensure_roots()
        node = store.create_node(Node(state="ready", type=["small"], provider="p1",
                                      pool="main"))
    finally:
        disconnect(client)
    plain = write_config(tmp_path, acl_settings.servers, acl_settings.chroot)
    out = nodepool(plain, "hold", node.id)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "NoAuth" in out.stderr and "zookeeper-auth" in out.stderr, out.stderr

    data = yaml.safe_load(open(plain))
    data["zookeeper-auth"] = {"username": AUTH.username, "password": AUTH.password,
                              "zuul": [f"x509:{ZUUL_DN}"]}
    with open(plain, "w") as f:
        yaml.safe_dump(data, f)
    out = nodepool(plain, "hold", node.id)
    assert out.returncode == 0, out.stderr
    out = nodepool(plain, "list", "--json")
    assert out.returncode == 0, out.stderr
    assert [n["state"] for n in json.loads(out.stdout)] == ["hold"]
