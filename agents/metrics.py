"""Cheap accumulators for the hot path, read by the exporter at scrape time.

prometheus-client objects take a lock and build label tuples on every call,
which costs more than parsing and River together (BASELINES.md), so the hot
path updates plain Python numbers and the collector turns them into metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

#: Seconds between an event happening and the worker processing it.
DELAY_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)


class DelayHistogram:
    """A Prometheus-style cumulative histogram filled in bulk.

    >>> h = DelayHistogram(buckets=(1.0, 10.0))
    >>> h.observe_many([0.5, 1.0, 3.0, 50.0])
    >>> h.cumulative()
    [(1.0, 2), (10.0, 3), (inf, 4)]
    >>> h.count, h.total
    (4, 54.5)
    """

    __slots__ = ("buckets", "count", "counts", "total")

    def __init__(self, buckets: tuple[float, ...] = DELAY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.count = 0
        self.total = 0.0

    def observe_many(self, values: Iterable[float]) -> None:
        buckets, counts = self.buckets, self.counts
        n = 0
        total = 0.0
        for value in values:
            # bisect_left: a value equal to a bound belongs to that bucket (le = less or equal).
            counts[bisect_left(buckets, value)] += 1
            total += value
            n += 1
        self.count += n
        self.total += total

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, count of values <= bound), ending with +Inf."""
        running = 0
        out = []
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out
