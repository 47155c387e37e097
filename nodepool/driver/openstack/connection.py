"""The provider's connection to its cloud project.

Made through the gate (setting up a session may call keystone), replaced
when the cloud settings change (a rotated password, a moved endpoint): new
calls use the new connection, calls in flight finish on the old one, which
is closed once every call that could still use it has ended or been
written off by the gate.
"""

from __future__ import annotations

import logging
from typing import Callable

from nodepool.driver.gate import ApiCall, ApiGate
from nodepool.driver.openstack import errors
from nodepool.driver.openstack.cloud import OpenStackCloud, connect_to_project

log = logging.getLogger("nodepool.openstack.provider")


class CloudConnection:
    def __init__(self, name: str, gate: ApiGate, clock: Callable[[], float],
                 target: Callable[[], tuple[str, str | None, str | None]],
                 cloud: OpenStackCloud | None = None):
        self.name = name
        self.gate = gate
        self.clock = clock
        # (cloud name, clouds.yaml path, region) to connect to, read when a
        # connection is made.
        self.target = target
        self._cloud = cloud
        self._connect_call: ApiCall | None = None
        self.reconnect_wanted = False
        # Replaced connections (when retired), closed after this long.
        self.retired: list[tuple[float, OpenStackCloud]] = []
        self.retired_close_after = gate.deadline

    @property
    def cloud(self) -> OpenStackCloud:
        if self._cloud is None:
            raise errors.CloudError(errors.UNAVAILABLE, "not connected yet")
        return self._cloud

    @property
    def connected(self) -> bool:
        return self._cloud is not None

    def project(self) -> dict | None:
        """The cloud project the calls go to (auth URL, project id, region;
        ``{}`` if the token names none); None until connected."""
        cloud = self._cloud
        if cloud is None:
            return None
        return cloud.project if cloud.project is not None else {}

    def tick(self) -> bool:
        """Connect (again) if needed, close what was retired long enough
        ago; whether there is a connection to use this pass."""
        if self._cloud is None or self.reconnect_wanted:
            self._connect()
            if self._cloud is None:
                return False
        if self.retired:
            self._close_retired()
        return True

    def close(self) -> None:
        for cloud in [self._cloud, *(c for _, c in self.retired)]:
            if cloud is not None:
                cloud.close()
        self.retired = []

    def _connect(self) -> None:
        if self._connect_call is None:
            self._connect_call = self.gate.submit("connect", connect_to_project,
                                                  *self.target())
            return
        if not self._connect_call.done():
            return
        call, self._connect_call = self._connect_call, None
        try:
            cloud = OpenStackCloud(*call.result())
        except Exception as e:  # noqa: BLE001 - retried next pass
            log.error("%s: cannot set up the connection to cloud %s: %s", self.name,
                      self.target()[0], errors.classify(e))
            return
        if self._cloud is not None and self._cloud is not cloud:
            # Calls in flight may still use it; closed after the gate's deadline.
            self.retired.append((self.clock(), self._cloud))
        self._cloud = cloud
        self.reconnect_wanted = False

    def _close_retired(self) -> None:
        now = self.clock()
        keep = []
        for retired_at, cloud in self.retired:
            if now - retired_at > self.retired_close_after:
                cloud.close()
            else:
                keep.append((retired_at, cloud))
        self.retired = keep
