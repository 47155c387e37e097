"""What a label needs from the cloud, and the create request built from it.

``LabelPlanner.plan`` resolves a label of a pool (its config) against the
cloud's catalog: the flavor, the image (or the diskimage's newest upload)
and the networks, with the cost the quota ledger reserves.  ``create_body``
turns a plan into nova's create request.  Neither knows a machine or the
provider: they take the config, the plan and the build's spec.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

from nodepool.driver.openstack import servers as srv
from nodepool.driver.openstack.catalog import (CloudCatalog, describe_flavor_choice,
                                               pick_flavor)
from nodepool.quota import Resources, label_cost
from nodepool.requests.builder import BuildSpec
from nodepool.zk.image_records import ImageUpload

# Reported as the provider's, as they always were.
log = logging.getLogger("nodepool.openstack.provider")


@dataclass
class LabelPlan:
    """What the create needs, resolved from config and catalog."""

    flavor: dict
    image: dict
    network_ids: list[str]
    cost: Resources
    # A diskimage label: the upload booted (its znode path), the node's image_id.
    image_path: str | None = None


class LabelPlanner:
    def __init__(self, name: str, cloud_name: str, catalog: CloudCatalog,
                 image_upload: Callable[[str, str], ImageUpload | None] | None = None):
        self.name = name                  # the provider's
        self.cloud_name = cloud_name      # updated on a config reload
        self.catalog = catalog
        # (diskimage, provider) -> the newest READY upload by upstream's
        # builder (the launcher's image cache); None: no diskimage is served.
        self.image_upload = image_upload
        self._unservable_logged: set[tuple[str, str, str]] = set()

    def plan(self, label: Any, pool: Any) -> tuple[LabelPlan | None, str | None, bool]:
        """(plan, problem, final): final when the catalog is fresh and still
        lacks what the label needs (a config problem, not a wait)."""
        if not self.catalog.loaded("flavors", "images", "networks"):
            return None, "reading flavors, images and networks", False
        image_cfg = label.cloud_image
        upload = None
        diskimage = getattr(label, "diskimage", None)
        if diskimage is not None:
            # Chosen now, once per build: should the builder delete this
            # upload while the server boots, the build goes on with it.
            upload = self.newest_upload(diskimage.name)
            if upload is None:
                return None, (f"diskimage {diskimage.name} has no READY upload for provider "
                              f"{self.name}"), True
        flavor = pick_flavor(self.catalog.items("flavors"), name=label.flavor_name,
                             min_ram=label.min_ram)
        if upload is not None:
            # Booted by its id, as upstream does: no search of the catalog.
            image: Any = {"id": upload.external_id,
                          "name": upload.external_name or upload.external_id}
        else:
            image = srv.pick_image(self.catalog.items("images"), image_id=image_cfg.image_id,
                                   image_name=image_cfg.image_name,
                                   fallback_name=image_cfg.name)
        nets = []
        missing = []
        # Each miss is noted (so its list is re-read) before deciding whether
        # it is final: only a list read after the miss can say it is.
        settled = True
        for ref in label.networks:
            net = srv.pick_network(self.catalog.items("networks"), ref)
            if net is None:
                missing.append(f"network {ref!r}")
            else:
                nets.append(net["id"])
        if len(nets) < len(label.networks):
            settled = self.catalog.missed("networks") and settled
        if flavor is None:
            missing.append(describe_flavor_choice(label.flavor_name, label.min_ram))
            settled = self.catalog.missed("flavors") and settled
        if image is None:
            missing.append(f"image {image_cfg.reference!r}")
            settled = self.catalog.missed("images") and settled
        if missing:
            if not settled:
                return None, f"cloud has no {', '.join(missing)} (re-reading)", False
            problem = f"cloud {self.cloud_name} has no {', '.join(missing)}"
            self._log_unservable(label, pool, problem)
            return None, problem, True
        cost = label_cost(int(flavor.get("vcpus") or 0), int(flavor.get("ram") or 0),
                          boot_from_volume=label.boot_from_volume,
                          volume_size_gb=label.volume_size if label.boot_from_volume else 0)
        return LabelPlan(dict(flavor), dict(image), nets, cost,
                         image_path=upload.path if upload is not None else None), None, False

    def create_refused(self) -> None:
        """Nova refused a create as a bad request: the image or the flavor
        may be gone, so both lists are read again."""
        self.catalog.missed("images")
        self.catalog.missed("flavors")

    def newest_upload(self, diskimage: str) -> ImageUpload | None:
        if self.image_upload is None:
            return None
        try:
            return self.image_upload(diskimage, self.name)
        except Exception:  # the cache's bug must not stop planning
            log.exception("%s: looking up the uploads of diskimage %s failed", self.name,
                          diskimage)
            return None

    def _log_unservable(self, label: Any, pool: Any, problem: str) -> None:
        """config-validate cannot see the cloud's catalog, so this is where a
        label that names no existing flavor, image or network is reported:
        once per label and problem, not on every capacity check."""
        key = (pool.name, label.name, problem)
        if key in self._unservable_logged:
            return
        self._unservable_logged.add(key)
        log.error("%s: pool %s: label %s cannot be served: %s; fix the label in "
                  "nodepool.yaml (flavor-name, min-ram, cloud-image, networks)", self.name,
                  pool.name, label.name, problem)


def create_body(*, name: str, provider: str, pool: Any, label: Any, plan: LabelPlan,
                spec: BuildSpec, attempt: int) -> dict:
    """Nova's create request for attempt ``attempt`` of the build ``spec``
    of ``label`` in ``pool`` (their config), named ``name``."""
    image_cfg = label.cloud_image
    meta = srv.server_metadata(provider=provider, pool=pool.name, node_id=spec.node_id,
                               label=spec.label, image=image_cfg.name, attempt=attempt,
                               tenant=spec.tenant_name)
    # The request handler chose the zone for all of the request's nodes.
    return srv.create_request(
        name=name, flavor_id=plan.flavor["id"], image_id=plan.image["id"], metadata=meta,
        network_ids=plan.network_ids, key_name=label.key_name, userdata=label.userdata,
        availability_zone=spec.az, security_groups=pool.security_groups,
        config_drive=image_cfg.config_drive, boot_from_volume=label.boot_from_volume,
        volume_size=label.volume_size,
        instance_properties=instance_properties(label, spec, provider),
        inventory_groups=srv.server_groups(provider=provider, image=image_cfg.name,
                                           label=spec.label))


def instance_properties(label: Any, spec: BuildSpec, provider: str) -> dict:
    """The label's instance-properties plus its dynamic ones, formatted
    with the node request; one that cannot be formatted is left out (the
    node still boots) and logged."""
    props = dict(label.instance_properties)
    dynamic = getattr(label, "dynamic_instance_properties", None) or {}
    if dynamic:
        request = SimpleNamespace(**(spec.request or {}))
        for key, template in dynamic.items():
            try:
                props[key] = template.format(request=request)
            except Exception as e:  # noqa: BLE001 - data from the request
                log.warning("%s: node %s: dynamic instance property %s not set: %s: %s",
                            provider, spec.node_id, key, type(e).__name__, e)
    return props
