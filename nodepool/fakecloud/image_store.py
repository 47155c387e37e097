"""Glance v2's images as a store: the configured ones, and those clients upload.

An uploaded image lives through glance's states: ``queued`` after the
create, ``saving`` while its data arrives by ``PUT .../file`` (glance's PUT
is synchronous, so the image is ``active`` when the PUT returns), or
``uploading`` after ``PUT .../stage`` and ``importing`` after the import call,
which glance finishes in the background: here after ``import_seconds`` on the
cloud's clock, seen by the next read.  No data is kept, only its size and
hashes.  Time moves only when someone looks, as for servers.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from nodepool.fakecloud.config import ImageConfig, stable_id

IMPORT_METHODS = ("glance-direct", "web-download")
DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso",
                "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
# Keys a client may set at create; anything else is an extra property (strings only).
SETTABLE = ("name", "id", "visibility", "protected", "os_hidden", "disk_format",
            "container_format", "min_disk", "min_ram", "tags")
# Keys glance computes; setting one is refused with 403, as glance does.
READ_ONLY = ("status", "checksum", "os_hash_algo", "os_hash_value", "size", "virtual_size",
             "owner", "created_at", "updated_at", "self", "file", "schema", "direct_url",
             "locations", "stores")
CONFIGURED_AT = datetime(2025, 1, 1, tzinfo=timezone.utc)


class ImageError(Exception):
    """A request glance refuses; ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class StoredImage:
    id: str
    name: str | None
    owner: str
    status: str = "queued"
    visibility: str = "shared"
    protected: bool = False
    os_hidden: bool = False
    disk_format: str | None = None
    container_format: str | None = None
    min_disk: int = 0
    min_ram: int = 0
    size: int | None = None
    checksum: str | None = None
    hash_value: str | None = None
    tags: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    updated: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    import_done_at: float | None = None

    @classmethod
    def configured(cls, img: ImageConfig) -> "StoredImage":
        digest = hashlib.sha512(img.id.encode()).hexdigest()
        return cls(id=img.id, name=img.name, owner=stable_id("project", "admin"),
                   status=img.status, visibility="public", disk_format="qcow2",
                   container_format="bare", min_disk=img.min_disk, min_ram=img.min_ram,
                   size=img.size,
                   checksum=hashlib.md5(img.id.encode()).hexdigest(),  # noqa: S324 (fake)
                   hash_value=digest, created=CONFIGURED_AT, updated=CONFIGURED_AT)

    def visible_to(self, project_id: str | None) -> bool:
        return self.visibility in ("public", "community") or project_id in (None, self.owner)


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ImageError(400, f"Invalid value for '{key}': {value!r} is not a boolean")


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImageError(400, f"Invalid value for '{key}': {value!r} is not a whole number")
    return value


