"""``nodepool migrate zuul-launcher``: every generated object passes Zuul's
own configuration parsers (Zuul 14.3, installed by tools/run-tests.sh), and
the report names every key of the input.

Zuul's side is run as Zuul runs it: its YAML loader for a config project
(``safe_load_yaml``), the image, flavor, label, section and provider
parsers of ``zuul.configloader``, the section inheritance and the OpenStack
driver's provider schema (``ProviderConfig.flattenConfig``), and the
OpenStack driver's image, flavor and label classes; the zuul.conf fragment
builds Zuul's ``OpenstackConnection``.
"""

from __future__ import annotations

import configparser
import copy
import glob
import os
import re
import types

import pytest
import yaml

from nodepool.cmd import nodepoolcmd
from tests.fixtures.upstream import upstream_fixtures

zuul_configloader = pytest.importorskip("zuul.configloader")
from zuul import model as zuul_model  # noqa: E402
from zuul.driver.openstack import OpenstackDriver  # noqa: E402
from zuul.driver.openstack.openstackconnection import OpenstackConnection  # noqa: E402
from zuul.driver.openstack.openstackprovider import (  # noqa: E402
    OpenstackProviderFlavor, OpenstackProviderImage, OpenstackProviderLabel)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "etc", "nodepool.yaml")
EXAMPLE_CLOUDS = os.path.join(ROOT, "etc", "clouds.yaml")
UPSTREAM_FIXTURES = upstream_fixtures() or "(upstream Nodepool not installed)"

# An upstream-style site: two clouds, three providers, several pools, cloud
# images by id and by name, diskimages with inheritance, a min-ram label,
# several zones, and a static provider.
UPSTREAM_STYLE = {
    "elements-dir": "/etc/nodepool/elements",
    "images-dir": "/opt/nodepool_dib",
    "build-log-dir": "/var/log/nodepool/builds",
    "build-log-retention": 7,
    "zookeeper-servers": [{"host": "zk1.example.org", "port": 2281, "chroot": "/nodepool"}],
    "zookeeper-timeout": 30.0,
    "webapp": {"port": 8005, "listen_address": "0.0.0.0"},
    "max-hold-age": 86400,
    "labels": [
        {"name": "ubuntu-noble", "min-ready": 4, "max-ready-age": 7200},
        {"name": "ubuntu-noble-8GB", "min-ready": 1},
        {"name": "centos-9", "min-ready": 0},
        {"name": "windows-2022"},
        {"name": "baremetal"},
        {"name": "unused-label"},
    ],
    "tenant-resource-limits": [{"tenant-name": "openstack", "max-servers": 200,
                                "max-cores": 800, "max-ram": 1638400}],
    "diskimages": [
        {"name": "base", "abstract": True, "elements": ["vm", "simple-init"],
         "env-vars": {"DIB_CHECKSUM": "1"}, "username": "zuul", "python-path": "auto",
         "rebuild-age": 86400, "build-timeout": 7200, "formats": ["qcow2", "raw"]},
        {"name": "ubuntu-noble", "parent": "base", "elements": ["ubuntu-minimal"],
         "release": "noble", "keep-formats": ["qcow2"], "metadata": {"os": "ubuntu"}},
        {"name": "centos-9", "parent": "base", "release": 9, "pause": False,
         "dib-cmd": "disk-image-create", "delete-after-upload": True},
    ],
    "providers": [
        {"name": "east-1", "driver": "openstack", "cloud": "east", "region-name": "RegionOne",
         "rate": 0.5, "read-rate": 0.1, "boot-timeout": 180, "launch-timeout": 1200,
         "launch-retries": 5, "max-concurrency": 20, "priority": 10,
         "hostname-format": "np{node.id}", "clean-floating-ips": True,
         "port-cleanup-interval": 300, "image-upload-timeout": 3600,
         "image-name-format": "{image_name}-{timestamp}", "post-upload-hook": "/bin/true",
         "nodepool-id": "np1",
         "diskimages": [
             {"name": "ubuntu-noble", "config-drive": True,
              "meta": {"hw_disk_bus": "scsi", "hw_rng_model": "virtio"}},
             {"name": "centos-9", "pause": False, "connection-type": "ssh",
              "connection-port": 22}],
         "cloud-images": [
             {"name": "windows-2022", "image-id": "6a1f8c5e-0000-4000-8000-000000000022",
              "username": "Administrator", "connection-type": "winrm",
              "connection-port": 5986, "shell-type": "powershell",
              "python-path": "C:/Python311/python.exe", "config-drive": False}],
         "pools": [
             {"name": "main", "max-servers": 100, "max-cores": 400, "max-ram": 819200,
              "max-volumes": 20, "max-volume-gb": 2000, "priority": 1,
              "networks": ["public", "private"], "security-groups": ["zuul"],
              "availability-zones": ["nova"], "auto-floating-ip": False,
              "host-key-checking": True, "ignore-provider-quota": False,
              "node-attributes": {"executor-zone": "east", "cloud-tier": "gold"},
              "labels": [
                  {"name": "ubuntu-noble", "diskimage": "ubuntu-noble",
                   "flavor-name": "v3-standard-4", "key-name": "zuul",
                   "console-log": True,
                   "instance-properties": {"owner": "ci", "quota": 2},
                   "dynamic-instance-properties": {"change": "{request.id}"}},
                  {"name": "ubuntu-noble-8GB", "diskimage": "ubuntu-noble",
                   "min-ram": 8192, "flavor-name": "v3-standard",
                   "boot-from-volume": True, "volume-size": 80,
                   "networks": ["private"], "host-key-checking": False,
                   "userdata": "#cloud-config\npackage_upgrade: false\n"},
              ]},
             {"name": "windows", "max-servers": 5,
              "availability-zones": ["az1", "az2"],
              "labels": [{"name": "windows-2022", "cloud-image": "windows-2022",
                          "flavor-name": "v3-standard-8"}]},
         ]},
        {"name": "east-2", "cloud": "east", "region-name": "RegionTwo", "rate": 0.25,
         "diskimages": [{"name": "centos-9"}],
         "cloud-images": [{"name": "ubuntu-cloud", "image-name": "Ubuntu 24.04"}],
         "pools": [{"name": "main", "max-servers": 30,
                    "labels": [{"name": "centos-9", "diskimage": "centos-9",
                                "flavor-name": "m1.medium"},
                               {"name": "ubuntu-noble", "cloud-image": "ubuntu-cloud",
                                "flavor-name": "m1.medium"}]}]},
        {"name": "west", "cloud": "west",
         "cloud-images": [{"name": "ubuntu-noble-cloud", "image-id": "1f0e", "username":
                           "ubuntu"}],
         "pools": [{"name": "p", "labels": [{"name": "ubuntu-noble",
                                             "cloud-image": "ubuntu-noble-cloud",
                                             "flavor-name": "m1.large"}]}]},
        {"name": "lab", "driver": "static",
         "pools": [{"name": "main", "nodes": [{"name": "bm1.example.org",
                                               "labels": ["baremetal"]}]}]},
    ],
}


