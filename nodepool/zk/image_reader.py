"""One read of everything upstream's ``nodepool-builder`` keeps under
``/nodepool/images``, for the image commands and the status API's image views.

The launcher's boot path reads images from the watch-kept ``ImageCache``
(``nodepool.zk.images``); an operator's command or an image view wants a
snapshot now, plus what the cache does not keep: when a build was requested
(the ``request-build`` znode's creation time) and whether the builder has
picked the request up.  Records are parsed by ``nodepool.zk.image_records``;
a malformed znode is left out and named in ``ImageSnapshot.malformed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from nodepool.zk import paths
from nodepool.zk.image_records import (ImageBuild, ImageUpload, build_from_json,
                                       upload_from_json)
from nodepool.zk.records import MalformedRecord


@dataclass(frozen=True)
class BuildRequest:
    """A ``request-build`` znode: ``created`` in epoch seconds; ``pending``
    until the builder holds the image's build lock for it (upstream's rule:
    the lock is held and no build is newer than the lock)."""

    image_name: str
    created: float
    pending: bool


@dataclass
class ImageSnapshot:
    images: list[str] = field(default_factory=list)             # sorted
    builds: list[ImageBuild] = field(default_factory=list)      # by image, build id
    uploads: list[ImageUpload] = field(default_factory=list)    # by image, build, provider, id
    paused: set[str] = field(default_factory=set)
    requests: dict[str, BuildRequest] = field(default_factory=dict)
    malformed: dict[str, str] = field(default_factory=dict)     # path -> reason


def _children(client: KazooClient, path: str) -> list[str]:
    try:
        return sorted(c for c in client.get_children(path) if c != paths.IMAGE_LOCK_NAME)
    except NoNodeError:
        return []


def _build_request(client: KazooClient, image: str,
                   build_ctimes: list[float]) -> BuildRequest | None:
    stat = client.exists(paths.image_request_build_path(image))
    if stat is None:
        return None
    pending = True
    lock = client.exists(f"{paths.image_builds_path(image)}/{paths.IMAGE_LOCK_NAME}")
    if lock is not None and lock.children_count:
        # The builder locks the image, then creates the build: a build
        # younger than the lock means the request is being built.
        pending = not build_ctimes or max(build_ctimes) < lock.created
    return BuildRequest(image, stat.created, pending)


def read_images(client: KazooClient) -> ImageSnapshot:
    """Everything under ``/nodepool/images`` as it is now."""
    snap = ImageSnapshot()
    snap.images = _children(client, paths.IMAGE_ROOT)
    for image in snap.images:
        if client.exists(paths.image_pause_path(image)) is not None:
            snap.paused.add(image)
        build_ctimes = []
        for build_id in _children(client, paths.image_builds_path(image)):
            path = paths.image_build_path(image, build_id)
            try:
                data, stat = client.get(path)
            except NoNodeError:
                continue
            build_ctimes.append(stat.created)
            try:
                snap.builds.append(build_from_json(data, image, build_id, path))
            except MalformedRecord as e:
                snap.malformed[path] = e.reason
            for provider in _children(client, f"{path}/providers"):
                uploads = paths.image_uploads_path(image, build_id, provider)
                for upload_id in _children(client, uploads):
                    upath = paths.image_upload_path(image, build_id, provider, upload_id)
                    try:
                        data, _ = client.get(upath)
                        snap.uploads.append(upload_from_json(data, image, build_id, provider,
                                                             upload_id, upath))
                    except NoNodeError:
                        continue
                    except MalformedRecord as e:
                        snap.malformed[upath] = e.reason
        request = _build_request(client, image, build_ctimes)
        if request is not None:
            snap.requests[image] = request
    return snap
