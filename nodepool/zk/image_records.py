"""Image builds and uploads as upstream's ``nodepool-builder`` writes them.

Pure data, no I/O.  The launcher does not build images: upstream's builder
(Nodepool 11) keeps running beside it and writes, under
``/nodepool/images/<image>/builds/<build>``, one JSON object per build and,
under ``.../providers/<provider>/images/<upload>``, one per upload of that
build to a provider's cloud.  The launcher reads them (``nodepool.zk.images``
caches them) and boots a ``diskimage:`` label from the newest READY upload.

* ``build_from_json(data, image, build_id, path)`` -> ``ImageBuild``
* ``upload_from_json(data, image, build_id, provider, upload_id, path)``
  -> ``ImageUpload``
* ``ImageBuild.to_json()`` / ``ImageUpload.to_json()``: upstream's JSON back
  (keys we do not know are kept, so a record read and written again loses
  nothing).
* ``newest_ready_upload(uploads, image, provider)``: upstream's choice.

Both parsers raise ``MalformedRecord`` (with the znode's path) for anything
upstream's builder would not have written: not a JSON object, an unknown
state, a time that is not a number, a field of the wrong type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from nodepool.zk import paths
from nodepool.zk.records import (MalformedRecord, _opt_number, _opt_str, _reading, _state,
                                 decode_json, encode_json)

# Upstream's state names for builds and uploads.
BUILDING = "building"
UPLOADING = "uploading"
READY = "ready"
DELETING = "deleting"
FAILED = "failed"
BUILD_STATES = frozenset({BUILDING, READY, DELETING, FAILED})
UPLOAD_STATES = frozenset({UPLOADING, READY, DELETING, FAILED})

# Upstream's reader fills these in when a record lacks them (records from
# builders older than the fields).
DEFAULT_USERNAME = "zuul"
DEFAULT_PYTHON_PATH = "/usr/bin/python2"

_BUILD_KEYS = frozenset({"state", "state_time", "builder", "builder_id", "formats",
                         "username", "python_path", "shell_type"})
_UPLOAD_KEYS = frozenset({"state", "state_time", "external_id", "external_name", "format",
                          "username", "python_path", "shell_type"})


@dataclass(frozen=True)
class ImageBuild:
    """``/nodepool/images/<image_name>/builds/<build_id>``: one image built
    by a builder (``builder`` is its hostname, ``builder_id`` its own id)."""

    image_name: str
    build_id: str
    state: str
    state_time: float
    builder: str | None = None
    builder_id: str | None = None
    formats: tuple[str, ...] = ()
    username: str | None = DEFAULT_USERNAME
    python_path: str | None = DEFAULT_PYTHON_PATH
    shell_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def path(self) -> str:
        return paths.image_build_path(self.image_name, self.build_id)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        d.update(state=self.state, state_time=self.state_time)
        # Upstream writes these two only when known, and formats only when
        # there are some (as one comma-separated string).
        if self.builder is not None:
            d["builder"] = self.builder
        if self.builder_id is not None:
            d["builder_id"] = self.builder_id
        if self.formats:
            d["formats"] = ",".join(sorted(self.formats))
        d.update(username=self.username, python_path=self.python_path,
                 shell_type=self.shell_type)
        return d

    def to_json(self) -> bytes:
        return encode_json(self.to_dict())


@dataclass(frozen=True)
class ImageUpload:
    """``.../builds/<build_id>/providers/<provider_name>/images/<upload_id>``:
    one build uploaded to one provider's cloud, where it is the image
    ``external_id`` (named ``external_name``)."""

    image_name: str
    build_id: str
    provider_name: str
    upload_id: str
    state: str
    state_time: float
    external_id: str | None = None
    external_name: str | None = None
    format: str | None = None
    username: str | None = DEFAULT_USERNAME
    python_path: str | None = DEFAULT_PYTHON_PATH
    shell_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def path(self) -> str:
        """The upload's znode path: what a node booted from it records as
        its ``image_id``, as upstream's launcher writes it."""
        return paths.image_upload_path(self.image_name, self.build_id, self.provider_name,
                                       self.upload_id)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        d.update(state=self.state, state_time=self.state_time,
                 external_id=self.external_id, external_name=self.external_name,
                 format=self.format, username=self.username,
                 python_path=self.python_path, shell_type=self.shell_type)
        return d

    def to_json(self) -> bytes:
        return encode_json(self.to_dict())


