"""Pure helpers: what we send nova for a create, and what we read back.

Metadata ties a server to this provider, its node and the launch attempt, so
a server whose create timed out on our side, or that came back in ERROR, is
found in the server list and deleted instead of leaked.  The keys are the
ones upstream Nodepool writes (so servers it left behind are recognised) plus
``nodepool_attempt``.
"""

from __future__ import annotations

import base64
from typing import Any, Iterable, Mapping

META_PROVIDER = "nodepool_provider_name"
META_NODE = "nodepool_node_id"
META_TENANT = "nodepool_tenant_name"
META_POOL = "nodepool_pool_name"
META_LABEL = "nodepool_node_label"
META_IMAGE = "nodepool_image_name"
META_ATTEMPT = "nodepool_attempt"
# "<provider>,<image>,<label>", as upstream writes it: Ansible inventory
# scripts make host groups of it.
META_GROUPS = "groups"


class _Names:
    """Attribute access for hostname-format fields ({label.name}, {node.id})."""

    def __init__(self, **values: str):
        self.__dict__.update(values)


def hostname(fmt: str, *, label: str, provider: str, pool: str, node_id: str) -> str:
    name = fmt.format(label=_Names(name=label), provider=_Names(name=provider),
                      pool=_Names(name=pool), node=_Names(id=node_id))
    # Nova accepts most names, but the hostname the guest gets is derived from
    # it; keep to characters every image's cloud-init handles (ASCII letters,
    # digits, "-" and "."; no leading or trailing separator).
    clean = "".join(c if (c.isascii() and c.isalnum()) or c in "-." else "-" for c in name)
    clean = clean[:63].strip("-.")
    return clean or f"node-{node_id}"[:63]


NOVA_METADATA_MAX = 255


def attempt_key(node_id: Any, attempt: Any) -> str:
    """The quota ledger's key of one create attempt: ``<node id>/<attempt>``."""
    return f"{node_id}/{attempt}"


def ledger_key(meta: Mapping[str, Any], node_id: str | None = None) -> str:
    """``attempt_key`` from a server's metadata (``node_id`` when the caller
    knows it)."""
    node = node_id if node_id is not None else meta.get(META_NODE)
    return attempt_key(node, meta.get(META_ATTEMPT, "0"))


def server_groups(*, provider: str, image: str, label: str) -> str:
    """The ``groups`` metadata value: the provider, the image's name in the
    config (cloud-image or diskimage) and the label."""
    return ",".join((provider, image, label))


def server_metadata(*, provider: str, pool: str, node_id: str, label: str,
                    image: str, attempt: int, tenant: str | None = None) -> dict[str, str]:
    # Upstream's three keys first, in its order; then this launcher's.
    meta = {META_NODE: node_id, META_POOL: pool, META_PROVIDER: provider,
            META_LABEL: label, META_IMAGE: image, META_ATTEMPT: str(attempt)}
    if tenant:
        # So a restarted launcher that adopts the server counts it against
        # the tenant's resource limits again.
        meta[META_TENANT] = tenant
    return meta


def create_request(*, name: str, flavor_id: str, image_id: str, metadata: Mapping[str, str],
                   network_ids: Iterable[str] = (), key_name: str | None = None,
                   userdata: str | None = None, availability_zone: str | None = None,
                   security_groups: Iterable[str] = (), config_drive: bool | None = None,
                   boot_from_volume: bool = False, volume_size: int = 50,
                   instance_properties: Mapping[str, Any] | None = None,
                   inventory_groups: str | None = None) -> dict:
    """The body of ``POST /servers`` (microversion 2.1 form).  The metadata
    is built as upstream's: ``groups``, then the instance properties (which
    may replace it), then ``metadata`` (ours win: they are how the server is
    found again)."""
    # nova refuses keys or values over 255 characters (HTTP 400).
    meta = {META_GROUPS: inventory_groups[:NOVA_METADATA_MAX]} if inventory_groups else {}
    meta.update({str(k)[:NOVA_METADATA_MAX]: str(v)[:NOVA_METADATA_MAX]
                 for k, v in (instance_properties or {}).items()})
    meta.update(metadata)
    body: dict[str, Any] = {"name": name, "flavorRef": flavor_id, "metadata": meta,
                            "min_count": 1, "max_count": 1}
    nets = list(network_ids)
    if nets:
        body["networks"] = [{"uuid": n} for n in nets]
    if boot_from_volume:
        body["block_device_mapping_v2"] = [{
            "boot_index": 0, "uuid": image_id, "source_type": "image",
            "destination_type": "volume", "volume_size": volume_size,
            "delete_on_termination": True}]
        body["imageRef"] = ""
    else:
        body["imageRef"] = image_id
    if key_name:
        body["key_name"] = key_name
    if userdata:
        body["user_data"] = base64.b64encode(userdata.encode()).decode()
    if availability_zone:
        body["availability_zone"] = availability_zone
    groups = list(security_groups)
    if groups:
        body["security_groups"] = [{"name": g} for g in groups]
    if config_drive is not None:
        body["config_drive"] = config_drive
    return body


def fault_message(server: Mapping[str, Any]) -> str:
    fault = server.get("fault") or {}
    return str(fault.get("message") or fault.get("details") or "no fault given")


def is_partial(server: Mapping[str, Any]) -> bool:
    """A server of a nova cell that does not answer (microversion 2.69): an
    id, status UNKNOWN and little else.  It exists; nothing more is known."""
    return str(server.get("status", "")).upper() == "UNKNOWN" and "metadata" not in server


def is_deleting(server: Mapping[str, Any]) -> bool:
    return server.get("OS-EXT-STS:task_state") == "deleting" or \
        str(server.get("status", "")).upper() in ("DELETED", "SOFT_DELETED")


def pick_image(images: Iterable[Mapping[str, Any]], *, image_id: str | None,
               image_name: str | None, fallback_name: str) -> Mapping[str, Any] | None:
    images = list(images)
    if image_id:
        return next((i for i in images if i.get("id") == image_id), None)
    wanted = image_name or fallback_name
    active = [i for i in images if i.get("name") == wanted
              and str(i.get("status", "active")).lower() == "active"]
    if not active:
        return None
    # Several images of one name: the newest, as operators upload replacements.
    return max(active, key=lambda i: str(i.get("created_at", "")))


def pick_network(networks: Iterable[Mapping[str, Any]], ref: str) -> Mapping[str, Any] | None:
    networks = list(networks)
    return next((n for n in networks if n.get("id") == ref), None) or \
        next((n for n in networks if n.get("name") == ref), None)
