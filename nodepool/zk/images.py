"""A watch-driven cache of the image builds and uploads that upstream's
``nodepool-builder`` writes under ``/nodepool/images`` (layout in
``nodepool.zk.paths``, records in ``nodepool.zk.image_records``).

The launcher only reads this tree, never writes it.  Like the node and
request caches (``nodepool.zk.cache``) it is a kazoo ``TreeCache``: each
change is parsed once, and a launch asks the cache, never ZooKeeper.  A
znode whose content is malformed is logged once (with its path) and left
out; it never stops the cache.

Usage::

    images = ImageCache(client, on_change=wake)   # on_change: optional
    images.start()
    images.wait_synced(timeout)                   # first full read done
    images.images()                    -> ["centos-9", "ubuntu-jammy"]  (sorted)
    images.builds("ubuntu-jammy")      -> [ImageBuild, ...]    (by build id)
    images.uploads("ubuntu-jammy", build=None, provider=None)
                                       -> [ImageUpload, ...]   (by build, provider, upload)
    images.newest_ready_upload("ubuntu-jammy", "cloud-a") -> ImageUpload | None
    images.paused("ubuntu-jammy")      -> bool   (the builder's pause znode)
    images.build_requested("ubuntu-jammy") -> bool   (a request-build znode)
    images.malformed()                 -> {znode path: reason}
    images.stop()

Records handed out are frozen dataclasses: safe to keep and share.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from kazoo.client import KazooClient
from kazoo.recipe.cache import TreeEvent

from nodepool.zk import paths
from nodepool.zk.cache import TreeBackedCache, confirm_added, znode_event
from nodepool.zk.image_records import (ImageBuild, ImageUpload, build_from_json,
                                       newest_ready_upload, upload_from_json)
from nodepool.zk.records import MalformedRecord

log = logging.getLogger("nodepool.zk.images")

BuildKey = tuple[str, str]                # image, build
UploadKey = tuple[str, str, str, str]     # image, build, provider, upload


class ImageCache(TreeBackedCache):
    """What upstream's builder wrote, as last seen (see the module docstring)."""

    def __init__(self, client: KazooClient, on_change: Callable[[], None] | None = None):
        self.client = client
        self._on_change = on_change
        self._lock = threading.Lock()
        self._images: set[str] = set()
        self._flags: set[tuple[str, str]] = set()    # (pause|request-build, image)
        self._builds: dict[BuildKey, ImageBuild] = {}
        self._uploads: dict[UploadKey, ImageUpload] = {}
        self._malformed: dict[str, str] = {}
        # (path, mzxid) already reported, so a bad znode logs once.
        self._reported: set[tuple[str, int]] = set()
        # TreeCache creates the root when no builder ran yet: an empty
        # /nodepool/images, which upstream's builder fills as it would have.
        self.root = paths.IMAGE_ROOT
        self._init_tree()

    def _on_fault(self, exc: Exception) -> None:
        log.error("image cache: %s", exc, exc_info=exc)

    # -- queries ---------------------------------------------------------------

    def images(self) -> list[str]:
        with self._lock:
            return sorted(self._images)

    def builds(self, image: str) -> list[ImageBuild]:
        with self._lock:
            return [b for k, b in sorted(self._builds.items()) if k[0] == image]

    def uploads(self, image: str, build: str | None = None,
                provider: str | None = None) -> list[ImageUpload]:
        with self._lock:
            return [u for k, u in sorted(self._uploads.items())
                    if k[0] == image and build in (None, k[1]) and provider in (None, k[2])]

    def newest_ready_upload(self, image: str, provider: str) -> ImageUpload | None:
        """The upload a new node of ``image`` on ``provider`` boots from
        (``image_records.newest_ready_upload``)."""
        with self._lock:
            candidates = [u for k, u in self._uploads.items()
                          if k[0] == image and k[2] == provider]
        return newest_ready_upload(candidates, image, provider)

    def paused(self, image: str) -> bool:
        with self._lock:
            return (paths.IMAGE_PAUSE_NAME, image) in self._flags

    def build_requested(self, image: str) -> bool:
        with self._lock:
            return (paths.IMAGE_REQUEST_BUILD_NAME, image) in self._flags

    def malformed(self) -> dict[str, str]:
        with self._lock:
            return dict(self._malformed)


    # -- TreeCache events (on the TreeCache's thread) --------------------------

    def _on_event(self, event) -> None:
        triaged = znode_event(event, self._synced, self._changed)
        if triaged is None:
            return
        kind, data = triaged
        what = paths.parse_image_path(data.path)
        if what is None:
            return
        if kind == TreeEvent.NODE_REMOVED:
            self._remove(what, data.path)
        else:
            self._apply(what, data.path, data.data, data.stat)
            if kind == TreeEvent.NODE_ADDED:
                # A stale READY upload would be booted from after the
                # builder deleted it (see nodepool.zk.cache.confirm_added).
                confirm_added(self.client, data.path, lambda: self._gone(what, data.path))

    def _apply(self, what: tuple[str, ...], path: str, data: bytes | None, stat) -> None:
        kind, image = what[0], what[1]
        try:
            with self._lock:
                if kind == "image":
                    self._images.add(image)
                elif kind in (paths.IMAGE_PAUSE_NAME, paths.IMAGE_REQUEST_BUILD_NAME):
                    self._flags.add((kind, image))
                elif kind == "build":
                    self._builds[(image, what[2])] = build_from_json(data, image, what[2], path)
                else:
                    key = (image, what[2], what[3], what[4])
                    self._uploads[key] = upload_from_json(data, *key, path=path)
                self._malformed.pop(path, None)
        except MalformedRecord as e:
            self._skip(what, path, e.reason, getattr(stat, "mzxid", 0))
        self._changed()

    def _skip(self, what: tuple[str, ...], path: str, reason: str, mzxid: int) -> None:
        with self._lock:
            self._drop(what)
            self._malformed[path] = reason
            first = (path, mzxid) not in self._reported
            self._reported.add((path, mzxid))
        if first:
            log.error("skipping malformed image znode %s: %s", path, reason)

    def _remove(self, what: tuple[str, ...], path: str) -> None:
        with self._lock:
            self._drop(what)
            self._malformed.pop(path, None)
            self._reported = {r for r in self._reported if r[0] != path}
        self._changed()

    def _drop(self, what: tuple[str, ...]) -> None:
        """Forget one znode's record (caller holds _lock)."""
        kind, image = what[0], what[1]
        if kind == "image":
            self._images.discard(image)
        elif kind in (paths.IMAGE_PAUSE_NAME, paths.IMAGE_REQUEST_BUILD_NAME):
            self._flags.discard((kind, image))
        elif kind == "build":
            self._builds.pop((image, what[2]), None)
        else:
            self._uploads.pop((image, what[2], what[3], what[4]), None)

    def _gone(self, what: tuple[str, ...], path: str) -> None:
        log.debug("image cache: %s gone in ZooKeeper; dropped", path)
        self._remove(what, path)

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:  # a listener bug must not stop the cache
                log.exception("image cache change listener failed")
