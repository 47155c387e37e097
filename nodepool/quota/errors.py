"""Recognising "the cloud refused for quota" from what the API returned.

Pure string logic so the driver can classify both a refused create (an
exception) and a server that went ERROR with a quota fault the same way.

Rules (case-insensitive):
- any text containing "quota" is a quota error, whatever the status: nova's
  "Quota exceeded for instances: Requested 1, but already used 10 of 10
  instances", neutron's "Quota exceeded for resources: ['port']", cinder's
  "... exceeded for quota 'gigabytes'", and ERROR faults such as "Build of
  instance ... aborted: ... exceeds ... quota";
- "exceeded" next to a count of things ("Maximum number of ports exceeded",
  "Maximum number of volumes allowed (10) exceeded") is one too;
- with status 403 or 413, any "exceeded"/"exceeds" that is not about a rate
  limit is one.
A bare 403 without such text is NOT a quota error: 403 also means "policy
does not allow this", which no amount of waiting fixes, so it must fail the
launch like any other error instead of parking the provider in backoff.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

_QUOTA = re.compile(r"quota", re.IGNORECASE)
_COUNT_EXCEEDED = re.compile(r"(maximum )?number of [\w ]+?(allowed \(\d+\) )?exceeded",
                             re.IGNORECASE)
_EXCEEDED = re.compile(r"\bexceed(ed|s)?\b", re.IGNORECASE)
_RATE = re.compile(r"rate[ -]?limit", re.IGNORECASE)

QUOTA_STATUSES = (403, 413)


def is_quota_error(message: str | None, status_code: int | None = None) -> bool:
    """True when an API answer (message and HTTP status) means quota refused."""
    text = message or ""
    if _QUOTA.search(text) or _COUNT_EXCEEDED.search(text):
        return True
    return (status_code in QUOTA_STATUSES and bool(_EXCEEDED.search(text))
            and not _RATE.search(text))


def is_quota_fault(fault: Mapping[str, Any] | str | None) -> bool:
    """True when an ERROR server's ``fault`` (nova's dict or its message)
    says quota refused the build."""
    if not fault:
        return False
    if isinstance(fault, str):
        return is_quota_error(fault)
    texts = [str(fault.get(k) or "") for k in ("message", "details")]
    code = fault.get("code")
    return any(is_quota_error(t, code if isinstance(code, int) else None) for t in texts)


def is_quota_exception(exc: BaseException) -> bool:
    """Duck-typed check of an exception from the cloud library: its text, its
    ``status_code``/``http_status`` and ``details``, and an ERROR server's
    fault carried in ``extra_data['server']`` (openstacksdk 4.x raises a plain
    SDKException for a create that came back ERROR)."""
    status = getattr(exc, "status_code", None) or getattr(exc, "http_status", None)
    if not isinstance(status, int):
        status = None
    texts = [str(exc), str(getattr(exc, "details", None) or "")]
    if any(is_quota_error(t, status) for t in texts):
        return True
    extra = getattr(exc, "extra_data", None)
    if isinstance(extra, Mapping):
        server = extra.get("server")
        fault = server.get("fault") if isinstance(server, Mapping) else \
            getattr(server, "fault", None)
        if isinstance(fault, (Mapping, str)):
            return is_quota_fault(fault)
    return False
