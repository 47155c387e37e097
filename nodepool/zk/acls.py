"""ZooKeeper ACLs for the znodes this launcher creates (``zookeeper-auth``).

Without ``zookeeper-auth`` nothing here is used and every znode gets
ZooKeeper's open ACL, as upstream Nodepool and Zuul create them.  With it,
``AclKazooClient`` gives each znode it creates the ACL ``acl_for`` names for
the znode's place in the protocol's tree, so every create of the ZooKeeper
layer (kazoo's lock recipe, ``makepath``, ``ensure_path``, transactions)
is covered without passing ACLs around.

Who may do what (doc/operations.rst, "ZooKeeper ACLs"):

* the launchers (the identities of the creating session, ZooKeeper's
  ``auth`` scheme, plus ``launchers``): everything, everywhere;
* Zuul: read everything; create and delete requests; write request and
  node data; take and release request and node locks; create its own
  znodes next to ``/nodepool`` in a chroot the launcher created.  It cannot
  create or delete nodes, register pools or touch the shared book;
* anybody else: read, if ``world-readable`` (the default), else nothing.

Zuul 14 creates its requests with the open ACL (it has no ACL setting), so
a launcher that locks such a request gives it the request ACL
(``adopt``).  Roots that existed before ``zookeeper-auth`` was turned on get
their ACLs at start (``protect_roots``).
"""

from __future__ import annotations

import logging

from kazoo.client import KazooClient, TransactionRequest
from kazoo.exceptions import KazooException, NoAuthError, NoNodeError
from kazoo.security import ACL, Id, Permissions

from nodepool.config.zookeeper import ZooKeeperAuth
from nodepool.zk import paths

log = logging.getLogger("nodepool.zk.acls")

READ, WRITE, CREATE, DELETE = (Permissions.READ, Permissions.WRITE, Permissions.CREATE,
                               Permissions.DELETE)

# What Zuul may do on a znode, by the znode's place in the tree: the
# operations of zuul/zk/nodepool.py (submit, revise and delete requests,
# lock requests and nodes, store nodes) and nothing else.
_ZUUL_ON_ROOT = {
    paths.REQUEST_ROOT: READ | CREATE | DELETE,       # submitNodeRequest, deleteNodeRequest
    paths.REQUEST_LOCK_ROOT: READ | CREATE,           # a request's lock znode, if first
}
_ZUUL_ON_CHILD = {
    paths.REQUEST_ROOT: READ | WRITE,                 # storeNodeRequest (priority)
    paths.REQUEST_LOCK_ROOT: READ | CREATE | DELETE,  # lock contenders
    paths.NODE_ROOT: READ | WRITE | CREATE,           # storeNode; the node's lock znode
}
_ZUUL_ON_NODE_LOCK = READ | CREATE | DELETE          # lock contenders
# Outside /nodepool: the chroot the launcher may create and Zuul shares
# (Zuul creates /zuul there).
_ZUUL_OUTSIDE = READ | CREATE

# The roots a launcher makes sure of (and secures) at start.
ROOTS = (paths.ROOT, paths.REQUEST_ROOT, paths.REQUEST_LOCK_ROOT, paths.NODE_ROOT,
         paths.COMPONENT_ROOT, paths.POOL_COMPONENT_ROOT, paths.LAUNCHER_COMPONENT_ROOT,
         paths.SHARED_QUOTA_ROOT)


def zuul_permissions(path: str, outside: bool = False) -> int:
    """What Zuul may do on the znode at ``path`` (relative to the chroot;
    ``outside``: the path is the chroot or above it)."""
    path = path.rstrip("/") or "/"
    if outside or (path != paths.ROOT and not path.startswith(paths.ROOT + "/")):
        return _ZUUL_OUTSIDE
    if path in _ZUUL_ON_ROOT:
        return _ZUUL_ON_ROOT[path]
    parent, _, _ = path.rpartition("/")
    if parent in _ZUUL_ON_CHILD:
        return _ZUUL_ON_CHILD[parent]
    node, _, name = parent.rpartition("/")
    if name and node == paths.NODE_ROOT and path.endswith("/" + paths.NODE_LOCK_NAME):
        return _ZUUL_ON_NODE_LOCK
    return READ


