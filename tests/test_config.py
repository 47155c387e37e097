"""nodepool.yaml schema, cross-references and upstream compatibility."""

from __future__ import annotations

import copy
import math
import os

import pytest
import yaml

from nodepool.config import ConfigError, load_config, validate
from nodepool.driver import registry
from nodepool.quota import Resources, tenant_limits_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "etc", "nodepool.yaml")
EXAMPLE_CLOUDS = os.path.join(ROOT, "etc", "clouds.yaml")

MINIMAL = {
    "zookeeper-servers": [{"host": "zk1.example.org"}],
    "labels": [{"name": "small"}],
    "providers": [{
        "name": "p1",
        "cloud": "fakecloud",
        "cloud-images": [{"name": "img"}],
        "pools": [{"name": "main", "max-servers": 4,
                   "labels": [{"name": "small", "cloud-image": "img",
                               "flavor-name": "m1.small"}]}],
    }],
}


def run(tmp_path, data, clouds=EXAMPLE_CLOUDS, text=None):
    path = tmp_path / "nodepool.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data))
    config, problems = validate(str(path), clouds, drivers=registry.drivers())
    return config, problems, str(path)


def errors(problems):
    return [str(p) for p in problems if p.severity == "error"]


def warnings(problems):
    return [str(p) for p in problems if p.severity == "warning"]


def test_example_config_is_valid():
    config, problems = validate(EXAMPLE, EXAMPLE_CLOUDS, drivers=registry.drivers())
    assert errors(problems) == []
    assert config is not None
    provider = config.providers["fakecloud-region1"]
    assert provider.cloud_settings.api_timeout == 30
    assert provider.pools["main"].labels["ubuntu-jammy"].flavor_name == "m1.small"
    assert config.labels["ubuntu-jammy"].min_ready == 2


def test_minimal_config_gets_upstream_defaults(tmp_path):
    config, problems, _ = run(tmp_path, MINIMAL)
    assert errors(problems) == []
    p = config.providers["p1"]
    # rate absent is not rate 1.0: no fixed ceiling, adaptive concurrency.
    assert (p.rate, p.read_rate) == (None, None)
    assert (p.boot_timeout, p.launch_timeout, p.launch_retries) == (60, 3600, 3)
    assert p.max_concurrency == -1 and p.port_cleanup_interval == 600
    assert p.clean_floating_ips is False
    pool = p.pools["main"]
    assert pool.max_servers == 4 and pool.max_cores == math.inf and pool.max_ram == math.inf
    assert pool.auto_floating_ip is True and pool.host_key_checking is True
    assert pool.ignore_provider_quota is False
    assert p.pool_priority(pool) == 100
    label = pool.labels["small"]
    assert label.volume_size == 50 and label.boot_from_volume is False
    image = p.cloud_images["img"]
    assert (image.python_path, image.connection_type, image.connection_port) == ("auto", "ssh", 22)
    zk = config.zookeeper
    assert zk.servers[0].port == 2281 and zk.session_timeout == 10.0
    assert config.webapp.port == 8005


