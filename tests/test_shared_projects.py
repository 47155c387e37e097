"""Which launchers share a cloud project, and the project's leak cleaner
(doc/multiple-launchers.rst): launchers in this process, the real ZooKeeper
of the test session and the fakecloud over HTTP through openstacksdk."""

from __future__ import annotations

import pytest
import yaml

from nodepool.config import load_config
from nodepool.driver import registry
from nodepool.driver.openstack import servers as srv
from nodepool.fakecloud.clouds_yaml import dump_clouds_yaml
from nodepool.launcher.launcher import Launcher
from nodepool.quota.shared import parse_book
from nodepool.zk import paths
from nodepool.zk.store import ZooKeeperStore
from tests.fixtures.fakecloud import wait_for
from tests.test_launcher import finished, zuul_request

pytestmark = pytest.mark.timeout(120)

USERS = [{"name": "nodepool", "password": "pw"}]
TWO_PROJECTS = {"projects": [{"name": "ci", "users": USERS},
                             {"name": "ci2", "users": USERS}]}


def write_clouds(tmp_path, cloud) -> str:
    """Three entries: project ci by name and by id, project ci2 by name."""
    data = cloud.clouds_yaml("fakecloud", api_timeout=5, project="ci")
    entry = data["clouds"]["fakecloud"]
    by_id = yaml.safe_load(yaml.safe_dump(entry))
    by_id["auth"].pop("project_name")
    by_id["auth"].pop("project_domain_name")
    by_id["auth"]["project_id"] = cloud.state.find_project("ci").id
    data["clouds"]["by-id"] = by_id
    data["clouds"]["other"] = cloud.clouds_yaml("other", api_timeout=5,
                                                project="ci2")["clouds"]["other"]
    return dump_clouds_yaml(data, tmp_path / "clouds.yaml")


