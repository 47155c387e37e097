"""Choosing a label's flavor as upstream Nodepool does: pure rules, then a
launch against the fakecloud's flavor list through openstacksdk."""

from __future__ import annotations

import logging

import pytest

from nodepool.driver.openstack.catalog import describe_flavor_choice, pick_flavor
from tests.fixtures.fakecloud import wait_for
from tests.test_launcher import (finished, run_launcher, store,  # noqa: F401 - fixtures
                                 write_config, zuul_request)

FLAVORS = [{"id": "1", "name": "m1.tiny", "vcpus": 1, "ram": 512},
           {"id": "2", "name": "m1.small", "vcpus": 1, "ram": 2048},
           {"id": "5", "name": "m1.medium-wide", "vcpus": 4, "ram": 4096},
           {"id": "3", "name": "m1.medium", "vcpus": 2, "ram": 4096},
           {"id": "9", "name": "gone", "vcpus": 1, "ram": 3000,
            "OS-FLV-DISABLED:disabled": True},
           {"id": "p16", "name": "Performance 16GB", "vcpus": 8, "ram": 16384},
           {"id": "p8", "name": "Performance 8GB", "vcpus": 4, "ram": 8192},
           {"id": "g8", "name": "General 8GB", "vcpus": 2, "ram": 8192}]


def test_flavor_name_alone_is_an_exact_name_or_id():
    assert pick_flavor(FLAVORS, name="m1.small", min_ram=0)["id"] == "2"
    assert pick_flavor(FLAVORS, name="3", min_ram=0)["name"] == "m1.medium"
    assert pick_flavor(FLAVORS, name="m1", min_ram=0) is None
    assert pick_flavor(FLAVORS, name="gone", min_ram=0) is None


def test_min_ram_takes_the_smallest_fit_by_ram_then_name():
    assert pick_flavor(FLAVORS, name=None, min_ram=2500)["name"] == "m1.medium"
    assert pick_flavor(FLAVORS, name=None, min_ram=2048)["name"] == "m1.small"
    assert pick_flavor(FLAVORS, name=None, min_ram=8000)["name"] == "General 8GB"
    assert pick_flavor(FLAVORS, name=None, min_ram=100000) is None


def test_flavor_name_with_min_ram_is_a_substring_filter():
    assert pick_flavor(FLAVORS, name="Performance", min_ram=8192)["id"] == "p8"
    assert pick_flavor(FLAVORS, name="Performance", min_ram=9000)["id"] == "p16"
    assert pick_flavor(FLAVORS, name="medium", min_ram=1)["name"] == "m1.medium"
    assert pick_flavor(FLAVORS, name="Performance", min_ram=32768) is None


def test_the_missing_flavor_is_described_as_the_label_asked_for_it():
    assert "contains 'Performance'" in describe_flavor_choice("Performance", 8192)
    assert "8192 MB" in describe_flavor_choice(None, 8192)
    assert describe_flavor_choice("m1.huge", 0) == "flavor 'm1.huge'"


@pytest.mark.timeout(120)
def test_launch_picks_the_performance_flavor_and_reports_a_label_without_one(
        tmp_path, make_fakecloud, zk_settings, store, run_launcher, caplog):  # noqa: F811
    cloud = make_fakecloud({"flavors": [
        {"id": "g8", "name": "General 8GB", "vcpus": 2, "ram": 8192},
        {"id": "p4", "name": "Performance 4GB", "vcpus": 2, "ram": 4096},
        {"id": "p16", "name": "Performance 16GB", "vcpus": 8, "ram": 16384},
        {"id": "p8", "name": "Performance 8GB", "vcpus": 4, "ram": 8192}],
        "servers": {"boot_seconds": 0.1, "delete_seconds": 0.1}})
    perf = {"name": "perf", "cloud-image": "img", "flavor-name": "Performance",
            "min-ram": 8192}
    huge = {"name": "huge", "cloud-image": "img", "flavor-name": "Performance",
            "min-ram": 65536}
    config = write_config(tmp_path, cloud, zk_settings,
                          labels=[{"name": "perf"}, {"name": "huge"}],
                          pool={"labels": [perf, huge]})
    caplog.set_level(logging.ERROR, logger="nodepool.openstack.provider")
    run_launcher(config)
    req = zuul_request(store, ["perf"])
    done = wait_for(lambda: finished(store, req.id), 30, what="fulfilment")
    assert done.state == "fulfilled"
    [server] = cloud.servers()
    assert server["flavor"] == "Performance 8GB", server["flavor"]
    assert store.get_node(done.nodes[0]).resources["ram"] == 8192

    bad = zuul_request(store, ["huge"])
    failed = wait_for(lambda: finished(store, bad.id), 30, what="declined request")
    assert failed.state == "failed"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("label huge cannot be served" in m and "contains 'Performance'" in m
               and "65536 MB" in m for m in errors), errors
