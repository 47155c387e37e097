"""Cloud errors, sorted into the few kinds the launcher acts on differently."""

from __future__ import annotations

import re
from dataclasses import dataclass

QUOTA = "quota"              # nova refused: over quota (no retry count, back off)
UNAVAILABLE = "unavailable"  # timeout, connection, 5xx, rate limited: try later
NOT_FOUND = "not_found"
BAD_REQUEST = "bad_request"  # our request is wrong: a config problem
OTHER = "other"

_QUOTA_TEXT = re.compile(r"quota|number of ports exceeded|limit exceeded", re.I)


@dataclass
class CloudError(Exception):
    kind: str
    message: str
    status_code: int | None = None

    def __str__(self) -> str:
        code = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"{self.kind}{code}: {self.message}"


def looks_like_quota(text: str | None) -> bool:
    """nova's "Quota exceeded for instances: ..." and neutron's port limits."""
    return bool(text and _QUOTA_TEXT.search(text))


def classify(exc: BaseException) -> CloudError:
    """Map openstacksdk, keystoneauth and gate errors to a ``CloudError``.

    keystoneauth's connection errors (a timeout included) are not
    ``SDKException``s, so they are matched by their own base class.
    """
    if isinstance(exc, CloudError):
        return exc
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as sdk

    from nodepool.driver.gate import ApiTimeout, GateClosed

    text = str(exc) or type(exc).__name__
    if isinstance(exc, (ApiTimeout, GateClosed, ksa.ConnectionError,
                        ksa.RetriableConnectionFailure)):
        return CloudError(UNAVAILABLE, text)
    status = getattr(exc, "status_code", None)
    if isinstance(exc, sdk.HttpException) or status is not None:
        if status == 403 and looks_like_quota(text):
            return CloudError(QUOTA, text, status)
        if status == 404:
            return CloudError(NOT_FOUND, text, status)
        if status in (413, 429) or (status is not None and status >= 500):
            return CloudError(UNAVAILABLE, text, status)
        if status == 400:
            return CloudError(BAD_REQUEST, text, status)
        return CloudError(OTHER, text, status)
    if isinstance(exc, ksa.ClientException):
        return CloudError(UNAVAILABLE, text)
    if isinstance(exc, sdk.SDKException):
        return CloudError(QUOTA if looks_like_quota(text) else OTHER, text)
    return CloudError(OTHER, f"{type(exc).__name__}: {text}")