def acl_for(auth: ZooKeeperAuth, path: str, outside: bool = False) -> list[ACL]:
    """The ACL a znode created at ``path`` gets.  For a sequential create
    ``path`` is the prefix (``/nodepool/nodes/``): its parent decides."""
    if path.endswith("/") and path != "/":
        path += "x"   # any child name: the parent decides
    acl = [ACL(Permissions.ALL, Id("auth", ""))]
    acl += [ACL(Permissions.ALL, Id(i.scheme, i.id)) for i in auth.launchers]
    zuul = zuul_permissions(path, outside)
    launchers = {(i.scheme, i.id) for i in auth.launchers}
    # An identity listed for both keeps the launchers' rights.
    acl += [ACL(zuul, Id(i.scheme, i.id)) for i in auth.zuul
            if (i.scheme, i.id) not in launchers]
    if auth.world_readable:
        acl.append(ACL(READ, Id("world", "anyone")))
    return acl


class AclKazooClient(KazooClient):
    """A KazooClient that gives every znode it creates the ACL of its place.

    kazoo funnels every create (``create``, ``ensure_path``, ``makepath``
    and therefore its Lock recipe) through ``_create_async_inner`` with the
    path inside the chroot, and transactions through
    ``TransactionRequest.create``; nothing in the ZooKeeper layer passes
    an ACL of its own."""

    def __init__(self, *args, acl_auth: ZooKeeperAuth, outside_only: bool = False, **kwargs):
        if not callable(getattr(KazooClient, "_create_async_inner", None)):
            # A kazoo without it would create every znode open, silently.
            raise RuntimeError("this kazoo version has no KazooClient._create_async_inner; "
                               "zookeeper-auth needs one that has it (2.9 to 2.11 do)")
        super().__init__(*args, **kwargs)
        self.acl_auth = acl_auth
        # The bare client that creates the chroot: every path it creates is
        # the chroot or above it, whatever its name.
        self.outside_only = outside_only

    def acl_of(self, path: str) -> list[ACL]:
        return acl_for(self.acl_auth, path, self.outside_only)

    def _create_async_inner(self, path, value, acl, flags, *args, **kwargs):
        return super()._create_async_inner(path, value, self.acl_of(path), flags,
                                           *args, **kwargs)

    def transaction(self) -> TransactionRequest:
        return _AclTransaction(self)


class _AclTransaction(TransactionRequest):
    client: AclKazooClient

    def create(self, path, value=b"", acl=None, ephemeral=False, sequence=False):
        return super().create(path, value, self.client.acl_of(path), ephemeral, sequence)


def adopt(client: KazooClient, path: str) -> bool:
    """Give a znode someone else created (Zuul's requests) the ACL of its
    place.  False when there is nothing to do or it could not be done."""
    if not isinstance(client, AclKazooClient):
        return False
    try:
        client.set_acls(path, client.acl_of(path))
        return True
    except NoNodeError:
        return False
    except NoAuthError:
        # Its creator gave it an ACL without admin rights for us.
        log.warning("cannot set the ACL of %s: its ACL denies us ADMIN", path)
        return False


def protect_roots(client: KazooClient) -> list[str]:
    """Create the roots and give each its ACL, also when it existed before
    (created by Zuul, or before ``zookeeper-auth`` was turned on): a few
    writes at start.  Returns the roots whose ACL could not be set."""
    if not isinstance(client, AclKazooClient):
        return []
    refused = []
    for root in ROOTS:
        try:
            client.ensure_path(root)
            client.set_acls(root, client.acl_of(root))
        except NoAuthError:
            refused.append(root)
            log.error("cannot set the ACL of %s: its ACL denies this launcher; set it "
                      "with a ZooKeeper super user or remove it while no launcher and "
                      "no Zuul runs (doc/operations.rst, \"ZooKeeper ACLs\")", root)
        except KazooException as e:
            refused.append(root)
            log.error("cannot set the ACL of %s: %s", root, e or type(e).__name__)
    return refused
