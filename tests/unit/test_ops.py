"""The pure parts of the ops commands and of the worker's state API: no broker, no process."""

from __future__ import annotations

import gzip
import io
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from rich.console import Console

from agents.api import API_VERSION, state_snapshot
from agents.ops import OpsError
from agents.ops.common import bytes_field, bytes_from_field, event_time
from agents.ops.dlq import Letter, parse_offsets, select
from agents.ops.lag import PartitionLag, totals
from agents.ops.replay import BadLine, Line, Retimer, parse_line, read_lines
from agents.ops.tail import Filter, Inspector, parse_where
from agents.ops.tail import render as render_event
from agents.ops.watch import BARS, History, merge, render, sparkline, worker_url
from agents.pipeline import Aggregator
from models.catalog import load_catalog
from models.correlation import LinkTracker
from models.drops import DropDetector
from models.routing import series_key
from models.spec import Link
from models.windows import WindowedSeries, WindowValue
from streams import deadletter
from streams.deadletter import DeadLetter
from streams.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "catalog.example.yaml"
CATALOG = load_catalog(EXAMPLE)
NOW = 1_795_428_000.0  # 2026-11-23T10:00:00Z, a multiple of 60


# --- watch -------------------------------------------------------------------------------


def test_sparkline_scales_between_the_lowest_and_highest_value() -> None:
    assert sparkline([0.0, 7.0]) == BARS[0] + BARS[-1]
    assert sparkline([10, 20, 30, 40, 50, 60, 70, 80]) == BARS
    assert sparkline([3.0, None, 3.0]) == BARS[3] + " " + BARS[3]
    assert sparkline([None, None]) == "  "
    assert sparkline([1.0, float("nan"), 2.0]) == BARS[0] + " " + BARS[-1]


def test_worker_url_accepts_what_operators_paste() -> None:
    for given in ("w1:6066", "http://w1:6066", "http://w1:6066/", "http://w1:6066/metrics"):
        assert worker_url(given) == "http://w1:6066/api/v1/state"


def _state(worker: str, partitions: list[int], series: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": 1,
        "worker": {"app_id": "cpi-monitor", "owned_partitions": partitions, "time": NOW},
        "indicators": [
            {
                "name": "checkout_success_rate",
                "kind": "cpi",
                "owner": "payments",
                "journey_step": "checkout",
                "unit": "ratio",
                "description": "",
                "target": {"bound": "min", "value": 0.95},
                "series": series,
            },
            {
                "name": "revenue",
                "kind": "kpi",
                "owner": "finance",
                "journey_step": "",
                "unit": "EUR",
                "description": "",
                "target": None,
                "series": [],
            },
        ],
        "links": [
            {
                "cpi": "checkout_success_rate",
                "kpi": "revenue",
                "best_lag_seconds": 120.0,
                "r": 0.82 if worker == "a" else 0.5,
                "low": 0.6,
                "high": 0.9,
                "n": 30 if worker == "a" else 12,
                "confirmed": worker == "a",
                "impact": 1800.0,
            }
        ],
    }


def _series(channel: str, values: list[float | None], events: int = 100) -> dict[str, Any]:
    history = [
        {"start": NOW + 60 * i, "end": NOW + 60 * (i + 1), "value": v, "events": events}
        for i, v in enumerate(values)
    ]
    return {
        "segment": {"channel": channel, "region": "eu"},
        "value": values[-1],
        "live_value": None,
        "events_total": events * len(values),
        "late_total": 0,
        "history": history,
        "below_target": None if values[-1] is None else values[-1] < 0.95,
        "drop_active": None,
        "baseline": None,
        "deviation": None,
    }


def test_merge_joins_the_series_of_every_worker_and_keeps_errors() -> None:
    merged = merge(
        {
            "http://a/api/v1/state": _state("a", [0, 1], [_series("web", [0.97, 0.98])]),
            "http://b/api/v1/state": _state("b", [2, 3], [_series("ios", [0.99, 0.90])]),
            "http://c/api/v1/state": "http://c/api/v1/state: unreachable (refused)",
        }
    )
    checkout = merged["indicators"][0]
    assert [s["segment"]["channel"] for s in checkout["series"]] == ["ios", "web"]
    assert [w.get("owned_partitions") for w in merged["workers"]] == [[0, 1], [2, 3], None]
    assert merged["workers"][2]["error"].endswith("unreachable (refused)")
    (link,) = merged["links"]
    assert link["n"] == 30  # the worker holding more pairs wins


