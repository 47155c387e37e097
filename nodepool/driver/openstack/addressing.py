"""Which of a server's addresses are public, and whether it needs a floating IP.

Pure functions over nova's ``addresses`` (keyed by network name), neutron's
network list (from the catalog) and clouds.yaml's ``networks``,
``floating_ip_source`` and ``private``.  The rules are openstacksdk's, so a
cloud configured for openstacksdk behaves the same here, without its
per-server port and floating-IP lookups:

* a network is external (its addresses public) when clouds.yaml says it
  ``routes_externally`` (or ``routes_ipv4_externally``), or neutron marks it
  ``router:external`` or gives it a ``provider:physical_network``, unless
  clouds.yaml says it does not route externally;
* ``public_ipv4``: ``accessIPv4``, else an address on an external network,
  else a floating address, else one on a network named ``public``, else any
  globally routable IPv4 address;
* ``private_ipv4``: a fixed address on an internal network (the one behind
  the floating IP when there is one), else one on a network named
  ``private``; when there is none, the public address (as upstream Nodepool
  reports it);
* ``interface_ip``: the address on the ``default_interface`` network, else
  the private address when ``private: true``, else ``public_ipv4``.  Where
  openstacksdk would leave it empty we fall back to the public IPv6, then
  the private address, so a cloud without floating IPs still gets nodes;
* a floating IP is wanted only when floating IPs are not disabled
  (``floating_ip_source: None``), ``private`` is off, the server has no
  public IPv4 and no floating address but a fixed one, and the cloud has a
  network to take it from (``nat_source``, else the first
  ``router:external`` network).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from nodepool.config.model import AddressPolicy


@dataclass(frozen=True)
class NetworkLayout:
    """The cloud's networks sorted by role (names and ids)."""

    external_v4: frozenset[str] = frozenset()
    internal_v4: frozenset[str] = frozenset()
    floating_source: Mapping[str, Any] | None = None
    nat_destination: Mapping[str, Any] | None = None
    default_interface: str | None = None
    floating_ips: bool = True
    private: bool = False


def _named(net: Mapping[str, Any], names: set[str]) -> bool:
    return net.get("name") in names or net.get("id") in names


def layout(networks: Iterable[Mapping[str, Any]], policy: AddressPolicy) -> NetworkLayout:
    external_names = {n.name for n in policy.networks if n.routes_ipv4_externally}
    internal_names = {n.name for n in policy.networks if not n.routes_ipv4_externally}
    nat_source = next((n.name for n in policy.networks if n.nat_source), None)
    nat_dest = next((n.name for n in policy.networks if n.nat_destination), None)
    default = next((n.name for n in policy.networks if n.default_interface), None)
    external: set[str] = set()
    internal: set[str] = set()
    source = dest = None
    for net in networks:
        routed = bool(net.get("router:external") or net.get("provider:physical_network"))
        keys = {k for k in (net.get("name"), net.get("id")) if k}
        if _named(net, external_names) or (routed and not _named(net, internal_names)):
            external |= keys
        if _named(net, internal_names) or (not routed and not _named(net, external_names)):
            internal |= keys
        if nat_source is not None:
            if nat_source in keys:
                source = net
        elif source is None and net.get("router:external"):
            source = net
        if nat_dest is not None and nat_dest in keys:
            dest = net
    return NetworkLayout(frozenset(external), frozenset(internal), source, dest, default,
                         policy.floating_ips, policy.private)


def _entries(server: Mapping[str, Any], *, network: str | None = None,
             kind: str | None = None, version: int = 4,
             mac: str | None = None) -> list[str]:
    """Addresses in nova's order, floating ones first (as openstacksdk)."""
    floating: list[str] = []
    fixed: list[str] = []
    for name, entries in (server.get("addresses") or {}).items():
        if network is not None and name != network:
            continue
        for entry in entries or []:
            addr = entry.get("addr")
            if not addr:
                continue
            if entry.get("version", 6 if ":" in addr else 4) != version:
                continue
            tag = entry.get("OS-EXT-IPS:type")
            if kind is not None and tag != kind:
                continue
            if mac is not None and entry.get("OS-EXT-IPS-MAC:mac_addr") != mac:
                continue
            (floating if tag == "floating" else fixed).append(addr)
    return floating + fixed


def _networks_named(server: Mapping[str, Any], names: frozenset[str]) -> list[str]:
    return [n for n in (server.get("addresses") or {}) if n in names]


def public_ipv4(server: Mapping[str, Any], net: NetworkLayout) -> str | None:
    if server.get("accessIPv4"):
        return server["accessIPv4"]
    for name in _networks_named(server, net.external_v4):
        found = _entries(server, network=name)
        if found:
            return found[0]
    for found in (_entries(server, kind="floating"), _entries(server, network="public")):
        if found:
            return found[0]
    for addr in _entries(server):
        try:
            if not ipaddress.ip_address(addr).is_private:
                return addr
        except ValueError:
            continue
    return None


def private_ipv4(server: Mapping[str, Any], net: NetworkLayout) -> str | None:
    # The address behind a floating IP, when there is one.
    mac = None
    for entries in (server.get("addresses") or {}).values():
        for entry in entries or []:
            if entry.get("OS-EXT-IPS:type") == "floating":
                mac = mac or entry.get("OS-EXT-IPS-MAC:mac_addr")
    for kind in ("fixed", None):
        for name in _networks_named(server, net.internal_v4):
            found = _entries(server, network=name, kind=kind, mac=mac)
            if found:
                return found[0]
    for kind in ("fixed", None):
        found = _entries(server, network="private", kind=kind,
                         mac=mac if kind else None)
        if found:
            return found[0]
    return None


def public_ipv6(server: Mapping[str, Any]) -> str | None:
    if server.get("accessIPv6"):
        return server["accessIPv6"]
    for addr in _entries(server, version=6):
        if not ipaddress.ip_address(addr).is_link_local:
            return addr
    return None


def addresses_of(server: Mapping[str, Any], net: NetworkLayout) -> dict[str, str | None]:
    """public/private IPv4, public IPv6 and the interface address."""
    pub4 = public_ipv4(server, net)
    priv4 = private_ipv4(server, net)
    pub6 = public_ipv6(server)
    interface = None
    if net.default_interface:
        found = _entries(server, network=net.default_interface)
        interface = found[0] if found else None
    if interface is None and net.private:
        interface = priv4
    interface = interface or pub4 or pub6 or priv4
    return {"public_ipv4": pub4, "private_ipv4": priv4 or pub4, "public_ipv6": pub6,
            "interface_ip": interface}


def needs_floating_ip(server: Mapping[str, Any], net: NetworkLayout) -> bool:
    if not net.floating_ips or net.private or net.floating_source is None:
        return False
    if public_ipv4(server, net) or _entries(server, kind="floating"):
        return False
    return bool(private_ipv4(server, net) or _entries(server, kind="fixed"))


def floating_ip_port(ports: Iterable[Mapping[str, Any]], server: Mapping[str, Any],
                     net: NetworkLayout) -> Mapping[str, Any] | None:
    """The server's port to attach the floating IP to: the one on the
    ``nat_destination`` network if configured, else the one holding the
    server's private address, else its first port on an internal network."""
    mine = [p for p in ports if p.get("device_id") == server.get("id")]
    if net.nat_destination is not None:
        return next((p for p in mine if p.get("network_id") == net.nat_destination.get("id")),
                    None)
    private = private_ipv4(server, net)
    for port in mine:
        if any(ip.get("ip_address") == private for ip in port.get("fixed_ips") or []):
            return port
    return next((p for p in mine if p.get("network_id") in net.internal_v4), None)
