"""The worker's JSON state API: ``GET /api/v1/state`` on the metrics web server.

``cpimon watch`` reads it; anything else may too.  Each worker serves only the
series it owns (its observation partitions), so a complete picture merges the
answers of every worker of the group.

Schema, version 1 (a field may be added without changing the version; removing
or changing the meaning of one bumps it)::

    {
      "version": 1,
      "worker": {
        "app_id": "cpi-monitor",           # consumer group / Faust app id
        "owned_partitions": [0, 2],        # observation partitions whose series are below
        "time": 1795428000.25              # the worker's clock, epoch seconds
      },
      "indicators": [                      # every indicator of the catalog, owned series or not
        {
          "name": "checkout_success_rate",
          "kind": "cpi",                   # cpi | kpi | metric
          "owner": "payments",
          "journey_step": "checkout",      # "" for KPIs and metrics
          "unit": "ratio",
          "description": "…",
          "target": {"bound": "min", "value": 0.95} | null,
          "series": [                      # one per segment this worker owns
            {
              "segment": {"channel": "web", "region": "eu"},   # segment_by label -> value
              "value": 0.97 | null,        # the last closed window (null: undefined)
              "live_value": 0.96 | null,   # the open window so far
              "events_total": 1234,
              "late_total": 0,
              "history": [                 # recent closed windows, oldest first
                {"start": 1795427940.0, "end": 1795428000.0, "value": 0.97 | null,
                 "events": 311}
              ],
              "below_target": false | null,  # the drop detector's verdict (as in /metrics:
                                             # windows with too few events are not judged),
                                             # else the last value against the target;
                                             # null without a target or a value
              "drop_active": false | null,   # null until drop detection runs on the worker
              "baseline": 0.968 | null,
              "deviation": 0.4 | null        # in standard deviations of the baseline
            }
          ]
        }
      ],
      "links": [                           # CPI -> KPI correlations this worker tracks
        {"cpi": "checkout_success_rate", "kpi": "revenue", "best_lag_seconds": 120.0 | null,
         "r": 0.82 | null, "low": 0.61 | null, "high": 0.92 | null, "n": 30,
         "confirmed": true, "impact": 1840.0 | null}   # impact: KPI units per CPI unit
      ]
    }

Times are epoch seconds (floats).  Values that are not finite are sent as null.

Where the parts come from: ``history`` from ``PartitionSeries.recent[key]``
(the bounded recent windows; else the last closed window alone), drop state from
``PartitionSeries.detectors[key]`` (a :class:`models.drops.DropDetector`;
null fields without one), and links from ``Worker.links``: its ``current()``
link set's ``trackers`` (:class:`models.correlation.LinkTracker` by
``(cpi, kpi)``), present only on the worker that tracks links; ``[]`` elsewhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from models.aggregation import PartitionSeries
from models.routing import split_series_key
from models.spec import Indicator
from models.windows import WindowedSeries, WindowValue

if TYPE_CHECKING:
    from agents.worker import Worker

__all__ = ["API_PATH", "API_VERSION", "register_api", "state_snapshot"]

API_VERSION = 1
API_PATH = "/api/v1/state"


def state_snapshot(worker: Worker) -> dict[str, Any]:
    """The worker's state as the JSON-ready document described in the module docstring."""
    owned = worker.aggregator.owned()
    series_by_indicator: dict[str, list[dict[str, Any]]] = {}
    for partition in owned.values():
        for key, series in partition.series.items():
            name, segment = split_series_key(key)
            indicator = partition.indicators.get(name)
            if indicator is None:
                continue
            series_by_indicator.setdefault(name, []).append(
                _series(indicator, segment, key, series, partition)
            )
    indicators = []
    for indicator in worker.catalog.indicators:
        entries = series_by_indicator.get(indicator.name, [])
        entries.sort(key=lambda entry: sorted(entry["segment"].items()))
        indicators.append(_indicator(indicator, entries))
    return {
        "version": API_VERSION,
        "worker": {
            "app_id": worker.settings.app_id,
            "owned_partitions": _owned_partitions(worker, owned),
            "time": time.time(),
        },
        "indicators": indicators,
        "links": _links(worker),
    }