def test_upstream_full_openstack_provider_loads_unchanged(tmp_path):
    """Every upstream key for an OpenStack cloud-image provider is accepted."""
    data = {
        "zookeeper-servers": [{"host": "zk1", "port": 2281, "chroot": "/np"},
                              {"host": "zk2", "port": 2281, "chroot": "/np"}],
        "zookeeper-timeout": 30.0,
        "webapp": {"port": 8006, "listen_address": "0.0.0.0"},
        "labels": [{"name": "l1", "min-ready": 1, "max-ready-age": 600},
                   {"name": "win"}],
        "max-hold-age": 3600,
        "tenant-resource-limits": [{"tenant-name": "t1", "max-servers": 10, "max-cores": 20,
                                    "max-ram": 4096, "max-volumes": 3, "max-volume-gb": 100,
                                    "max-gpus": 1}],
        "providers": [{
            "name": "p1", "driver": "openstack", "cloud": "fakecloud",
            "region-name": "RegionOne", "priority": 50, "rate": 0.5, "read-rate": 0.05,
            "boot-timeout": 120,
            "launch-timeout": 600, "launch-retries": 2, "max-concurrency": 10,
            "hostname-format": "{label.name}-{provider.name}-{node.id}",
            "clean-floating-ips": True, "port-cleanup-interval": 300,
            "image-upload-timeout": 3600, "image-name-format": "{image_name}-{timestamp}",
            "nodepool-id": "legacy", "post-upload-hook": "/bin/true",
            "cloud-images": [
                {"name": "img", "image-id": "abc", "username": "zuul", "python-path": "auto",
                 "shell-type": "sh", "connection-type": "ssh", "connection-port": 22,
                 "config-drive": True},
                {"name": "win", "image-name": "Windows", "connection-type": "winrm"},
            ],
            "pools": [{
                "name": "main", "priority": 10, "max-servers": 5, "max-cores": 20,
                "max-ram": 40960, "max-volumes": 5, "max-volume-gb": 200,
                "networks": ["private"], "security-groups": ["default"],
                "availability-zones": ["nova"], "auto-floating-ip": False,
                "host-key-checking": False, "ignore-provider-quota": False,
                "node-attributes": {"executor-zone": "z1"},
                "labels": [
                    {"name": "l1", "cloud-image": "img", "flavor-name": "m1.small",
                     "key-name": "k", "console-log": True, "boot-from-volume": True,
                     "volume-size": 20, "userdata": "#cloud-config\n",
                     "instance-properties": {"a": "b"},
                     "dynamic-instance-properties": {"c": "{request.id}"},
                     "networks": ["other"], "host-key-checking": True},
                    {"name": "win", "cloud-image": "win", "min-ram": 4096},
                ],
            }],
        }],
    }
    config, problems, _ = run(tmp_path, data)
    assert errors(problems) == []
    p = config.providers["p1"]
    assert (p.rate, p.read_rate) == (0.5, 0.05)
    assert p.cloud_images["win"].connection_port == 5986
    pool = p.pools["main"]
    assert p.pool_priority(pool) == 10
    assert pool.labels["l1"].networks == ("other",)
    assert pool.labels["win"].networks == ("private",)
    assert pool.labels["l1"].host_key_checking is True
    assert pool.labels["win"].host_key_checking is False
    assert config.zookeeper.hosts == "zk1:2281,zk2:2281/np"
    assert config.tenant_limits["t1"].limits == {
        "instances": 10, "cores": 20, "ram": 4096, "volumes": 3, "volume-gb": 100}
    # A resource this launcher cannot count is accepted with a warning, and
    # the limits that remain feed the quota core.
    assert any("tenant-resource-limits[0].max-gpus" in w and "ignored" in w
               for w in warnings(problems))
    assert tenant_limits_from_config(config.tenant_limits)["t1"] == Resources(10, 20, 4096, 3, 100)
    # Keys read but not acted on say so, at their exact path; the builder's
    # own keys (it runs beside the launcher) load quietly.
    inert = [p.path for p in problems
             if p.severity == "warning" and "no effect in this launcher" in p.message]
    assert inert == ["providers[0].nodepool-id"]
    assert pool.labels["l1"].dynamic_instance_properties == {"c": "{request.id}"}


def test_env_substitution_like_upstream(tmp_path):
    text = yaml.safe_dump(MINIMAL).replace("zk1.example.org", "%(NODEPOOL_ZK_HOST)")
    path = tmp_path / "n.yaml"
    path.write_text(text)
    config, problems = validate(str(path), EXAMPLE_CLOUDS, env={"NODEPOOL_ZK_HOST": "zkx"},
                                drivers=registry.drivers())
    assert errors(problems) == []
    assert config.zookeeper.servers[0].host == "zkx"


def test_secure_file_overrides_zookeeper(tmp_path):
    secure = tmp_path / "secure.conf"
    secure.write_text(yaml.safe_dump({"zookeeper-servers": [{"host": "secret-zk", "port": 1}]}))
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    config, _ = load_config(str(path), EXAMPLE_CLOUDS, str(secure), drivers=registry.drivers())
    assert config.zookeeper.servers[0].host == "secret-zk"


