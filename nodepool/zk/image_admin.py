"""An operator's image actions, written to ZooKeeper for upstream's
``nodepool-builder`` to carry out.

The launcher never builds, uploads or deletes images itself; these are the
writes upstream's ``nodepool`` CLI makes, at upstream's paths and with
upstream's data, so the real builder acts on them:

* ``request_build``: an empty ``/nodepool/images/<image>/request-build``
  znode; the builder builds the image and removes the znode.
* ``set_paused``: creates or removes ``/nodepool/images/<image>/pause``.
* ``mark_build_deleting`` / ``mark_upload_deleting``: the record's state
  becomes ``deleting`` (its ``state_time`` now, as upstream's state setter
  does); the builder deletes the cloud image and the local files, then the
  znodes.  Upstream's refusals: an unknown build or upload, a build still
  ``building``, an upload still ``uploading``.

A record is rewritten at the version read, so a concurrent change by the
builder is not overwritten (the command then says to try again).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError, NodeExistsError

from nodepool.zk import paths
from nodepool.zk.image_records import (BUILDING, DELETING, UPLOADING, ImageBuild, ImageUpload,
                                       build_from_json, upload_from_json)
from nodepool.zk.records import MalformedRecord

R = TypeVar("R")


class ImageActionRefused(Exception):
    """The action is not possible; the message says why (upstream's words)."""


def request_build(client: KazooClient, image: str) -> None:
    client.ensure_path(paths.image_request_build_path(image))


def set_paused(client: KazooClient, image: str, paused: bool) -> None:
    path = paths.image_pause_path(image)
    if paused:
        try:
            client.create(path, makepath=True)
        except NodeExistsError:
            pass
    else:
        try:
            client.delete(path)
        except NoNodeError:
            pass


def _store(client: KazooClient, path: str, data: bytes, version: int) -> None:
    try:
        client.set(path, data, version=version)
    except BadVersionError:
        raise ImageActionRefused(f"{path} changed while being marked deleting; "
                                 "try again") from None
    except NoNodeError:
        raise ImageActionRefused(f"{path} was removed meanwhile") from None


def _read(client: KazooClient, path: str, parse: Callable[[bytes], R],
          missing: str) -> tuple[R, int]:
    """The record at ``path`` and its version; refused when absent or unreadable."""
    try:
        data, stat = client.get(path)
    except NoNodeError:
        raise ImageActionRefused(missing) from None
    try:
        return parse(data), stat.version
    except MalformedRecord as e:
        raise ImageActionRefused(str(e)) from None


def mark_build_deleting(client: KazooClient, image: str, build_id: str) -> ImageBuild:
    """``nodepool dib-image-delete <image>-<build>``: the build and, through
    the builder, all its uploads go."""
    path = paths.image_build_path(image, build_id)
    build, version = _read(client, path, lambda d: build_from_json(d, image, build_id, path),
                           f"Build {image}-{build_id} not found")
    if build.state == BUILDING:
        raise ImageActionRefused("Cannot delete a build in progress")
    marked = dataclasses.replace(build, state=DELETING, state_time=time.time())
    _store(client, path, marked.to_json(), version)
    return marked


def mark_upload_deleting(client: KazooClient, image: str, build_id: str, provider: str,
                         upload_id: str) -> ImageUpload:
    """``nodepool image-delete``: one upload goes from one provider's cloud."""
    path = paths.image_upload_path(image, build_id, provider, upload_id)
    upload, version = _read(
        client, path, lambda d: upload_from_json(d, image, build_id, provider, upload_id, path),
        "Image upload not found")
    if upload.state == UPLOADING:
        raise ImageActionRefused("Cannot delete because image upload in progress")
    marked = dataclasses.replace(upload, state=DELETING, state_time=time.time())
    _store(client, path, marked.to_json(), version)
    return marked
