"""Expected CPI values computed straight from produced events, with numpy.

Deliberately independent of ``models.routing`` and ``models.measures``: it
re-reads the catalog's definitions with plain dict walks, so a bug in the
worker's routing or estimators cannot hide in the expectation too.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from models.spec import Catalog, Indicator


def dig(event: dict[str, Any], path: str) -> Any:
    node: Any = event
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def event_time(event: dict[str, Any]) -> float:
    stamp = event["timestamp"]
    if isinstance(stamp, int | float):
        return float(stamp)
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _measured(indicator: Indicator, name: str, event: dict[str, Any]) -> float | None:
    measure = indicator.measure
    if measure.kind == "count":
        return 1.0
    if measure.kind == "ratio":
        return 1.0 if name in measure.numerator_events else 0.0
    assert measure.path is not None
    raw = dig(event, measure.path)
    if measure.kind == "rate":
        if measure.equals is not None:
            return None if raw is None else float(raw == measure.equals)
        return float(raw) if isinstance(raw, bool) else None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return float(raw)


def windows_by_segment(
    indicator: Indicator, events: list[dict[str, Any]]
) -> dict[tuple[str, ...], dict[float, list[float]]]:
    """segment → window start → the values the indicator takes from ``events``."""
    names = set(indicator.events) | set(indicator.measure.numerator_events)
    groups: dict[tuple[str, ...], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for event in events:
        name = event.get("event") or event.get("name")
        if "*" not in names and name not in names:
            continue
        if any(dig(event, path) != expected for path, expected in indicator.where):
            continue
        value = _measured(indicator, str(name), event)
        if value is None:
            continue
        segment = tuple(str(dig(event, s.path)) for s in indicator.segment_by)
        start = math.floor(event_time(event) / indicator.window) * indicator.window
        groups[segment][float(start)].append(value)
    return groups


def value_of(indicator: Indicator, values: list[float]) -> float | None:
    """The indicator's value over one window's values, computed with numpy."""
    data = np.asarray(values, dtype=float)
    measure = indicator.measure
    kind = measure.kind
    if kind in ("rate", "mean"):
        return float(np.mean(data))
    if kind == "sum":
        return float(np.sum(data))
    if kind == "count":
        return float(data.size)
    if kind == "quantile":
        assert measure.q is not None
        return float(np.quantile(data, measure.q))
    if kind == "nps":
        return float(100.0 * (np.mean(data >= 9) - np.mean(data <= 6)))
    if kind == "csat":
        threshold = 4.0 if measure.threshold is None else measure.threshold
        return float(np.mean(data >= threshold))
    if kind == "ratio":
        denominator = np.sum(data == 0.0)
        return None if denominator == 0 else float(np.sum(data == 1.0) / denominator)
    raise AssertionError(f"no reference for measure {kind}")


#: The segment of an indicator's series over all its segments (no segment labels).
ALL = None


def series_windows(
    catalog: Catalog, events: list[dict[str, Any]]
) -> dict[tuple[Indicator, tuple[str, ...] | None], dict[float, list[float]]]:
    """Every series the worker computes: per segment, and over all segments (``ALL``)."""
    series: dict[tuple[Indicator, tuple[str, ...] | None], dict[float, list[float]]] = {}
    for indicator in catalog.indicators:
        for segment, windows in windows_by_segment(indicator, events).items():
            series[(indicator, segment)] = windows
        if indicator.segment_by:
            overall = dataclasses.replace(indicator, segment_by=())
            for windows in windows_by_segment(overall, events).values():
                series[(indicator, ALL)] = windows
    return series


def series_labels(indicator: Indicator, segment: tuple[str, ...] | None) -> dict[str, str]:
    """The labels the worker gives a series."""
    labels = {indicator.kind: indicator.name, "owner": indicator.owner}
    if indicator.kind == "cpi":
        labels["journey_step"] = indicator.journey_step
    if segment is not None:
        labels.update(zip((s.label for s in indicator.segment_by), segment, strict=True))
    return labels


#: One scraped sample: metric name, labels, value.
Sample = tuple[str, dict[str, str], float]


def observation_count(catalog: Catalog, events: list[dict[str, Any]]) -> int:
    """How many observations the worker must count from ``events``, over every series."""
    return sum(
        len(values)
        for windows in series_windows(catalog, events).values()
        for values in windows.values()
    )


def count_differences(
    catalog: Catalog, events: list[dict[str, Any]], samples: Iterable[Sample]
) -> list[str]:
    """Every series whose exported ``_events_total`` (summed over ``samples``, which may
    come from several workers) differs from the count in ``events``, for failure messages."""
    exported: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for name, sample_labels, value in samples:
        if name.endswith("_events_total"):
            exported[(name, tuple(sorted(sample_labels.items())))] += value
    differences = []
    for (indicator, segment), windows in series_windows(catalog, events).items():
        key = (
            f"cpimon_{indicator.kind}_events_total",
            tuple(sorted(series_labels(indicator, segment).items())),
        )
        want = sum(map(len, windows.values()))
        got = exported.get(key, 0.0)
        if got != want:
            differences.append(f"{indicator.name} {segment}: {got:g} of {want}")
    return differences


def assert_exported_series_match(
    catalog: Catalog, events: list[dict[str, Any]], samples: Iterable[Sample]
) -> int:
    """Every series's ``_events_total`` is exact, no other series is exported, and its
    ``_value`` (the last window) equals numpy's; P² quantiles must lie between the exact
    90th and 99th percentiles. ``samples`` may come from several workers. Returns the
    number of values compared."""
    exported: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for name, sample_labels, value in samples:
        exported[name][tuple(sorted(sample_labels.items()))] = value
    checked = 0
    expected_counts: dict[str, set[tuple[tuple[str, str], ...]]] = defaultdict(set)
    for (indicator, segment), windows in series_windows(catalog, events).items():
        labels = tuple(sorted(series_labels(indicator, segment).items()))
        what = f"{indicator.name} {segment}"
        counts = exported[f"cpimon_{indicator.kind}_events_total"]
        expected_counts[indicator.kind].add(labels)
        assert counts.get(labels) == sum(map(len, windows.values())), f"count of {what}"
        last_window = windows[max(windows)]
        want = value_of(indicator, last_window)
        values = exported[f"cpimon_{indicator.kind}_value"]
        if want is None:
            assert labels not in values, f"{what} has no value, yet one is exported"
            continue
        assert labels in values, f"{what} missing from /metrics"
        if indicator.measure.kind == "quantile":
            low, high = np.quantile(np.asarray(last_window), [0.90, 0.99])
            assert low <= values[labels] <= high, f"{what}: P² estimate {values[labels]}"
        else:
            assert values[labels] == pytest.approx(want, rel=1e-9, abs=1e-9), what
        checked += 1
    for kind in ("cpi", "kpi", "metric"):
        unexpected = set(exported[f"cpimon_{kind}_events_total"]) - expected_counts[kind]
        assert not unexpected, f"series no event feeds: {sorted(unexpected)[:5]}"
    return checked
