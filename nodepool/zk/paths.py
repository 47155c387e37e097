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
# (nodepool/zk/shared_quota.py, doc/multiple-launchers.rst).
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
