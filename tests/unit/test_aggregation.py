"""Event time over several sources, and the windowed series of one observation partition."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.aggregation import ClosedWindow, PartitionSeries, SourceClock
from models.routing import series_key
from models.spec import Indicator, Measure

EPOCH = 1_800_000_000.0  # a multiple of 60
WINDOW = 60.0
LATENESS = 10.0
IDLE = 30.0

LATENCY = Indicator(
    name="latency_mean",
    kind="cpi",
    description="",
    owner="web",
    measure=Measure(kind="mean", path="properties.ms"),
    window=WINDOW,
    allowed_lateness=LATENESS,
)
SUCCESS = Indicator(
    name="success_rate",
    kind="cpi",
    description="",
    owner="payments",
    measure=Measure(kind="rate", path="properties.ok"),
    window=WINDOW,
    allowed_lateness=LATENESS,
)
INDICATORS = {indicator.name: indicator for indicator in (LATENCY, SUCCESS)}
KEYS = [
    series_key("latency_mean", ["web"]),
    series_key("latency_mean", ["ios"]),
    series_key("success_rate", []),
]

Observation = list[Any]  # [series key, event time, value, input offset]


def feed(
    part: PartitionSeries,
    source: tuple[str, int, int],
    newest: float | None,
    observations: list[Observation],
    now: float,
) -> None:
    """Apply one input batch; its last input offset is that of its last observation."""
    last_offset = max((o[3] for o in observations), default=-1)
    part.apply(source, newest, last_offset, observations, now=now)


# --- SourceClock ------------------------------------------------------------------------------


def test_waits_for_partitions_not_heard_from_until_idle_timeout() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    clock.observe("events", 0, 3, 100.0, now=0.0)
    for now in (0.0, 10.0, 29.9):
        clock.observe("events", 0, 3, 100.0 + now, now=now)
        assert clock.event_time(now=now) is None
    clock.observe("events", 0, 3, 130.0, now=30.0)
    # Partitions 1 and 2 were never heard from in 30 s since the topic was: stop waiting.
    assert clock.event_time(now=30.0) == 130.0


def test_a_topic_seen_later_is_waited_for_from_its_own_first_sight() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    clock.observe("events", 0, 1, 100.0, now=0.0)
    assert clock.event_time(now=1.0) == 100.0
    clock.observe("kpis", 0, 2, 500.0, now=40.0)
    clock.observe("events", 0, 1, 140.0, now=40.0)
    assert clock.event_time(now=41.0) is None  # kpis partition 1 not heard from yet
    clock.observe("events", 0, 1, 160.0, now=60.0)
    clock.observe("kpis", 0, 2, 520.0, now=60.0)
    assert clock.event_time(now=69.9) is None
    assert clock.event_time(now=70.0) == 160.0


def test_event_time_is_the_slowest_live_source() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    clock.observe("events", 0, 3, 300.0, now=0.0)
    clock.observe("events", 1, 3, 100.0, now=0.0)
    clock.observe("events", 2, 3, 200.0, now=0.0)
    assert clock.event_time(now=1.0) == 100.0
    clock.observe("kpis", 0, 1, 50.0, now=1.0)
    assert clock.event_time(now=2.0) == 50.0
    clock.observe("kpis", 0, 1, 400.0, now=2.0)
    clock.observe("events", 1, 3, 250.0, now=2.0)
    assert clock.event_time(now=3.0) == 200.0


def test_silent_sources_stop_holding_back_after_idle_timeout() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    clock.observe("events", 0, 2, 50.0, now=0.0)
    for now in (10.0, 20.0, 29.0):
        clock.observe("events", 1, 2, 100.0 + now, now=now)
        assert clock.event_time(now=now) == 50.0
    clock.observe("events", 1, 2, 200.0, now=30.0)
    assert clock.event_time(now=30.0) == 200.0
    # The silent source comes back: it holds the others back again.
    clock.observe("events", 0, 2, 60.0, now=31.0)
    assert clock.event_time(now=31.0) == 60.0


def test_when_every_source_is_silent_the_newest_wins() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    clock.observe("events", 0, 2, 50.0, now=0.0)
    clock.observe("events", 1, 2, 80.0, now=5.0)
    assert clock.event_time(now=10.0) == 50.0
    assert clock.event_time(now=35.0) == 80.0
    assert clock.event_time(now=1_000.0) == 80.0


def test_newest_never_goes_backwards() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    clock.observe("events", 0, 1, 100.0, now=0.0)
    clock.observe("events", 0, 1, 80.0, now=1.0)  # an older batch replayed
    assert clock.event_time(now=1.0) == 100.0
    clock.observe("events", 0, 1, None, now=2.0)  # a batch without accepted events
    assert clock.event_time(now=2.0) == 100.0
    clock.observe("events", 0, 1, 120.0, now=3.0)
    assert clock.event_time(now=3.0) == 120.0


def test_a_source_heard_without_events_does_not_hold_back() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    clock.observe("events", 0, 2, None, now=0.0)
    assert clock.event_time(now=0.0) is None  # partition 1 not heard from, no time at all
    clock.observe("events", 1, 2, 70.0, now=1.0)
    assert clock.event_time(now=1.0) == 70.0


def test_partitions_beyond_the_reported_count_are_tracked() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    clock.observe("events", 3, 2, 100.0, now=0.0)  # a partition added since the count was read
    clock.observe("events", 0, 2, 200.0, now=0.0)
    clock.observe("events", 1, 2, 200.0, now=0.0)
    assert clock.event_time(now=1.0) is None  # partition 2 must exist too: waited for
    clock.observe("events", 2, 2, 300.0, now=2.0)
    assert clock.event_time(now=2.0) == 100.0  # partition 3 holds the others back


def test_a_stale_partition_count_does_not_forget_a_known_partition() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    for partition in range(4):
        clock.observe("events", partition, 4, 100.0 + partition, now=0.0)
    assert clock.event_time(now=1.0) == 100.0
    clock.observe("events", 1, 4, 500.0, now=2.0)
    clock.observe("events", 2, 4, 500.0, now=2.0)
    # A batch whose topic metadata was unknown (the worker then reports partition + 1)
    # or stale: partition 3 is known, live and now the slowest, and must still count.
    clock.observe("events", 0, 1, 500.0, now=2.0)
    assert clock.event_time(now=3.0) == 103.0
    clock.observe("events", 1, 2, 500.0, now=2.0)
    assert clock.event_time(now=3.0) == 103.0


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.none() | st.floats(0, 1e6),
            st.floats(0, 5),
        ),
        max_size=40,
    ),
    st.floats(0, 100),
)
def test_event_time_matches_a_plain_model(
    steps: list[tuple[int, float | None, float]], extra: float
) -> None:
    clock = SourceClock(idle_timeout=IDLE)
    now = 0.0
    newest: dict[int, float] = {}
    heard: dict[int, float] = {}
    first_seen: float | None = None
    for partition, time, pause in steps:
        now += pause
        clock.observe("events", partition, 3, time, now=now)
        first_seen = now if first_seen is None else first_seen
        heard[partition] = now
        if time is not None:
            newest[partition] = max(newest.get(partition, time), time)
    now += extra
    expected: float | None
    if first_seen is None or (now - first_seen < IDLE and len(heard) < 3):
        expected = None
    else:
        live = [t for p, t in newest.items() if now - heard[p] < IDLE]
        silent = [t for p, t in newest.items() if now - heard[p] >= IDLE]
        expected = min(live) if live else max(silent) if silent else None
    assert clock.event_time(now=now) == expected


# --- PartitionSeries --------------------------------------------------------------------------


def numpy_windows(events: list[Observation]) -> dict[tuple[str, float], tuple[float, int]]:
    """(series key, window start) → (mean of the values, count), grouped with numpy."""
    if not events:
        return {}
    keys = np.array([event[0] for event in events])
    times = np.array([event[1] for event in events], dtype=float)
    values = np.array([event[2] for event in events], dtype=float)
    starts = np.floor(times / WINDOW) * WINDOW
    out = {}
    for key in np.unique(keys):
        for start in np.unique(starts[keys == key]):
            chosen = values[(keys == key) & (starts == start)]
            out[(str(key), float(start))] = (float(np.mean(chosen)), int(chosen.size))
    return out


def closed_by_key(closed: list[ClosedWindow]) -> dict[tuple[str, float], tuple[float, int]]:
    out = {}
    for item in closed:
        key = series_key(item.indicator.name, item.segment)
        assert (key, item.window.start) not in out, "a window closed twice"
        assert item.window.value is not None
        out[(key, item.window.start)] = (item.window.value, item.window.events)
    return out


def assert_same_windows(
    got: dict[tuple[str, float], tuple[float, int]],
    expected: dict[tuple[str, float], tuple[float, int]],
) -> None:
    assert got.keys() == expected.keys()
    for window, (value, events) in expected.items():
        assert got[window][1] == events, window
        assert got[window][0] == pytest.approx(value, rel=1e-9, abs=1e-12), window


def source_stream(
    rng: random.Random, seconds: float, per_second: float, lag: float = 0.0
) -> list[Observation]:
    """Events of one input partition in event-time order (jittered within the lateness)."""
    out: list[Observation] = []
    t = EPOCH
    offset = 0
    while t < EPOCH + seconds:
        t += rng.expovariate(per_second)
        key = rng.choice(KEYS)
        value = float(rng.random() < 0.9) if key.startswith("success") else rng.uniform(50, 900)
        jitter = rng.uniform(0, lag)
        out.append([key, t - jitter, value, offset])
        offset += 1
    return out


def batches(events: list[Observation], size: int) -> list[list[Observation]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def newest_of(batch: list[Observation], before: float | None) -> float | None:
    times = [event[1] for event in batch]
    if before is not None:
        times.append(before)
    return max(times) if times else None


def test_a_partition_far_ahead_does_not_make_the_slow_one_late() -> None:
    rng = random.Random(3)
    # Partition 0 is catching up a 10-minute backlog in big batches; partition 1 is live
    # and trickles in small ones: most of the time partition 0 is minutes ahead.
    fast = source_stream(rng, 600, 5.0, lag=LATENESS / 2)
    slow = source_stream(rng, 600, 5.0, lag=LATENESS / 2)
    part = PartitionSeries(INDICATORS, idle_timeout=IDLE)
    fast_batches, slow_batches = batches(fast, 500), batches(slow, 40)
    closed: list[ClosedWindow] = []
    newest: dict[int, float | None] = {0: None, 1: None}
    now = 0.0
    while fast_batches or slow_batches:
        for source, queue, take in ((0, fast_batches, 1), (1, slow_batches, 3)):
            for _ in range(take):
                if not queue:
                    break
                batch = queue.pop(0)
                newest[source] = newest_of(batch, newest[source])
                feed(part, ("events", source, 2), newest[source], batch, now=now)
                just_closed = part.close_due(now=now)
                if just_closed:
                    slowest = min(t for t in newest.values() if t is not None)
                    # A window only closes once every source has passed its end + lateness.
                    assert all(c.window.end <= slowest - LATENESS for c in just_closed)
                    assert None not in newest.values()
                closed.extend(just_closed)
                now += 0.5
    assert closed, "windows should have closed while the stream ran"
    for key, series in part.series.items():
        assert series.late_total == 0, key
    assert part.unknown == 0
    flushed = part.close_if_idle(now=now + IDLE, idle_timeout=IDLE)
    assert part.open_windows() == 0
    assert_same_windows(closed_by_key(closed + flushed), numpy_windows(fast + slow))
    # Closed before the flush: exactly the windows both sources had passed.
    slowest = min(max(e[1] for e in fast), max(e[1] for e in slow))
    expected_closed = {
        window for window in numpy_windows(fast + slow) if window[1] + WINDOW <= slowest - LATENESS
    }
    assert set(closed_by_key(closed)) == expected_closed


def test_nothing_closes_before_every_source_has_reported() -> None:
    part = PartitionSeries(INDICATORS, idle_timeout=IDLE)
    key = KEYS[0]
    feed(part, ("events", 0, 2), EPOCH + 600, [[key, EPOCH + 1, 100.0, 0]], now=0.0)
    feed(part, ("events", 0, 2), EPOCH + 900, [[key, EPOCH + 700, 300.0, 1]], now=1.0)
    assert part.close_due(now=1.0) == []
    feed(part, ("events", 1, 2), EPOCH + 75, [[key, EPOCH + 2, 200.0, 0]], now=2.0)
    assert part.series[key].late_total == 0
    [closed] = part.close_due(now=2.0)
    assert (closed.window.start, closed.window.value, closed.window.events) == (EPOCH, 150.0, 2)
    assert closed.indicator is LATENCY and closed.segment == ("web",)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 4), st.integers(1, 60))
def test_any_interleaving_of_ordered_sources_loses_nothing(
    seed: int, sources: int, batch_size: int
) -> None:
    rng = random.Random(seed)
    streams = [
        source_stream(rng, rng.uniform(30, 400), rng.uniform(0.5, 5)) for _ in range(sources)
    ]
    queues = [batches(stream, rng.randint(1, batch_size)) for stream in streams]
    part = PartitionSeries(INDICATORS, idle_timeout=IDLE)
    newest: list[float | None] = [None] * sources
    closed: list[ClosedWindow] = []
    now = 0.0
    while any(queues):
        source = rng.choice([i for i, queue in enumerate(queues) if queue])
        batch = queues[source].pop(0)
        newest[source] = newest_of(batch, newest[source])
        feed(part, ("events", source, sources), newest[source], batch, now=now)
        closed.extend(part.close_due(now=now))
        now += 0.01  # every source stays live: none may be skipped as silent
    assert sum(series.late_total for series in part.series.values()) == 0
    closed.extend(part.close_if_idle(now=now + IDLE, idle_timeout=IDLE))
    events = [event for stream in streams for event in stream]
    assert_same_windows(closed_by_key(closed), numpy_windows(events))


def test_close_if_idle_closes_everything_after_idle() -> None:
    part = PartitionSeries(INDICATORS, idle_timeout=IDLE)
    observations = [
        [KEYS[0], EPOCH + 5, 100.0, 0],
        [KEYS[0], EPOCH + 65, 300.0, 1],
        [KEYS[2], EPOCH + 70, 1.0, 2],
        [KEYS[2], EPOCH + 71, 0.0, 3],
    ]
    feed(part, ("events", 0, 1), EPOCH + 71, observations, now=100.0)
    assert [c.window.start for c in part.close_due(now=100.0)] == [EPOCH]
    assert part.open_windows() == 2
    # Not idle yet: only what is due closes.
    assert part.close_if_idle(now=100.0 + IDLE - 0.1, idle_timeout=IDLE) == []
    flushed = part.close_if_idle(now=100.0 + IDLE, idle_timeout=IDLE)
    got = {
        (series_key(c.indicator.name, c.segment), c.window.start): c.window.value for c in flushed
    }
    assert got == {(KEYS[0], EPOCH + 60): 300.0, (KEYS[2], EPOCH + 60): 0.5}
    assert part.open_windows() == 0
    assert part.close_if_idle(now=200.0, idle_timeout=IDLE) == []
    # Flushed windows are closed for good: their events are late from now on.
    feed(part, ("events", 0, 1), EPOCH + 71, [[KEYS[0], EPOCH + 90, 5.0, 4]], now=201.0)
    assert part.series[KEYS[0]].late_total == 1
    assert part.open_windows() == 0


def test_close_if_idle_uses_the_latest_activity() -> None:
    part = PartitionSeries(INDICATORS, idle_timeout=IDLE)
    feed(part, ("events", 0, 1), EPOCH + 1, [[KEYS[0], EPOCH + 1, 1.0, 0]], now=0.0)
    feed(part, ("events", 0, 1), EPOCH + 2, [[KEYS[0], EPOCH + 2, 3.0, 1]], now=20.0)
    assert part.close_if_idle(now=IDLE + 1, idle_timeout=IDLE) == []
    [closed] = part.close_if_idle(now=20.0 + IDLE, idle_timeout=IDLE)
    assert (closed.window.value, closed.window.events) == (2.0, 2)


# --- broker outages --------------------------------------------------------------------------


def test_a_broker_outage_does_not_count_as_idle_time() -> None:
    part = PartitionSeries(INDICATORS, idle_timeout=IDLE)
    feed(part, ("events", 0, 1), EPOCH + 5, [[KEYS[0], EPOCH + 5, 100.0, 0]], now=100.0)
    # The broker went away after its last answer at 110 and answered again at 150: 40 s,
    # more than the idle timeout, with the window still open.
    part.exclude_outage(110.0, 150.0)
    assert part.close_if_idle(now=150.0 + 5.0, idle_timeout=IDLE) == []
    # Idle time is 10 s before the outage plus the time since it ended.
    assert part.close_if_idle(now=150.0 + IDLE - 10.0 - 0.1, idle_timeout=IDLE) == []
    # An event that arrives after the outage still finds its window open.
    feed(part, ("events", 0, 1), EPOCH + 20, [[KEYS[0], EPOCH + 20, 300.0, 1]], now=160.0)
    assert part.series[KEYS[0]].late_total == 0
    assert part.close_if_idle(now=160.0 + IDLE - 0.1, idle_timeout=IDLE) == []
    [closed] = part.close_if_idle(now=160.0 + IDLE, idle_timeout=IDLE)
    assert (closed.window.value, closed.window.events) == (200.0, 2)


def test_without_the_outage_excluded_the_window_closes_and_the_event_is_late() -> None:
    # The same story as above, as it went before outages were excluded.
    part = PartitionSeries(INDICATORS, idle_timeout=IDLE)
    feed(part, ("events", 0, 1), EPOCH + 5, [[KEYS[0], EPOCH + 5, 100.0, 0]], now=100.0)
    [closed] = part.close_if_idle(now=150.0 + 5.0, idle_timeout=IDLE)
    assert closed.window.events == 1
    feed(part, ("events", 0, 1), EPOCH + 20, [[KEYS[0], EPOCH + 20, 300.0, 1]], now=160.0)
    assert part.series[KEYS[0]].late_total == 1


def test_sources_silent_during_an_outage_still_hold_event_time_back() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    clock.observe("events", 0, 2, 50.0, now=100.0)
    clock.observe("events", 1, 2, 40.0, now=100.0)
    clock.exclude_outage(105.0, 200.0)
    # Partition 0 is read first after the outage; partition 1 is not silent, only unread.
    clock.observe("events", 0, 2, 90.0, now=201.0)
    assert clock.event_time(now=201.0) == 40.0
    # Silence after the outage counts: 5 s before it plus 25 s after it.
    assert clock.event_time(now=200.0 + IDLE - 5.0) == 90.0


def test_a_source_first_seen_during_an_outage_is_waited_for_after_it() -> None:
    clock = SourceClock(idle_timeout=IDLE)
    clock.observe("events", 0, 2, 50.0, now=100.0)  # partition 1 never heard from
    clock.exclude_outage(110.0, 300.0)
    assert clock.event_time(now=300.0 + IDLE - 10.0 - 0.1) is None
    assert clock.event_time(now=300.0 + IDLE - 10.0) == 50.0


def test_unknown_indicators_are_counted_not_created() -> None:
    part = PartitionSeries(INDICATORS, idle_timeout=IDLE)
    observations = [
        ["dropped_indicator", EPOCH, 1.0, 0],
        [series_key("dropped_indicator", ["eu"]), EPOCH, 1.0, 1],
        [KEYS[2], EPOCH, 1.0, 2],
        ["dropped_indicator", EPOCH + 1, 1.0, 3],
    ]
    feed(part, ("events", 0, 1), EPOCH + 1, observations, now=0.0)
    assert part.unknown == 3
    assert set(part.series) == {KEYS[2]}
    flushed = part.close_if_idle(now=IDLE, idle_timeout=IDLE)
    assert [(c.indicator.name, c.window.value) for c in flushed] == [("success_rate", 1.0)]


def test_series_are_created_per_segment_with_the_indicator_window() -> None:
    hourly = Indicator(
        name="hourly",
        kind="kpi",
        description="",
        owner="finance",
        measure=Measure(kind="sum", path="properties.revenue"),
        window=3600.0,
        allowed_lateness=0.0,
    )
    part = PartitionSeries({"hourly": hourly, **INDICATORS}, idle_timeout=IDLE)
    observations = [
        [series_key("hourly", ["eu"]), EPOCH + 10, 5.0, 0],
        [series_key("hourly", ["us"]), EPOCH + 20, 7.0, 1],
        [series_key("hourly", ["eu"]), EPOCH + 3000, 2.5, 2],
        [KEYS[0], EPOCH + 3000, 2.5, 3],
    ]
    feed(part, ("events", 0, 1), EPOCH + 3600, observations, now=0.0)
    closed = part.close_due(now=0.0)
    got = {(c.indicator.name, c.segment, c.window.start): c.window.value for c in closed}
    assert got == {
        ("hourly", ("eu",), EPOCH): 7.5,
        ("hourly", ("us",), EPOCH): 7.0,
        ("latency_mean", ("web",), EPOCH + 3000.0): 2.5,
    }
    assert all(not math.isnan(c.window.value or 0.0) for c in closed)


def test_windows_that_closed_are_not_reopened_when_event_time_drops() -> None:
    part = PartitionSeries(INDICATORS, idle_timeout=IDLE)
    key = KEYS[0]
    feed(part, ("events", 0, 2), EPOCH + 200, [[key, EPOCH + 1, 1.0, 0]], now=0.0)
    feed(part, ("events", 1, 2), EPOCH + 200, [[key, EPOCH + 2, 3.0, 0]], now=0.0)
    assert len(part.close_due(now=0.0)) == 1
    # Partition 0 goes silent; a new partition 2 appears far behind.
    feed(part, ("events", 2, 3), EPOCH + 30, [[key, EPOCH + 30, 5.0, 0]], now=1.0)
    assert part.series[key].late_total == 1
    assert part.close_due(now=1.0) == []
    assert part.series[key].open_windows == 0
