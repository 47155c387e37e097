"""The fakecloud's per-project server index and floating-IP map (kept so
that one project's list and usage do not scan every project's servers):
the same answers as a scan of everything, through creates and deletes."""

from __future__ import annotations

import random

from nodepool.fakecloud.config import config_from_dict
from nodepool.fakecloud.model import CloudState, ServerRequest


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _request(state: CloudState, name: str) -> ServerRequest:
    return ServerRequest(name=name, flavor_ref="2", image_ref=next(iter(state.images)),
                         networks="auto",
                         metadata={}, key_name=None, user_data=None, config_drive=False,
                         availability_zone=None, block_devices=[])


def test_project_index_matches_a_scan_through_creates_and_deletes():
    projects = [{"name": f"p{i}", "users": [{"name": "u", "password": "pw"}],
                 "limits": {"instances": -1, "cores": -1, "ram": -1, "ports": -1}}
                for i in range(3)]
    clock = Clock()
    state = CloudState(config_from_dict({"projects": projects,
                                         "servers": {"boot_seconds": 1.0,
                                                     "delete_seconds": 1.0}}), clock, seed=3)
    ids = [p.id for p in state.projects.values()]
    rng = random.Random(3)
    for step in range(300):
        clock.now += 0.1
        pid = rng.choice(ids)
        listed = state.list_servers(pid)
        if listed and rng.random() < 0.4:
            state.delete_server(pid, rng.choice(listed).id)
        else:
            user = state.projects[pid].config.users[0].id
            state.create_servers(pid, user, _request(state, f"s{step}"))
        for p in ids:
            scan = sorted((s for s in state.servers.values() if s.project_id == p),
                          key=lambda s: s.seq, reverse=True)
            assert [s.id for s in state.list_servers(p)] == [s.id for s in scan]
            assert state.usage(p)["instances"] == len(scan)
            assert state.usage(p)["cores"] == sum(s.flavor.vcpus for s in scan)
            assert sum(state.servers_by_state(p).values()) == len(scan)
    clock.now += 10
    state.advance()
    assert sum(len(v) for v in state.project_servers.values()) == len(state.servers)


def test_addresses_list_the_floating_ips_bound_to_each_port():
    clock = Clock()
    state = CloudState(config_from_dict({}), clock, seed=1)
    pid = next(iter(state.projects))
    user = state.projects[pid].config.users[0].id
    servers = [state.create_servers(pid, user, _request(state, f"s{i}"))[0] for i in range(3)]
    public = next(n for n in state.networks.values() if n.config.external)
    fip = state.create_floating_ip(pid, public.config.id, servers[1].port_ids[0])
    fips = state.fips_by_port()
    assert list(fips) == [servers[1].port_ids[0]]
    for s in servers:
        addresses = state.server_addresses(s, fips)
        assert addresses == state.server_addresses(s)   # with and without the map
        floating = [a["addr"] for net in addresses.values() for a in net
                    if a["OS-EXT-IPS:type"] == "floating"]
        assert floating == ([fip.address] if s is servers[1] else [])
