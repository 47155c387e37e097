"""Deleting servers: one server at a time, and every server of one node.

``ServerDeletion`` deletes one server (or the server a create attempt may
have made) and keeps its quota counted until nova no longer lists it; it
never gives up, and backs off on errors.  ``ServerDeletions`` holds the
provider's deletions in progress, one per server.  ``NodeDeletion`` is
what the request handler's ``start_delete`` starts: a deletion for the
node's external id and for anything else carrying its node id (failed
attempts, creates that timed out).  Like ``CreateMachine`` they never wait
and start no thread; the provider's loop calls ``advance()`` each pass.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field

from nodepool.driver.gate import ApiCall
from nodepool.driver.openstack import errors
from nodepool.driver.openstack import servers as srv
from nodepool.driver.openstack.context import MachineContext
from nodepool.requests.builder import DeleteSpec, DeleteState, DeleteStatus

# Resend a delete nova seems to have forgotten (still listed, not deleting).
REDELETE_AFTER = 300.0
MAX_DELETE_BACKOFF = 60.0


class DeleteStep(str, enum.Enum):
    FIND = "find"        # server id unknown: look for it in a fresh list
    SEND = "send"        # DELETE to be sent (or resent)
    SENT = "sent"        # DELETE in flight
    WAIT_GONE = "wait-gone"
    DONE = "done"


@dataclass
class ServerDeletion:
    """Delete one server (or the server an attempt may have made) and wait
    until nova no longer lists it; never gives up, backs off on errors."""

    ctx: MachineContext
    server_id: str | None
    key: str | None
    node_id: str | None
    attempt: int | None
    since: float
    after_call: ApiCall | None = None
    step: DeleteStep = DeleteStep.SEND
    call: ApiCall | None = None
    sent_at: float | None = None
    not_before: float = 0.0
    errors: int = 0
    reason: str | None = None
    floating_ips: list[str] = field(default_factory=list)
    # The last list (its request time) that still showed the deleted server.
    still_listed_at: float | None = None

    def __post_init__(self) -> None:
        if self.server_id is None:
            self.step = DeleteStep.FIND

    @property
    def done(self) -> bool:
        return self.step is DeleteStep.DONE

    def advance(self) -> None:
        now = self.ctx.clock()
        snap = self.ctx.servers.snapshot
        if self.key is None and self.server_id is not None:
            # Deleting by id (a node's external_id): the server's metadata
            # names the ledger entry that must be released when it is gone.
            meta = (snap.get(self.server_id) or {}).get("metadata") or {}
            if meta.get(srv.META_PROVIDER) == self.ctx.name and meta.get(srv.META_NODE):
                self.key = srv.ledger_key(meta)
            else:
                # Not (or no longer) listed: nova may have dropped it already.
                self.key = self.ctx.quota.key_for_server(self.server_id)
        if self.step is DeleteStep.FIND:
            if self.after_call is not None:
                if not self.after_call.done():
                    return
                try:
                    answer = self.after_call.result()
                    self.server_id = answer.get("id")
                    if self.key:
                        self.ctx.quota.ledger.create_accepted(self.key, self.server_id)
                except Exception as e:  # noqa: BLE001 - sorted below
                    err = errors.classify(e)
                    self.ctx.reporter.count_create_error(err)
                    if err.status_code is not None and 400 <= err.status_code < 500:
                        # Refused (over quota, bad request): no server was made.
                        if self.key:
                            self.ctx.quota.ledger.create_rejected(
                                self.key, quota_error=err.kind == errors.QUOTA)
                        self.after_call = None
                        self.step = DeleteStep.DONE
                        return
                    # No answer: the server may exist; look in the list.
                    if self.key:
                        self.ctx.quota.ledger.create_unknown(self.key)
                self.after_call = None
                self.since = now
                if self.server_id:
                    self.step = DeleteStep.SEND
                    return
            if snap.requested_at <= self.since:
                self.ctx.pacer.awaited(self.since)
                return
            wanted = {srv.META_PROVIDER: self.ctx.name, srv.META_NODE: self.node_id}
            if self.attempt is not None:
                wanted[srv.META_ATTEMPT] = str(self.attempt)
            found = snap.by_metadata(**wanted)
            if not found:
                self._gone()
                return
            self.server_id = found[0]["id"]
            if self.key:
                self.ctx.quota.ledger.server_seen(self.key, self.server_id)
            self.step = DeleteStep.SEND
        if self.step is DeleteStep.SEND:
            if now < self.not_before:
                return
            server = snap.get(self.server_id)
            if server is not None:
                self.floating_ips = sorted(set(self.floating_ips) | {
                    e["addr"] for entries in (server.get("addresses") or {}).values()
                    for e in entries or [] if e.get("OS-EXT-IPS:type") == "floating"})
            self.call = self.ctx.calls.delete_server(self.server_id)
            self.step = DeleteStep.SENT
            return
        if self.step is DeleteStep.SENT:
            if not self.call.done():
                return
            call, self.call = self.call, None
            try:
                # False (or NOT_FOUND below): nova no longer knew the server.
                accepted = call.result() is not False
            except Exception as e:  # noqa: BLE001
                err = errors.classify(e)
                if err.kind != errors.NOT_FOUND:
                    self.errors += 1
                    self.reason = f"delete failed: {err}"
                    self.not_before = now + min(MAX_DELETE_BACKOFF, 2.0 ** self.errors)
                    self.step = DeleteStep.SEND
                    return
                accepted = False
            self.sent_at = now
            self.reason = None
            if self.key:
                self.ctx.quota.ledger.delete_issued(self.key)
                if accepted and call.started_at is not None:
                    # Nova accepted the DELETE, so it still had the server
                    # when the call started: as good as a list from then.
                    self.ctx.quota.ledger.note_listed(self.key, call.started_at)
            self.ctx.pacer.expect_gone(self.sent_at)
            self.step = DeleteStep.WAIT_GONE
            return
        if self.step is DeleteStep.WAIT_GONE:
            if snap.requested_at <= self.sent_at:
                self.ctx.pacer.expect_gone(self.sent_at)
                return
            server = snap.get(self.server_id)
            if server is None:
                self.ctx.pacer.delete_observed(
                    (self.still_listed_at or self.sent_at) - self.sent_at,
                    snap.requested_at - self.sent_at)
                self._gone()
                return
            self.still_listed_at = snap.requested_at
            if self.key:
                self.ctx.quota.ledger.note_listed(self.key, snap.requested_at)
            if now - self.sent_at > REDELETE_AFTER and not srv.is_deleting(server):
                self.reason = "still listed long after the delete; sending it again"
                self.step = DeleteStep.SEND
            else:
                self.ctx.pacer.expect_gone(now)

    def _gone(self) -> None:
        if self.key is None:
            self.key = self.ctx.quota.key_for_server(self.server_id)
        if self.key:
            self.ctx.quota.ledger.server_gone(self.key)
        self.ctx.quota.forget_server(self.server_id)
        for addr in self.ctx.floating_ips.created_for(self.server_id):
            if addr not in self.floating_ips:
                self.floating_ips.append(addr)
        for addr in self.floating_ips:
            self.ctx.floating_ips.delete_by_address(addr)
        self.ctx.reporter.note_delete_completed()
        self.step = DeleteStep.DONE

    def describe(self) -> dict:
        now = self.ctx.clock()
        return {"server": self.server_id, "node": self.node_id, "step": self.step.value,
                "errors": self.errors, "reason": self.reason,
                "since": round(now - self.since, 1)}


class ServerDeletions:
    """The provider's server deletions in progress, one per server id."""

    def __init__(self, ctx: MachineContext, lock: threading.RLock):
        self.ctx = ctx
        self._lock = lock          # the provider's
        self.active: list[ServerDeletion] = []

    def delete(self, server_id: str | None, *, key: str | None, node_id: str | None,
               attempt: int | None, since: float,
               after_call: ApiCall | None = None) -> ServerDeletion:
        """Delete this server (a deletion already under way for it is
        returned, and learns the ledger key if it lacked one); with no id,
        the server ``node_id``'s attempt may have made."""
        with self._lock:
            if server_id is not None:
                for d in self.active:
                    if d.server_id == server_id:
                        d.key = d.key or key
                        return d
            d = ServerDeletion(self.ctx, server_id, key, node_id, attempt, since,
                               after_call=after_call)
            self.active.append(d)
            return d

    def drop_done(self) -> list[str]:
        """Forget the finished deletions; their ledger keys."""
        finished = [d.key for d in self.active if d.done and d.key]
        self.active = [d for d in self.active if not d.done]
        return finished

    def server_ids(self) -> set[str]:
        return {d.server_id for d in self.active if d.server_id}

    def delete_sent(self, server_id: str | None) -> bool:
        """Whether nova accepted (or answered) our DELETE of this server."""
        return any(d.server_id == server_id and d.sent_at is not None for d in self.active)

    def awaited(self) -> list[tuple[str | None, float | None]]:
        """(server id, when its DELETE was answered if it waits to be gone),
        for the list pacing."""
        return [(d.server_id, d.sent_at if d.step is DeleteStep.WAIT_GONE else None)
                for d in self.active]

    def describe(self) -> list[dict]:
        return [d.describe() for d in self.active]


