"""The Prometheus collector of a worker, scraped after feeding it simulated events."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import orjson
import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from river import stats

from agents.exporter import WorkerCollector
from agents.health import BrokerProbe
from agents.metrics import DELAY_BUCKETS
from agents.pipeline import Aggregator, Ingestor
from models.catalog import load_catalog
from models.routing import Router, split_series_key
from models.spec import Catalog, Indicator
from streams.simulator import JourneySimulator
from streams.transport import FetchHoles
from tests.reference import event_time, value_of, windows_by_segment

EXAMPLE = Path(__file__).resolve().parents[2] / "catalog.example.yaml"
CATALOG = load_catalog(EXAMPLE)
START = 1_800_000_000.0  # a multiple of 60
TOPIC = "journey-events"
PARTITIONS = 4


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    offset: int


@dataclass
class Worker:
    """One worker's two stages, wired as the Faust agents wire them, minus Kafka.

    It stands in for :class:`agents.worker.Worker` (which needs a Faust app) where the
    collector reads it: the catalog, the stages, the broker probe and the checkpointer.
    """

    catalog: Catalog = CATALOG
    router: Router = field(default_factory=lambda: Router.compile(CATALOG))
    ingestor: Ingestor = field(init=False)
    aggregator: Aggregator = field(default_factory=lambda: Aggregator(CATALOG))
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    broker: BrokerProbe = field(default_factory=lambda: BrokerProbe([], {}))
    checkpointer: Any = field(
        default_factory=lambda: SimpleNamespace(store=SimpleNamespace(saved=0), restored=0)
    )
    #: No links partition owned: the collector exposes no link metrics.
    links: Any = field(default_factory=lambda: SimpleNamespace(current=lambda: None))
    fetch_holes: FetchHoles = field(default_factory=FetchHoles)
    #: Every accepted event and the processing time it was ingested at.
    accepted: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    records: int = 0
    _input_offset: int = 0
    _observation_offsets: Counter[int] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.ingestor = Ingestor(self.router, PARTITIONS)
        self.registry.register(WorkerCollector(cast(Any, self)))

    def feed(self, values: list[bytes | None], now: float) -> None:
        records = []
        for value in values:
            records.append(Record(None, value, self._input_offset))
            self._input_offset += 1
        result = self.ingestor.process(TOPIC, 0, 1, records, now=now)
        rejected = {letter.offset for letter in result.dead_letters}
        for record in records:
            if record.offset not in rejected:
                assert record.value is not None
                self.accepted.append((orjson.loads(record.value), now))
        self.records += len(records)
        for target, value in result.records.items():
            offset = self._observation_offsets[target]
            self._observation_offsets[target] += 1
            self.aggregator.process(target, [Record(None, value, offset)], now=now)

    def feed_events(self, events: list[dict[str, Any]], batch: int = 50) -> None:
        for i in range(0, len(events), batch):
            chunk = events[i : i + batch]
            self.feed([orjson.dumps(e) for e in chunk], now=event_time(chunk[-1]) + 0.5)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def samples(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {
            frozenset(sample.labels.items()): sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name
        }


def simulated(count: int = 600, seed: int = 2) -> list[dict[str, Any]]:
    # 2 events per second: 600 events span 5 one-minute windows.
    return list(JourneySimulator(seed=seed, start_time=START).events(count, rate=2.0))


def identity(indicator: Indicator, segment: tuple[str, ...]) -> dict[str, str]:
    labels = {indicator.kind: indicator.name, "owner": indicator.owner}
    if indicator.kind == "cpi":
        labels["journey_step"] = indicator.journey_step
    labels.update(zip([s.label for s in indicator.segment_by], segment, strict=True))
    return labels


def window_value(indicator: Indicator, values: list[float]) -> float | None:
    if indicator.measure.kind != "quantile":
        return value_of(indicator, values)
    # P² is an approximation: the exact expectation is River's own Quantile over the
    # same values in the same order; it must still lie among the values.
    assert indicator.measure.q is not None
    quantile = stats.Quantile(indicator.measure.q)
    for value in values:
        quantile.update(value)
    result = quantile.get()
    assert result is not None and min(values) <= result <= max(values)
    return float(result)


@dataclass
class Expected:
    value: float | None
    live: float | None
    events: int


def expected_series(
    events: list[dict[str, Any]], lateness_free_time: float
) -> dict[tuple[str, tuple[str, ...]], Expected]:
    """Per (indicator, segment): last closed value, live value and events, with numpy.

    ``lateness_free_time`` is the event time the windows were advanced to: windows
    ending at or before it minus the allowed lateness are closed.
    """
    out = {}
    for indicator in CATALOG.indicators:
        watermark = lateness_free_time - indicator.allowed_lateness
        for segment, windows in windows_by_segment(indicator, events).items():
            closed = [s for s in windows if s + indicator.window <= watermark]
            open_ = [s for s in windows if s + indicator.window > watermark]
            out[(indicator.name, segment)] = Expected(
                value=window_value(indicator, windows[max(closed)]) if closed else None,
                live=window_value(indicator, windows[max(open_)]) if open_ else None,
                events=sum(len(values) for values in windows.values()),
            )
    return out


@pytest.fixture
def fed() -> tuple[Worker, list[dict[str, Any]]]:
    """A worker fed 600 simulated events, a few bad records and one unmeasurable event."""
    worker = Worker()
    events = simulated()
    assert {e.get("event") or e.get("name") for e in events} >= {
        "Session Started",
        "Payment Attempted",
        "Order Completed",
        "Order Delivered",
        "Survey Submitted",
        "Support Ticket Closed",
        "Home",
    }
    worker.feed_events(events[:300])
    unmeasurable = {**events[300], "messageId": "odd-1", "type": "track"}
    unmeasurable |= {"event": "Payment Attempted", "properties": {"success": "maybe"}}
    now = event_time(events[300])
    worker.feed([b"{", None, b"[]", orjson.dumps(unmeasurable), b"", b"{"], now=now)
    worker.feed_events(events[300:])
    return worker, events


# --- indicator values ------------------------------------------------------------------------


def test_values_live_values_and_events_match_numpy(
    fed: tuple[Worker, list[dict[str, Any]]],
) -> None:
    worker, events = fed
    newest = max(event_time(event) for event in events)
    expected = expected_series(events, newest)
    kinds_seen = Counter()
    for (name, segment), want in expected.items():
        indicator = CATALOG.indicator(name)
        kind, labels = indicator.kind, identity(indicator, segment)
        got_value = worker.value(f"cpimon_{kind}_value", **labels)
        got_live = worker.value(f"cpimon_{kind}_live_value", **labels)
        got_events = worker.value(f"cpimon_{kind}_events_total", **labels)
        where = f"{name}{segment}"
        assert got_events == want.events, where
        if want.value is None:
            assert got_value is None, where
        else:
            assert got_value == pytest.approx(want.value, rel=1e-9), where
        if want.live is None:
            assert got_live is None, where
        else:
            assert got_live == pytest.approx(want.live, rel=1e-9), where
        kinds_seen[kind] += 1
    assert set(kinds_seen) == {"cpi", "kpi", "metric"}
    # Nothing is exposed beyond the series computed here.
    for kind in ("cpi", "kpi", "metric"):
        exposed = worker.samples(f"cpimon_{kind}_events_total")
        wanted = {
            frozenset(identity(CATALOG.indicator(name), segment).items())
            for (name, segment) in expected
            if CATALOG.indicator(name).kind == kind
        }
        assert set(exposed) == wanted
        assert len(worker.samples(f"cpimon_{kind}_value")) == sum(
            1
            for (name, _), want in expected.items()
            if CATALOG.indicator(name).kind == kind and want.value is not None
        )


def test_segment_labels_are_the_catalog_labels(fed: tuple[Worker, list[dict[str, Any]]]) -> None:
    worker, _events = fed
    labels = set(worker.samples("cpimon_cpi_events_total"))
    checkout = [dict(s) for s in labels if ("cpi", "checkout_success_rate") in s]
    assert checkout
    for sample in checkout:
        assert set(sample) == {"cpi", "owner", "journey_step", "channel", "region"}
        assert sample["owner"] == "payments" and sample["journey_step"] == "checkout"
    revenue = [dict(s) for s in worker.samples("cpimon_kpi_events_total")]
    assert {"kpi": "revenue", "owner": "finance"} in revenue
    tickets = [dict(s) for s in worker.samples("cpimon_metric_events_total")]
    assert tickets and all(set(s) == {"metric", "owner", "support_channel"} for s in tickets)


def test_undefined_values_are_left_out() -> None:
    worker = Worker()
    order = {
        "type": "track",
        "event": "Order Completed",
        "userId": "u-1",
        "properties": {"revenue": 12.5},
        "context": {},
    }
    values = [
        orjson.dumps({**order, "messageId": f"m-{i}", "timestamp": START + 10 * i})
        for i in range(12)
    ]
    worker.feed(values, now=START + 120)
    # Orders without sessions: conversion is undefined, in both the closed and the live window.
    assert worker.value("cpimon_kpi_events_total", kpi="conversion_rate", owner="growth") == 12
    assert worker.value("cpimon_kpi_value", kpi="conversion_rate", owner="growth") is None
    assert worker.value("cpimon_kpi_live_value", kpi="conversion_rate", owner="growth") is None
    assert worker.value("cpimon_kpi_value", kpi="revenue", owner="finance") == 6 * 12.5
    assert worker.value("cpimon_kpi_live_value", kpi="revenue", owner="finance") == 12.5 * 6
    assert_no_nan(worker)


def assert_no_nan(worker: Worker) -> None:
    text = generate_latest(worker.registry).decode()
    for line in text.splitlines():
        if not line.startswith("#"):
            assert line.rsplit(" ", 1)[1].lower() not in ("nan", "+inf", "-inf", "inf"), line
    count = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert math.isfinite(sample.value), sample
            count += 1
    assert count


def test_no_sample_is_nan(fed: tuple[Worker, list[dict[str, Any]]]) -> None:
    worker, _events = fed
    assert_no_nan(worker)


# --- targets and pipeline counters ----------------------------------------------------------


def test_targets(fed: tuple[Worker, list[dict[str, Any]]]) -> None:
    worker, _events = fed
    assert worker.value(
        "cpimon_cpi_target", cpi="checkout_success_rate", owner="payments", bound="min"
    ) == pytest.approx(0.95)
    assert worker.value(
        "cpimon_cpi_target", cpi="page_latency_p95", owner="web-platform", bound="max"
    ) == pytest.approx(800.0)
    assert worker.value(
        "cpimon_kpi_target", kpi="revenue", owner="finance", bound="min"
    ) == pytest.approx(100.0)
    with_target = [i for i in CATALOG.indicators if i.target is not None]
    for kind in ("cpi", "kpi", "metric"):
        exposed = worker.samples(f"cpimon_{kind}_target")
        wanted = {
            frozenset({kind: i.name, "owner": i.owner, "bound": i.target.bound}.items()): (
                i.target.value
            )
            for i in with_target
            if i.kind == kind and i.target is not None
        }
        assert exposed == wanted
    assert worker.samples("cpimon_metric_target") == {}
    assert (
        worker.value("cpimon_kpi_target", kpi="average_order_value", owner="finance", bound="min")
        is None
    )


def test_consumed_and_rejected(fed: tuple[Worker, list[dict[str, Any]]]) -> None:
    worker, events = fed
    assert worker.records == len(events) + 6
    assert worker.value("cpimon_events_consumed_total", topic=TOPIC) == worker.records
    rejected = worker.samples("cpimon_events_rejected_total")
    assert rejected == {
        frozenset({"topic": TOPIC, "reason": "invalid_json"}.items()): 2.0,
        frozenset({"topic": TOPIC, "reason": "empty"}.items()): 2.0,
        frozenset({"topic": TOPIC, "reason": "not_an_object"}.items()): 1.0,
    }
    assert worker.value("cpimon_observations_routed_total") == worker.ingestor.routed
    assert worker.value("cpimon_observations_applied_total") == worker.ingestor.routed
    assert worker.ingestor.routed > len(events)


def test_fetch_holes_and_skipped_offsets_are_counted_per_topic() -> None:
    worker = Worker()
    assert worker.samples("cpimon_fetch_holes_total") == {}
    assert worker.samples("cpimon_offsets_skipped_total") == {}
    worker.fetch_holes.meet(TP("observations", 1), 40, now=0.0)
    worker.fetch_holes.meet(TP("observations", 1), 40, now=1.0)  # the same hole again
    worker.fetch_holes.meet(TP("windows", 0), 7, now=2.0)
    worker.fetch_holes.give_up(TP("windows", 0), 3)
    assert worker.value("cpimon_fetch_holes_total", topic="observations") == 1
    assert worker.value("cpimon_fetch_holes_total", topic="windows") == 1
    assert worker.samples("cpimon_offsets_skipped_total") == {
        frozenset({"topic": "windows"}.items()): 3.0
    }


def test_unmeasurable_and_folded_counters(fed: tuple[Worker, list[dict[str, Any]]]) -> None:
    worker, _events = fed
    unmeasurable = worker.samples("cpimon_events_unmeasurable_total")
    assert unmeasurable == {
        frozenset({"indicator": i.name}.items()): float(i.name == "checkout_success_rate")
        for i in CATALOG.indicators
    }
    assert worker.samples("cpimon_segment_values_folded_total") == {}
    tickets = [
        orjson.dumps(
            {
                "event": "Support Ticket Closed",
                "messageId": f"t-{i}",
                "userId": "u",
                "timestamp": START + 301,
                "properties": {"support_channel": f"channel-{i}", "first_contact_resolution": True},
            }
        )
        for i in range(9)
    ]
    worker.feed(tickets, now=START + 302)
    channels = {"chat", "email", "phone"} & {
        dict(s).get("support_channel") for s in worker.samples("cpimon_cpi_events_total")
    }
    cap = 5  # support_first_contact_resolution caps its label at 5 values
    folded = 9 - (cap - len(channels))
    assert (
        worker.value(
            "cpimon_segment_values_folded_total",
            cpi="support_first_contact_resolution",
            label="support_channel",
        )
        == folded
    )


def test_delay_histogram(fed: tuple[Worker, list[dict[str, Any]]]) -> None:
    worker, _events = fed
    delays = np.array([now - event_time(event) for event, now in worker.accepted])
    assert len(delays) == worker.records - 5
    assert delays.min() >= 0.0 and delays.max() > 20  # the buckets see a spread
    buckets = {
        dict(labels)["le"]: value
        for labels, value in worker.samples("cpimon_event_delay_seconds_bucket").items()
    }
    assert len(buckets) == len(DELAY_BUCKETS) + 1
    previous = 0.0
    for bound in (*DELAY_BUCKETS, math.inf):
        label = "+Inf" if bound == math.inf else repr(bound)
        assert buckets[label] == np.sum(delays <= bound), label
        assert buckets[label] >= previous
        previous = buckets[label]
    assert buckets["+Inf"] == len(delays)
    assert worker.value("cpimon_event_delay_seconds_count") == len(delays)
    assert worker.value("cpimon_event_delay_seconds_sum") == pytest.approx(delays.sum())


def test_late_events_are_counted_per_indicator(fed: tuple[Worker, list[dict[str, Any]]]) -> None:
    worker, events = fed
    for name in ("checkout_success_rate", "nps", "csat", "page_latency_p95"):
        assert worker.value("cpimon_events_late_total", cpi=name) == 0
    assert worker.value("cpimon_events_late_total", kpi="revenue") == 0
    before = {
        name: dict(worker.samples(name)) for name in ("cpimon_cpi_value", "cpimon_cpi_events_total")
    }
    old = START + 1.0  # its window closed minutes ago
    stale = []
    for i, channel in enumerate(["web", "ios", "web"]):
        payment = {"event": "Payment Attempted", "messageId": f"late-{i}", "userId": "u"}
        payment |= {"timestamp": old, "properties": {"success": False}}
        payment |= {"context": {"channel": channel, "region": "eu"}}
        stale.append(orjson.dumps(payment))
    survey = {"event": "Survey Submitted", "messageId": "late-s", "userId": "u", "timestamp": old}
    survey |= {"properties": {"nps": 0, "csat": 1}, "context": {"region": "us"}}
    stale.append(orjson.dumps(survey))
    worker.feed(stale, now=max(event_time(e) for e in events) + 1)
    assert worker.value("cpimon_events_late_total", cpi="checkout_success_rate") == 3
    assert worker.value("cpimon_events_late_total", cpi="nps") == 1
    assert worker.value("cpimon_events_late_total", cpi="csat") == 1
    assert worker.value("cpimon_events_late_total", cpi="page_latency_p95") == 0
    assert worker.value("cpimon_event_delay_seconds_count") == len(worker.accepted)
    # Dropped, not counted: no value or event count moved.
    after = {
        name: dict(worker.samples(name)) for name in ("cpimon_cpi_value", "cpimon_cpi_events_total")
    }
    assert after == before


# --- ownership -------------------------------------------------------------------------------


def test_released_partitions_disappear(fed: tuple[Worker, list[dict[str, Any]]]) -> None:
    worker, _events = fed
    assert worker.value("cpimon_owned_partitions") == PARTITIONS
    owned = worker.aggregator.owned()
    keys_of = {number: set(owned[number].series) for number in owned}
    assert all(keys_of.values())
    open_before = worker.value("cpimon_open_windows")
    assert open_before == sum(p.open_windows() for p in owned.values()) > 0

    def exposed() -> set[tuple[str, frozenset[tuple[str, str]]]]:
        return {
            (kind, labels)
            for kind in ("cpi", "kpi", "metric")
            for labels in worker.samples(f"cpimon_{kind}_events_total")
        }

    def labels_of(key: str) -> tuple[str, frozenset[tuple[str, str]]]:
        name, segment = split_series_key(key)
        indicator = CATALOG.indicator(name)
        return indicator.kind, frozenset(identity(indicator, segment).items())

    everything = exposed()
    assert everything == {labels_of(key) for keys in keys_of.values() for key in keys}
    worker.aggregator.release([0, 3])
    assert worker.value("cpimon_owned_partitions") == PARTITIONS - 2
    assert exposed() == {labels_of(key) for n in (1, 2) for key in keys_of[n]}
    for n in (0, 3):
        for key in keys_of[n]:
            kind, labels = labels_of(key)
            assert worker.value(f"cpimon_{kind}_value", **dict(labels)) is None
            assert worker.value(f"cpimon_{kind}_live_value", **dict(labels)) is None
    assert worker.value("cpimon_open_windows") == sum(
        worker.aggregator.owned()[n].open_windows() for n in (1, 2)
    )
    worker.aggregator.release([1, 2])
    assert exposed() == set()
    assert worker.value("cpimon_owned_partitions") == 0
    assert worker.value("cpimon_open_windows") == 0
    assert_no_nan(worker)