@pytest.mark.parametrize("mutate, where, words", [
    (lambda d: d["providers"][0]["pools"][0]["labels"][0].update({"flavor-nme": "x"}),
     "providers[0].pools[0].labels[0].flavor-nme", ["unknown key", "did you mean 'flavor-name'"]),
    (lambda d: d.update({"zookeeper-server": []}),
     "zookeeper-server:", ["unknown key", "zookeeper-servers"]),
    (lambda d: d["providers"][0]["pools"][0].update({"max-servers": "ten"}),
     "providers[0].pools[0].max-servers", ["expected an integer", "'ten'"]),
    (lambda d: d["providers"][0]["pools"][0].update({"max-servers": True}),
     "providers[0].pools[0].max-servers", ["expected an integer", "boolean"]),
    (lambda d: d["providers"][0]["pools"][0].update({"max-cores": -1}),
     "providers[0].pools[0].max-cores", ["at least 0", "upstream", "leave the key out"]),
    (lambda d: d["providers"][0].update({"rate": -1}),
     "providers[0].rate", ["must not be negative", "e.g. 1.0"]),
    (lambda d: d["providers"][0].update({"rate": "fast"}),
     "providers[0].rate", ["expected a number of seconds", "'fast'"]),
    (lambda d: d["providers"][0].update({"boot-timeout": 0}),
     "providers[0].boot-timeout", ["at least 1", "upstream", "e.g. 60"]),
    (lambda d: d["providers"][0]["pools"][0].update({"networks": "private"}),
     "providers[0].pools[0].networks", ["expected a list"]),
    (lambda d: d["providers"][0]["pools"][0].update({"networks": ["a", 3]}),
     "providers[0].pools[0].networks[1]", ["expected a string"]),
    (lambda d: d["providers"][0]["pools"][0]["labels"][0].update({"auto-floating-ip": True}),
     "providers[0].pools[0].labels[0].auto-floating-ip", ["unknown key"]),
    (lambda d: d["providers"][0].pop("cloud"),
     "providers[0].cloud", ["required"]),
    (lambda d: d["labels"][0].pop("name"),
     "labels[0].name", ["required"]),
    (lambda d: d["labels"][0].update({"min-ready": "2"}),
     "labels[0].min-ready", ["expected an integer"]),
    (lambda d: d.update({"webapp": {"port": 70000}}),
     "webapp.port", ["TCP port"]),
    (lambda d: d.update({"zookeeper-timeout": "slow"}),
     "zookeeper-timeout", ["expected a number"]),
    (lambda d: d.update({"zookeeper-tls": {"ca": "/nonexistent/ca.pem"}}),
     "zookeeper-tls.cert", ["required"]),
    (lambda d: d.update({"tenant-resource-limits": [{"max-servers": 1}]}),
     "tenant-resource-limits[0].tenant-name", ["required"]),
    (lambda d: d["providers"][0]["cloud-images"][0].update({"image-id": "a", "image-name": "b"}),
     "providers[0].cloud-images[0]", ["image-id or image-name"]),
    (lambda d: d["providers"][0].update({"pools": {"name": "main"}}),
     "providers[0].pools", ["expected a list"]),
    (lambda d: d.update({"providers": [{"name": "x", "driver": "vmware", "cloud": "c"}]}),
     "providers[0].driver", ["unknown driver 'vmware'"]),
])
def test_schema_errors_name_file_and_path(tmp_path, mutate, where, words):
    data = copy.deepcopy(MINIMAL)
    mutate(data)
    config, problems, path = run(tmp_path, data)
    assert config is None
    found = [e for e in errors(problems) if where in e]
    assert found, errors(problems)
    assert found[0].startswith(path + ": ")
    for w in words:
        assert w in found[0], found[0]


@pytest.mark.parametrize("mutate, where, words", [
    (lambda d: d["providers"][0]["pools"][0]["labels"][0].update({"name": "nosuch"}),
     "providers[0].pools[0].labels[0].name", ["'nosuch' is not defined", "labels"]),
    (lambda d: d["providers"][0]["pools"][0]["labels"][0].update({"cloud-image": "nope"}),
     "providers[0].pools[0].labels[0].cloud-image", ["'nope' is not defined", "img"]),
    (lambda d: d["providers"][0]["pools"][0]["labels"][0].pop("flavor-name"),
     "providers[0].pools[0].labels[0]", ["flavor-name' or 'min-ram"]),
    (lambda d: d["providers"][0]["pools"][0]["labels"][0].pop("cloud-image"),
     "providers[0].pools[0].labels[0]", ["needs 'cloud-image'"]),
    (lambda d: d["labels"].append({"name": "small"}),
     "labels[1].name", ["duplicate label 'small'"]),
    (lambda d: d["providers"].append(copy.deepcopy(d["providers"][0])),
     "providers[1].name", ["duplicate provider 'p1'"]),
    (lambda d: d["providers"][0]["pools"].append({"name": "main"}),
     "providers[0].pools[1].name", ["duplicate pool 'main'"]),
    (lambda d: d["providers"][0]["cloud-images"].append({"name": "img"}),
     "providers[0].cloud-images[1].name", ["duplicate cloud-image 'img'"]),
    (lambda d: d["providers"][0]["pools"][0]["labels"].append(
        {"name": "small", "cloud-image": "img", "min-ram": 1}),
     "providers[0].pools[0].labels[1].name", ["duplicate pool label 'small'"]),
    (lambda d: d["providers"][0].update({"cloud": "nocloud"}),
     "providers[0].cloud", ["'nocloud' is not in", "clouds.yaml", "fakecloud"]),
    (lambda d: d["providers"][0].update({"hostname-format": "{label.name}-{image}"}),
     "providers[0].hostname-format", ["unknown field {image}"]),
    (lambda d: d.pop("zookeeper-servers"),
     "zookeeper-servers", ["is required"]),
    (lambda d: d.update({"zookeeper-servers": [{"host": "a", "chroot": "/x"},
                                               {"host": "b", "chroot": "/y"}]}),
     "zookeeper-servers", ["different chroots"]),
    (lambda d: d.update({"zookeeper-tls": {"ca": "/nonexistent/ca.pem", "cert": "/n/c",
                                           "key": "/n/k"}}),
     "zookeeper-tls.ca", ["does not exist"]),
    (lambda d: d.update({"tenant-resource-limits": [{"tenant-name": "t"},
                                                    {"tenant-name": "t"}]}),
     "tenant-resource-limits[1].tenant-name", ["duplicate tenant 't'"]),
])
def test_cross_reference_errors(tmp_path, mutate, where, words):
    data = copy.deepcopy(MINIMAL)
    mutate(data)
    config, problems, path = run(tmp_path, data)
    assert config is None
    found = [e for e in errors(problems) if f": {where}: " in e]
    assert found, errors(problems)
    assert found[0].startswith(path + ": ")
    for w in words:
        assert w in found[0], found[0]