def test_merge_keeps_the_fuller_copy_of_a_series_reported_twice() -> None:
    merged = merge(
        {
            "a": _state("a", [0], [_series("web", [0.97], events=10)]),
            "b": _state("b", [0], [_series("web", [0.91, 0.92], events=50)]),
        }
    )
    (entry,) = merged["indicators"][0]["series"]
    assert entry["value"] == 0.92


def test_history_remembers_windows_across_refreshes_up_to_its_size() -> None:
    history = History(size=3)
    history.add(merge({"a": _state("a", [0], [_series("web", [0.90, 0.91])])}))
    later = _series("web", [0.92, 0.93])
    for i, window in enumerate(later["history"]):
        window["start"] = NOW + 60 * (2 + i)
    history.add(merge({"a": _state("a", [0], [later])}))
    assert history.values("checkout_success_rate", {"region": "eu", "channel": "web"}) == [
        0.91,
        0.92,
        0.93,
    ]


def test_the_board_renders_values_sparklines_states_and_links() -> None:
    state = merge(
        {
            "http://a/api/v1/state": _state(
                "a", [0, 1], [_series("web", [0.92, 0.99, 0.99]), _series("ios", [0.99, 0.80])]
            ),
            "http://c/api/v1/state": "http://c/api/v1/state: unreachable (refused)",
        }
    )
    state["indicators"][0]["series"][0]["drop_active"] = True
    state["indicators"][0]["series"][0]["deviation"] = -4.25
    history = History()
    history.add(state)
    console = Console(record=True, width=120, color_system=None)
    console.print(render(state, history))
    text = console.export_text()
    ios = next(line for line in text.splitlines() if "ios/eu" in line)
    assert "80.0%" in ios and "DROP -4.2\u03c3" in ios and BARS[-1] + BARS[0] in ios
    assert "≥ 95.0%" in ios and "payments" in ios and "revenue r=+0.82 +2m ✓" in ios
    web = next(line for line in text.splitlines() if "web/eu" in line)
    assert "99.0%" in web and "ok" in web and BARS[0] + BARS[-1] * 2 in web
    assert "revenue kpi" in text and "no data" in text
    assert "1/2 workers" in text and "partitions 0,1" in text
    assert "! http://c/api/v1/state: unreachable (refused)" in text
    assert all(len(line) <= 120 for line in text.splitlines())


def test_the_board_says_when_a_low_value_was_not_judged() -> None:
    quiet = _series("web", [0.97, 0.60], events=3)
    quiet["below_target"] = False  # the worker's detector skipped the 3-event window
    state = merge({"a": _state("a", [0], [quiet])})
    console = Console(record=True, width=120, color_system=None)
    console.print(render(state, History()))
    row = next(line for line in console.export_text().splitlines() if "web/eu" in line)
    assert "60.0%" in row and "low volume" in row


def test_the_board_filters_by_owner() -> None:
    state = merge({"a": _state("a", [0], [_series("web", [0.97])])})
    console = Console(record=True, width=120, color_system=None)
    console.print(render(state, History(), owners=["finance"]))
    text = console.export_text()
    assert "revenue" in text and "checkout_success_rate" not in text


# --- the worker's state API --------------------------------------------------------------


def _worker(aggregator: Any, **extra: Any) -> Any:
    settings = Settings(app_id="unit-app", observations_topic="obs")
    return SimpleNamespace(
        settings=settings, catalog=CATALOG, aggregator=aggregator, app=None, **extra
    )


