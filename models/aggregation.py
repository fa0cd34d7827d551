"""The windowed series of one observation partition.

Each partition of the observations topic is owned by one worker; this object
holds every (indicator, segment) series routed to it, the partition's event
time, and closes windows when event time (or, for a quiet stream, processing
time) moves past them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models.drops import DropDetector
from models.routing import split_series_key
from models.spec import Indicator
from models.windows import WindowedSeries, WindowValue

#: One routed observation: [series key, event time, value, input offset].
WireObservation = Sequence[Any]
#: One series' observations of one input batch, in input order:
#: (series key, event times, values, input offsets).
ObservationGroup = tuple[str, Sequence[float], Sequence[float], Sequence[int]]


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window that just closed, with the series it belongs to."""

    indicator: Indicator
    segment: tuple[str, ...]
    window: WindowValue


def after_outage(stamp: float, start: float, end: float) -> float:
    """``stamp`` moved later by the part of the time since it that the outage ``start``..``end``
    covers, so that ``now - stamp`` afterwards counts only time the broker was reachable.

    >>> after_outage(100.0, start=110.0, end=150.0)  # heard before: the whole outage
    140.0
    >>> after_outage(120.0, start=110.0, end=150.0)  # heard during it: from its end
    150.0
    >>> after_outage(160.0, start=110.0, end=150.0)  # heard after it: unchanged
    160.0
    """
    if stamp >= end:
        return stamp
    return stamp + end - max(stamp, start)


class SourceClock:
    """Event time of a partition as the minimum progress over its sources.

    Observations reach a partition from every partition of the input topics,
    each in its own order and at its own pace (a worker catching up reads one
    partition's backlog before another's).  Windows may only close once every
    source has passed them, so event time is the slowest source's newest event
    time.  A source silent for ``idle_timeout`` seconds of processing time stops
    holding the others back, and so does one never heard from, once its topic
    has been seen for that long.

    >>> clock = SourceClock(idle_timeout=30.0)
    >>> clock.observe("events", 0, 2, 100.0, now=0.0)
    >>> clock.event_time(now=1.0) is None  # partition 1 not heard from yet
    True
    >>> clock.observe("events", 1, 2, 40.0, now=2.0)
    >>> clock.event_time(now=3.0)
    40.0
    >>> clock.event_time(now=40.0)  # both silent too long: the newest wins
    100.0
    """

    __slots__ = ("_first_seen", "_heard", "_newest", "_partitions", "idle_timeout")

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._partitions: dict[str, int] = {}
        self._first_seen: dict[str, float] = {}
        #: (topic, partition) -> newest event time / processing time last heard
        self._newest: dict[tuple[str, int], float] = {}
        self._heard: dict[tuple[str, int], float] = {}

    def observe(
        self, topic: str, partition: int, partitions: int, newest: float | None, now: float
    ) -> None:
        # Kafka partition counts only grow: a stale or unknown count (a worker falling back
        # to partition + 1) must not make the clock forget partitions it knows of.
        self._partitions[topic] = max(self._partitions.get(topic, 0), partitions, partition + 1)
        self._first_seen.setdefault(topic, now)
        source = (topic, partition)
        self._heard[source] = now
        if newest is not None and newest > self._newest.get(source, float("-inf")):
            self._newest[source] = newest

    def exclude_outage(self, start: float, end: float) -> None:
        """Do not count the broker outage ``start``..``end`` as silence: no source was
        silent by choice while nothing could be read."""
        self._heard = {key: after_outage(t, start, end) for key, t in self._heard.items()}
        self._first_seen = {
            topic: after_outage(t, start, end) for topic, t in self._first_seen.items()
        }

    def event_time(self, now: float, topic: str | None = None) -> float | None:
        """Event time of one input topic (default: of all), or None while a live
        source has not reported yet."""
        slowest: float | None = None
        newest_silent: float | None = None
        topics = (
            self._partitions.items() if topic is None else [(topic, self._partitions.get(topic, 0))]
        )
        for topic, count in topics:
            for partition in range(count):
                source = (topic, partition)
                newest = self._newest.get(source)
                heard = self._heard.get(source)
                if heard is None:
                    if now - self._first_seen[topic] < self.idle_timeout:
                        return None
                    continue
                if newest is None:
                    continue
                if now - heard >= self.idle_timeout:
                    newest_silent = newest if newest_silent is None else max(newest_silent, newest)
                    continue
                slowest = newest if slowest is None else min(slowest, newest)
        return slowest if slowest is not None else newest_silent


