"""Which networks and subnets a project sees, as neutron's default policy
has it, and what openstacksdk makes of that (the real openstacksdk over HTTP).

A project reads the subnets of its own and of shared networks only.  With
several ports per server on the private layout, openstacksdk picks the NAT
destination among networks with a visible subnet that has a gateway: if the
external network's subnet were visible it would pick that one, and no
client could attach a floating IP (upstream Nodepool failed every such boot).
"""

from __future__ import annotations

from tests.fixtures.fakecloud import wait_for


def test_private_layout_hides_the_external_subnet(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    nets = {n.name: n for n in conn.list_networks()}
    assert nets["public"].is_router_external and not nets["public"].is_shared
    assert nets["private"].is_shared and not nets["private"].is_router_external
    subnets = conn.list_subnets()
    assert {s.network_id for s in subnets} == {nets["private"].id}
    [public_subnet] = nets["public"].subnet_ids
    assert conn.network.get(f"/subnets/{public_subnet}").status_code == 404
    assert conn.get_nat_destination()["name"] == "private"
    assert conn.get_nat_source()["name"] == "public"


def test_a_server_with_several_ports_gets_a_floating_ip(fakecloud, fakecloud_connect):
    conn = fakecloud_connect(fakecloud)
    fakecloud.set_server_behaviour(boot_seconds=0, ports_per_server=3)
    server = conn.create_server("n", image="cirros", flavor="m1.small", wait=False)
    wait_for(lambda: conn.get_server_by_id(server.id).status == "ACTIVE")
    server = conn.get_server_by_id(server.id)
    port, fixed = conn._nat_destination_port(server)   # what auto-IP relies on
    assert port is not None and port.network_id == conn.get_network("private").id
    fip = conn.create_floating_ip(server=server, wait=False)
    assert fip.fixed_ip_address == fixed


def test_provider_layout_shares_the_external_network(make_fakecloud, fakecloud_connect):
    cloud = make_fakecloud({"servers": {"network_layout": "provider"}})
    conn = fakecloud_connect(cloud)
    public = conn.get_network("public")
    assert public.is_router_external and public.is_shared
    assert public.id in {s.network_id for s in conn.list_subnets()}
