"""Tumbling event-time windows: boundaries, lateness, flushing, and numpy-checked properties."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.measures import make_estimator
from models.spec import Measure
from models.windows import WindowedSeries, WindowValue

RATE = Measure(kind="rate", path="ok")
MEAN = Measure(kind="mean", path="ms")
EPOCH = 1_699_999_200.0  # November 2023, a multiple of 3600 (so of every size below)

# Window sizes whose multiples are exact in binary floating point, like the
# catalog's (divisors of a day, from 1s up) plus sub-second ones.
SIZES = [0.25, 1.0, 5.0, 60.0, 3600.0]


# What numpy says each kind of window should hold, given the values it received.
def _ratio(v: np.ndarray) -> float | None:
    denominator = np.sum(v == 0.0)
    return float(np.sum(v == 1.0) / denominator) if denominator else None


NUMPY: dict[str, tuple[Measure, st.SearchStrategy[float], Callable[[np.ndarray], float | None]]] = {
    "mean": (MEAN, st.floats(-1e6, 1e6), lambda v: float(np.mean(v))),
    "sum": (Measure(kind="sum", path="x"), st.floats(-1e6, 1e6), lambda v: float(np.sum(v))),
    "count": (Measure(kind="count"), st.floats(-1e6, 1e6), lambda v: float(np.size(v))),
    "rate": (RATE, st.sampled_from([0.0, 1.0]), lambda v: float(np.mean(v == 1.0))),
    "nps": (
        Measure(kind="nps", path="score"),
        st.integers(0, 10).map(float),
        lambda v: float(100 * (np.mean(v >= 9) - np.mean(v <= 6))),
    ),
    "csat": (
        Measure(kind="csat", path="rating", threshold=4.0),
        st.integers(1, 5).map(float),
        lambda v: float(np.mean(v >= 4.0)),
    ),
    "ratio": (Measure(kind="ratio"), st.sampled_from([0.0, 1.0]), _ratio),
}


def _expected_windows(
    kind: str, size: float, accepted: list[tuple[float, float]]
) -> list[tuple[float, float | None, int]]:
    """(start, value, events) per window, grouping with numpy by floor(t / size)."""
    if not accepted:
        return []
    compute = NUMPY[kind][2]
    times = np.array([t for t, _ in accepted])
    values = np.array([v for _, v in accepted])
    index = np.floor_divide(times, size)
    return [
        (float(k * size), compute(values[index == k]), int(np.sum(index == k)))
        for k in np.unique(index)
    ]


def _assert_windows_match(
    closed: list[WindowValue], expected: list[tuple[float, float | None, int]], size: float
) -> None:
    assert [(w.start, w.events) for w in closed] == [(s, e) for s, _, e in expected]
    for window, (_, value, _) in zip(closed, expected, strict=True):
        assert window.end == window.start + size
        if value is None:
            assert window.value is None
        else:
            assert window.value == pytest.approx(value, rel=1e-9, abs=1e-6)


# --- boundaries -------------------------------------------------------------------------


def test_event_exactly_at_a_window_end_belongs_to_the_next_window() -> None:
    series = WindowedSeries(MEAN, window=60.0, allowed_lateness=1_000.0)
    series.add(59.999, 1.0)
    series.add(60.0, 2.0)
    series.add(119.999, 3.0)
    series.add(120.0, 4.0)
    assert series.close_all() == [
        WindowValue(0.0, 60.0, 1.0, 1),
        WindowValue(60.0, 120.0, 2.5, 2),
        WindowValue(120.0, 180.0, 4.0, 1),
    ]


def test_windows_are_aligned_to_the_epoch() -> None:
    series = WindowedSeries(MEAN, window=300.0, allowed_lateness=0.0)
    series.add(EPOCH + 1.0, 5.0)
    assert series.live == WindowValue(EPOCH, EPOCH + 300.0, 5.0, 1)


def test_negative_event_times_floor_downwards() -> None:
    series = WindowedSeries(MEAN, window=60.0, allowed_lateness=0.0)
    series.add(-1.0, 7.0)
    assert series.live == WindowValue(-60.0, 0.0, 7.0, 1)


def test_a_window_whose_end_equals_the_watermark_is_closed() -> None:
    series = WindowedSeries(RATE, window=60.0, allowed_lateness=10.0)
    series.add(30.0, 1.0)
    assert series.advance(69.999) == []  # watermark 59.999 < end 60: still open
    assert series.add(45.0, 0.0)  # so it still accepts events
    assert series.advance(70.0) == [WindowValue(0.0, 60.0, 0.5, 2)]  # watermark 60 == end
    assert series.open_windows == 0
    assert not series.add(59.0, 1.0)
    assert series.late_total == 1


def test_only_advance_moves_the_watermark_not_a_newer_event() -> None:
    # A newer event may come from a partition that is ahead; an older one from a
    # partition that is behind is not late until the caller's event time says so.
    series = WindowedSeries(RATE, window=60.0, allowed_lateness=10.0)
    assert series.add(30.0, 1.0)
    assert series.add(700.0, 1.0)
    assert series.add(59.0, 0.0)
    assert series.advance(70.0) == [WindowValue(0.0, 60.0, 0.5, 2)]
    assert not series.add(59.0, 0.0)
    assert (series.events_total, series.late_total) == (3, 1)


def test_zero_lateness_accepts_the_current_window_only() -> None:
    series = WindowedSeries(RATE, window=60.0, allowed_lateness=0.0)
    assert series.add(61.0, 1.0)
    series.advance(61.0)
    assert series.add(60.0, 1.0)  # earlier, but same window: end 120 > watermark 61
    assert not series.add(59.9, 1.0)


# --- advance / close_all ----------------------------------------------------------------


def test_advance_closes_oldest_first_and_releases_windows() -> None:
    series = WindowedSeries(MEAN, window=60.0, allowed_lateness=1_000.0)
    for t in (125.0, 5.0, 65.0, 6.0):  # windows created out of order
        series.add(t, t)
    assert series.open_windows == 3
    closed = series.advance(1_180.0)  # watermark 180 closes all three
    assert [w.start for w in closed] == [0.0, 60.0, 120.0]
    assert [w.value for w in closed] == [5.5, 65.0, 125.0]
    assert series.open_windows == 0
    assert series.last_closed == closed[-1]
    assert series.live is None


def test_advance_closes_only_due_windows() -> None:
    series = WindowedSeries(MEAN, window=60.0, allowed_lateness=30.0)
    for t in (10.0, 70.0, 130.0):
        series.add(t, 1.0)
    assert [w.start for w in series.advance(140.0)] == [0.0]  # watermark 110 < 120
    assert series.open_windows == 2
    assert [w.start for w in series.advance(150.0)] == [60.0]  # watermark 120 == end
    assert series.open_windows == 1


def test_advance_never_lowers_the_max_event_time() -> None:
    series = WindowedSeries(RATE, window=60.0, allowed_lateness=0.0)
    assert series.max_event_time is None
    series.add(100.0, 1.0)
    series.advance(500.0)
    assert series.advance(50.0) == []
    assert series.max_event_time == 500.0
    assert not series.add(400.0, 1.0)  # still behind the watermark of 500


def test_advance_with_no_events_moves_the_watermark() -> None:
    series = WindowedSeries(RATE, window=60.0, allowed_lateness=10.0)
    assert series.advance(130.0) == []
    assert not series.add(119.0, 1.0)  # window end 120 <= watermark 120
    assert series.add(120.0, 1.0)


def test_close_all_then_an_event_for_a_flushed_window_is_late() -> None:
    series = WindowedSeries(RATE, window=60.0, allowed_lateness=10.0)
    series.add(20.0, 1.0)
    series.add(70.0, 0.0)  # watermark 60: [0, 60) due, [60, 120) open
    flushed = series.close_all()
    assert flushed == [WindowValue(0.0, 60.0, 1.0, 1), WindowValue(60.0, 120.0, 0.0, 1)]
    assert series.open_windows == 0
    assert series.max_event_time == 70.0  # a flush is not event time

    assert not series.add(75.0, 1.0)  # its window was flushed, though within lateness
    assert not series.add(30.0, 1.0)  # older still
    assert series.late_total == 2
    assert series.add(120.0, 1.0)  # the next window opens normally
    assert series.live == WindowValue(120.0, 180.0, 1.0, 1)
    assert series.last_closed == flushed[-1]
    assert series.close_all() == [WindowValue(120.0, 180.0, 1.0, 1)]
    assert series.close_all() == []
    assert series.events_total == 3


def test_live_is_the_newest_open_window_so_far() -> None:
    series = WindowedSeries(MEAN, window=10.0, allowed_lateness=100.0)
    assert series.live is None and series.last_closed is None
    series.add(25.0, 4.0)
    series.add(5.0, 1.0)
    series.add(26.0, 8.0)
    assert series.live == WindowValue(20.0, 30.0, 6.0, 2)


def test_nan_event_time_is_late_and_opens_nothing() -> None:
    series = WindowedSeries(RATE, window=60.0, allowed_lateness=10.0)
    assert not series.add(math.nan, 1.0)
    assert (series.late_total, series.open_windows, series.max_event_time) == (1, 0, None)


def test_integer_settings_and_times_give_float_bounds() -> None:
    series = WindowedSeries(MEAN, window=60, allowed_lateness=0)
    series.add(61, 1.0)
    live = series.live
    assert live is not None
    assert (type(live.start), type(live.end)) == (float, float)


@pytest.mark.parametrize(
    ("window", "lateness"), [(0.0, 0.0), (-60.0, 0.0), (math.nan, 0.0), (60.0, -1.0)]
)
def test_invalid_window_settings_are_rejected(window: float, lateness: float) -> None:
    with pytest.raises(ValueError):
        WindowedSeries(RATE, window=window, allowed_lateness=lateness)


def test_incomplete_measure_is_rejected_up_front() -> None:
    with pytest.raises(ValueError):
        WindowedSeries(Measure(kind="quantile", path="ms"), window=60.0, allowed_lateness=0.0)


def test_quantile_window_is_the_estimator_over_its_events() -> None:
    measure = Measure(kind="quantile", path="ms", q=0.9)
    series = WindowedSeries(measure, window=60.0, allowed_lateness=0.0)
    values = np.random.default_rng(1).lognormal(5.0, 1.0, 2_000)
    reference = make_estimator(measure)
    for i, v in enumerate(values):
        series.add(i * 0.01, float(v))
        reference.update(float(v))
    (window,) = series.close_all()
    assert window == WindowValue(0.0, 60.0, reference.get(), 2_000)


def test_pickle_round_trip_keeps_windows_and_counters() -> None:
    series = WindowedSeries(MEAN, window=60.0, allowed_lateness=30.0)
    for t, v in [(10.0, 1.0), (70.0, 2.0), (100.0, 3.0), (130.0, 4.0)]:
        series.add(t, v)
        series.advance(t)
    series.add(5.0, 9.0)
    restored = pickle.loads(pickle.dumps(series))
    for attr in ("live", "last_closed", "events_total", "late_total", "open_windows"):
        assert getattr(restored, attr) == getattr(series, attr), attr
    assert restored.max_event_time == series.max_event_time

    for s in (series, restored):
        assert s.add(119.0, 5.0)
        assert not s.add(40.0, 5.0)
    assert restored.close_all() == series.close_all()
    assert (restored.events_total, restored.late_total) == (series.events_total, 2)


# --- properties ---------------------------------------------------------------------------


@st.composite
def in_order_stream(draw: st.DrawFn) -> tuple[float, list[float]]:
    size = draw(st.sampled_from(SIZES))
    # Steps of whole and quarter windows hit boundaries exactly; free steps do not.
    steps = st.one_of(st.floats(0.0, 2.5 * size), st.sampled_from([0.0, size / 4, size]))
    times = [EPOCH + size * draw(st.integers(-3, 3))]
    for step in draw(st.lists(steps, max_size=60)):
        times.append(times[-1] + step)
    return size, times


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(NUMPY)),
    stream=in_order_stream(),
    lateness_windows=st.sampled_from([0.0, 0.5, 2.0]),
    data=st.data(),
)
def test_in_order_events_are_all_accepted_and_windows_match_numpy(
    kind: str, stream: tuple[float, list[float]], lateness_windows: float, data: st.DataObject
) -> None:
    size, times = stream
    measure, value_strategy, _ = NUMPY[kind]
    events = [(t, data.draw(value_strategy)) for t in times]
    lateness = lateness_windows * size
    series = WindowedSeries(measure, window=size, allowed_lateness=lateness)
    closed: list[WindowValue] = []
    for t, v in events:
        assert series.add(t, v)
        if data.draw(st.booleans()):
            closed += series.advance(t)
            # What stays open ends after the watermark: a bounded number of windows.
            assert series.open_windows <= lateness_windows + 2
    closed += series.close_all()
    _assert_windows_match(closed, _expected_windows(kind, size, events), size)
    assert series.events_total == len(events) and series.late_total == 0


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(NUMPY)),
    stream=in_order_stream(),
    lateness_windows=st.sampled_from([0.25, 1.0, 3.0]),
    data=st.data(),
)
def test_out_of_order_events_within_lateness_land_in_their_window(
    kind: str, stream: tuple[float, list[float]], lateness_windows: float, data: st.DataObject
) -> None:
    size, clock = stream
    measure, value_strategy, _ = NUMPY[kind]
    lateness = lateness_windows * size
    # Each event arrives when the clock reads c but happened up to (not including)
    # `lateness` earlier, so it is never behind the watermark.
    delays = st.floats(0.0, lateness, exclude_max=True)
    events = [(c - data.draw(delays), data.draw(value_strategy)) for c in clock]
    series = WindowedSeries(measure, window=size, allowed_lateness=lateness)
    closed: list[WindowValue] = []
    for t, v in events:
        assert series.add(t, v), (t, series.max_event_time)
        if data.draw(st.booleans()):
            max_time = series.max_event_time
            assert max_time is not None
            closed += series.advance(max_time)
    closed += series.close_all()
    _assert_windows_match(closed, _expected_windows(kind, size, events), size)
    assert series.late_total == 0


@dataclass
class _Model:
    """The documented rules, spelled out naively: raw values per open window."""

    size: float
    lateness: float
    max_time: float = -math.inf
    flushed_until: float = -math.inf
    open: dict[float, list[tuple[float, float]]] = field(default_factory=dict)
    accepted: list[tuple[float, float]] = field(default_factory=list)
    late: int = 0

    def add(self, t: float, v: float) -> bool:
        start = math.floor(t / self.size) * self.size
        end = start + self.size
        if end <= self.max_time - self.lateness or end <= self.flushed_until:
            self.late += 1
            return False
        self.open.setdefault(start, []).append((t, v))
        self.accepted.append((t, v))
        return True

    def advance(self, t: float) -> list[list[tuple[float, float]]]:
        self.max_time = max(self.max_time, t)
        due = [s for s in sorted(self.open) if s + self.size <= self.max_time - self.lateness]
        return [self.open.pop(s) for s in due]

    def close_all(self) -> list[list[tuple[float, float]]]:
        starts = sorted(self.open)
        if starts:
            self.flushed_until = max(self.flushed_until, starts[-1] + self.size)
        return [self.open.pop(s) for s in starts]


_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(-40, 400), st.integers(0, 10)),
        st.tuples(st.just("advance"), st.integers(-40, 400), st.just(0)),
        st.tuples(st.just("close_all"), st.just(0), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(sorted(NUMPY)),
    size=st.sampled_from([1.0, 5.0, 60.0]),
    lateness=st.sampled_from([0.0, 3.0, 30.0]),
    operations=_OPERATIONS,
    quarter_seconds=st.booleans(),
)
def test_late_events_are_counted_and_left_out_whatever_the_order(
    kind: str,
    size: float,
    lateness: float,
    operations: list[tuple[str, int, int]],
    quarter_seconds: bool,
) -> None:
    measure, _, _ = NUMPY[kind]
    series = WindowedSeries(measure, window=size, allowed_lateness=lateness)
    model = _Model(size, lateness)
    scale = 0.25 if quarter_seconds else 1.0
    added = 0
    for operation, when, raw in operations:
        t = EPOCH + when * scale
        # Every kind's values include 0.0 and 1.0; other kinds get 0..10 too.
        v = float(raw) if kind not in ("rate", "ratio") else float(raw % 2)
        if operation == "add":
            added += 1
            assert series.add(t, v) == model.add(t, v), (t, v)
            continue
        got = series.advance(t) if operation == "advance" else series.close_all()
        want = model.advance(t) if operation == "advance" else model.close_all()
        assert len(got) == len(want)
        for window, values in zip(got, want, strict=True):
            _assert_windows_match([window], _expected_windows(kind, size, values), size)
        assert series.open_windows == len(model.open)
    assert series.late_total == model.late
    assert series.events_total == len(model.accepted)
    assert series.events_total + series.late_total == added
    flushed = series.close_all()
    assert sum(w.events for w in flushed) == sum(len(v) for v in model.close_all())
