"""Which addresses are public and who needs a floating IP (pure logic)."""

from __future__ import annotations

from nodepool.config.model import AddressPolicy, CloudNetwork
from nodepool.driver.openstack import addressing as ad

PRIVATE = {"id": "net-priv", "name": "private", "router:external": False}
PUBLIC = {"id": "net-pub", "name": "public", "router:external": True}
PROVIDER = {"id": "net-prov", "name": "provider", "router:external": False,
            "provider:physical_network": "physnet1"}
# A provider network in the 172.16/12 range: private by IP range, public by role.
EXT = {"id": "net-ext", "name": "ext", "router:external": True}


def _addr(addr, kind="fixed", version=None, mac=None):
    entry = {"addr": addr, "OS-EXT-IPS:type": kind}
    if version is not None:
        entry["version"] = version
    if mac is not None:
        entry["OS-EXT-IPS-MAC:mac_addr"] = mac
    return entry


def _layout(*nets, **policy):
    return ad.layout(nets or (PRIVATE, PUBLIC), AddressPolicy(**policy))


def test_private_only_server_needs_a_floating_ip():
    server = {"id": "s", "addresses": {"private": [_addr("10.0.0.5", version=4)]}}
    net = _layout()
    assert ad.addresses_of(server, net) == {
        "public_ipv4": None, "private_ipv4": "10.0.0.5", "public_ipv6": None,
        "interface_ip": "10.0.0.5"}
    assert ad.needs_floating_ip(server, net)
    assert net.floating_source == PUBLIC


def test_port_on_router_external_network_is_public_whatever_its_range():
    server = {"id": "s", "addresses": {"ext": [_addr("172.24.4.9", version=4)],
                                       "private": [_addr("10.0.0.5", version=4)]}}
    net = _layout(PRIVATE, EXT)
    a = ad.addresses_of(server, net)
    assert a["public_ipv4"] == a["interface_ip"] == "172.24.4.9"
    assert a["private_ipv4"] == "10.0.0.5"
    assert not ad.needs_floating_ip(server, net)


def test_provider_physical_network_is_external_unless_clouds_yaml_says_otherwise():
    server = {"id": "s", "addresses": {"provider": [_addr("192.168.5.4", version=4)]}}
    assert ad.public_ipv4(server, _layout(PRIVATE, PROVIDER, PUBLIC)) == "192.168.5.4"
    internal = _layout(PRIVATE, PROVIDER, PUBLIC,
                       networks=(CloudNetwork("provider", routes_ipv4_externally=False),))
    assert ad.public_ipv4(server, internal) is None
    assert ad.addresses_of(server, internal)["private_ipv4"] == "192.168.5.4"
    assert ad.needs_floating_ip(server, internal)


def test_routes_externally_in_clouds_yaml_makes_a_plain_network_public():
    server = {"id": "s", "addresses": {"private": [_addr("10.0.0.5", version=4)]}}
    net = _layout(networks=(CloudNetwork("private", routes_ipv4_externally=True),))
    assert ad.public_ipv4(server, net) == "10.0.0.5"
    assert not ad.needs_floating_ip(server, net)


def test_floating_ip_source_none_and_private_true_never_want_one():
    server = {"id": "s", "addresses": {"private": [_addr("10.0.0.5", version=4)]}}
    assert not ad.needs_floating_ip(server, _layout(floating_ips=False))
    private = _layout(private=True)
    assert not ad.needs_floating_ip(server, private)
    assert ad.addresses_of(server, private)["interface_ip"] == "10.0.0.5"


def test_no_network_to_take_one_from():
    server = {"id": "s", "addresses": {"private": [_addr("10.0.0.5", version=4)]}}
    assert not ad.needs_floating_ip(server, _layout(PRIVATE))


def test_nat_source_picks_the_floating_network():
    other = {"id": "net-other", "name": "other", "router:external": True}
    net = _layout(PRIVATE, PUBLIC, other,
                  networks=(CloudNetwork("other", routes_ipv4_externally=True,
                                         nat_source=True),))
    assert net.floating_source == other


def test_floating_address_wins_and_private_is_the_one_behind_it():
    server = {"id": "s", "addresses": {
        "private": [_addr("10.0.0.5", version=4, mac="m1"),
                    _addr("172.24.4.7", "floating", 4, mac="m2")],
        "private2": [_addr("10.1.0.5", version=4, mac="m2")]}}
    net = _layout(PRIVATE, {"id": "n2", "name": "private2"}, PUBLIC)
    a = ad.addresses_of(server, net)
    assert a["public_ipv4"] == a["interface_ip"] == "172.24.4.7"
    assert a["private_ipv4"] == "10.1.0.5"
    assert not ad.needs_floating_ip(server, net)


def test_default_interface_and_globally_routable_fallback():
    server = {"id": "s", "addresses": {"other": [_addr("104.130.1.9", version=4)],
                                       "private": [_addr("10.0.0.5", version=4)]}}
    net = _layout()
    assert ad.public_ipv4(server, net) == "104.130.1.9"
    chosen = _layout(networks=(CloudNetwork("private", default_interface=True),))
    assert ad.addresses_of(server, chosen)["interface_ip"] == "10.0.0.5"


def test_ipv6_and_access_ips():
    net = _layout()
    a = ad.addresses_of({"addresses": {"v6": [_addr("fe80::1"), _addr("2001:db8::5")]}}, net)
    assert a["interface_ip"] == a["public_ipv6"] == "2001:db8::5"
    assert a["public_ipv4"] is None
    a = ad.addresses_of({"addresses": {}, "accessIPv4": "198.51.100.3"}, net)
    assert a["interface_ip"] == "198.51.100.3"
    assert ad.addresses_of({"addresses": None}, net)["interface_ip"] is None
    assert ad.addresses_of({}, net)["interface_ip"] is None


def test_floating_ip_port_choice():
    server = {"id": "s", "addresses": {"private": [_addr("10.0.0.6", version=4)]}}
    ports = [{"id": "p0", "device_id": "other", "network_id": "net-priv",
              "fixed_ips": [{"ip_address": "10.0.0.6"}]},
             {"id": "p1", "device_id": "s", "network_id": "net-priv",
              "fixed_ips": [{"ip_address": "10.0.0.9"}]},
             {"id": "p2", "device_id": "s", "network_id": "net-priv",
              "fixed_ips": [{"ip_address": "10.0.0.6"}]},
             {"id": "p3", "device_id": "s", "network_id": "net-dest",
              "fixed_ips": [{"ip_address": "10.9.0.6"}]}]
    assert ad.floating_ip_port(ports, server, _layout())["id"] == "p2"
    dest = {"id": "net-dest", "name": "dest"}
    net = _layout(PRIVATE, dest, PUBLIC, networks=(CloudNetwork("dest", nat_destination=True),))
    assert ad.floating_ip_port(ports, server, net)["id"] == "p3"
    assert ad.floating_ip_port(ports[:1], server, _layout()) is None