def write_clouds(path, names) -> str:
    """A clouds.yaml with the example's policy-compliant entry under each name."""
    with open(EXAMPLE_CLOUDS) as f:
        data = yaml.safe_load(f)
    entry = data["clouds"]["fakecloud"]
    data["clouds"] = {name: copy.deepcopy(entry) for name in names}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def write_site(tmp_path, data, clouds=("east", "west")):
    """nodepool.yaml from ``data`` and a clouds.yaml for ``clouds``."""
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, write_clouds(tmp_path / "clouds.yaml", clouds)


def migrate(tmp_path, config_path, clouds, *extra):
    out = tmp_path / "out"
    rc = nodepoolcmd.main(["-c", str(config_path), "--clouds", clouds, "migrate",
                           "zuul-launcher", "-o", str(out), *extra])
    return rc, out


# -- Zuul's side ---------------------------------------------------------------------

PARSERS = {"image": zuul_configloader.ImageParser, "flavor": zuul_configloader.FlavorParser,
           "label": zuul_configloader.LabelParser,
           "section": zuul_configloader.SectionParser,
           "provider": zuul_configloader.ProviderParser}


def zuul_connections(conf_text: str) -> dict:
    """The zuul.conf fragment's connections, built by Zuul's OpenStack driver."""
    parser = configparser.ConfigParser()
    parser.read_string(conf_text)
    driver = OpenstackDriver()
    out = {}
    for section in parser.sections():
        # zuul.conf names connections as Zuul's own reader does: connection "name".
        m = re.match(r'^connection ([\'"]?)(.*)(\1)$', section)
        assert m, section
        config = dict(parser[section])
        assert config.pop("driver") == "openstack"
        out[m.group(2)] = OpenstackConnection(driver, m.group(2), config)
    return out


