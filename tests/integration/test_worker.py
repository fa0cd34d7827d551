"""The worker end to end on a real broker: known events in, exact CPI values out of /metrics."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from agents.demo import Sample
from models.catalog import load_catalog
from models.spec import Catalog, Indicator
from streams.broker import EmbeddedBroker
from streams.deadletter import REASON, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC, read_headers
from streams.simulator import JourneySimulator
from tests.reference import series_labels, series_windows, value_of
from tests.support import EXAMPLE_CATALOG, WorkerProcess, wait_for, worker_process

pytestmark = pytest.mark.broker

EVENTS = 6_000
EVENT_RATE = 20.0  # events per second of event time: 5 minutes of shop traffic


def _valid(**overrides: Any) -> dict[str, Any]:
    event = {
        "type": "track",
        "event": "Payment Attempted",
        "messageId": str(uuid.uuid4()),
        "userId": "u-bad-neighbour",
        "timestamp": "2026-01-01T00:00:00Z",
        "properties": {"success": True},
        "context": {"channel": "web", "region": "eu"},
    }
    event.update(overrides)
    return event


def bad_messages(now: float) -> list[tuple[str, bytes]]:
    """(expected reason, raw value) for every kind of bad input the contract names."""
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 86_400))
    return [
        ("invalid_json", b'{"event": "Payment Attempted", '),
        ("not_utf8", b'{"event": "\xff\xfe"}'),
        ("empty", b""),
        ("not_an_object", b"[1, 2, 3]"),
        ("missing_field", orjson.dumps({k: v for k, v in _valid().items() if k != "messageId"})),
        ("wrong_type", orjson.dumps(_valid(properties=["not", "an", "object"]))),
        ("bad_timestamp", orjson.dumps(_valid(timestamp="yesterday at noon"))),
        ("bad_timestamp", orjson.dumps(_valid(timestamp="9999-12-31T23:59:59Z"))),
        ("future_timestamp", orjson.dumps(_valid(timestamp=future))),
        ("unsupported_type", orjson.dumps(_valid(type="identify"))),
        ("too_large", orjson.dumps(_valid(properties={"blob": "x" * 70_000}))),
    ]


@dataclass
class ShopRun:
    catalog: Catalog
    events: list[dict[str, Any]]
    bad: list[tuple[str, bytes, int, int]]  # reason, value, partition, offset
    samples: list[Sample]
    topics: dict[str, str]
    app_id: str
    end_offsets: dict[int, int] = field(default_factory=dict)

    def values(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {
            tuple(sorted(labels.items())): value
            for sample_name, labels, value in self.samples
            if sample_name == name
        }


@pytest.fixture(scope="module")
def shop_run(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopRun]:
    run_id = uuid.uuid4().hex[:8]
    topics = {
        "CPIMON_EVENTS_TOPIC": f"events-{run_id}",
        "CPIMON_DEAD_LETTER_TOPIC": f"dead-letters-{run_id}",
        "CPIMON_OBSERVATIONS_TOPIC": f"observations-{run_id}",
        "CPIMON_KPI_TOPIC": f"kpis-{run_id}",
    }
    app_id = f"cpimon-test-{run_id}"
    broker.create_topics({topics["CPIMON_EVENTS_TOPIC"]: 4})
    now = time.time()
    start = math.floor(now / 60) * 60 - 300
    events = list(JourneySimulator(seed=7, start_time=start).events(EVENTS, rate=EVENT_RATE))
    bad = bad_messages(now)

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    futures = []
    spacing = len(events) // (len(bad) + 1)
    for i, event in enumerate(events):
        futures.append(
            (
                "ok",
                b"",
                producer.send(
                    topics["CPIMON_EVENTS_TOPIC"],
                    key=event["userId"].encode(),
                    value=orjson.dumps(event),
                ),
            )
        )
        if i % spacing == spacing - 1 and i // spacing < len(bad):
            reason, value = bad[i // spacing]
            futures.append(
                (
                    reason,
                    value,
                    producer.send(topics["CPIMON_EVENTS_TOPIC"], key=b"bad", value=value),
                )
            )
    producer.flush()
    end_offsets: dict[int, int] = {}
    produced_bad = []
    for reason, value, future in futures:
        metadata = future.get(timeout=30)
        end_offsets[metadata.partition] = max(
            end_offsets.get(metadata.partition, 0), metadata.offset + 1
        )
        if reason != "ok":
            produced_bad.append((reason, value, metadata.partition, metadata.offset))
    producer.close()

    tmp_path = tmp_path_factory.mktemp("worker")
    env = {**topics, "CPIMON_APP_ID": app_id, "CPIMON_IDLE_TIMEOUT": "6"}
    total = len(events) + len(bad)
    catalog = load_catalog(EXAMPLE_CATALOG)
    observations = sum(
        len(values)
        for windows in series_windows(catalog, events).values()
        for values in windows.values()
    )

    def counted(worker: WorkerProcess) -> float:
        return sum(
            worker.value(f"cpimon_{kind}_events_total") or 0 for kind in ("cpi", "kpi", "metric")
        )

    with worker_process(broker.url, tmp_path, env) as worker:
        wait_for(
            lambda: (
                worker.value("cpimon_events_consumed_total") == total
                and counted(worker) == observations
                and worker.value("cpimon_open_windows") == 0
            ),
            120,
            f"{total} events consumed, {observations} observations counted, every window closed",
            describe=lambda: f"counted {counted(worker)}; {worker.describe()}",
        )
        samples = worker.samples()
    yield ShopRun(catalog, events, produced_bad, samples, topics, app_id, end_offsets)


def _labels(indicator: Indicator, segment: tuple[str, ...] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(series_labels(indicator, segment).items()))


def test_every_indicator_value_equals_the_value_computed_from_the_events(shop_run: ShopRun) -> None:
    checked = 0
    for (indicator, segment), windows in series_windows(shop_run.catalog, shop_run.events).items():
        exported = shop_run.values(f"cpimon_{indicator.kind}_value")
        last_window = windows[max(windows)]
        expected = value_of(indicator, last_window)
        labels = _labels(indicator, segment)
        if expected is None:
            assert labels not in exported
            continue
        assert labels in exported, f"{indicator.name} {segment} missing from /metrics"
        if indicator.measure.kind == "quantile":
            # River's quantile is the P² estimate: it must be a plausible p95,
            # between the exact 90th and 99th percentiles of the same window.
            low = value_of_quantile(last_window, 0.90)
            high = value_of_quantile(last_window, 0.99)
            assert low <= exported[labels] <= high, (indicator.name, segment)
        else:
            assert exported[labels] == pytest.approx(expected, rel=1e-9, abs=1e-9), (
                indicator.name,
                segment,
            )
        checked += 1
    assert checked >= 20


def value_of_quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q))


def test_event_counts_per_series_are_exact(shop_run: ShopRun) -> None:
    expected_series = series_windows(shop_run.catalog, shop_run.events)
    for (indicator, segment), windows in expected_series.items():
        exported = shop_run.values(f"cpimon_{indicator.kind}_events_total")
        expected = sum(len(values) for values in windows.values())
        assert exported[_labels(indicator, segment)] == expected, (indicator.name, segment)
    exported_series = sum(
        len(shop_run.values(f"cpimon_{kind}_events_total")) for kind in ("cpi", "kpi", "metric")
    )
    assert exported_series == len(expected_series)


def test_live_and_closed_values_cover_every_cpi(shop_run: ShopRun) -> None:
    exported_cpis = {dict(labels)["cpi"] for labels in shop_run.values("cpimon_cpi_value")}
    assert exported_cpis == {cpi.name for cpi in shop_run.catalog.cpis}
    targets = shop_run.values("cpimon_cpi_target")
    assert len(targets) == sum(1 for cpi in shop_run.catalog.cpis if cpi.target is not None)


def test_nothing_was_late(shop_run: ShopRun) -> None:
    assert all(value == 0 for value in shop_run.values("cpimon_events_late_total").values())


def test_consumed_and_rejected_counters(shop_run: ShopRun) -> None:
    topic = shop_run.topics["CPIMON_EVENTS_TOPIC"]
    consumed = shop_run.values("cpimon_events_consumed_total")
    assert consumed == {(("topic", topic),): len(shop_run.events) + len(shop_run.bad)}
    rejected = shop_run.values("cpimon_events_rejected_total")
    expected: dict[tuple[tuple[str, str], ...], float] = {}
    for reason, _value, _partition, _offset in shop_run.bad:
        key = (("reason", reason), ("topic", topic))
        expected[key] = expected.get(key, 0) + 1
    assert rejected == expected


def test_dead_letters_keep_the_bytes_reason_and_origin(
    shop_run: ShopRun, broker: EmbeddedBroker
) -> None:
    consumer = KafkaConsumer(
        shop_run.topics["CPIMON_DEAD_LETTER_TOPIC"],
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5_000,
        group_id=None,
    )
    letters = list(consumer)
    consumer.close()
    assert len(letters) == len(shop_run.bad)
    by_origin = {
        (
            int(read_headers(m.headers)[SOURCE_PARTITION]),
            int(read_headers(m.headers)[SOURCE_OFFSET]),
        ): m
        for m in letters
    }
    for reason, value, partition, offset in shop_run.bad:
        letter = by_origin[(partition, offset)]
        headers = read_headers(letter.headers)
        assert headers[REASON] == reason
        assert headers[SOURCE_TOPIC] == shop_run.topics["CPIMON_EVENTS_TOPIC"]
        assert (letter.value or b"") == value


def test_offsets_are_committed_once_processed(shop_run: ShopRun, broker: EmbeddedBroker) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        committed = admin.list_group_offsets(shop_run.app_id)[shop_run.app_id]
    finally:
        admin.close()
    topic = shop_run.topics["CPIMON_EVENTS_TOPIC"]
    by_partition = {
        tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic
    }
    assert by_partition == shop_run.end_offsets
