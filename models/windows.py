"""Tumbling event-time windows, one series per indicator and segment.

Windows are aligned to the epoch: an event at time ``t`` (float epoch seconds)
belongs to the window starting at ``floor(t / size) * size`` (computed as
``t // size * size``) and ending ``size`` seconds later; an event exactly at a
window's end opens the next window.

The watermark is the event time given to :meth:`WindowedSeries.advance` minus
the allowed lateness.  The caller decides what event time is: for a series fed
by several Kafka partitions it is the slowest partition's progress (see
:class:`models.aggregation.SourceClock`), never the newest event of this one
series, or events of a partition that is merely behind would count as late.
A window closes once its end is at or below the watermark; from then on (and
also once :meth:`WindowedSeries.close_all` has flushed it) events for it, or
for any older window, are late: counted and dropped.  Closed windows are
released, so memory stays bounded by the open windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.measures import Estimator, make_estimator
from models.spec import Measure

__all__ = ["WindowValue", "WindowedSeries"]

_NEVER = float("-inf")


@dataclass(frozen=True, slots=True)
class WindowValue:
    """One window's value: ``[start, end)`` in event time, ``value`` (``None`` if undefined)."""

    start: float
    end: float
    value: float | None
    events: int


class WindowedSeries:
    """One indicator for one segment: its open windows, last closed window, counters.

    >>> series = WindowedSeries(Measure(kind="rate"), window=60.0, allowed_lateness=10.0)
    >>> series.add(1000.0, 1.0), series.add(1010.0, 0.0)  # window [960, 1020)
    (True, True)
    >>> series.add(1075.0, 1.0)  # window [1020, 1080)
    True
    >>> series.advance(1075.0)  # watermark 1065 closes [960, 1020)
    [WindowValue(start=960.0, end=1020.0, value=0.5, events=2)]
    >>> series.add(1019.0, 1.0)  # its window ended at or before the watermark: late
    False
    >>> series.live
    WindowValue(start=1020.0, end=1080.0, value=1.0, events=1)
    >>> series.events_total, series.late_total, series.open_windows
    (3, 1, 1)
    """

    __slots__ = (
        "_closed_events",
        "_cutoff",
        "_lateness",
        "_max_time",
        "_measure",
        "_open",
        "_size",
        "last_closed",
        "late_total",
    )

    def __init__(self, measure: Measure, window: float, allowed_lateness: float) -> None:
        if not window > 0:
            raise ValueError(f"window must be a positive number of seconds, not {window!r}")
        if not allowed_lateness >= 0:
            raise ValueError(
                f"allowed_lateness must be zero or more seconds, not {allowed_lateness!r}"
            )
        make_estimator(measure)  # fail now on an incomplete measure, not at the first event
        self._measure = measure
        # Floats, so that integer sizes from the catalog still give float window bounds.
        self._size = float(window)
        self._lateness = float(allowed_lateness)
        self._open: dict[float, Estimator] = {}
        self._max_time = _NEVER
        # An event is late when its window's end is <= _cutoff: the watermark, or
        # the end of the newest closed window if close_all() went past the watermark.
        self._cutoff = _NEVER
        self._closed_events = 0
        self.late_total = 0
        self.last_closed: WindowValue | None = None

    def add(self, event_time: float, value: float) -> bool:
        """Take one event; ``False`` (and counted in ``late_total``) if it is late."""
        if event_time > self._max_time:
            self._max_time = event_time
        size = self._size
        start = event_time // size * size
        # Written as "not >" so that a NaN event time is late rather than opening
        # a window nothing would ever close.
        if not start + size > self._cutoff:
            self.late_total += 1
            return False
        estimator = self._open.get(start)
        if estimator is None:
            estimator = self._open[start] = make_estimator(self._measure)
        estimator.update(value)
        return True

    def add_many(self, times: Sequence[float], values: Sequence[float]) -> int:
        """Take several events, in order: the same state as :meth:`add` on each, exactly.
        Returns how many were accepted (the others are late and counted).

        The watermark does not move while events are added, so each window's events are
        either all late or all taken, and a window's estimator gets them in input order.
        """
        count = len(times)
        if not count:
            return 0
        total = sum(times)
        if total - total != 0:  # a NaN or infinite time (never from the codec): one by one
            add = self.add
            return sum(add(t, value) for t, value in zip(times, values, strict=True))
        latest = max(times)
        if latest > self._max_time:
            self._max_time = latest
        size = self._size
        first = min(times) // size * size
        if first == latest // size * size:
            return self._take(first, values)
        by_window: dict[float, list[float]] = {}
        for t, value in zip(times, values, strict=True):
            start = t // size * size
            window = by_window.get(start)
            if window is None:
                window = by_window[start] = []
            window.append(value)
        return sum(self._take(start, window) for start, window in by_window.items())

    def _take(self, start: float, values: Sequence[float]) -> int:
        if not start + self._size > self._cutoff:
            self.late_total += len(values)
            return 0
        estimator = self._open.get(start)
        if estimator is None:
            estimator = self._open[start] = make_estimator(self._measure)
        estimator.update_many(values)
        return len(values)

    def advance(self, event_time: float) -> list[WindowValue]:
        """Move the watermark to ``event_time`` minus the lateness (never back); close,
        oldest first, the windows whose end is at or below it, and return them."""
        if event_time > self._max_time:
            self._max_time = event_time
        watermark = event_time - self._lateness
        if watermark > self._cutoff:
            self._cutoff = watermark
        size = self._size
        cutoff = self._cutoff
        # Open windows are few (usually one or two), so sorting them is cheap.
        due = [start for start in sorted(self._open) if start + size <= cutoff]
        return self._close(due)

    def close_all(self) -> list[WindowValue]:
        """Close every open window, oldest first, and return them (the idle flush).

        Afterwards events for those windows, or older ones, are late.
        """
        closed = self._close(sorted(self._open))
        if closed and closed[-1].end > self._cutoff:
            self._cutoff = closed[-1].end
        return closed

    def _close(self, starts: list[float]) -> list[WindowValue]:
        closed = [self._value(start, self._open.pop(start)) for start in starts]
        for window in closed:
            self._closed_events += window.events
        if closed:
            self.last_closed = closed[-1]
        return closed

    def _value(self, start: float, estimator: Estimator) -> WindowValue:
        return WindowValue(start, start + self._size, estimator.get(), estimator.n)

    @property
    def live(self) -> WindowValue | None:
        """The newest open window and its value so far; ``None`` if none is open."""
        if not self._open:
            return None
        start = max(self._open)
        return self._value(start, self._open[start])

    @property
    def events_total(self) -> int:
        """Events accepted so far (closed and open windows)."""
        # Derived from the estimators' own counts to keep add() one increment lighter.
        return self._closed_events + sum(estimator.n for estimator in self._open.values())

    @property
    def open_windows(self) -> int:
        """Number of windows currently open."""
        return len(self._open)

    @property
    def max_event_time(self) -> float | None:
        """The highest event time seen (by add or advance); ``None`` before any."""
        return None if self._max_time == _NEVER else self._max_time
