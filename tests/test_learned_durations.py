"""Learning how long deletes and boots take to show in a list (pure logic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodepool.driver.learned_durations import DEFAULT_WINDOW, LearnedDurations


def test_default_window_until_enough_deletes_were_seen():
    d = LearnedDurations()
    assert d.window() == DEFAULT_WINDOW
    d.record(4.0, 6.0)
    d.record(4.0, 6.0)
    assert d.window() == DEFAULT_WINDOW
    d.record(4.0, 6.0)
    # Gone by 6 s each time: looked for from then until 2 s past the latest.
    assert d.window() == (6.0, 8.0)


@given(bounds=st.lists(st.tuples(st.floats(0, 60), st.floats(0, 60)), min_size=3,
                       max_size=80))
def test_window_covers_what_was_seen(bounds):
    d = LearnedDurations(keep=50)
    for lower, upper in bounds:
        d.record(lower, upper)
    start, end = d.window()
    kept = list(d.samples)
    assert len(kept) == min(50, len(bounds))
    assert all(lower < upper and upper >= 0 for lower, upper in kept)
    assert min(u for _, u in kept) <= start <= max(u for _, u in kept)
    assert start < end


def test_chance_done_follows_the_observed_durations():
    d = LearnedDurations()
    # Before enough deletes: look as often as allowed inside the default window.
    start, end = DEFAULT_WINDOW
    assert d.chance_done(0.0, start - 0.1) == 0.0
    assert d.chance_done(start, start + 0.1) == 1.0
    assert d.chance_done(end + 10, end + 15) == 0.5
    for seconds in (5.0, 10.0, 15.0, 20.0):
        d.record(seconds, seconds)
    assert d.chance_done(0.0, 4.0) == 0.0
    assert d.chance_done(0.0, 10.0) == 0.5
    # Still listed at 10 s: only the longer durations are left.
    assert d.chance_done(10.0, 15.0) == 0.5
    assert d.chance_done(10.0, 20.0) == 1.0
    assert d.chance_done(12.0, 12.0) == 0.0


def test_chance_done_backs_off_past_every_observed_duration():
    d = LearnedDurations()
    for seconds in (5.0, 6.0, 7.0):
        d.record(seconds, seconds)
    # Just past the longest seen: still likely gone any moment.
    assert d.chance_done(7.5, 8.0) == 0.5
    # Long past it: the wait between looks grows with the overrun.
    assert d.chance_done(17.0, 22.0) == 0.5
    assert d.chance_done(47.0, 67.0) == 0.5


@given(samples=st.lists(st.floats(0, 60), max_size=60), listed=st.floats(0, 80),
       later=st.floats(0, 80), more=st.floats(0, 80))
def test_chance_done_is_a_probability_that_grows_with_time(samples, listed, later, more):
    d = LearnedDurations()
    for s in samples:
        d.record(s, s)
    first = d.chance_done(listed, listed + later)
    assert 0.0 <= first <= d.chance_done(listed, listed + later + more) <= 1.0


@given(true=st.floats(1.0, 60.0),
       gaps=st.lists(st.tuples(st.floats(0.01, 3.0), st.floats(0.01, 3.0)), min_size=3,
                     max_size=50))
def test_a_fixed_duration_seen_between_lists_is_learned_sharply(true, gaps):
    """Every interval holds the true duration, so the estimate sits at the
    tightest upper bound seen, however wide and uneven the intervals are
    (their midpoints would be spread over seconds)."""
    d = LearnedDurations()
    for before, after in gaps:
        d.record(max(0.0, true - before), true + after)
    tightest = min(true + after for _, after in gaps)
    assert d.chance_done(0.0, tightest) > 0.99
    assert d.chance_done(0.0, max(0.0, true - 0.01)) < 0.01


def test_looks_come_when_overlapping_intervals_say_so():
    d = LearnedDurations()
    # A boot of about 3 s, seen by lists 2.5 s apart at different offsets.
    for lower, upper in [(1.0, 3.5), (2.0, 4.5), (2.8, 5.3), (0.5, 3.0), (2.9, 5.4)]:
        d.record(lower, upper)
    assert d.chance_done(0.0, 2.9) == 0.0
    assert d.chance_done(0.0, 3.0) > 0.99
    # The midpoints (2.25, 3.25, 4.05, 1.75, 4.15) would have said 0.4 by 3.0 s.