def load_with_zuul(objects_text: str, conf_text: str) -> dict:
    """Parse the objects as a Zuul config project would hold them; return
    each provider's flattened configuration (section inheritance applied,
    validated by the OpenStack provider schema, internal schema included)."""
    context = zuul_model.SourceContext("example.org/zuul-config", "zuul-config", "gerrit",
                                       "master", "zuul.d/launcher.yaml")
    items = zuul_configloader.safe_load_yaml(objects_text, context)
    assert isinstance(items, list) and items
    layout = types.SimpleNamespace(images={}, flavors={}, labels={}, sections={})
    providers = []
    for item in items:
        assert len(item) == 1, item
        (kind, conf), = item.items()
        obj = PARSERS[kind](None).fromYaml(conf)
        if kind == "provider":
            providers.append(obj)
        else:
            getattr(layout, kind + "s")[obj.name] = obj
    connections = zuul_connections(conf_text)
    flat = {}
    for provider in providers:
        config = provider.flattenConfig(layout, connections)
        # What OpenstackProvider.parseConfig builds, short of the cloud endpoint.
        images = {i["name"]: OpenstackProviderImage(i, config, image_format="qcow2")
                  for i in config["images"]}
        flavors = {f["name"]: OpenstackProviderFlavor(f, config) for f in config["flavors"]}
        for lab in config["labels"]:
            label = OpenstackProviderLabel(lab, config)
            assert label.image in images, (provider.name, label.name, label.image)
            assert label.flavor in flavors, (provider.name, label.name, label.flavor)
            label.inheritFrom(images[label.image], flavors[label.flavor])
        flat[provider.name] = config
    return flat


def migrated(tmp_path, config_path, clouds, *extra):
    """The three outputs of a successful run, and the providers as Zuul
    flattens them."""
    rc, out = migrate(tmp_path, config_path, clouds, *extra)
    assert rc == 0
    objects, conf, report = outputs(out)
    return objects, conf, report, load_with_zuul(objects, conf)


def outputs(out):
    return ((out / "zuul-launcher.yaml").read_text(), (out / "zuul.conf").read_text(),
            (out / "migration-report.txt").read_text())


def all_key_paths(data, prefix=""):
    """Every mapping key's path, written as the report writes it."""
    free_form = {"instance-properties", "dynamic-instance-properties", "node-attributes",
                 "meta", "metadata", "env-vars"}
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{prefix}.{key}" if prefix else str(key)
            yield here
            if key not in free_form:
                yield from all_key_paths(value, here)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from all_key_paths(value, f"{prefix}[{i}]")


def assert_report_names_every_key(raw: dict, report: str) -> None:
    listed = report.split("Every key of the file and what it became:\n", 1)[1]
    lines = {line.split(": ", 1)[0]: line for line in listed.splitlines()}
    missing = [p for p in all_key_paths(raw) if p not in lines]
    assert missing == []
    assert "a key this tool does not know" not in listed


# -- tests -----------------------------------------------------------------------------

def test_example_config_passes_zuuls_parsers(tmp_path):
    objects, conf, report, flat = migrated(tmp_path, EXAMPLE, EXAMPLE_CLOUDS)
    provider = flat["fakecloud-region1-main"]
    assert provider["region"] == "RegionOne"
    assert provider["resource-limits"] == {"instances": 10, "cores": 40}
    labels = {lab["name"]: lab for lab in provider["labels"]}
    jammy = labels["ubuntu-jammy"]
    assert (jammy["key-name"], jammy["networks"], jammy["security-groups"],
            jammy["auto-floating-ip"], jammy["host-key-checking"], jammy["boot-timeout"],
            jammy["executor-zone"]) == ("nodepool", ["private"], ["default"], False, False,
                                        120, "zone-a")
    assert labels["ubuntu-jammy-large"]["boot-from-volume"] is True
    assert labels["ubuntu-jammy-large"]["volume-size"] == 40
    top = {k: v for item in yaml.safe_load(objects) for k, v in item.items()
           if k == "label" for v in [v] if v["name"] == "ubuntu-jammy"}
    assert top["label"]["min-ready"] == 2
    connection = zuul_connections(conf)["fakecloud"]
    assert connection.cloud_name == "fakecloud"
    assert connection.rate == 10.0            # rate: 0.1 s between calls
    assert connection.config_files == EXAMPLE_CLOUDS
    with open(EXAMPLE) as f:
        assert_report_names_every_key(yaml.safe_load(f), report)
    # The name-only image and the min-ram flavor are the operator's to choose.
    assert "CHOOSE-id-of-ubuntu-22.04" in objects
    assert "providers[0].cloud-images[0].image-name: zuul-launcher 14.3 boots cloud " \
           "images by id only" in report
    assert "providers[0].pools[0].labels[1].min-ram: zuul-launcher 14.3 picks flavors" \
           in report


