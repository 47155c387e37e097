"""What this process knows about its ZooKeeper session.

kazoo reports three states.  SUSPENDED means the connection dropped but the
session (and with it every ephemeral znode: our locks, our registrations,
our min-ready requests) may well survive; kazoo reconnects to the same
session and carries on.  LOST means the session expired (or the client was
stopped): every ephemeral znode of ours is gone.  Only LOST ends a lock.

``SessionTracker`` turns that into two things the loops can ask cheaply:

* ``generation``: bumped on every LOST.  A lock remembers the generation it
  was taken in and is held while the generation is unchanged, so a blip
  (leader election, rolling restart, a frozen server) never drops work.
* ``connected``: false while SUSPENDED or LOST.  Loops skip their passes
  instead of sending calls that would block until the reconnect.

It also owns the lock contender znodes whose delete failed because the
connection dropped at that moment (``defer_delete``): they still exist on
the server while the session lives, so they are deleted again as soon as
the connection is back (a thread started on CONNECTED; the launcher's loops
also retry); a LOST forgets them (the server removed them).

The state listener runs on kazoo's connection thread, so it only sets
fields; it never calls ZooKeeper.
"""

from __future__ import annotations

import logging
import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import (ConnectionClosedError, ConnectionLoss, KazooException,
                              NoNodeError, SessionExpiredError)
from kazoo.protocol.states import KazooState

log = logging.getLogger("nodepool.zk.session")

# What a call raises when the connection drops under it: expected during a
# blip, logged without a traceback, retried by the next pass.
DISCONNECT_ERRORS = (ConnectionLoss, SessionExpiredError, ConnectionClosedError)

_ATTRIBUTE = "_nodepool_session_tracker"
_CREATE = threading.Lock()


class SessionTracker:
    def __init__(self, client: KazooClient):
        self.client = client
        self._lock = threading.Lock()
        self.generation = 0
        self.state = client.state
        self.suspended_since: float | None = None
        self.lost_count = 0
        self.suspended_count = 0
        self._session_id: int | None = _live_session(client)
        self._deferred: set[str] = set()
        client.add_listener(self._on_state)

    @classmethod
    def of(cls, client: KazooClient) -> "SessionTracker":
        """The tracker of ``client``; one per client, made on first use."""
        with _CREATE:
            tracker = getattr(client, _ATTRIBUTE, None)
            if tracker is None:
                tracker = cls(client)
                setattr(client, _ATTRIBUTE, tracker)
            return tracker

    # -- state -----------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        with self._lock:
            previous, self.state = self.state, state
            if state == KazooState.LOST:
                self.generation += 1
                self.lost_count += 1
                self._deferred.clear()
                self._session_id = None
                if self.suspended_since is None:
                    self.suspended_since = time.monotonic()
            elif state == KazooState.SUSPENDED:
                self.suspended_count += 1
                if self.suspended_since is None:
                    self.suspended_since = time.monotonic()
            elif state == KazooState.CONNECTED:
                self.suspended_since = None
                # client_id is live here: this callback follows _live.set().
                self._session_id = _live_session(self.client)
            retry = state == KazooState.CONNECTED and bool(self._deferred)
        if retry:
            # Not on kazoo's connection thread: it must never wait on a call.
            threading.Thread(target=self.retry_deferred, daemon=True,
                             name="zk-deferred-deletes").start()
        if state == KazooState.LOST and getattr(self.client, "_stopped", None) is not None \
                and self.client._stopped.is_set():
            log.debug("ZooKeeper session closed")
            return
        if state == previous:
            return
        if state == KazooState.CONNECTED:
            # The first connection is routine; a reconnect is worth a line.
            level = logging.INFO if self.suspended_count or self.lost_count else logging.DEBUG
            log.log(level, "ZooKeeper connection connected (session generation %d)",
                    self.generation)
        else:
            log.warning("ZooKeeper connection %s (session generation %d)",
                        "lost: session expired" if state == KazooState.LOST
                        else "suspended: the session may survive", self.generation)

    @property
    def connected(self) -> bool:
        # kazoo sets its state before it calls the listeners, so this is
        # right even in another listener that runs before ours.
        return self.client.state == KazooState.CONNECTED

    @property
    def session_id(self) -> int | None:
        """The session's id, also while SUSPENDED (it may come back); None
        after a LOST until the new session is connected."""
        live = _live_session(self.client)
        if live is not None:
            return live
        with self._lock:
            return self._session_id

    def disconnected_for(self) -> float:
        """Seconds since the connection dropped; 0 while connected."""
        since = self.suspended_since
        return 0.0 if since is None else time.monotonic() - since

    # -- contenders left behind by a failed delete -----------------------------

    def defer_delete(self, path: str, generation: int) -> None:
        """A znode of this session that must go but could not be deleted now."""
        with self._lock:
            if generation == self.generation:
                self._deferred.add(path)

    @property
    def deferred(self) -> list[str]:
        with self._lock:
            return sorted(self._deferred)

    def retry_deferred(self) -> list[str]:
        """Delete what ``defer_delete`` kept; returns the paths done.  Only
        while connected; never raises."""
        done: list[str] = []
        if not self.connected:
            return done
        for path in self.deferred:
            try:
                self.client.delete(path)
            except NoNodeError:
                pass
            except KazooException as e:
                log.debug("still cannot delete %s: %s", path, e)
                continue
            done.append(path)
            with self._lock:
                self._deferred.discard(path)
        if done:
            log.info("deleted %d lock znode(s) left from a disconnect", len(done))
        return done


def _live_session(client: KazooClient) -> int | None:
    cid = client.client_id
    return cid[0] if cid else None