class ImageStore:
    """The images of one cloud, by id; reads apply the imports that are due."""

    def __init__(self, configured: tuple[ImageConfig, ...], clock: Callable[[], float],
                 lock: threading.RLock, import_seconds: float = 0.5):
        self.clock = clock
        self.lock = lock
        self.import_seconds = import_seconds
        self._images = {i.id: StoredImage.configured(i) for i in configured}
        self.uploads = 0
        self.deleted = 0

    # A mapping's reading side, for the compute code that checks image refs.
    def __contains__(self, image_id: object) -> bool:
        return image_id in self._images

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._images))

    def __len__(self) -> int:
        return len(self._images)

    def get(self, image_id: str) -> StoredImage | None:
        with self.lock:
            self._advance()
            return self._images.get(image_id)

    def values(self) -> list[StoredImage]:
        with self.lock:
            self._advance()
            return list(self._images.values())

    def _advance(self) -> None:
        now = self.clock()
        for img in self._images.values():
            if img.import_done_at is not None and img.import_done_at <= now:
                img.import_done_at = None
                img.status = "active"
                img.updated = datetime.now(timezone.utc)

    def _find(self, image_id: str, project_id: str | None) -> StoredImage:
        img = self._images.get(image_id)
        if img is None or not img.visible_to(project_id):
            raise ImageError(404, f"No image found with ID {image_id}")
        return img

    def _owned(self, image_id: str, project_id: str | None) -> StoredImage:
        img = self._find(image_id, project_id)
        if project_id is not None and img.owner != project_id:
            raise ImageError(403, f"You are not permitted to modify image {image_id}.")
        return img

    # ---- create ----------------------------------------------------------

    def create(self, body: Any, project_id: str) -> StoredImage:
        """``POST /v2/images``: a ``queued`` image with the client's fields."""
        if not isinstance(body, dict):
            raise ImageError(400, "Expected a JSON object of image fields")
        for key in body:
            if key in READ_ONLY:
                raise ImageError(403, f"Attribute '{key}' is read-only.")
        img = StoredImage(id=str(body.get("id") or uuid.uuid4()), name=None, owner=project_id)
        for key, value in body.items():
            if key == "name":
                if value is not None and not isinstance(value, str):
                    raise ImageError(400, f"Invalid value for 'name': {value!r}")
                img.name = value
            elif key == "visibility":
                if value not in ("public", "private", "shared", "community"):
                    raise ImageError(400, f"Invalid visibility value: {value}")
                img.visibility = value
            elif key in ("protected", "os_hidden"):
                setattr(img, key, _bool(value, key))
            elif key == "disk_format":
                if value not in DISK_FORMATS:
                    raise ImageError(400, f"Invalid value '{value}' for parameter "
                                          f"'disk_format': Expected one of {DISK_FORMATS}")
                img.disk_format = value
            elif key == "container_format":
                if value not in CONTAINER_FORMATS:
                    raise ImageError(400, f"Invalid value '{value}' for parameter "
                                          f"'container_format': Expected one of "
                                          f"{CONTAINER_FORMATS}")
                img.container_format = value
            elif key in ("min_disk", "min_ram"):
                setattr(img, key, _int(value, key))
            elif key == "tags":
                if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                    raise ImageError(400, "Invalid value for 'tags': expected a list of strings")
                img.tags = list(value)
            elif key != "id":
                if not isinstance(value, str):
                    raise ImageError(400, f"Provided object does not match schema 'image': "
                                          f"{value!r} is not of type 'string' "
                                          f"(extra property '{key}')")
                img.properties[key] = value
        with self.lock:
            if img.id in self._images:
                raise ImageError(409, f"Image with identifier {img.id} already exists!")
            self._images[img.id] = img
        return img

    # ---- data --------------------------------------------------------------

    def _take_data(self, img: StoredImage, data: bytes) -> None:
        img.size = len(data)
        img.checksum = hashlib.md5(data).hexdigest()  # noqa: S324 (glance's checksum is md5)
        img.hash_value = hashlib.sha512(data).hexdigest()
        img.updated = datetime.now(timezone.utc)

    def _receive(self, image_id: str, data: bytes, project_id: str,
                 status: str) -> StoredImage:
        with self.lock:
            img = self._owned(image_id, project_id)
            if img.status != "queued":
                raise ImageError(409, f"Image status transition from {img.status} to "
                                      f"{status} is not allowed")
            if status == "saving" and (img.disk_format is None or
                                       img.container_format is None):
                raise ImageError(400, "Properties disk_format, container_format must be set "
                                      "prior to saving data.")
            self._take_data(img, data)
            return img

    def upload(self, image_id: str, data: bytes, project_id: str) -> StoredImage:
        """``PUT /v2/images/{id}/file``: the data, then ``active``."""
        with self.lock:
            img = self._receive(image_id, data, project_id, "saving")
            img.status = "active"
            self.uploads += 1
            return img

    def stage(self, image_id: str, data: bytes, project_id: str) -> StoredImage:
        """``PUT /v2/images/{id}/stage``: the data waits in ``uploading`` for an import."""
        with self.lock:
            img = self._receive(image_id, data, project_id, "uploading")
            img.status = "uploading"
            return img

    def start_import(self, image_id: str, body: Any, project_id: str) -> StoredImage:
        """``POST /v2/images/{id}/import``: ``importing``, ``active`` a little later."""
        method = body.get("method") if isinstance(body, dict) else None
        name = method.get("name") if isinstance(method, dict) else None
        if name not in IMPORT_METHODS:
            raise ImageError(400, f"Import method {name!r} is not valid for this cloud; "
                                  f"methods: {', '.join(IMPORT_METHODS)}")
        with self.lock:
            self._advance()
            img = self._owned(image_id, project_id)
            wanted = "uploading" if name == "glance-direct" else "queued"
            if img.status != wanted:
                raise ImageError(409, f"Image {image_id} is {img.status}; {name} imports "
                                      f"need it {wanted}")
            if img.disk_format is None or img.container_format is None:
                raise ImageError(409, "'disk_format' needs to be set before import")
            if name == "web-download":
                self._take_data(img, str(method.get("uri", "")).encode())
            img.status = "importing"
            img.import_done_at = self.clock() + self.import_seconds
            self.uploads += 1
            return img

    # ---- delete ------------------------------------------------------------

    def delete(self, image_id: str, project_id: str) -> None:
        """``DELETE /v2/images/{id}``; a protected image stays (403)."""
        with self.lock:
            img = self._owned(image_id, project_id)
            if img.protected:
                raise ImageError(403, f"Image {image_id} is protected and cannot be deleted.")
            del self._images[image_id]
            self.deleted += 1
