"""Glance v2: the version list (answered with 300), image lists and reads, and what an
image builder needs: create, upload (``PUT .../file``), stage and import, delete."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from nodepool.fakecloud.errors import api_error, error_response
from nodepool.fakecloud.image_store import IMPORT_METHODS, ImageError, StoredImage
from nodepool.fakecloud.model import iso
from nodepool.fakecloud.web import Request, Response, Router

if TYPE_CHECKING:
    from nodepool.fakecloud.cloud import FakeCloud

CREATED = "2025-01-01T00:00:00Z"
DEFAULT_PAGE = 25  # glance's limit_param_default
_FILTERS = {"name", "status", "visibility", "id", "owner", "disk_format", "container_format",
            "protected", "os_hidden"}


def render_image(img: StoredImage) -> dict:
    body: dict[str, Any] = dict(img.properties)
    body.update({
        "id": img.id, "name": img.name, "status": img.status, "visibility": img.visibility,
        "protected": img.protected, "os_hidden": img.os_hidden, "checksum": img.checksum,
        "os_hash_algo": "sha512" if img.hash_value else None, "os_hash_value": img.hash_value,
        "owner": img.owner, "size": img.size, "virtual_size": None, "min_ram": img.min_ram,
        "min_disk": img.min_disk, "disk_format": img.disk_format,
        "container_format": img.container_format, "created_at": iso(img.created),
        "updated_at": iso(img.updated), "tags": list(img.tags),
        "self": f"/v2/images/{img.id}", "file": f"/v2/images/{img.id}/file",
        "schema": "/v2/schemas/image"})
    return body


def _refused(e: ImageError) -> Response:
    return error_response("image", e.status, str(e))


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
        pid = req.project.id if req.project is not None else None
        items: list[dict[str, Any]] = [render_image(i) for i in state.images.values()
                                       if i.visible_to(pid)]
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
        if img is None or not img.visible_to(req.project.id):
            raise api_error("image", 404, f"No image found with ID {req.params['image_id']}")
        return Response(200, render_image(img))

    def create_image(req: Request) -> Response:
        body = req.json(lambda m: api_error("image", 400, m))
        try:
            img = state.images.create(body, req.project.id)
        except ImageError as e:
            return _refused(e)
        # openstacksdk reads the import methods from this header of the create.
        return Response(201, render_image(img),
                        {"Location": f"{req.base_url}/image/v2/images/{img.id}",
                         "OpenStack-image-import-methods": ",".join(IMPORT_METHODS)})

    def no_content(action: Callable[..., Any]) -> Callable[[Request], Response]:
        """A route answering 204 once ``action(image_id, ..., project_id)`` is done."""
        def handler(req: Request) -> Response:
            args: list[Any] = [req.params["image_id"]]
            if req.method == "PUT":
                args.append(req.body)
            try:
                action(*args, req.project.id)
            except ImageError as e:
                return _refused(e)
            return Response(204)
        return handler

    def start_import(req: Request) -> Response:
        body = req.json(lambda m: api_error("image", 400, m))
        try:
            state.images.start_import(req.params["image_id"], body, req.project.id)
        except ImageError as e:
            return _refused(e)
        return Response(202, "")

    def import_info(req: Request) -> Response:
        return Response(200, {"import-methods": {"description": "Import methods available.",
                                                 "type": "array",
                                                 "value": list(IMPORT_METHODS)}})

    router.add("GET", "/image", root, "image", auth=False)
    router.add("GET", "/image/versions", versions, "image", auth=False)
    router.add("GET", "/image/v2/images", list_images, "image")
    router.add("GET", "/image/v2/images/{image_id}", get_image, "image")
    router.add("POST", "/image/v2/images", create_image, "image")
    router.add("PUT", "/image/v2/images/{image_id}/file", no_content(state.images.upload),
               "image")
    router.add("PUT", "/image/v2/images/{image_id}/stage", no_content(state.images.stage),
               "image")
    router.add("POST", "/image/v2/images/{image_id}/import", start_import, "image")
    router.add("DELETE", "/image/v2/images/{image_id}", no_content(state.images.delete),
               "image")
    router.add("GET", "/image/v2/info/import", import_info, "image")
