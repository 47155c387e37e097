"""nodepool.yaml of a site whose images upstream's nodepool-builder builds:
the builder's schema loads, labels boot diskimages, mistakes are errors
with their fix."""

from __future__ import annotations

import copy
import os

import pytest
import yaml

from nodepool.config import validate
from nodepool.driver import registry
from tests.fixtures.upstream import upstream_fixtures
from tests.test_config import EXAMPLE_CLOUDS, errors, run, warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A site as upstream's documentation describes one: the builder's top-level
# keys, an abstract parent, and labels on two providers.
SITE = {
    "zookeeper-servers": [{"host": "zk1.example.org", "port": 2281}],
    "elements-dir": "/etc/nodepool/elements",
    "images-dir": "/opt/nodepool_dib",
    "build-log-dir": "/var/log/nodepool/builds",
    "build-log-retention": 3,
    "labels": [{"name": "ubuntu-jammy", "min-ready": 1}, {"name": "windows"}],
    "diskimages": [
        {"name": "base", "abstract": True, "elements": ["vm", "simple-init"],
         "env-vars": {"DIB_CHECKSUM": "1"}, "username": "ci", "python-path": "/usr/bin/python3",
         "formats": ["qcow2"], "rebuild-age": 86400, "build-timeout": 3600},
        {"name": "ubuntu-jammy", "parent": "base", "elements": ["ubuntu-minimal"],
         "release": "jammy", "env-vars": {"DIB_RELEASE": "jammy"}, "shell-type": "bash",
         "dib-cmd": "disk-image-create", "keep-formats": ["raw"], "delete-after-upload": True,
         "metadata": {"os": "ubuntu"}, "pause": False},
        {"name": "windows-2022", "release": 2022, "elements": ["windows"],
         "username": "Administrator", "python-path": "auto"},
    ],
    "providers": [{
        "name": "cloud-a", "cloud": "fakecloud",
        "image-upload-timeout": 3600, "image-name-format": "{image_name}-{timestamp}",
        "post-upload-hook": "/usr/local/bin/after-upload",
        "diskimages": [
            {"name": "ubuntu-jammy", "meta": {"hw_disk_bus": "scsi"}, "config-drive": True},
            {"name": "windows-2022", "pause": True, "connection-type": "winrm"},
        ],
        "pools": [{"name": "main", "max-servers": 4, "labels": [
            {"name": "ubuntu-jammy", "diskimage": "ubuntu-jammy", "flavor-name": "m1.small"},
            {"name": "windows", "diskimage": "windows-2022", "min-ram": 8192},
        ]}],
    }],
}


def test_a_builder_site_loads_quietly_with_upstreams_inheritance(tmp_path):
    config, problems, _ = run(tmp_path, SITE)
    assert errors(problems) == [] and warnings(problems) == []
    assert sorted(config.diskimages) == ["ubuntu-jammy", "windows-2022"]  # base is abstract
    jammy = config.diskimages["ubuntu-jammy"]
    assert (jammy.username, jammy.python_path, jammy.shell_type) == (
        "ci", "/usr/bin/python3", "bash")
    provider = config.providers["cloud-a"]
    label = provider.pools["main"].labels["ubuntu-jammy"]
    assert label.diskimage.name == "ubuntu-jammy" and label.diskimage.meta == {
        "hw_disk_bus": "scsi"}
    # Who the node is and how it is reached: top-level entry, then provider's.
    image = label.cloud_image
    assert (image.name, image.username, image.python_path, image.shell_type) == (
        "ubuntu-jammy", "ci", "/usr/bin/python3", "bash")
    assert (image.connection_type, image.connection_port, image.config_drive) == (
        "ssh", 22, True)
    windows = provider.pools["main"].labels["windows"]
    assert windows.diskimage.pause is True
    assert (windows.cloud_image.username, windows.cloud_image.connection_type,
            windows.cloud_image.connection_port) == ("Administrator", "winrm", 5986)


def _site(**changes):
    data = copy.deepcopy(SITE)
    for path, value in changes.items():
        node = data
        keys = path.split("/")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize("changes, where, words", [
    ({"providers/0/pools/0/labels/0/diskimage": "centos-9"},
     "providers[0].pools[0].labels[0].diskimage",
     ["'centos-9' is not defined in providers[0].diskimages", "add '- name: centos-9' there"]),
    ({"providers/0/diskimages/1/name": "base"}, "providers[0].diskimages[1].name",
     ["'base' is not defined in the top-level 'diskimages'", "abstract"]),
    ({"providers/0/diskimages/1/name": "ghost"}, "providers[0].diskimages[1].name",
     ["add '- name: ghost' there"]),
    ({"diskimages/1/parent": "nobody"}, "diskimages[1].parent",
     ["parent diskimage 'nobody' is not defined"]),
    ({"diskimages/0/parent": "ubuntu-jammy"}, "diskimages[1].parent",
     ["loop (ubuntu-jammy -> base -> ubuntu-jammy)"]),
    ({"diskimages/2/name": "ubuntu-jammy"}, "diskimages[2].name",
     ["duplicate diskimage 'ubuntu-jammy'"]),
    ({"diskimages/1/elements": "ubuntu-minimal"}, "diskimages[1].elements",
     ["expected a list"]),
    ({"diskimages/1/rebuild-age": "1d"}, "diskimages[1].rebuild-age",
     ["expected an integer"]),
    ({"diskimages/1/elemnts": ["x"]}, "diskimages[1]", ["unknown key 'elemnts'",
                                                        "did you mean 'elements'"]),
    ({"providers/0/diskimages/0/connection-port": "22"}, "providers[0].diskimages[0]",
     ["expected an integer"]),
])
def test_diskimage_mistakes_are_errors_with_the_fix(tmp_path, changes, where, words):
    config, problems, path = run(tmp_path, _site(**changes))
    assert config is None
    found = [e for e in errors(problems) if where in e]
    assert found, errors(problems)
    assert path in found[0] and all(w in found[0] for w in words), found


def _upstream_fixture(name: str) -> str | None:
    """A config file of upstream Nodepool's own test fixtures, when upstream
    is installed next to us (tools/install-upstream.sh)."""
    folder = upstream_fixtures()
    return os.path.join(folder, name) if folder else None


def test_upstreams_config_validate_example_runs_unchanged(tmp_path):
    """Upstream's own config-validate example (diskimages on two OpenStack
    providers, the builder's keys), with only clouds.yaml ours."""
    source = _upstream_fixture(os.path.join("config_validate", "good.yaml"))
    if source is None:
        pytest.skip("upstream Nodepool is not installed (tools/install-upstream.sh)")
    with open(EXAMPLE_CLOUDS) as f:
        ours = yaml.safe_load(f)
    cloud = next(iter(ours["clouds"].values()))
    ours["clouds"] = {"vanilla-cloud": dict(cloud, region_name="vanilla"),
                      "chocolate-cloud": dict(cloud, region_name="chocolate")}
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump(ours))
    config, problems = validate(source, str(clouds), env={"NODEPOOL_PORT": "8005"},
                                drivers=registry.drivers())
    assert errors(problems) == []
    # Only the other drivers' providers are reported; nothing about images.
    assert all("is upstream Nodepool's" in w for w in warnings(problems)), warnings(problems)
    trusty = config.providers["cloud1"].pools["main"].labels["trusty"]
    assert trusty.diskimage.name == "trusty"
    assert (trusty.cloud_image.username, trusty.cloud_image.python_path) == (
        "zuul", "/bin/python3.6")
    assert config.providers["cloud2"].pools["main"].labels["trusty-2-node"].diskimage
