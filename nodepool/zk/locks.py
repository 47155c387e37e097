"""Request and node locks: kazoo's Lock recipe, with deadlines.

Zuul and upstream Nodepool lock ``/nodepool/requests-lock/<id>`` and
``/nodepool/nodes/<id>/lock`` with kazoo's ``Lock``: each contender creates an
ephemeral sequential child ``<uuid4hex>__lock__<seq10>`` and the lowest
sequence holds the lock.  We use the same recipe on exactly those paths.

kazoo's non-blocking ``acquire`` still retries forever while the connection
is down; every acquisition here passes a deadline so a launcher loop never
hangs on an unreachable ensemble.

A lock lives as long as the session that took it, not as long as the
connection: while kazoo is SUSPENDED the contender znode is still ours and
the lock still held; only a LOST session ends it (``SessionTracker``).  A
release that fails because the connection dropped at that moment leaves the
contender on the server, so its delete is retried once the connection is
back instead of leaving the lock taken by nobody.

A lock is a context manager: ``with lock:`` releases it when the block
ends, for the code that holds a lock only for one step.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, LockTimeout, NoAuthError, NoNodeError
from kazoo.recipe.lock import Lock
from kazoo.retry import KazooRetry

from nodepool.zk.session import SessionTracker

log = logging.getLogger("nodepool.zk.locks")

# How long a non-blocking attempt may spend on retries while disconnected.
DEFAULT_ATTEMPT_DEADLINE = 10.0

_CONTENDER = re.compile(r"__lock__(-?\d{10})$")


class LockNotAcquired(Exception):
    """A lock could not be taken (held elsewhere, or the deadline passed)."""


def is_contender(child_name: str) -> bool:
    return bool(_CONTENDER.search(child_name))


def contenders(children: Iterable[str]) -> list[str]:
    """Lock contender names in queue order; the first one holds the lock."""
    found = [(m.group(1), name) for name in children if (m := _CONTENDER.search(name))]
    return [name for _, name in sorted(found)]


class ZooKeeperLock:
    """A lock this process holds, tied to the session that took it."""

    def __init__(self, lock: Lock, session: SessionTracker, generation: int):
        self._lock = lock
        self.path: str = lock.path
        self._session = session
        self.generation = generation

    @property
    def held(self) -> bool:
        """Until released or the session is LOST; a mere disconnect keeps it."""
        return self._lock.is_acquired and self._session.generation == self.generation

    def release(self) -> None:
        """Release; never raises.  A lost session already released it; a
        dropped connection makes the delete happen after the reconnect."""
        if not self._lock.is_acquired:
            return
        if self._session.generation != self.generation:
            # The contender znode died with the old session.
            self.forget()
            return
        node = self._lock.node
        if not self._session.connected:
            # kazoo would queue the delete until the reconnect; a loop must
            # not wait that long for a release.
            if node:
                self._session.defer_delete(f"{self.path}/{node}", self.generation)
            self.forget()
            return
        try:
            self._lock.release()
        except (KazooException, NoNodeError) as e:
            log.warning("could not release lock %s now (%s); retrying after the reconnect",
                        self.path, e or type(e).__name__)
            if node:
                self._session.defer_delete(f"{self.path}/{node}", self.generation)
            self.forget()

    def __enter__(self) -> ZooKeeperLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """``with lock:`` lets go of it however the block ends."""
        self.release()

    def forget(self) -> None:
        """The contender znode was removed with its parent (recursive delete)."""
        self._lock.is_acquired = False
        self._lock.node = None

    def __repr__(self) -> str:
        return f"<ZooKeeperLock {self.path} held={self.held}>"


def try_lock(client: KazooClient, path: str, identifier: str | None = None,
             deadline: float = DEFAULT_ATTEMPT_DEADLINE) -> ZooKeeperLock | None:
    """Take the lock without waiting for other holders; None when it is held.

    ``deadline`` bounds the retries kazoo makes while disconnected.
    """
    return _acquire(client, path, identifier, blocking=False, timeout=deadline)


def lock(client: KazooClient, path: str, timeout: float,
         identifier: str | None = None) -> ZooKeeperLock:
    """Wait at most ``timeout`` seconds for the lock; LockNotAcquired otherwise."""
    got = _acquire(client, path, identifier, blocking=True, timeout=timeout)
    if got is None:
        raise LockNotAcquired(f"could not lock {path} within {timeout:g}s")
    return got


def _acquire(client: KazooClient, path: str, identifier: str | None,
             blocking: bool, timeout: float) -> ZooKeeperLock | None:
    kazoo_lock = Lock(client, path, identifier)
    if not blocking:
        # kazoo refuses a timeout for a non-blocking acquire and would retry
        # forever on connection loss; bound the retries instead.  (_retry is
        # private but has the same meaning in kazoo 2.7 to 2.11.)
        if hasattr(kazoo_lock, "_retry"):
            kazoo_lock._retry = KazooRetry(
                max_tries=_tries_within(timeout), delay=0.1, backoff=2, max_delay=2.0,
                sleep_func=client.handler.sleep_func)
    session = SessionTracker.of(client)
    generation = session.generation
    try:
        acquired = kazoo_lock.acquire(blocking=blocking,
                                      timeout=timeout if blocking else None)
    except LockTimeout:
        _clean_up_attempt(kazoo_lock, session, generation)
        return None
    except NoAuthError:
        # The lock's ACL (zookeeper-auth) shuts us out: not "held by
        # someone else", and no retry will change it.
        _clean_up_attempt(kazoo_lock, session, generation)
        raise
    except KazooException as e:
        log.warning("could not lock %s: %s", path, e or type(e).__name__)
        _clean_up_attempt(kazoo_lock, session, generation)
        return None
    if not acquired:
        return None
    if session.generation != generation:
        # The session was lost while we waited: the contender, if any, is
        # of the new session; give it back rather than trust it.
        try:
            kazoo_lock.release()
        except KazooException:
            _clean_up_attempt(kazoo_lock, session, session.generation)
        return None
    return ZooKeeperLock(kazoo_lock, session, generation)


def _clean_up_attempt(kazoo_lock: Lock, session: SessionTracker, generation: int) -> None:
    """kazoo removes the contender of a failed attempt on a best-effort
    basis; when the connection is down that fails and the contender would
    block the lock for as long as our session lives."""
    if kazoo_lock.node:
        session.defer_delete(f"{kazoo_lock.path}/{kazoo_lock.node}", generation)
    kazoo_lock.is_acquired = False


def _tries_within(seconds: float) -> int:
    """How many retries (0.1 s doubling, at most 2 s apart) fit in ``seconds``."""
    tries, delay, spent = 0, 0.1, 0.0
    while spent + delay <= seconds:
        spent += delay
        delay = min(delay * 2, 2.0)
        tries += 1
    return max(tries, 1)


def lock_holders(client: KazooClient, path: str) -> list[str]:
    """Contender child names of a lock znode, holder first; [] if none."""
    try:
        return contenders(client.get_children(path))
    except NoNodeError:
        return []