def test_upstream_style_multi_provider_config(tmp_path):
    path, clouds = write_site(tmp_path, UPSTREAM_STYLE)
    objects, conf, report, flat = migrated(tmp_path, path, clouds, "--tenant", "openstack")
    assert sorted(flat) == ["east-1-main", "east-1-windows", "east-2-main", "west-p"]
    images = {i["name"]: i for i in flat["east-1-main"]["images"]}
    # A diskimage is a Zuul-built image, with the builder's inherited user.
    assert images["ubuntu-noble"]["type"] == "zuul"
    assert images["ubuntu-noble"]["username"] == "zuul"
    assert images["ubuntu-noble"]["tags"] == {"hw_disk_bus": "scsi",
                                              "hw_rng_model": "virtio"}
    win = {i["name"]: i for i in flat["east-1-windows"]["images"]}["windows-2022"]
    assert (win["type"], win["image-id"], win["connection-type"], win["connection-port"],
            win["config-drive"]) == ("cloud", "6a1f8c5e-0000-4000-8000-000000000022",
                                     "winrm", 5986, False)
    main = flat["east-1-main"]
    assert main["resource-limits"] == {"instances": 100, "cores": 400, "ram": 819200,
                                       "volumes": 20, "volume-gb": 2000}
    assert (main["launch-attempts"], main["launch-timeout"], main["floating-ip-cleanup"],
            main["port-cleanup-interval"]) == (5, 1200, True, 300)
    labels = {lab["name"]: lab for lab in main["labels"]}
    assert labels["ubuntu-noble"]["az"] == "nova"
    assert labels["ubuntu-noble"]["tags"] == {"owner": "ci", "quota": "2"}
    assert labels["ubuntu-noble-8GB"]["networks"] == ["private"]
    assert labels["ubuntu-noble-8GB"]["host-key-checking"] is False
    # One connection per cloud; two providers on one cloud: the slower pace.
    connections = zuul_connections(conf)
    assert sorted(connections) == ["east", "west"]
    assert connections["east"].rate == 2.0 and connections["west"].rate == 2.0
    # Two providers serve ubuntu-noble with different images.
    assert {lab["name"]: lab["image"] for lab in flat["east-2-main"]["labels"]}[
        "ubuntu-noble"] == "ubuntu-cloud"
    assert_report_names_every_key(UPSTREAM_STYLE, report)
    for words in ("min-ram: zuul-launcher 14.3 picks flavors by name",
                  "providers[0].pools[1].availability-zones: this pool spreads servers "
                  "over 2 zones",
                  "node-attributes: Zuul sets no free-form node attributes (cloud-tier)",
                  "providers[3].name: nothing: driver static providers are not translated",
                  "Tenant openstack has tenant-resource-limits here (instances 200",
                  "labels[5].name: nothing: no OpenStack pool serves label unused-label",
                  "diskimages[0].elements: nothing: it configures upstream's "
                  "nodepool-builder"):
        assert words in report, words
    assert "# max_hold_expiration=86400" in conf
    assert "instance-properties: Zuul's tags are strings: quota written as strings" in report
    assert "ram 1638400)" in report
    assert "Images of type zuul (ubuntu-noble, centos-9) are built by Zuul" in report
    # Values that change nothing under Zuul ask for no decision.
    decisions = report.split("To decide or do")[1].split("Every key of the file")[0]
    for quiet in ("providers[0].diskimages[1].pause", "diskimages[2].pause",
                  "ignore-provider-quota", "console-log"):
        assert quiet not in decisions, quiet


def test_doc_examples_pass_zuuls_parsers(tmp_path):
    """configuration.rst's top-level and provider examples, as one file."""
    with open(os.path.join(ROOT, "doc", "configuration.rst")) as f:
        text = f.read()
    blocks = [textwrap_block(b) for b in text.split("Example::\n\n")[1:]]
    top = next(yaml.safe_load(b) for b in blocks if b.startswith("zookeeper-servers:"))
    providers = next(yaml.safe_load(b) for b in blocks
                     if b.startswith("providers:") and "cloud-images" in b)
    for key in ("ca", "cert", "key"):    # the example's TLS files, made real
        (tmp_path / key).write_text("x")
        top["zookeeper-tls"][key] = str(tmp_path / key)
    data = {**top, **providers}
    path = tmp_path / "nodepool.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    clouds = write_clouds(tmp_path / "clouds.yaml",
                          {p["cloud"] for p in data["providers"]})
    objects, conf, report, flat = migrated(tmp_path, path, clouds)
    assert sorted(flat) == ["cloud1-region1-main"]
    assert_report_names_every_key(data, report)