def _checkout_series() -> WindowedSeries:
    indicator = CATALOG.indicator("checkout_success_rate")
    series = WindowedSeries(indicator.measure, indicator.window, indicator.allowed_lateness)
    for i, success in enumerate([1.0, 1.0, 0.0, 1.0]):  # window [NOW, NOW+60): 0.75
        series.add(NOW + i, success)
    series.add(NOW + 65, 1.0)  # opens [NOW+60, NOW+120)
    series.advance(NOW + 60 + indicator.allowed_lateness)
    return series


def test_state_snapshot_describes_every_indicator_and_owned_series() -> None:
    aggregator = Aggregator(CATALOG)
    partition = aggregator.partition(2)
    key = series_key("checkout_success_rate", ["web", "eu"])
    partition.series[key] = _checkout_series()
    state = state_snapshot(cast(Any, _worker(aggregator)))
    orjson.dumps(state)  # JSON-ready as it is
    assert state["version"] == API_VERSION == 1
    assert state["worker"]["app_id"] == "unit-app"
    assert state["worker"]["owned_partitions"] == [2]
    assert [i["name"] for i in state["indicators"]] == [i.name for i in CATALOG.indicators]
    checkout = next(i for i in state["indicators"] if i["name"] == "checkout_success_rate")
    assert checkout["target"] == {"bound": "min", "value": 0.95}
    assert (checkout["owner"], checkout["journey_step"], checkout["unit"]) == (
        "payments",
        "checkout",
        "ratio",
    )
    (entry,) = checkout["series"]
    assert entry["segment"] == {"channel": "web", "region": "eu"}
    assert (entry["value"], entry["live_value"], entry["events_total"]) == (0.75, 1.0, 5)
    assert entry["history"] == [{"start": NOW, "end": NOW + 60, "value": 0.75, "events": 4}]
    assert entry["below_target"] is True
    assert (entry["drop_active"], entry["baseline"], entry["deviation"]) == (None, None, None)
    assert state["links"] == []
    nps = next(i for i in state["indicators"] if i["name"] == "nps")
    assert nps["series"] == []


def test_state_snapshot_reads_the_bounded_history_of_the_partition() -> None:
    aggregator = Aggregator(CATALOG)
    partition = aggregator.partition(0)
    key = series_key("checkout_success_rate", ["web", "eu"])
    partition.series[key] = _checkout_series()
    older = WindowValue(NOW - 60, NOW, 0.5, 2)
    partition.recent[key] = deque([older, WindowValue(NOW, NOW + 60, 0.75, 4)])
    state = state_snapshot(cast(Any, _worker(aggregator)))
    checkout = next(i for i in state["indicators"] if i["name"] == "checkout_success_rate")
    assert [w["value"] for w in checkout["series"][0]["history"]] == [0.5, 0.75]


def test_state_snapshot_lights_up_drops_and_links_once_the_worker_has_them() -> None:
    key = series_key("checkout_success_rate", ["web", "eu"])
    detector = DropDetector(CATALOG.indicator("checkout_success_rate").target, min_events=1)
    for value in [0.97, 0.98] * 10 + [0.5, 0.5, 0.5]:
        detector.update(value, events=100)
    partition = SimpleNamespace(
        series={key: _checkout_series()},
        indicators={i.name: i for i in CATALOG.indicators},
        detectors={key: detector},
    )
    aggregator = SimpleNamespace(owned=lambda: {1: partition})
    tracker = LinkTracker(window=60.0, max_lag=2, history=10, min_windows=3)
    for t, value in enumerate([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0]):
        tracker.add_cpi(60.0 * t, value)
        tracker.add_kpi(60.0 * (t + 1), 10.0 + 2.0 * value + (t % 3 - 1) * 0.5)
    board = SimpleNamespace(  # the worker's LinkBoard, on the worker tracking links
        current=lambda: SimpleNamespace(trackers={("checkout_success_rate", "revenue"): tracker})
    )
    state = state_snapshot(cast(Any, _worker(aggregator, links=board)))
    checkout = next(i for i in state["indicators"] if i["name"] == "checkout_success_rate")
    (entry,) = checkout["series"]
    assert entry["drop_active"] is True and entry["below_target"] is True
    assert entry["baseline"] == pytest.approx(detector.baseline)
    assert entry["deviation"] == pytest.approx(detector.deviation)
    (reported,) = state["links"]
    best = tracker.best()
    assert best is not None
    assert reported["best_lag_seconds"] == 60.0 * best.lag == 60.0
    assert reported["confirmed"] is True and reported["n"] == best.n
    assert reported["impact"] == pytest.approx(best.slope)
    link = Link(cpi="checkout_success_rate", kpi="revenue")  # a plain mapping works too
    assert state_snapshot(cast(Any, _worker(aggregator, links={link: tracker})))["links"] == [
        reported
    ]
    idle_board = SimpleNamespace(current=lambda: None)  # another worker holds the links
    assert state_snapshot(cast(Any, _worker(aggregator, links=idle_board)))["links"] == []