def test_every_problem_is_reported_not_only_the_first(tmp_path):
    data = copy.deepcopy(MINIMAL)
    data["providers"][0]["pools"][0]["labels"][0]["flavor-nme"] = "x"   # schema
    data["providers"][0]["pools"][0]["max-servers"] = "many"            # schema
    data["labels"].append({"name": "small"})                             # cross-ref
    data["providers"][0]["pools"][0]["labels"].append(
        {"name": "ghost", "cloud-image": "img", "min-ram": 1})          # cross-ref
    _, problems, _ = run(tmp_path, data)
    text = "\n".join(errors(problems))
    assert "flavor-nme" in text and "'many'" in text
    assert "duplicate label 'small'" in text and "'ghost' is not defined" in text


def test_other_drivers_are_reported_as_not_served_and_builder_keys_load(tmp_path):
    data = copy.deepcopy(MINIMAL)
    data["diskimages"] = [{"name": "ubuntu", "elements": ["ubuntu-minimal"]}]
    data["elements-dir"] = "/etc/nodepool/elements"
    data["providers"].append({"name": "aws-east", "driver": "aws", "region-name": "x",
                              "pools": []})
    data["providers"].append({"name": "k8s", "driver": "kubernetes", "pools": []})
    data["providers"][0]["diskimages"] = [{"name": "ubuntu"}]
    data["labels"].append({"name": "dib"})
    data["providers"][0]["pools"][0]["labels"].append(
        {"name": "dib", "diskimage": "ubuntu", "min-ram": 1})
    config, problems, _ = run(tmp_path, data)
    assert errors(problems) == []
    text = "\n".join(warnings(problems))
    # The builder runs beside the launcher: its keys load quietly.
    assert "diskimages" not in text and "elements-dir" not in text
    assert "providers[1].driver: driver 'aws'" in text and "'aws-east' is ignored" in text
    assert "providers[2].driver: driver 'kubernetes'" in text
    assert list(config.providers) == ["p1"]
    assert list(config.providers["p1"].pools["main"].labels) == ["small", "dib"]


def test_min_ready_label_that_no_pool_serves_is_a_warning(tmp_path):
    data = copy.deepcopy(MINIMAL)
    data["labels"].append({"name": "orphan", "min-ready": 2})
    _, problems, _ = run(tmp_path, data)
    assert errors(problems) == []
    assert any("labels[1].min-ready" in w and "no pool" in w for w in warnings(problems))


@pytest.mark.parametrize("text, words", [
    ("providers: [\n", ["not valid YAML", "line"]),
    ("- a\n- b\n", ["expected a mapping", "a list"]),
    ("just a string", ["expected a mapping"]),
    ("labels: {name: x}\nzookeeper-servers: [{host: a}]\n", ["labels: expected a list"]),
    ("labels: []\nzookeeper-servers: [{host: a}]\ntenant-resource-limits: true\n",
     ["tenant-resource-limits: expected a list"]),
])
def test_malformed_documents(tmp_path, text, words):
    config, problems, path = run(tmp_path, None, text=text)
    assert config is None
    text_out = "\n".join(errors(problems))
    assert text_out.startswith(path)
    for w in words:
        assert w in text_out, text_out