class PartitionSeries:
    """Every series of one observation partition, and how far the partition has been read.

    The object is the unit of checkpointing: it holds, together, the windows,
    the event-time clock, the next observation offset to read and, per input
    partition, the newest input offset already applied.  Restored from a
    checkpoint, it skips what it has already seen, so replays after a crash
    count nothing twice.

    >>> from models.spec import Indicator, Measure
    >>> ok = Indicator(name="ok", kind="cpi", description="", owner="t",
    ...                measure=Measure(kind="rate", path="p"), window=60, allowed_lateness=0)
    >>> part = PartitionSeries({"ok": ok}, idle_timeout=30.0)
    >>> part.apply(("events", 0, 1), 1.5, 1, [["ok", 0.5, 1.0, 0], ["ok", 1.5, 0.0, 1]], now=100.0)
    >>> part.apply(("events", 0, 1), 1.5, 1, [["ok", 1.5, 0.0, 1]], now=100.5)  # a replay
    >>> part.replayed
    1
    >>> part.apply(("events", 0, 1), 61.0, 2, [["ok", 61.0, 1.0, 2]], now=101.0)
    >>> [(c.window.start, c.window.value) for c in part.close_due(now=101.0)]
    [(0.0, 0.5)]
    """

    __slots__ = (
        "applied_upto",
        "clock",
        "detectors",
        "indicators",
        "last_activity",
        "next_offset",
        "recent",
        "replayed",
        "series",
        "topics",
        "unknown",
    )

    #: Closed windows kept per series for sparklines and the state API.
    HISTORY = 30

    def __init__(self, indicators: Mapping[str, Indicator], idle_timeout: float) -> None:
        self.indicators = dict(indicators)
        self.series: dict[str, WindowedSeries] = {}
        #: The input topic feeding each series: its windows follow that topic's event time
        #: (a KPI topic with one sample a minute must not hold journey CPIs back).
        self.topics: dict[str, str] = {}
        self.recent: dict[str, deque[WindowValue]] = {}
        #: Drop detection per series, fed with every closed window.
        self.detectors: dict[str, DropDetector] = {}
        self.clock = SourceClock(idle_timeout)
        self.last_activity = 0.0
        #: Next offset of the observation partition to apply.
        self.next_offset = 0
        #: (input topic, input partition) -> newest input offset applied.
        self.applied_upto: dict[tuple[str, int], int] = {}
        #: Observations skipped because their input offset was applied before (replays).
        self.replayed = 0
        #: Observations naming an indicator this worker's catalog does not have.
        self.unknown = 0

    def __repr__(self) -> str:
        return (
            f"<PartitionSeries next_offset={self.next_offset} "
            f"applied_upto={sorted(self.applied_upto.items())} series={len(self.series)}>"
        )

    def _new_series(self, key: str, topic: str) -> WindowedSeries | None:
        name, _segment = split_series_key(key)
        indicator = self.indicators.get(name)
        if indicator is None:
            return None
        series = WindowedSeries(indicator.measure, indicator.window, indicator.allowed_lateness)
        self.series[key] = series
        self.topics[key] = topic
        return series

    def apply(
        self,
        source: tuple[str, int, int],
        newest: float | None,
        last_offset: int,
        observations: Iterable[WireObservation],
        now: float,
    ) -> None:
        """Add one input batch's observations to their windows.

        ``source`` is (topic, partition, partition count) of the input batch,
        ``newest`` its newest event time, ``last_offset`` its last input offset.
        Observations whose input offset was already applied are skipped.
        """
        topic, partition, _partitions = source
        done = self.applied_upto.get((topic, partition), -1)
        series_by_key = self.series
        for key, event_time, value, offset in observations:
            if offset <= done:
                self.replayed += 1
                continue
            series = series_by_key.get(key)
            if series is None:
                series = self._new_series(key, topic)
                if series is None:
                    self.unknown += 1
                    continue
            series.add(event_time, value)
        self._applied(source, newest, last_offset, now)

    def apply_groups(
        self,
        source: tuple[str, int, int],
        newest: float | None,
        last_offset: int,
        groups: Iterable[ObservationGroup],
        now: float,
    ) -> int:
        """:meth:`apply` for observations grouped by series key (each group in input
        order): the same state, exactly, at one call per group and window instead of
        one per observation.  Returns the number of observations in ``groups``."""
        topic, partition, _partitions = source
        done = self.applied_upto.get((topic, partition), -1)
        series_by_key = self.series
        received = 0
        for key, times, values, offsets in groups:
            count = len(offsets)
            received += count
            if not count:
                continue
            if not offsets[0] > done or not offsets[-1] > done:  # partly replayed
                fresh = [i for i, offset in enumerate(offsets) if offset > done]
                self.replayed += count - len(fresh)
                if not fresh:
                    continue
                times = [times[i] for i in fresh]
                values = [values[i] for i in fresh]
                count = len(fresh)
            series = series_by_key.get(key)
            if series is None:
                series = self._new_series(key, topic)
                if series is None:
                    self.unknown += count
                    continue
            series.add_many(times, values)
        self._applied(source, newest, last_offset, now)
        return received

    def _applied(
        self, source: tuple[str, int, int], newest: float | None, last_offset: int, now: float
    ) -> None:
        """Record that an input batch is applied: its last offset, its event time."""
        topic, partition, partitions = source
        if last_offset > self.applied_upto.get((topic, partition), -1):
            self.applied_upto[(topic, partition)] = last_offset
        self.clock.observe(topic, partition, partitions, newest, now)
        self.last_activity = now

    def close_due(self, now: float) -> list[ClosedWindow]:
        """Close the windows that every source of their topic has passed in event time."""
        times = {topic: self.clock.event_time(now, topic) for topic in set(self.topics.values())}
        closed: list[ClosedWindow] = []
        for key, series in self.series.items():
            event_time = times[self.topics[key]]
            if event_time is not None:
                closed.extend(self._closed(key, window) for window in series.advance(event_time))
        return closed

    def close_if_idle(self, now: float, idle_timeout: float) -> list[ClosedWindow]:
        """After ``idle_timeout`` seconds without observations, close every open window.

        Without this the last window of a quiet stream would stay open forever,
        because only newer events move event time forward.
        """
        if now - self.last_activity < idle_timeout:
            return self.close_due(now)
        closed: list[ClosedWindow] = []
        for key, series in self.series.items():
            if series.open_windows:
                closed.extend(self._closed(key, window) for window in series.close_all())
        return closed

    def exclude_outage(self, start: float, end: float) -> None:
        """Take the broker outage ``start``..``end`` out of the idle clocks.

        A stream is idle when its producers are quiet, not when the broker is away:
        windows closed for idleness during an outage would make every event that
        arrives once the broker is back late.
        """
        self.last_activity = after_outage(self.last_activity, start, end)
        self.clock.exclude_outage(start, end)

    def _closed(self, key: str, window: WindowValue) -> ClosedWindow:
        history = self.recent.get(key)
        if history is None:
            history = self.recent[key] = deque(maxlen=self.HISTORY)
        history.append(window)
        name, segment = split_series_key(key)
        indicator = self.indicators[name]
        detector = self.detectors.get(key)
        if detector is None:
            detector = self.detectors[key] = DropDetector.for_indicator(indicator)
        detector.update(window.value, window.events)
        return ClosedWindow(indicator, segment, window)

    def open_windows(self) -> int:
        return sum(series.open_windows for series in self.series.values())

    def rebind(self, indicators: Mapping[str, Indicator]) -> None:
        """Adopt the running catalog after a restore from a checkpoint.

        Series of indicators that are gone, or whose measure or window changed,
        are dropped: their state means something else now.
        """
        for key in list(self.series):
            name, _segment = split_series_key(key)
            old, new = self.indicators.get(name), indicators.get(name)
            if new is None or old is None or _definition(old) != _definition(new):
                del self.series[key]
                self.topics.pop(key, None)
                self.recent.pop(key, None)
                self.detectors.pop(key, None)
        self.indicators = dict(indicators)


def _definition(indicator: Indicator) -> tuple[object, ...]:
    return (
        indicator.measure,
        indicator.window,
        indicator.allowed_lateness,
        indicator.target,
        indicator.alerting,
    )
