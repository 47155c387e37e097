"""Request ids (NNN-NNNNNNNNNN) and the order launchers serve requests in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodepool.zk import ids


def test_request_id_format():
    assert ids.is_request_id("200-0000000042")
    assert ids.parse_request_id("099-0000000001") == ("099", "0000000001")
    # Zuul tells classic ids from its UUIDs by the hyphen at index 3.
    for bad in ("200-42", "2000-0000000042", "0000000042", "abc-0000000042",
                "3f2a1c9e-8d7b-4e6f-a5c4-1b2d3e4f5a6b", "", "200-0000000042/lock"):
        assert not ids.is_request_id(bad)
        with pytest.raises(ValueError):
            ids.parse_request_id(bad)


def test_request_id_prefix_pads_to_three_digits():
    assert ids.request_id_prefix(200) == "200-"
    assert ids.request_id_prefix(99) == "099-"
    assert ids.request_id_prefix(0) == "000-"
    assert ids.request_id_prefix("900") == "900-"
    assert ids.request_id_prefix(ids.MIN_READY_PRIORITY) == "900-"
    for bad in (1000, -1, "abc", "1000"):
        with pytest.raises(ValueError):
            ids.request_id_prefix(bad)


def test_sort_key_orders_prefix_then_relative_priority_then_sequence():
    reqs = [("200-0000000001", 0), ("100-0000000009", 5), ("100-0000000003", 5),
            ("100-0000000007", 0), ("300-0000000000", 0), ("200-0000000000", 2)]
    ordered = sorted(reqs, key=lambda r: ids.request_sort_key(*r))
    assert [r[0] for r in ordered] == ["100-0000000007", "100-0000000003", "100-0000000009",
                                       "200-0000000001", "200-0000000000", "300-0000000000"]


@given(st.lists(st.tuples(st.integers(0, 999), st.integers(0, 10**10 - 1),
                          st.integers(0, 1000)), min_size=1, max_size=30))
def test_sort_key_equals_numeric_order(entries):
    reqs = [(f"{p:03d}-{s:010d}", rel) for p, s, rel in entries]
    by_key = sorted(reqs, key=lambda r: ids.request_sort_key(*r))
    by_number = sorted(reqs, key=lambda r: (int(r[0][:3]), r[1], int(r[0][4:])))
    assert by_key == by_number
