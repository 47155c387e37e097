"""The non-blocking state machine that creates one node's server.

The provider loop calls ``advance()`` on every machine each pass.  A machine
never waits: it submits calls to the gate and looks at them, and at the
shared server list, on later passes.  It never asks for a list itself: it
tells the provider's ``ListPacer`` (``list_pacing.py``) what it waits for.
All cloud I/O goes through the collaborators of its ``MachineContext``
(``context.py``), so it starts no thread; the one thing a
machine runs itself is its node's readiness check (``keyscan.py``: an
``ssh-keyscan`` process or a TCP connection), which it polls and cancels
like a call.

Timeouts follow the incidents' lessons: ``launch-timeout`` counts from the
create call of the attempt (waiting for quota is not launch time), and a
server is never declared failed for being slow before that.  A server that
exists in nova is never forgotten: it is handed to a ``ServerDeletion``,
which keeps it counted until nova stops listing it (``deletion.py``).
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from nodepool.driver import outcomes
from nodepool.driver.gate import ApiCall
from nodepool.driver.keyscan import (SSH_CONNECTION_TYPES, HostKeyScan, PortCheck,
                                     ReadinessCheck)
from nodepool.driver.openstack import addressing, errors
from nodepool.driver.openstack import servers as srv
from nodepool.driver.openstack.context import MachineContext
from nodepool.driver.openstack.deletion import ServerDeletions
from nodepool.driver.openstack.label_plan import LabelPlan, LabelPlanner, create_body
from nodepool.quota import is_quota_fault
from nodepool.requests.builder import BuildSpec

log = logging.getLogger("nodepool.openstack.machines")

# A failed attempt waits this long per failure so far before the next one.
RETRY_DELAY = 2.0


class Step(str, enum.Enum):
    RESOLVE = "resolve"          # flavor, image, networks from the catalog
    RESERVE = "reserve"          # resolved: reserve headroom, then create
    WAIT_QUOTA = "wait-quota"    # refused headroom, or the cloud refused for quota
    WAIT_RETRY = "wait-retry"    # after a failed or rate-limited attempt: not before
    CREATING = "creating"        # POST /servers in flight
    LOOKUP = "lookup"            # POST timed out: is the server there anyway?
    BOOTING = "booting"          # nova has it; waiting for ACTIVE
    FLOATING_IP = "floating-ip"  # attaching a floating IP
    KEYSCAN = "keyscan"          # waiting for SSH host keys (or the port, not SSH)
    READY = "ready"
    FAILED = "failed"


class CreateMachine:
    def __init__(self, ctx: MachineContext, planner: LabelPlanner,
                 deletions: ServerDeletions, spec: BuildSpec, pool: Any, label: Any):
        self.ctx = ctx
        self.planner = planner
        self.deletions = deletions
        self.spec = spec
        self.pool = pool                  # model.Pool
        self.label = label                # model.PoolLabel
        self.step = Step.RESOLVE
        self.attempt = 0                  # POSTs sent (or about to be)
        self.failures = 0                 # real failures, count against launch-retries
        self.plan: LabelPlan | None = None
        self.key: str | None = None       # ledger key of the current attempt
        self.server_id: str | None = None
        self.server: dict | None = None
        self.call: ApiCall | None = None
        self.call_done_at: float | None = None
        # The latest list (requested then) that showed the server building.
        self.building_seen_at: float | None = None
        self.create_started_at: float | None = None
        self.active_at: float | None = None
        self.not_before = 0.0
        self.reason: str | None = None    # why it waits or failed
        self.scan: ReadinessCheck | None = None
        self.fip_address: str | None = None
        self.fip_port: str | None = None
        self.resolve_misses = 0
        self.cancelled = False
        self.started_at = ctx.clock()

    # -- status for the request handler ------------------------------------

    @property
    def done(self) -> bool:
        return self.step in (Step.READY, Step.FAILED)

    def info(self) -> dict:
        """NodeInfo fields known now (external_id as soon as nova has it)."""
        out: dict[str, Any] = {}
        if self.server_id:
            out["external_id"] = self.server_id
        if self.plan:
            cost = self.plan.cost
            out["resources"] = {"cores": cost.cores, "ram": cost.ram, "instances": 1}
            if cost.volumes:
                # Upstream's key (hyphen), which tenant limits on every
                # launcher read.
                out["resources"].update({"volumes": cost.volumes, "volume-gb": cost.volume_gb})
        if self.server:
            s = self.server
            addrs = addressing.addresses_of(s, self.ctx.network_layout())
            if self.fip_address:
                addrs["public_ipv4"] = self.fip_address
                addrs["interface_ip"] = self.fip_address
            out.update({k: v for k, v in addrs.items() if v})
            out["hostname"] = s.get("name")
            out["host_id"] = s.get("hostId") or None
            out["az"] = s.get("OS-EXT-AZ:availability_zone") or self.spec.az or None
        image = self.label.cloud_image
        image_id = self.plan.image_path if self.plan and self.plan.image_path else image.name
        settings = self.ctx.settings()
        out.update(cloud=settings.cloud_name, region=settings.region_name,
                   image_id=image_id, username=image.username,
                   connection_type=image.connection_type,
                   connection_port=image.connection_port, python_path=image.python_path,
                   shell_type=image.shell_type)
        if self.step is Step.READY:
            out["host_keys"] = list(self.scan.keys) if self.scan and self.scan.keys else []
        return {k: v for k, v in out.items() if v is not None}

    def describe(self) -> dict:
        now = self.ctx.clock()
        return {"node": self.spec.node_id, "label": self.spec.label, "step": self.step.value,
                "attempt": self.attempt, "failures": self.failures,
                "server": self.server_id, "reason": self.reason,
                "since_create": None if self.create_started_at is None
                else round(now - self.create_started_at, 1)}

    # -- the machine -----------------------------------------------------

    def advance(self) -> None:
        if self.done:
            return
        now = self.ctx.clock()
        handler = getattr(self, f"_step_{self.step.name.lower()}")
        handler(now)

    def _step_resolve(self, now: float) -> None:
        plan, problem, final = self.planner.plan(self.label, self.pool)
        if plan is None:
            self.reason = problem
            if final:
                self._give_up(problem)
            return
        self.plan = plan
        self.reason = None
        self.step = Step.RESERVE

    def _step_reserve(self, now: float) -> None:
        """Reserve headroom for the next attempt and send its create; nothing
        is sent while the reservation is refused (WAIT_QUOTA)."""
        if now < self.not_before:
            return
        key = srv.attempt_key(self.spec.node_id, self.attempt + 1)
        decision = self.ctx.quota.reserve(key, self.spec, self.plan.cost)
        if not decision:
            self.reason = "; ".join(decision.reasons) or "no headroom"
            self.step = Step.WAIT_QUOTA
            return
        self.attempt += 1
        self.key = key
        self.reason = None
        try:
            name = srv.hostname(self.ctx.settings().hostname_format, label=self.spec.label,
                                provider=self.ctx.name, pool=self.pool.name,
                                node_id=self.spec.node_id)
            body = create_body(name=name, provider=self.ctx.name, pool=self.pool,
                               label=self.label, plan=self.plan, spec=self.spec,
                               attempt=self.attempt)
        except Exception:
            # Nothing was sent: give the reservation back, or it would hold
            # headroom forever (the next attempt reserves under a new key).
            self.ctx.quota.ledger.release(key)
            self.key = None
            raise
        self.ctx.quota.ledger.create_issued(key)
        self.create_started_at = now
        self.call = self.ctx.calls.create_server(body)
        self.step = Step.CREATING

    # Waiting for headroom or for a retry's delay: each pass tries again.
    _step_wait_quota = _step_reserve
    _step_wait_retry = _step_reserve

    def _step_creating(self, now: float) -> None:
        if not self.call.done():
            return
        call, self.call = self.call, None
        self.call_done_at = now
        try:
            answer = call.result()
        except Exception as e:  # noqa: BLE001 - sorted by kind below
            err = errors.classify(e)
            self.ctx.reporter.count_create_error(err)
            if err.kind == errors.QUOTA:
                self.ctx.quota.ledger.create_rejected(self.key, quota_error=True)
                self._report(outcomes.ERROR_QUOTA)
                self._wait_for_quota(f"cloud refused: {err.message}")
            elif err.status_code == 429:
                # Rate limited: nothing was made and nothing is wrong with
                # the node; the gate holds calls back, the create is resent.
                self.ctx.quota.ledger.create_rejected(self.key)
                self._wait_to_retry(f"cloud rate limited the create: {err.message}",
                                    now + RETRY_DELAY)
            elif err.kind == errors.UNAVAILABLE or err.status_code is None:
                # The server may exist even though we got no usable answer
                # (a timeout, or a 202 whose body we could not read).
                self.ctx.quota.ledger.create_unknown(self.key)
                self.ctx.pacer.awaited(now)
                self.reason = f"create call failed ({err.message}); looking for the server"
                self.step = Step.LOOKUP
            else:
                self.ctx.quota.ledger.create_rejected(self.key)
                if err.kind == errors.BAD_REQUEST:
                    self.planner.create_refused()
                self._failed(f"create refused: {err}")
            return
        self.server_id = answer.get("id")
        self.ctx.quota.ledger.create_accepted(self.key, self.server_id)
        self.ctx.quota.remember_server(self.server_id, self.key)
        self.ctx.pacer.expect_active(0.0, after=now)
        self.step = Step.BOOTING

    def _step_lookup(self, now: float) -> None:
        snap = self.ctx.servers.snapshot
        if snap.requested_at <= self.call_done_at:
            if now - self.create_started_at > self.ctx.settings().launch_timeout:
                # The cloud stays unreachable; the deletion machinery keeps
                # looking for the server and keeps it counted meanwhile.
                self._failed("create call failed and the server list stayed unavailable")
            return
        found = snap.by_metadata(**{srv.META_PROVIDER: self.ctx.name,
                                    srv.META_NODE: self.spec.node_id,
                                    srv.META_ATTEMPT: str(self.attempt)})
        if found:
            self.server_id = found[0]["id"]
            self.ctx.quota.ledger.server_seen(self.key, self.server_id)
            self.ctx.quota.remember_server(self.server_id, self.key)
            self.reason = None
            self.step = Step.BOOTING
            self._step_booting(now)
            return
        # A list requested after the call gave up does not show it.  A create
        # that still lands later is found by the leak cleaner.
        self.ctx.quota.ledger.server_gone(self.key)
        self.key = None
        self._failed(self.reason or "create call failed")

    def _step_booting(self, now: float) -> None:
        snap = self.ctx.servers.snapshot
        server = snap.get(self.server_id)
        if server is None:
            if snap.requested_at > self.call_done_at and now - self.call_done_at > 1.0:
                self._failed("the server disappeared while building")
            elif now - self.create_started_at > self.ctx.settings().launch_timeout:
                timeout = self.ctx.settings().launch_timeout
                self._failed(f"launch-timeout ({timeout}s) passed",
                             outcomes.ERROR_CREATE_TIMEOUT)
            return
        self.server = server
        self.ctx.quota.ledger.server_seen(self.key, self.server_id)
        status = str(server.get("status", "")).upper()
        if status in ("ACTIVE", "ERROR"):
            self._note_boot_time(snap.requested_at)
        else:
            self.building_seen_at = snap.requested_at
        if srv.is_deleting(server):
            # Someone else is deleting it: never hand such a server out.
            self._failed(f"the server is being deleted (status {status})")
            return
        if status == "ACTIVE":
            self.active_at = now
            if self._needs_floating_ip(server):
                self.step = Step.FLOATING_IP
                self._step_floating_ip(now)
            else:
                self._after_network(now)
            return
        if status == "ERROR":
            fault = srv.fault_message(server)
            if is_quota_fault(server.get("fault") or fault):
                self.ctx.quota.ledger.report_quota_error(self.ctx.name, self.key)
                self._report(outcomes.ERROR_QUOTA)
                self._abandon_server()
                self._wait_for_quota(f"server went ERROR over quota: {fault}")
            else:
                self._failed(f"server went ERROR: {fault}", outcomes.ERROR_STATUS)
            return
        timeout = self.ctx.settings().launch_timeout
        if now - self.create_started_at > timeout:
            self._failed(f"launch-timeout ({timeout}s) passed in {status}",
                         outcomes.ERROR_CREATE_TIMEOUT)
        else:
            self.ctx.pacer.expect_active(now - (self.call_done_at or now))

    def _note_boot_time(self, listed_at: float) -> None:
        """Teach the pacer how long boots take (its ready looks): the
        server went ACTIVE between the last list that showed it building
        and this one."""
        start = self.call_done_at
        if start is None or listed_at <= start:
            return
        before = (self.building_seen_at or start) - start
        self.ctx.pacer.boot_observed(before, listed_at - start)

    def _needs_floating_ip(self, server: dict) -> bool:
        return bool(self.pool.auto_floating_ip
                    and addressing.needs_floating_ip(server, self.ctx.network_layout()))

    def _step_floating_ip(self, now: float) -> None:
        if now - self.create_started_at > self.ctx.settings().launch_timeout:
            self._failed("launch-timeout passed while attaching a floating IP",
                         outcomes.ERROR_CREATE_TIMEOUT)
            return
        if self.call is not None:
            if not self.call.done():
                return
            call, self.call = self.call, None
            try:
                answer = call.result()
            except Exception as e:  # noqa: BLE001
                err = errors.classify(e)
                if err.kind == errors.QUOTA:
                    self._failed(f"no floating IP: {err.message}")
                else:
                    self.reason = f"floating IP step failed: {err}; retrying"
                    self.not_before = now + RETRY_DELAY
                return
            self.fip_address = answer.get("floating_ip_address")
            # Remembered by the provider: the node may be deleted before
            # any server list shows the address in nova's ``addresses``.
            self.ctx.floating_ips.note(self.server_id, self.fip_address, answer.get("id"))
            self._after_network(now)
            return
        if now < self.not_before:
            return
        layout = self.ctx.network_layout()
        if self.fip_port is None:
            # The shared port list, requested after the server went ACTIVE
            # (its ports exist by then), serves every server waiting here.
            ports = self.ctx.ports.snapshot
            asked_at = max(self.active_at or now, self.not_before)
            if ports.requested_at <= asked_at:
                self.ctx.pacer.ports_awaited(asked_at)
                return
            port = addressing.floating_ip_port(ports.items.values(), self.server, layout)
            if port is None:
                self.reason = "server has no port for a floating IP yet"
                self.not_before = now + RETRY_DELAY
                return
            self.fip_port = port["id"]
        network = layout.floating_source
        if network is None:
            self._failed("auto-floating-ip is on but the cloud has no external network")
            return
        self.call = self.ctx.calls.create_floating_ip(network["id"], self.fip_port)

    def _after_network(self, now: float) -> None:
        addr = self.info().get("interface_ip")
        if not addr:
            self._failed("the server is ACTIVE without any address", outcomes.ERROR_NETWORK)
            return
        if self.label.host_key_checking:
            image = self.label.cloud_image
            # SSH-based connections have host keys to collect; for the others
            # (winrm, ...) the check is that the port takes connections.
            check = HostKeyScan if image.connection_type in SSH_CONNECTION_TYPES else PortCheck
            self.scan = check(addr, image.connection_port, now + self.ctx.settings().boot_timeout,
                              self.ctx.clock)
            self.step = Step.KEYSCAN
            self._step_keyscan(now)
            return
        self._ready()

    def _step_keyscan(self, now: float) -> None:
        if self.scan.poll() is None:
            return
        if not self.scan.ok:
            if self.label.console_log and self.server_id:
                self.ctx.calls.log_console(self.server_id, self.spec.node_id)
            self._failed(self.scan.error or "no host keys", outcomes.ERROR_KEYSCAN)
            return
        self._ready()

    def _ready(self) -> None:
        self.step = Step.READY
        self.reason = None
        self._report(outcomes.READY)

    # -- outcomes ----------------------------------------------------------

    def _abandon_server(self) -> None:
        """Hand this attempt's server (known or possible) to the deletion
        machinery, which keeps it counted until nova stops listing it."""
        if self.scan:
            self.scan.cancel()
            self.scan = None
        if self.key is not None and (self.server_id or self.step in (Step.CREATING,
                                                                      Step.LOOKUP)):
            self.deletions.delete(self.server_id, key=self.key,
                                   node_id=self.spec.node_id, attempt=self.attempt,
                                   since=self.call_done_at or self.ctx.clock())
        elif self.key is not None and self.ctx.quota.ledger.entry_state(self.key) is not None:
            self.deletions.delete(None, key=self.key, node_id=self.spec.node_id,
                                   attempt=self.attempt, since=self.ctx.clock())
        self.key = None
        self.server_id = None
        self.server = None
        self.fip_port = None
        self.fip_address = None

    def _wait_for_quota(self, reason: str) -> None:
        """A quota refusal: not the node's fault, so not a launch failure."""
        self.reason = reason
        self.key = None
        self.server_id = None
        self.step = Step.WAIT_QUOTA

    def _wait_to_retry(self, reason: str, not_before: float) -> None:
        """Nothing was made (a rate-limited create): resend from ``not_before``."""
        self.reason = reason
        self.key = None
        self.server_id = None
        self.not_before = not_before
        self.step = Step.WAIT_RETRY

    def _report(self, outcome: str) -> None:
        """One launch outcome for the statsd ``nodepool.launch.*`` timers,
        timed from this attempt's create call (or from the build's start)."""
        started = self.create_started_at if self.create_started_at is not None \
            else self.started_at
        az = (self.server or {}).get("OS-EXT-AZ:availability_zone") or self.spec.az
        self.ctx.reporter.report_launch(outcomes.LaunchOutcome(
            provider=self.ctx.name, outcome=outcome,
            milliseconds=int(max(0.0, self.ctx.clock() - started) * 1000), az=az or None,
            requestor=(self.spec.request or {}).get("requestor")))

    def fail(self, reason: str) -> None:
        """This attempt fails for a reason found outside the machine (an
        error raised while advancing it); a retry follows as for any other."""
        self._failed(reason)

    def _failed(self, reason: str, outcome: str = outcomes.ERROR_UNKNOWN) -> None:
        log.warning("node %s attempt %d: %s", self.spec.node_id, self.attempt, reason)
        self._report(outcome)
        self._abandon_server()
        self.failures += 1
        self.ctx.reporter.count_launch_failure()
        retries = self.ctx.settings().launch_retries
        if self.failures >= retries:
            self._give_up(f"{reason} (attempt {self.failures} of {retries})")
            return
        self.reason = f"retrying after: {reason}"
        self.not_before = self.ctx.clock() + RETRY_DELAY * self.failures
        self.step = Step.WAIT_RETRY

    def _give_up(self, reason: str) -> None:
        self.reason = reason
        self.step = Step.FAILED

    def cancel(self) -> None:
        """The node is being deleted: drop the work, keep the server accounted."""
        if self.call is not None and self.step is Step.CREATING:
            # The POST may still land: look for it once the call is over.
            self.deletions.delete(None, key=self.key, node_id=self.spec.node_id,
                                   attempt=self.attempt, since=self.ctx.clock(),
                                   after_call=self.call)
            self.key = None
        else:
            self._abandon_server()
        self.cancelled = True
        self.step = Step.FAILED
        self.reason = "cancelled: the node is being deleted"
