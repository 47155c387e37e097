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


def test_chance_gone_follows_the_observed_durations():
    d = DeleteDurations()
    # Before enough deletes: look as often as allowed inside the default window.
    start, end = DEFAULT_WINDOW
    assert d.chance_gone(0.0, start - 0.1) == 0.0
    assert d.chance_gone(start, start + 0.1) == 1.0
    assert d.chance_gone(end + 10, end + 15) == 0.5
    for seconds in (5.0, 10.0, 15.0, 20.0):
        d.record(seconds, seconds)
    assert d.chance_gone(0.0, 4.0) == 0.0
    assert d.chance_gone(0.0, 10.0) == 0.5
    # Still listed at 10 s: only the longer durations are left.
    assert d.chance_gone(10.0, 15.0) == 0.5
    assert d.chance_gone(10.0, 20.0) == 1.0
    assert d.chance_gone(12.0, 12.0) == 0.0


def test_chance_gone_backs_off_past_every_observed_duration():
    d = DeleteDurations()
    for seconds in (5.0, 6.0, 7.0):
        d.record(seconds, seconds)
    # Just past the longest seen: still likely gone any moment.
    assert d.chance_gone(7.5, 8.0) == 0.5
    # Long past it: the wait between looks grows with the overrun.
    assert d.chance_gone(17.0, 22.0) == 0.5
    assert d.chance_gone(47.0, 67.0) == 0.5


@given(samples=st.lists(st.floats(0, 60), max_size=60), listed=st.floats(0, 80),
       later=st.floats(0, 80), more=st.floats(0, 80))
def test_chance_gone_is_a_probability_that_grows_with_time(samples, listed, later, more):
    d = DeleteDurations()
    for s in samples:
        d.record(s, s)
    first = d.chance_gone(listed, listed + later)
    assert 0.0 <= first <= d.chance_gone(listed, listed + later + more) <= 1.0
