"""Memory of a partition's series stays bounded by its active series: closed windows are
released, the kept history and the drop detectors stop growing, and so does the traced
memory of a partition fed for hundreds of windows."""

from __future__ import annotations

import gc
import random
import tracemalloc
from dataclasses import replace

from models.aggregation import PartitionSeries
from models.routing import series_key
from models.spec import Measure
from tests.unit.test_aggregation import SUCCESS, WINDOW

EPOCH = 1_800_000_000.0  # a multiple of the window
QUANTILE = replace(
    SUCCESS, name="latency_p95", measure=Measure(kind="quantile", path="properties.ms", q=0.95)
)
RATE = SUCCESS
SEGMENTS = 40
KEYS = [series_key(i.name, [f"segment-{n}"]) for i in (QUANTILE, RATE) for n in range(SEGMENTS)]


def _feed_windows(part: PartitionSeries, first: int, count: int, rng: random.Random) -> None:
    """Every series gets events in windows ``first .. first + count - 1``; each window closes
    as the next one's events move event time past its end and lateness."""
    offset = first * 1000
    for window in range(first, first + count):
        start = EPOCH + window * WINDOW
        for tick in range(4):
            t = start + tick * 15.0
            batch = []
            for key in KEYS:
                value = rng.lognormvariate(5, 0.5) if key.startswith("latency") else 1.0
                batch.append([key, t, value, offset])
                offset += 1
            part.apply(("events", 0, 1), t, offset - 1, batch, now=t)
            part.close_due(now=t)


def test_closed_windows_are_released_and_history_stops_growing() -> None:
    part = PartitionSeries({i.name: i for i in (QUANTILE, RATE)}, idle_timeout=3600.0)
    rng = random.Random(7)
    _feed_windows(part, 0, PartitionSeries.HISTORY * 3, rng)
    assert len(part.series) == len(KEYS)
    # At most the current window and the one still within its lateness stay open.
    assert part.open_windows() <= 2 * len(KEYS)
    assert all(len(history) == PartitionSeries.HISTORY for history in part.recent.values())
    assert set(part.detectors) == set(part.recent) == set(KEYS)


def test_traced_memory_of_a_partition_stops_growing() -> None:
    """After the history is full, 200 more windows per series add (almost) nothing."""
    part = PartitionSeries({i.name: i for i in (QUANTILE, RATE)}, idle_timeout=3600.0)
    rng = random.Random(8)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        _feed_windows(part, 0, PartitionSeries.HISTORY + 10, rng)
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        _feed_windows(part, PartitionSeries.HISTORY + 10, 200, rng)
        gc.collect()
        later = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_series = (full - start) / len(KEYS)
    growth_per_series = (later - full) / len(KEYS)
    assert 2_000 < per_series < 20_000, per_series  # bench/series_memory.py: about 7,300
    # Estimators of the open windows come and go; nothing accumulates per closed window
    # (200 windows would add at least 200 x 56 bytes per series if anything did).
    assert abs(growth_per_series) < 300, growth_per_series
