"""Node request IDs and the order in which launchers consider requests.

A request ID is the znode name Zuul gets from a sequential create under
``/nodepool/requests/`` with the prefix ``NNN-``: three digits of priority, a
hyphen, ten digits of sequence.  Zuul tells classic requests from its newer
UUID requests by the hyphen at index 3, so the format is exact.
"""

from __future__ import annotations

import re

MIN_READY_PRIORITY = 900

_REQUEST_ID = re.compile(r"^(\d{3})-(-?\d{10})$")


def is_request_id(name: str) -> bool:
    return bool(_REQUEST_ID.match(name))


def parse_request_id(request_id: str) -> tuple[str, str]:
    """``"200-0000000042"`` -> ``("200", "0000000042")``; ValueError otherwise."""
    m = _REQUEST_ID.match(request_id)
    if not m:
        raise ValueError(f"not a node request id (NNN-NNNNNNNNNN): {request_id!r}")
    return m.group(1), m.group(2)


def request_id_prefix(priority: int | str) -> str:
    """The name prefix for a sequential create: 200 -> ``"200-"``."""
    text = f"{priority:0>3}" if isinstance(priority, str) else f"{int(priority):03d}"
    if not re.fullmatch(r"\d{3}", text):
        raise ValueError(f"request priority must be 0..999, got {priority!r}")
    return text + "-"


def request_sort_key(request_id: str, relative_priority: int) -> tuple[str, int, str]:
    """Lower sorts first: (priority prefix, relative_priority, sequence).

    The prefix and sequence compare as strings, as upstream does; both are
    zero-padded so this equals numeric order.
    """
    prefix, sequence = parse_request_id(request_id)
    return prefix, relative_priority, sequence
