"""The clouds.yaml policy: api_timeout and caching that really works."""

from __future__ import annotations

import copy
import os

import pytest
import yaml

from nodepool.config import validate
from nodepool.driver import registry
from nodepool.config.clouds import find_clouds_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "etc", "nodepool.yaml")
EXAMPLE_CLOUDS = os.path.join(ROOT, "etc", "clouds.yaml")
SECRET = "nodepool-secret"

with open(EXAMPLE_CLOUDS) as _f:
    GOOD = yaml.safe_load(_f)


def check(tmp_path, clouds: dict, config=EXAMPLE):
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(clouds))
    cfg, problems = validate(config, str(path), drivers=registry.drivers())
    errs = [str(p) for p in problems if p.severity == "error"]
    for e in errs:
        assert SECRET not in e  # never print credentials
    return cfg, errs, str(path)


def mutated(fn):
    data = copy.deepcopy(GOOD)
    fn(data)
    return data


def test_example_clouds_pass(tmp_path):
    cfg, errs, _ = check(tmp_path, GOOD)
    assert errs == [] and cfg is not None


@pytest.mark.parametrize("value", [None, 0, -5, "sixty", True, [], "0"])
def test_api_timeout_must_be_positive_number(tmp_path, value):
    data = mutated(lambda d: d["clouds"]["fakecloud"].update({"api_timeout": value}))
    cfg, errs, path = check(tmp_path, data)
    assert cfg is None
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{path}: clouds.fakecloud.api_timeout: ")
    assert "'fakecloud'" in errs[0] and "api_timeout: 60" in errs[0]


def test_api_timeout_missing(tmp_path):
    data = mutated(lambda d: d["clouds"]["fakecloud"].pop("api_timeout"))
    cfg, errs, path = check(tmp_path, data)
    assert cfg is None
    assert errs == [f"{path}: clouds.fakecloud.api_timeout: is missing for cloud 'fakecloud'; "
                    "without it a hung API call never returns. Add e.g. 'api_timeout: 60' "
                    "(seconds) to this cloud"]


def test_api_timeout_dash_spelling_accepted(tmp_path):
    def fn(d):
        d["clouds"]["fakecloud"].pop("api_timeout")
        d["clouds"]["fakecloud"]["api-timeout"] = 12.5
    cfg, errs, _ = check(tmp_path, mutated(fn))
    assert errs == []
    assert cfg.providers["fakecloud-region1"].cloud_settings.api_timeout == 12.5


def test_only_clouds_used_by_providers_are_checked(tmp_path):
    data = mutated(lambda d: d["clouds"].update({"unused": {"auth": {}}}))
    _, errs, _ = check(tmp_path, data)
    assert errs == []


def test_legacy_cache_keys_rejected_with_explanation(tmp_path):
    data = mutated(lambda d: d.update({"cache": {
        "class": "dogpile.cache.memory",
        "expiration": {"server": 5, "port": 5, "floating-ip": 5}}}))
    cfg, errs, path = check(tmp_path, data)
    assert cfg is None
    assert len(errs) == 1
    e = errs[0]
    assert e.startswith(f"{path}: cache.expiration: legacy keys")
    for word in ("'server'", "'port'", "'floating-ip'", "cache nothing",
                 "compute.servers.detail", "network.ports", "network.floatingips"):
        assert word in e


def test_expiration_time_alone_rejected(tmp_path):
    data = mutated(lambda d: d.update({"cache": {"expiration_time": 60}}))
    cfg, errs, path = check(tmp_path, data)
    assert cfg is None
    assert any("cache.expiration: is missing. 'expiration_time' alone caches nothing" in e
               for e in errs), errs


@pytest.mark.parametrize("cache, where, words", [
    (None, "cache", ["is missing", "dogpile.cache.memory"]),
    ({"class": "dogpile.cache.null", "expiration": {"compute.servers.detail": 5}},
     "cache.class", ["caches nothing"]),
    ({"expiration": {"compute.servers.detail": 5}}, "cache.class", ["caches nothing"]),
    ({"class": "dogpile.cache.memory", "expiration": {}}, "cache.expiration", ["non-empty"]),
    ({"class": "dogpile.cache.memory", "expiration": {"Servers!": 5}},
     "cache.expiration.Servers!", ["not a resource key"]),
    ({"class": "dogpile.cache.memory", "expiration": {"compute.limits": 30}},
     "cache.expiration.compute.limits", ["must not be cached"]),
    ({"class": "dogpile.cache.memory", "expiration": {"compute.servers.detail": "soon"}},
     "cache.expiration.compute.servers.detail", ["number of seconds"]),
    ("memory", "cache", ["expected a mapping"]),
])
def test_cache_policy(tmp_path, cache, where, words):
    data = copy.deepcopy(GOOD)
    if cache is None:
        data.pop("cache")
    else:
        data["cache"] = cache
    cfg, errs, path = check(tmp_path, data)
    assert cfg is None
    found = [e for e in errs if e.startswith(f"{path}: {where}: ")]
    assert found, errs
    for w in words:
        assert w in found[0]