class NodeDeletion:
    """Delete every server of one node: its external id, and anything else
    carrying its node id (failed attempts, creates that timed out)."""

    def __init__(self, ctx: MachineContext, deletions: ServerDeletions, spec: DeleteSpec):
        self.ctx = ctx
        self.server_deletions = deletions
        self.spec = spec
        self.started_at = ctx.clock()
        self.deletions: dict[str, ServerDeletion] = {}
        self.searched = False
        if spec.external_id:
            self.deletions[spec.external_id] = deletions.delete(
                spec.external_id, key=None, node_id=spec.node_id, attempt=None,
                since=self.started_at)

    def advance(self) -> None:
        snap = self.ctx.servers.snapshot
        if not self.searched:
            if snap.requested_at <= self.started_at:
                # As for the servers' own deletions: hurried only while
                # somebody waits.
                self.ctx.pacer.expect_gone(self.started_at)
                return
            for server in snap.by_metadata(**{srv.META_PROVIDER: self.ctx.name,
                                              srv.META_NODE: self.spec.node_id}):
                if server["id"] not in self.deletions:
                    meta = server.get("metadata") or {}
                    key = srv.ledger_key(meta, node_id=self.spec.node_id)
                    self.deletions[server["id"]] = self.server_deletions.delete(
                        server["id"], key=key, node_id=self.spec.node_id, attempt=None,
                        since=self.started_at)
            self.searched = True

    @property
    def done(self) -> bool:
        return self.searched and all(d.done for d in self.deletions.values())

    def status(self) -> DeleteStatus:
        if self.done:
            return DeleteStatus(DeleteState.DONE)
        reasons = [d.reason for d in self.deletions.values() if d.reason]
        return DeleteStatus(DeleteState.DELETING, "; ".join(reasons) or None)
