"""Every ZooKeeper path the launcher reads or writes, and nothing else.

The layout is fixed by the classic Nodepool protocol that Zuul speaks
(doc/protocol.rst, "Paths"); a typo here breaks wire
compatibility, so all other modules build paths through these functions.
"""

from __future__ import annotations

ROOT = "/nodepool"
REQUEST_ROOT = f"{ROOT}/requests"
REQUEST_LOCK_ROOT = f"{ROOT}/requests-lock"
NODE_ROOT = f"{ROOT}/nodes"
COMPONENT_ROOT = f"{ROOT}/components"
POOL_COMPONENT_ROOT = f"{COMPONENT_ROOT}/pool"
LAUNCHER_COMPONENT_ROOT = f"{COMPONENT_ROOT}/launcher"
# Ours only (Zuul never reads it): launchers sharing one cloud project
# (nodepool/zk/project_book.py, doc/multiple-launchers.rst).
SHARED_QUOTA_ROOT = f"{ROOT}/shared-quota"

# The child of a node znode that holds the kazoo Lock contenders.
NODE_LOCK_NAME = "lock"


def _child(root: str, name: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"not a znode name: {name!r}")
    return f"{root}/{name}"


def request_path(request_id: str) -> str:
    return _child(REQUEST_ROOT, request_id)


def request_lock_path(request_id: str) -> str:
    return _child(REQUEST_LOCK_ROOT, request_id)


def node_path(node_id: str) -> str:
    return _child(NODE_ROOT, node_id)


def node_lock_path(node_id: str) -> str:
    return f"{node_path(node_id)}/{NODE_LOCK_NAME}"


def shared_project_path(project_key: str) -> str:
    return _child(SHARED_QUOTA_ROOT, project_key)


def component_root(kind: str) -> str:
    return _child(COMPONENT_ROOT, kind)


def name_of(path: str) -> str:
    """The last element of a znode path."""
    return path.rstrip("/").rsplit("/", 1)[-1]


# -- images: written by upstream's nodepool-builder, only read here ---------
#
# /nodepool/images/<image>                      (no content)
#   pause                                        exists: the builder paused the image
#   request-build                                exists: a build was asked for
#   builds/lock                                  the builder's lock (contenders below)
#   builds/<build>                               ImageBuild JSON
#   builds/<build>/providers/<provider>/images/<upload>   ImageUpload JSON
#   (and "lock" children at builds/<build> and .../images levels)
IMAGE_ROOT = f"{ROOT}/images"
IMAGE_PAUSE_NAME = "pause"
IMAGE_REQUEST_BUILD_NAME = "request-build"
IMAGE_LOCK_NAME = "lock"


def image_path(image: str) -> str:
    return _child(IMAGE_ROOT, image)


def image_pause_path(image: str) -> str:
    return f"{image_path(image)}/{IMAGE_PAUSE_NAME}"


def image_request_build_path(image: str) -> str:
    return f"{image_path(image)}/{IMAGE_REQUEST_BUILD_NAME}"


def image_builds_path(image: str) -> str:
    return f"{image_path(image)}/builds"


def image_build_path(image: str, build_id: str) -> str:
    return _child(image_builds_path(image), build_id)


def image_uploads_path(image: str, build_id: str, provider: str) -> str:
    """The folder of one build's uploads to one provider."""
    return f"{_child(image_build_path(image, build_id) + '/providers', provider)}/images"


def image_upload_path(image: str, build_id: str, provider: str, upload_id: str) -> str:
    return _child(image_uploads_path(image, build_id, provider), upload_id)


def parse_image_path(path: str) -> tuple[str, ...] | None:
    """What an image znode is, from its path: ``("image", image)``,
    ``("pause", image)``, ``("request-build", image)``, ``("build", image,
    build)``, ``("upload", image, build, provider, upload)``; None for
    anything else (locks, the folders between)."""
    if not path.startswith(IMAGE_ROOT + "/"):
        return None
    parts = path[len(IMAGE_ROOT) + 1:].split("/")
    if any(not p for p in parts) or parts[-1] == IMAGE_LOCK_NAME:
        return None
    if len(parts) == 1:
        return ("image", parts[0])
    if len(parts) == 2 and parts[1] in (IMAGE_PAUSE_NAME, IMAGE_REQUEST_BUILD_NAME):
        return (parts[1], parts[0])
    if len(parts) == 3 and parts[1] == "builds":
        return ("build", parts[0], parts[2])
    if (len(parts) == 7 and parts[1] == "builds" and parts[3] == "providers"
            and parts[5] == "images"):
        return ("upload", parts[0], parts[2], parts[4], parts[6])
    return None