def textwrap_block(block: str) -> str:
    """An rst literal block (indented lines up to the first unindented one)."""
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


@pytest.mark.skipif(not os.path.isdir(UPSTREAM_FIXTURES),
                    reason="upstream Nodepool 11 is not installed for reading")
def test_upstream_nodepool_example_config(tmp_path):
    """Upstream's own config-validate example (all drivers, diskimages,
    cloud images, Windows images) translates and passes Zuul's parsers."""
    with open(os.path.join(UPSTREAM_FIXTURES, "config_validate", "good.yaml")) as f:
        text = f.read().replace("%(NODEPOOL_PORT)", "8005")
    data = yaml.safe_load(text)
    path = tmp_path / "nodepool.yaml"
    path.write_text(text)
    clouds = write_clouds(tmp_path / "clouds.yaml",
                          {p["cloud"] for p in data["providers"] if "cloud" in p})
    objects, conf, report, flat = migrated(tmp_path, path, clouds)
    assert flat
    assert_report_names_every_key(data, report)


def upstream_fixture_text(path: str) -> str:
    """An upstream test fixture as a site would write it: upstream's tests
    run OpenStack configurations with ``driver: fake`` and fill in
    ``{placeholders}`` and ``%(NODEPOOL_...)`` at run time."""
    with open(path) as f:
        text = f.read().replace("driver: fake", "driver: openstack")
    text = re.sub(r"%\(NODEPOOL_[A-Z_]*\)", "8005", text)

    def value(m):
        name = m.group(1)
        if name.endswith("port"):
            return "2181"
        if name.startswith("zookeeper_") and "chroot" not in name:
            return EXAMPLE    # host names and TLS files: any existing path will do
        return "/fixture"
    return re.sub(r"\{([a-z_]+)\}", value, text)


@pytest.mark.skipif(not os.path.isdir(UPSTREAM_FIXTURES),
                    reason="upstream Nodepool 11 is not installed for reading")