def config_for(tmp_path, clouds, zk_settings, *, provider="fake", cloud_entry="fakecloud",
               name="nodepool"):
    server = zk_settings.servers[0]
    data = {"zookeeper-servers": [{"host": server.host, "port": server.port,
                                   "chroot": zk_settings.chroot}],
            "labels": [{"name": "small"}],
            "providers": [{"name": provider, "cloud": cloud_entry, "rate": 0.01,
                           "cloud-images": [{"name": "img", "image-name": "cirros"}],
                           "pools": [{"name": "main", "max-servers": 10,
                                      "host-key-checking": False,
                                      "auto-floating-ip": False,
                                      "labels": [{"name": "small", "cloud-image": "img",
                                                  "flavor-name": "m1.small"}]}]}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    config, _ = load_config(str(path), clouds, drivers=registry.drivers())
    return config


@pytest.fixture
def launchers():
    started: list[Launcher] = []

    def start(config, hostname):
        launcher = Launcher(config, hostname=hostname, webapp=False,
                            provider_options={"server_list_interval": 0.3,
                                              "leak_interval": 1.0})
        launcher.start()
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        launcher.stop(wait=10)


def projects(launcher) -> dict:
    return launcher.shared.status()


def key_of(launcher, provider) -> str | None:
    return launcher.providers[provider].shared_quota.key


def test_a_project_named_by_id_or_by_name_is_one_book(tmp_path, make_fakecloud, zk_settings,
                                                     launchers):
    cloud = make_fakecloud(TWO_PROJECTS)
    clouds = write_clouds(tmp_path, cloud)
    a = launchers(config_for(tmp_path, clouds, zk_settings, name="a"), "host-a")
    b = launchers(config_for(tmp_path, clouds, zk_settings, cloud_entry="by-id", name="b"),
                  "host-b")
    wait_for(lambda: key_of(a, "fake") and key_of(b, "fake"), 30,
             what="both providers connected")
    assert key_of(a, "fake") == key_of(b, "fake")
    wait_for(lambda: len(projects(a)[key_of(a, "fake")]["launchers"]) == 2, 15,
             what="two launchers on the project")
    assert a.providers["fake"].api_share() == 2


def test_a_reload_that_moves_a_provider_moves_its_book_share_and_election(
        tmp_path, make_fakecloud, zk_settings, launchers, zk):
    cloud = make_fakecloud(TWO_PROJECTS)
    clouds = write_clouds(tmp_path, cloud)
    a = launchers(config_for(tmp_path, clouds, zk_settings, name="a"), "host-a")
    wait_for(lambda: key_of(a, "fake"), 30, what="a connected")
    wait_for(lambda: a.providers["fake"].leak_cleaner(), 15, what="a elected")
    b = launchers(config_for(tmp_path, clouds, zk_settings, name="b"), "host-b")
    old = key_of(a, "fake")
    wait_for(lambda: key_of(b, "fake") == old
             and b.providers["fake"].api_share() == 2, 30, what="b joined a's project")
    assert not b.providers["fake"].leak_cleaner()
    # a's provider now works in project ci2.
    assert a.reload(config_for(tmp_path, clouds, zk_settings, cloud_entry="other",
                               name="a2"))
    wait_for(lambda: key_of(a, "fake") not in (None, old), 30, what="a's provider moved")
    new = key_of(a, "fake")
    # b is alone on ci: the whole budget and the cleaning are its own.
    wait_for(lambda: b.providers["fake"].api_share() == 1
             and b.providers["fake"].leak_cleaner(), 15, what="b alone on ci")
    wait_for(lambda: old not in projects(a), 15, what="a left ci's book")
    assert a.providers["fake"].api_share() == 1 and a.providers["fake"].leak_cleaner()
    # a's creates are claimed in ci2's book and go to ci2.
    store = ZooKeeperStore(zk)
    b.stop(wait=10)            # only a serves the request
    req = zuul_request(store, ["small"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert done.state == "fulfilled"
    assert [s["project"] for s in cloud.servers()] == ["ci2"]
    claims = parse_book(zk.get_children(f"{paths.shared_project_path(new)}/claims"))
    assert [c.key.split("/")[0] for c in claims] == done.nodes
    assert not zk.get_children(f"{paths.shared_project_path(old)}/claims")


def test_the_cleaner_deletes_leaks_of_another_launchers_provider_name(
        tmp_path, make_fakecloud, zk_settings, launchers, fakecloud_connect):
    cloud = make_fakecloud()
    clouds = cloud.write_clouds_yaml(tmp_path / "clouds.yaml", api_timeout=5)
    east = launchers(config_for(tmp_path, clouds, zk_settings, provider="east",
                                name="east"), "host-east")
    wait_for(lambda: key_of(east, "east") and east.providers["east"].leak_cleaner(), 30,
             what="east elected")
    west = launchers(config_for(tmp_path, clouds, zk_settings, provider="west",
                                name="west"), "host-west")
    wait_for(lambda: key_of(west, "west") == key_of(east, "east")
             and west.providers["west"].api_share() == 2, 30, what="west joined")
    assert not west.providers["west"].leak_cleaner()
    other = fakecloud_connect(cloud)

    def server(name, meta):
        return other.create_server(name, image="cirros", flavor="m1.small", wait=False,
                                   meta=meta).id

    leaked = server("leaked", {srv.META_PROVIDER: "west", srv.META_NODE: "0000099001",
                               srv.META_POOL: "main", srv.META_ATTEMPT: "1"})
    # Not a node's server: another tool's, whatever its metadata says.
    foreign = server("foreign", {srv.META_PROVIDER: "west"})
    # A node's server of a provider name no launcher of this ZooKeeper uses
    # (another installation on the same project): not ours to judge.
    elsewhere = server("elsewhere", {srv.META_PROVIDER: "staging", srv.META_NODE: "0000099002",
                                     srv.META_POOL: "main", srv.META_ATTEMPT: "1"})
    wait_for(lambda: leaked not in {s["id"] for s in cloud.servers()}, 30,
             what="west's leaked server deleted by the cleaner")
    assert east.providers["east"].counters["leaks_deleted"] == 1
    assert west.providers["west"].counters["leaks_deleted"] == 0
    # West gone for good, its name is still the project's: its leaks too.
    west.stop(wait=10)
    later = server("later", {srv.META_PROVIDER: "west", srv.META_NODE: "0000099003",
                             srv.META_POOL: "main", srv.META_ATTEMPT: "1"})
    wait_for(lambda: later not in {s["id"] for s in cloud.servers()}, 30,
             what="a gone launcher's leaked server deleted")
    assert east.providers["east"].counters["leaks_deleted"] == 2
    assert {foreign, elsewhere} <= {s["id"] for s in cloud.servers()}