def _state_time(path: str, d: dict) -> float:
    value = _opt_number(path, d, "state_time")
    if value is None:
        raise MalformedRecord(path, "missing key 'state_time'")
    return float(value)


def _formats(path: str, d: dict) -> tuple[str, ...]:
    value = _opt_str(path, d, "formats")
    return tuple(sorted(f for f in (value or "").split(",") if f))


def _with_default(path: str, d: dict, key: str, default: str) -> str | None:
    # Upstream's reader: the default only when the key is absent (null stays).
    return _opt_str(path, d, key) if key in d else default


def build_from_json(data: bytes | None, image_name: str, build_id: str,
                    path: str | None = None) -> ImageBuild:
    """An ``ImageBuild`` from its znode's content; ``MalformedRecord`` if unusable."""
    path = path or paths.image_build_path(image_name, build_id)
    d = decode_json(path, data)
    with _reading(path):
        return ImageBuild(
            image_name=image_name, build_id=build_id,
            state=_state(path, d, BUILD_STATES), state_time=_state_time(path, d),
            builder=_opt_str(path, d, "builder"), builder_id=_opt_str(path, d, "builder_id"),
            formats=_formats(path, d),
            username=_with_default(path, d, "username", DEFAULT_USERNAME),
            python_path=_with_default(path, d, "python_path", DEFAULT_PYTHON_PATH),
            shell_type=_opt_str(path, d, "shell_type"),
            extra={k: v for k, v in d.items() if k not in _BUILD_KEYS})


def upload_from_json(data: bytes | None, image_name: str, build_id: str, provider_name: str,
                     upload_id: str, path: str | None = None) -> ImageUpload:
    """An ``ImageUpload`` from its znode's content; ``MalformedRecord`` if unusable."""
    path = path or paths.image_upload_path(image_name, build_id, provider_name, upload_id)
    d = decode_json(path, data)
    with _reading(path):
        return ImageUpload(
            image_name=image_name, build_id=build_id, provider_name=provider_name,
            upload_id=upload_id,
            state=_state(path, d, UPLOAD_STATES), state_time=_state_time(path, d),
            external_id=_opt_str(path, d, "external_id"),
            external_name=_opt_str(path, d, "external_name"),
            format=_opt_str(path, d, "format"),
            username=_with_default(path, d, "username", DEFAULT_USERNAME),
            python_path=_with_default(path, d, "python_path", DEFAULT_PYTHON_PATH),
            shell_type=_opt_str(path, d, "shell_type"),
            extra={k: v for k, v in d.items() if k not in _UPLOAD_KEYS})


def newest_ready_upload(uploads: Iterable[ImageUpload], image_name: str,
                        provider_name: str) -> ImageUpload | None:
    """Upstream's rule: of the READY uploads of this image to this provider,
    the one whose state changed last (``state_time``), whichever build it
    belongs to.  On equal times the first by (build, upload) wins, as in
    upstream's key-ordered cache.  An upload without ``external_id`` cannot
    be booted and is passed over."""
    best: ImageUpload | None = None
    candidates = sorted((u for u in uploads
                         if u.image_name == image_name and u.provider_name == provider_name
                         and u.state == READY and u.external_id),
                        key=lambda u: (u.build_id, u.upload_id))
    for upload in candidates:
        if best is None or upload.state_time > best.state_time:
            best = upload
    return best
