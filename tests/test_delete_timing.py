"""Learning when deleted servers go (pure logic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodepool.driver.delete_timing import DEFAULT_WINDOW, DeleteDurations


def test_default_window_until_enough_deletes_were_seen():
    d = DeleteDurations()
    assert d.window() == DEFAULT_WINDOW
    d.record(4.0, 6.0)
    d.record(4.0, 6.0)
    assert d.window() == DEFAULT_WINDOW
    d.record(4.0, 6.0)
    assert d.window() == (5.0, 7.0)  # midpoint; looked for until 2 s past the latest
    assert not d.likely_gone(1.0) and d.likely_gone(5.5) and not d.likely_gone(8.0)


@given(bounds=st.lists(st.tuples(st.floats(0, 60), st.floats(0, 60)), min_size=3,
                       max_size=80))
def test_window_covers_what_was_seen(bounds):
    d = DeleteDurations(keep=50)
    for lower, upper in bounds:
        d.record(lower, upper)
    start, end = d.window()
    kept = list(d.samples)
    assert len(kept) == min(50, len(bounds))
    assert min(kept) <= start <= max(kept) < end
    assert all(x >= 0 for x in kept)
