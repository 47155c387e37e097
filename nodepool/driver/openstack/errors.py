"""Cloud errors, sorted into the few kinds the launcher acts on differently."""

from __future__ import annotations

from dataclasses import dataclass

from nodepool.quota.errors import is_quota_exception

QUOTA = "quota"              # nova refused: over quota (no retry count, back off)
UNAVAILABLE = "unavailable"  # timeout, connection, 5xx, rate limited: try later
NOT_FOUND = "not_found"
BAD_REQUEST = "bad_request"  # our request is wrong: a config problem
OTHER = "other"


@dataclass
class CloudError(Exception):
    kind: str
    message: str
    status_code: int | None = None

    def __str__(self) -> str:
        code = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"{self.kind}{code}: {self.message}"


def classify(exc: BaseException) -> CloudError:
    """Map openstacksdk, keystoneauth and gate errors to a ``CloudError``.

    keystoneauth's connection errors (a timeout included) are not
    ``SDKException``s, so they are matched by their own base class.  What
    counts as "refused for quota" is decided in one place,
    ``nodepool.quota.errors`` (its rules are documented there).
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
        if is_quota_exception(exc):
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
        return CloudError(QUOTA if is_quota_exception(exc) else OTHER, text)
    return CloudError(OTHER, f"{type(exc).__name__}: {text}")