def test_upstream_fixtures_round_trip(tmp_path):
    """Each of upstream's own test configurations that loads here and
    serves OpenStack labels translates into objects Zuul's parsers take,
    and a report naming every key; Zuul-incompatible ones are refused."""
    from nodepool.config import validate
    from nodepool.driver import registry
    from nodepool.migrate import output
    from nodepool.migrate.zuul_launcher import MigrationError, translate

    translated, refused = [], []
    for path in sorted(glob.glob(os.path.join(UPSTREAM_FIXTURES, "*.yaml"))):
        text = upstream_fixture_text(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        if not isinstance(data, dict) or "clouds" in data:
            continue                    # a clouds.yaml, not a nodepool.yaml
        site = tmp_path / os.path.basename(path)
        site.mkdir()
        (site / "nodepool.yaml").write_text(text)
        clouds = write_clouds(site / "clouds.yaml",
                              {p["cloud"] for p in data.get("providers") or []
                               if isinstance(p, dict) and isinstance(p.get("cloud"), str)}
                              or {"unused"})
        config, _ = validate(str(site / "nodepool.yaml"), clouds, drivers=registry.drivers())
        if config is None:
            continue                    # upstream's deliberately broken files
        try:
            mig = translate(config, data)
        except MigrationError as e:
            refused.append((os.path.basename(path), str(e)))
            continue
        if not mig.objects:
            continue                    # other drivers only
        load_with_zuul(output.objects_yaml(mig, path), output.zuul_conf(mig, path))
        assert_report_names_every_key(data, output.report(mig, path))
        translated.append(os.path.basename(path))
    assert len(translated) > 50
    assert {"node_diskimage_parents.yaml", "multiproviders.yaml", "node_az.yaml",
            "node_boot_from_volume.yaml"} <= set(translated)
    # network_cli nodes have no Zuul 14.3 image connection-type.
    assert [name for name, _ in refused] == ["node-network_cli.yaml"]
    assert "connection-type 'network_cli'" in refused[0][1]


def test_some_labels_first(tmp_path, capsys):
    path, clouds = write_site(tmp_path, UPSTREAM_STYLE)
    objects, conf, report, flat = migrated(tmp_path, path, clouds, "--labels", "centos-9")
    # Only the pool serving the label, its image and flavor, its cloud.
    assert sorted(flat) == ["east-2-main"]
    assert [lab["name"] for lab in flat["east-2-main"]["labels"]] == ["centos-9"]
    assert [i["name"] for i in flat["east-2-main"]["images"]] == ["centos-9"]
    assert [k for item in yaml.safe_load(objects) for k in item].count("label") == 1
    assert sorted(zuul_connections(conf)) == ["east"]
    assert "Labels Zuul will take from zuul-launcher: centos-9\n" in report
    assert ("Labels that stay on this launcher: ubuntu-noble, ubuntu-noble-8GB, "
            "windows-2022\n") in report
    assert "providers[1].pools[0].labels[1].flavor-name: nothing yet: label " \
           "ubuntu-noble stays on this launcher" in report
    assert "providers[2].name: nothing yet: none of its labels is migrated" in report
    assert_report_names_every_key(UPSTREAM_STYLE, report)


def test_unknown_label_is_refused_and_nothing_written(tmp_path, capsys):
    rc, out = migrate(tmp_path, EXAMPLE, EXAMPLE_CLOUDS, "--labels", "ubuntu-jammy,nope")
    assert rc == 1
    assert not out.exists()
    err = capsys.readouterr().err
    assert "nope is not served by an OpenStack pool of" in err
    assert "served: ubuntu-jammy, ubuntu-jammy-large" in err
    assert "nothing written" in err


def test_config_errors_are_config_validates_and_nothing_written(tmp_path, capsys):
    data = copy.deepcopy(UPSTREAM_STYLE)
    data["providers"][0]["pools"][0]["max-servres"] = 3
    data["providers"][1]["cloud"] = "nowhere"
    path, clouds = write_site(tmp_path, data)
    assert nodepoolcmd.main(["-c", str(path), "--clouds", clouds, "config-validate"]) == 1
    validate_err = capsys.readouterr().err
    rc, out = migrate(tmp_path, path, clouds)
    assert rc == 1
    assert not out.exists()
    err = capsys.readouterr().err
    problems = [line for line in validate_err.splitlines() if "error(s) found" not in line]
    assert problems and all(line in err for line in problems)
    assert "unknown key 'max-servres'; did you mean 'max-servers'?" in err
    assert "nothing written" in err


def test_an_unusable_output_dir_is_a_clean_error(tmp_path, capsys):
    taken = tmp_path / "file"
    taken.write_text("")
    rc = nodepoolcmd.main(["-c", EXAMPLE, "--clouds", EXAMPLE_CLOUDS, "migrate",
                           "zuul-launcher", "-o", str(taken)])
    assert rc == 1
    assert f"nodepool migrate: -o {taken}: File exists" in capsys.readouterr().err


def test_without_output_dir_everything_is_printed(tmp_path, capsys):
    rc = nodepoolcmd.main(["-c", EXAMPLE, "--clouds", EXAMPLE_CLOUDS, "migrate",
                           "zuul-launcher"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "- section:\n" in printed and '[connection "fakecloud"]' in printed
    assert "Every key of the file and what it became:" in printed


def test_zuuls_parsers_catch_what_zuul_would_refuse(tmp_path):
    """The check has teeth: output Zuul would refuse fails it."""
    rc, out = migrate(tmp_path, EXAMPLE, EXAMPLE_CLOUDS)
    assert rc == 0
    objects, conf, _ = outputs(out)
    import voluptuous
    no_id = re.sub(r"\n *image-id: .*", "", objects)
    with pytest.raises(voluptuous.MultipleInvalid, match="image-id"):
        load_with_zuul(no_id, conf)
    with pytest.raises(Exception, match="cloud"):
        load_with_zuul(objects, conf.replace("cloud=fakecloud\n", ""))


def test_an_image_name_of_two_types_is_refused(tmp_path, capsys):
    data = copy.deepcopy(UPSTREAM_STYLE)
    data["providers"][2]["cloud-images"][0]["name"] = "ubuntu-noble"
    data["providers"][2]["pools"][0]["labels"][0]["cloud-image"] = "ubuntu-noble"
    path, clouds = write_site(tmp_path, data)
    rc, out = migrate(tmp_path, path, clouds)
    assert rc == 1
    assert not out.exists()
    assert "image name 'ubuntu-noble' is a cloud-image in one provider and a diskimage" \
        in capsys.readouterr().err