# --- tail --------------------------------------------------------------------------------


def _record(value: bytes | None, offset: int = 0) -> Any:
    return SimpleNamespace(
        topic="events", partition=1, offset=offset, key=b"u-1", value=value, timestamp=0
    )


def _event(**fields: Any) -> dict[str, Any]:
    event = {
        "type": "track",
        "event": "Payment Attempted",
        "messageId": "m-1",
        "userId": "u-1",
        "timestamp": "2026-11-23T09:59:30Z",
        "properties": {"success": False, "amount": 12},
        "context": {"channel": "web", "region": "eu"},
    }
    event.update(fields)
    return event


def test_where_conditions_compare_json_values_and_text() -> None:
    event = _event()
    assert parse_where("properties.success=false").holds(event)
    assert not parse_where("properties.success=0").holds(event)  # a number is not a flag
    assert parse_where("properties.amount=12").holds(event)
    assert parse_where("context.channel=web").holds(event)
    assert not parse_where("context.missing=web").holds(event)
    assert not parse_where("properties.amount.deeper=1").holds(event)
    with pytest.raises(OpsError, match="PATH=VALUE"):
        parse_where("context.channel")


def test_filter_needs_an_object_to_match() -> None:
    only = Filter(frozenset({"Payment Attempted"}), (parse_where("context.region=eu"),))
    assert only.matches("Payment Attempted", _event())
    assert not only.matches("Order Completed", _event())
    assert not only.matches(None, None)
    assert Filter().matches(None, None)


def test_inspector_decodes_routes_and_explains_rejections() -> None:
    inspector = Inspector(Settings(), CATALOG)
    ok = inspector.inspect(_record(orjson.dumps(_event())), now=NOW)
    assert ok.valid and ok.name == "Payment Attempted" and ok.event_time == NOW - 30
    assert ("checkout_success_rate", {"channel": "web", "region": "eu"}, 0.0) in ok.feeds
    late = inspector.inspect(_record(orjson.dumps(_event(timestamp=NOW + 3600))), now=NOW)
    assert (late.reason, late.name) == ("future_timestamp", "Payment Attempted")
    assert late.event is not None and late.feeds == []
    broken = inspector.inspect(_record(b"\xff{"), now=NOW)
    assert broken.reason == "not_utf8" and broken.event is None
    document = broken.to_json()
    assert document["value_base64"] and bytes_from_field(document["value"], True) == b"\xff{"


def test_rejections_render_with_reason_detail_and_raw_bytes() -> None:
    inspector = Inspector(Settings())
    console = Console(record=True, width=120, color_system=None)
    console.print(render_event(inspector.inspect(_record(b'{"event": ', offset=7), now=NOW)))
    text = console.export_text()
    assert "1:7  ✗ REJECTED invalid_json" in text
    assert "b'{\"event\": '" in text


# --- replay ------------------------------------------------------------------------------


def test_retime_keeps_gaps_and_each_timestamps_form() -> None:
    retimer = Retimer(now=NOW)
    events = [
        {"timestamp": "2026-01-01T00:00:00.250+01:00"},
        {"timestamp": 1767222000.25 + 90.5},
        {"timestamp": "2026-01-01T00:05:00.250+01:00"},
    ]
    assert [retimer.apply(e) for e in events] == [None, None, None]
    assert events[0]["timestamp"] == "2026-11-23T10:00:00.000Z"
    assert events[1]["timestamp"] == NOW + 90.5
    assert event_time(events[2]["timestamp"]) == NOW + 300
    assert retimer.apply({"timestamp": "2026-01-01T00:00:00"}) is not None  # no offset
    assert retimer.apply({}) is not None


