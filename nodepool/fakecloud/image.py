"""Glance v2: the version list (answered with 300) and read-only images."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from nodepool.fakecloud.config import ImageConfig, stable_id
from nodepool.fakecloud.errors import api_error
from nodepool.fakecloud.web import Request, Response, Router

if TYPE_CHECKING:
    from nodepool.fakecloud.cloud import FakeCloud

CREATED = "2025-01-01T00:00:00Z"
DEFAULT_PAGE = 25  # glance's limit_param_default
_FILTERS = {"name", "status", "visibility", "id", "owner", "disk_format", "container_format",
            "protected", "os_hidden"}


def render_image(img: ImageConfig) -> dict:
    digest = hashlib.sha512(img.id.encode()).hexdigest()
    return {"id": img.id, "name": img.name, "status": img.status, "visibility": "public",
            "protected": False, "os_hidden": False,
            "checksum": hashlib.md5(img.id.encode()).hexdigest(),  # noqa: S324 (fake data)
            "os_hash_algo": "sha512", "os_hash_value": digest,
            "owner": stable_id("project", "admin"), "size": img.size, "virtual_size": None,
            "min_ram": img.min_ram, "min_disk": img.min_disk, "disk_format": "qcow2",
            "container_format": "bare", "created_at": CREATED, "updated_at": CREATED,
            "tags": [], "self": f"/v2/images/{img.id}", "file": f"/v2/images/{img.id}/file",
            "schema": "/v2/schemas/image"}


def register(router: Router, cloud: "FakeCloud") -> None:
    state = cloud.state

    def versions_doc(req: Request) -> dict:
        out = []
        for vid, status in (("v2.16", "CURRENT"), ("v2.15", "SUPPORTED"),
                            ("v2.9", "SUPPORTED"), ("v2.0", "SUPPORTED")):
            out.append({"id": vid, "status": status,
                        "links": [{"rel": "self", "href": f"{req.base_url}/image/v2/"}]})
        return {"versions": out}

    def root(req: Request) -> Response:
        return Response(300, versions_doc(req))

    def versions(req: Request) -> Response:
        return Response(200, versions_doc(req))

    def list_images(req: Request) -> Response:
        items: list[dict[str, Any]] = [render_image(i) for i in state.images.values()]
        for key in _FILTERS:
            wanted = req.arg(key)
            if wanted is None or (key == "visibility" and wanted == "all"):
                continue
            items = [i for i in items if str(i.get(key)).lower() == wanted.lower()
                     or str(i.get(key)) == wanted]
        limit_arg = req.arg("limit")
        limit = DEFAULT_PAGE
        if limit_arg is not None:
            if not limit_arg.isdigit():
                raise api_error("image", 400, "limit param must be an integer")
            limit = min(int(limit_arg), 1000)
        marker = req.arg("marker")
        if marker is not None:
            ids = [i["id"] for i in items]
            if marker not in ids:
                raise api_error("image", 400, f"marker {marker} could not be found.")
            items = items[ids.index(marker) + 1:]
        page = items[:limit]
        body: dict[str, Any] = {"images": page, "first": "/v2/images",
                                "schema": "/v2/schemas/images"}
        if page and len(page) >= limit:  # like glance: a full page has a next link
            body["next"] = f"/v2/images?marker={page[-1]['id']}&limit={limit}"
        return Response(200, body)

    def get_image(req: Request) -> Response:
        img = state.images.get(req.params["image_id"])
        if img is None:
            raise api_error("image", 404, f"No image found with ID {req.params['image_id']}")
        return Response(200, render_image(img))

    router.add("GET", "/image", root, "image", auth=False)
    router.add("GET", "/image/versions", versions, "image", auth=False)
    router.add("GET", "/image/v2/images", list_images, "image")
    router.add("GET", "/image/v2/images/{image_id}", get_image, "image")