def test_missing_file_is_a_clean_error(tmp_path):
    config, problems = validate(str(tmp_path / "nope.yaml"), EXAMPLE_CLOUDS,
                                drivers=registry.drivers())
    assert config is None
    assert "cannot read the file" in errors(problems)[0]


def test_load_config_raises_with_every_error(tmp_path):
    data = copy.deepcopy(MINIMAL)
    data["labels"].append({"name": "small"})
    data["providers"][0]["rate"] = -1
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(str(path), EXAMPLE_CLOUDS, drivers=registry.drivers())
    assert len(e.value.errors) == 2
    assert "providers[0].rate" in str(e.value)


@pytest.mark.parametrize("template,expected", [
    ("{nodepool.secret}", "{nodepool.secret} is not available"),
    ("{request.password}", "{request.password} is not available"),
    ("{request.node_types}", "names the request's labels {request.labels}"),
    ("{request.id", "not a valid format string"),
    (5, "expected a format string"),
])
def test_dynamic_instance_properties_are_checked(tmp_path, template, expected):
    data = copy.deepcopy(MINIMAL)
    data["providers"][0]["pools"][0]["labels"][0]["dynamic-instance-properties"] = {
        "ok": "{request.requestor_data[job_name]}-{request.id}", "bad": template}
    _, problems, _ = run(tmp_path, data)
    [err] = errors(problems)
    assert "providers[0].pools[0].labels[0].dynamic-instance-properties.bad" in err
    assert expected in err


def test_values_upstream_accepts_load_as_upstream_treats_them(tmp_path):
    """``rate`` as a string is converted (upstream uses float()); ``rate: 0``
    means no spacing; a negative max-servers, min-ready, max-ready-age or a
    launch-retries below 1 load with a warning saying what upstream does and
    what to write instead."""
    data = copy.deepcopy(MINIMAL)
    data["providers"][0].update({"rate": "0.5", "launch-retries": 0})
    data["providers"][0]["pools"][0]["max-servers"] = -1
    data["labels"][0].update({"min-ready": -1, "max-ready-age": -1})
    config, problems, _ = run(tmp_path, data)
    assert errors(problems) == []
    provider = config.providers[data["providers"][0]["name"]]
    assert provider.rate == 0.5
    assert provider.pools["main"].max_servers == -1
    found = warnings(problems)
    assert any("pools[0].max-servers" in w and "disables the pool" in w and "write 0" in w
               for w in found), found
    assert any("labels[0].min-ready" in w and "treated as 0" in w for w in found), found
    assert any("labels[0].max-ready-age" in w for w in found), found
    assert any("launch-retries" in w and "one attempt" in w for w in found), found
    # rate: 0 is upstream's "no spacing": here, no fixed ceiling (as absent).
    data["providers"][0]["rate"] = 0
    config, problems, _ = run(tmp_path, data)
    assert config.providers[data["providers"][0]["name"]].rate is None
    data["providers"][0]["rate"] = "0.5"
    config, problems, _ = run(tmp_path, data)
    assert config.providers[data["providers"][0]["name"]].rate == 0.5


def test_a_pool_with_negative_max_servers_declines_as_upstream():
    from nodepool.requests.protocol import PoolSettings, decline_reasons
    from nodepool.zk.records import NodeRequest

    pool = PoolSettings(pool_id="p", provider_name="p", pool_name="main",
                        labels=frozenset({"small"}), max_servers=-1)
    request = NodeRequest(state="requested", node_types=["small"])
    assert decline_reasons(request, pool) == ["pool is disabled (max-servers <= 0)"]


def test_windows_labels_warn_when_server_names_exceed_15_characters(tmp_path):
    data = copy.deepcopy(MINIMAL)
    data["providers"][0]["cloud-images"][0]["connection-type"] = "winrm"
    config, problems, _ = run(tmp_path, data)
    assert config.providers["p1"].hostname_format == "np{node.id}"
    assert not [w for w in warnings(problems) if "hostname-format" in w]
    data["providers"][0]["hostname-format"] = "{label.name}-{provider.name}-{node.id}"
    config, problems, _ = run(tmp_path, data)
    found = [w for w in warnings(problems) if "providers[0].hostname-format" in w]
    assert found and "'small'" in found[0] and "15" in found[0], warnings(problems)
    # Not a Windows label: any length is fine.
    data["providers"][0]["cloud-images"][0]["connection-type"] = "ssh"
    config, problems, _ = run(tmp_path, data)
    assert not [w for w in warnings(problems) if "hostname-format" in w]