def test_parse_line_keys_by_user_then_anonymous_id() -> None:
    first = parse_line(1, orjson.dumps({"userId": "u", "anonymousId": "a"}))
    second = parse_line(2, orjson.dumps({"userId": None, "anonymousId": "a"}))
    third = parse_line(3, b'{"event": "x"}')
    assert isinstance(first, Line) and first.key == b"u"
    assert isinstance(second, Line) and second.key == b"a"
    assert isinstance(third, Line) and third.key is None


def test_parse_line_names_what_is_wrong() -> None:
    assert parse_line(4, b"null") == BadLine(4, "a JSON null, not an event object")
    assert parse_line(5, b'"text"') == BadLine(5, "a JSON string, not an event object")
    bad = parse_line(6, b"\xff\n")
    assert isinstance(bad, BadLine) and bad.problem.startswith("not JSON")
    retimed = parse_line(7, b'{"event": "x"}', Retimer(NOW))
    assert isinstance(retimed, BadLine) and "cannot be retimed" in retimed.problem


def test_read_lines_opens_gzip_by_its_content(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"  # gzipped, but not named so
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz:
        gz.write(b'{"a": 1}\n\n{"b": 2}\n')
    path.write_bytes(buffer.getvalue())
    assert list(read_lines(path)) == [(1, b'{"a": 1}\n'), (2, b"\n"), (3, b'{"b": 2}\n')]


# --- lag and dlq -------------------------------------------------------------------------


def test_lag_totals_skip_partitions_without_a_commit() -> None:
    rows = [
        PartitionLag("events", 0, 5, 7, None, None),
        PartitionLag("events", 1, None, 4, None, None),
        PartitionLag("fresh", 0, None, 9, None, None),
    ]
    assert [row.lag for row in rows] == [2, None, None]
    assert totals(rows) == {"events": 2, "fresh": None}


def _letters() -> list[Letter]:
    letters = []
    for partition, offset, reason in [(0, 0, "empty"), (0, 1, "not_utf8"), (1, 0, "empty")]:
        dead = DeadLetter(b"k", b"\xff", reason, "why", "events", 3, 40 + offset)
        headers = tuple(dead.headers(now=NOW))
        letters.append(Letter("dlq", partition, offset, NOW, b"k", b"\xff", headers))
    return letters


def test_dlq_selects_by_reason_and_exact_positions() -> None:
    letters = _letters()
    assert [x.position for x in select(letters, ["empty"])] == ["0:0", "1:0"]
    assert [x.position for x in select(letters, None, parse_offsets("1"))] == ["0:1"]
    assert [x.position for x in select(letters, None, parse_offsets("1:0,0:1"))] == ["0:1", "1:0"]
    with pytest.raises(OpsError, match="several partitions"):
        select(letters, None, parse_offsets("0"))
    with pytest.raises(OpsError, match="no dead letter at 0:1 with the given --reason"):
        select(letters, ["empty"], parse_offsets("0:1"))
    with pytest.raises(OpsError, match="PARTITION:OFFSET"):
        parse_offsets("a:b")


def test_dlq_export_flags_base64_and_keeps_the_origin() -> None:
    document = _letters()[1].to_json()
    assert document["value_base64"] and document["value"] == "/w=="
    assert not document["key_base64"] and document["key"] == "k"
    assert document["reason"] == "not_utf8"
    assert document["source"] == {"topic": "events", "partition": 3, "offset": 41}
    assert document["rejected_at"] == NOW
    names = [h["name"] for h in document["headers"]]
    assert names[0] == deadletter.REASON and deadletter.SOURCE_OFFSET in names


def test_bytes_field_round_trips() -> None:
    for data in (b"plain", "é".encode(), b"\x80\x81", b"", None):
        text, flag = bytes_field(data)
        assert bytes_from_field(text, flag) == data