def test_cache_inside_a_cloud_is_misplaced(tmp_path):
    data = mutated(lambda d: d["clouds"]["fakecloud"].update({"cache": {"class": "x"}}))
    _, errs, path = check(tmp_path, data)
    assert any(e.startswith(f"{path}: clouds.fakecloud.cache: ") and "top level" in e
               for e in errs)


def test_expiration_time_with_dotted_keys_is_fine(tmp_path):
    # expiration_time without a class selects the memory backend in openstacksdk.
    data = mutated(lambda d: d.update({"cache": {"expiration_time": 60, "expiration": {
        "compute.servers.detail": 5, "network.ports": -1}}}))
    _, errs, _ = check(tmp_path, data)
    assert errs == []


def test_unreadable_and_broken_clouds_files(tmp_path):
    cfg, problems = validate(EXAMPLE, str(tmp_path / "absent.yaml"), drivers=registry.drivers())
    assert cfg is None
    assert any("cannot read the file" in str(p) for p in problems)
    bad = tmp_path / "bad.yaml"
    bad.write_text("clouds: [\n")
    cfg, problems = validate(EXAMPLE, str(bad), drivers=registry.drivers())
    assert cfg is None
    assert any(str(p).startswith(f"{bad}: line") and "not valid YAML" in str(p)
               for p in problems)
    nolist = tmp_path / "nolist.yaml"
    nolist.write_text("- 1\n")
    cfg, problems = validate(EXAMPLE, str(nolist), drivers=registry.drivers())
    assert cfg is None and any("'clouds' key" in str(p) for p in problems)


def test_clouds_file_found_like_openstacksdk(tmp_path, monkeypatch):
    target = tmp_path / "from-env.yaml"
    target.write_text(yaml.safe_dump(GOOD))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(target))
    assert find_clouds_file() == str(target)
    assert find_clouds_file("/explicit.yaml") == "/explicit.yaml"
    cfg, problems = validate(EXAMPLE, None, drivers=registry.drivers())
    assert cfg is not None, problems
    assert cfg.providers["fakecloud-region1"].cloud_settings.clouds_file == str(target)
    # Without the variable, ./clouds.yaml comes first, as in openstacksdk.
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump(GOOD))
    assert find_clouds_file() == str(tmp_path / "clouds.yaml")


def test_no_clouds_file_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("nodepool.config.clouds.search_path",
                        lambda: [str(tmp_path / "clouds.yaml")])
    cfg, problems = validate(EXAMPLE, None, drivers=registry.drivers())
    assert cfg is None
    assert any("no clouds.yaml found" in str(p) and "--clouds" in str(p) for p in problems)


def test_openstacksdk_accepts_a_policy_compliant_file(tmp_path):
    """What we accept, openstacksdk reads with caching and the timeout on."""
    from openstack import config as os_config

    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    region = os_config.OpenStackConfig(config_files=[str(path)]).get_one("fakecloud")
    assert float(region.config["api_timeout"]) == 30
    assert region.get_cache_class() == "dogpile.cache.memory"
    assert region.get_cache_expirations()["compute.servers.detail"] == "5"


def test_network_roles_are_read_as_openstacksdk_reads_them(tmp_path):
    def change(d):
        d["clouds"]["fakecloud"].update({
            "floating_ip_source": "None", "private": "True",
            "networks": [{"name": "provider", "routes_externally": True},
                         {"name": "tenant", "routes_externally": False,
                          "nat_destination": True},
                         {"name": "v4only", "routes_externally": True,
                          "routes_ipv6_externally": False}]})
    cfg, errs, _ = check(tmp_path, mutated(change))
    assert errs == []
    policy = next(iter(cfg.providers.values())).cloud_settings.addresses
    assert not policy.floating_ips and policy.private
    roles = {n.name: n for n in policy.networks}
    assert roles["provider"].routes_ipv4_externally and roles["provider"].routes_ipv6_externally
    assert not roles["tenant"].routes_ipv4_externally and roles["tenant"].nat_destination
    assert roles["v4only"].routes_ipv4_externally and not roles["v4only"].routes_ipv6_externally
    cfg, _, _ = check(tmp_path, GOOD)  # no network roles in the example
    policy = next(iter(cfg.providers.values())).cloud_settings.addresses
    assert policy.floating_ips and not policy.private and policy.networks == ()


def test_network_entry_without_name_and_two_nat_destinations(tmp_path):
    def change(d):
        d["clouds"]["fakecloud"]["networks"] = [
            {"routes_externally": True},
            {"name": "a", "nat_destination": True}, {"name": "b", "nat_destination": True}]
    cfg, errs, path = check(tmp_path, mutated(change))
    assert cfg is None
    assert f"{path}: clouds.fakecloud.networks[0].name: every network entry needs a 'name' " \
           "(the network's name or id)" in errs
    assert any(e.startswith(f"{path}: clouds.fakecloud.networks: nat_destination is set on "
                            "several networks (a, b)") for e in errs), errs
