"""Cinder v3: version documents, limits and the volumes boot-from-volume creates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nodepool.fakecloud.errors import api_error
from nodepool.fakecloud.model import BadRequest, NotFound, Volume
from nodepool.fakecloud.web import ApiError, Request, Response, Router

if TYPE_CHECKING:
    from nodepool.fakecloud.cloud import FakeCloud

PREFIX = "/volume/v3/{project_id}"


def _err(status: int, message: str) -> ApiError:
    return api_error("volume", status, message)


def _time(v: Volume) -> str:
    return v.created.strftime("%Y-%m-%dT%H:%M:%S.000000")


def render_volume(req: Request, v: Volume, detail: bool = True) -> dict:
    links = [{"rel": "self", "href": f"{req.base_url}/volume/v3/{v.project_id}/volumes/{v.id}"},
             {"rel": "bookmark", "href": f"{req.base_url}/volume/{v.project_id}/volumes/{v.id}"}]
    d: dict[str, Any] = {"id": v.id, "name": v.name, "links": links}
    if not detail:
        return d
    attachments = []
    if v.server_id and v.status == "in-use":
        attachments.append({"id": v.id, "attachment_id": v.attachment_id, "volume_id": v.id,
                            "server_id": v.server_id, "host_name": None, "device": "/dev/vda",
                            "attached_at": _time(v)})
    d.update({"status": v.status, "size": v.size, "availability_zone": "nova",
              "created_at": _time(v), "updated_at": _time(v), "attachments": attachments,
              "bootable": "true" if v.image_id else "false", "volume_type": "__DEFAULT__",
              "metadata": {}, "encrypted": False, "multiattach": False,
              "user_id": None, "snapshot_id": None, "source_volid": None,
              "description": None, "consistencygroup_id": None, "replication_status": None,
              "os-vol-tenant-attr:tenant_id": v.project_id})
    if v.image_id:
        d["volume_image_metadata"] = {"image_id": v.image_id}
    return d


def _version(req: Request) -> dict:
    return {"id": "v3.0", "status": "CURRENT", "version": "3.70", "min_version": "3.0",
            "updated": "2023-08-31T00:00:00Z",
            "links": [{"rel": "self", "href": f"{req.base_url}/volume/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.volume+json;version=3"}]}


def register(router: Router, cloud: "FakeCloud") -> None:
    state = cloud.state

    def own_project(req: Request) -> str:
        if req.params["project_id"] != req.project.id:
            raise _err(400, "Malformed request url")
        return req.project.id

    def root(req: Request) -> Response:
        return Response(300, {"versions": [_version(req)]})

    def v3(req: Request) -> Response:
        return Response(200, {"versions": [_version(req)]})

    def limits(req: Request) -> Response:
        pid = own_project(req)
        with state.lock:
            state.advance()
            lim, used = state.projects[pid].limits, state.usage(pid)
        return Response(200, {"limits": {"rate": [], "absolute": {
            "maxTotalVolumes": lim["volumes"], "maxTotalVolumeGigabytes": lim["gigabytes"],
            "maxTotalSnapshots": 10, "maxTotalBackups": 10, "maxTotalBackupGigabytes": 1000,
            "totalVolumesUsed": used["volumes"], "totalGigabytesUsed": used["gigabytes"],
            "totalSnapshotsUsed": 0, "totalBackupsUsed": 0, "totalBackupGigabytesUsed": 0}}})

    def volumes(req: Request, detail: bool) -> Response:
        pid = own_project(req)
        with state.lock:
            items = sorted(state.project_volumes(pid), key=lambda v: v.created, reverse=True)
            status, name = req.arg("status"), req.arg("name")
            items = [v for v in items if (status is None or v.status == status)
                     and (name is None or v.name == name)]
            marker = req.arg("marker")
            if marker is not None:
                ids = [v.id for v in items]
                if marker not in ids:
                    raise _err(400, f"marker [{marker}] not found")
                items = items[ids.index(marker) + 1:]
            limit_arg = req.arg("limit")
            body: dict[str, Any] = {}
            if limit_arg is not None and limit_arg.isdigit():
                limit = int(limit_arg)
                if len(items) > limit and limit > 0:
                    items = items[:limit]
                    body["volumes_links"] = [{"rel": "next", "href": req.url_with(
                        marker=items[-1].id)}]
            body["volumes"] = [render_volume(req, v, detail) for v in items]
        return Response(200, body)

    def get_volume(req: Request) -> Response:
        pid = own_project(req)
        try:
            with state.lock:
                return Response(200, {"volume": render_volume(
                    req, state.get_volume(pid, req.params["volume_id"]))})
        except NotFound as e:
            raise _err(404, str(e)) from None

    def delete_volume(req: Request) -> Response:
        pid = own_project(req)
        try:
            state.delete_volume(pid, req.params["volume_id"])
        except NotFound as e:
            raise _err(404, str(e)) from None
        except BadRequest as e:
            raise _err(400, str(e)) from None
        return Response(202)

    add = router.add
    add("GET", "/volume", root, "volume", auth=False)
    add("GET", "/volume/v3", v3, "volume", auth=False)
    add("GET", f"{PREFIX}/limits", limits, "volume")
    add("GET", f"{PREFIX}/volumes", lambda r: volumes(r, False), "volume")
    add("GET", f"{PREFIX}/volumes/detail", lambda r: volumes(r, True), "volume")
    add("GET", f"{PREFIX}/volumes/{{volume_id}}", get_volume, "volume")
    add("DELETE", f"{PREFIX}/volumes/{{volume_id}}", delete_volume, "volume")