def register_api(worker: Worker) -> None:
    """Serve :func:`state_snapshot` as ``GET /api/v1/state`` on the worker's web server."""
    from faust import web

    @worker.app.page(API_PATH)
    async def state(self: web.View, request: web.Request) -> web.Response:
        body = orjson.dumps(state_snapshot(worker))
        response: web.Response = self.bytes(body, content_type="application/json")
        return response


# --- parts -------------------------------------------------------------------------------


def _indicator(indicator: Indicator, series: list[dict[str, Any]]) -> dict[str, Any]:
    target = indicator.target
    return {
        "name": indicator.name,
        "kind": indicator.kind,
        "owner": indicator.owner,
        "journey_step": indicator.journey_step,
        "unit": indicator.unit,
        "description": indicator.description,
        "target": None if target is None else {"bound": target.bound, "value": target.value},
        "series": series,
    }


def _series(
    indicator: Indicator,
    segment: tuple[str, ...],
    key: str,
    series: WindowedSeries,
    partition: PartitionSeries,
) -> dict[str, Any]:
    closed, live = series.last_closed, series.live
    value = _number(closed.value) if closed is not None else None
    detector = _detector(partition, key)
    below_target: bool | None = None
    if indicator.target is not None and value is not None:
        bound, limit = indicator.target.bound, indicator.target.value
        below_target = value < limit if bound == "min" else value > limit
    if detector is not None and indicator.target is not None:
        # The detector's verdict is what /metrics and the alerts show: it judges only
        # windows with enough events, so it may differ from the last value's.
        below_target = _flag(getattr(detector, "below_target", below_target))
    return {
        "segment": dict(zip((s.label for s in indicator.segment_by), segment, strict=False)),
        "value": value,
        "live_value": _number(live.value) if live is not None else None,
        "events_total": series.events_total,
        "late_total": series.late_total,
        "history": [_window(window) for window in _history(partition, series, key)],
        "below_target": below_target,
        "drop_active": _flag(getattr(detector, "drop_active", None)),
        "baseline": _number(getattr(detector, "baseline", None)),
        "deviation": _number(getattr(detector, "deviation", None)),
    }


def _history(partition: PartitionSeries, series: WindowedSeries, key: str) -> Iterable[WindowValue]:
    by_key = getattr(partition, "recent", None)
    recent = by_key.get(key) if isinstance(by_key, Mapping) else None
    if recent:
        return list(recent)
    # A series whose history is not kept (or was not checkpointed) still shows its value.
    return [] if series.last_closed is None else [series.last_closed]


def _detector(partition: PartitionSeries, key: str) -> Any:
    by_key = getattr(partition, "detectors", None)
    return by_key.get(key) if isinstance(by_key, Mapping) else None


def _window(window: WindowValue) -> dict[str, Any]:
    return {
        "start": window.start,
        "end": window.end,
        "value": _number(window.value),
        "events": window.events,
    }


def _links(worker: Worker) -> list[dict[str, Any]]:
    # The worker's LinkBoard holds a LinkSet (its trackers by (cpi, kpi)) only on the
    # worker that owns the windows partition; a plain mapping of trackers works too.
    source: Any = getattr(worker, "links", None)
    current = getattr(source, "current", None)
    if callable(current):
        source = current()
    trackers = getattr(source, "trackers", source)
    if not isinstance(trackers, Mapping):
        return []
    links = []
    for key, tracker in trackers.items():
        cpi, kpi = (key.cpi, key.kpi) if hasattr(key, "cpi") else key
        best = tracker.best()
        links.append(
            {
                "cpi": cpi,
                "kpi": kpi,
                "best_lag_seconds": None if best is None else best.lag * tracker.window,
                "r": None if best is None else _number(best.r),
                "low": None if best is None else _number(best.low),
                "high": None if best is None else _number(best.high),
                "n": 0 if best is None else best.n,
                "confirmed": bool(tracker.confirmed),
                "impact": None if best is None else _number(best.slope),
            }
        )
    links.sort(key=lambda link: (link["cpi"], link["kpi"]))
    return links


def _owned_partitions(worker: Worker, owned: Mapping[int, PartitionSeries]) -> list[int]:
    partitions = set(owned)
    try:
        assigned = worker.app.assignor.assigned_actives()
    except AttributeError:  # not a running Faust app (tests, tools)
        assigned = set()
    topic = worker.settings.observations_topic
    partitions.update(tp.partition for tp in assigned if tp.topic == topic)
    return sorted(partitions)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None
