"""The two worker stages driven directly: Ingestor (decode, route, repartition), Aggregator."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.pipeline import Aggregator, Ingestor, IngestResult, RoutedBatch
from models.aggregation import ClosedWindow, PartitionSeries
from models.catalog import load_catalog
from models.routing import Router, series_key
from streams.deadletter import SOURCE_OFFSET, read_headers
from streams.observations import decode_observations
from streams.simulator import JourneySimulator
from tests.reference import event_time, value_of, windows_by_segment

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT / "catalog.example.yaml")
START = 1_800_000_000.0
TOPIC = "journey-events"
PARTITIONS = 4
IDLE = 30.0


@dataclass(frozen=True)
class Record:
    """What the Ingestor reads from an aiokafka ConsumerRecord."""

    key: bytes | None
    value: bytes | None
    offset: int


def simulated(count: int, rate: float = 10.0, seed: int = 5) -> list[dict[str, Any]]:
    return list(JourneySimulator(seed=seed, start_time=START).events(count, rate=rate))


def ingestor(**options: Any) -> Ingestor:
    return Ingestor(router=Router.compile(CATALOG), observation_partitions=PARTITIONS, **options)


def decode_record(value: bytes) -> tuple[str, int, int, float | None, list[list[Any]]]:
    """(input topic, input partition, its partition count, newest event time, observations
    as [key, event time, value, input offset] in input order within each series)."""
    record = decode_observations(value)
    observations = [
        [group.key, *observation]
        for group in record.groups
        for observation in zip(group.times, group.values, group.offsets, strict=True)
    ]
    return record.topic, record.partition, record.partitions, record.newest, observations


class ObservationTopic:
    """Hands Ingestor records to an Aggregator as the observations topic would: each
    observation partition's records get consecutive offsets."""

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator
        self.next_offset: dict[int, int] = {}

    def deliver(self, target: int, values: list[bytes], now: float) -> list[ClosedWindow]:
        records = []
        for value in values:
            offset = self.next_offset.get(target, 0)
            records.append(Record(None, value, offset))
            self.next_offset[target] = offset + 1
        return self.aggregator.process(target, records, now=now)

    def deliver_all(self, result: IngestResult, now: float) -> list[ClosedWindow]:
        closed = []
        for target, value in result.records.items():
            closed.extend(self.deliver(target, [value], now))
        return closed


def name_of(event: dict[str, Any]) -> str:
    return str(event["event"] if event.get("type", "track") == "track" else event["name"])


def valid(event: dict[str, Any], **changes: Any) -> bytes:
    return orjson.dumps({**event, **changes})


# (value, reason) of records every worker must reject; built from a valid event.
def bad_values(template: dict[str, Any], now: float) -> list[tuple[bytes | None, str]]:
    without_time = {k: v for k, v in template.items() if k != "timestamp"}
    return [
        (None, "empty"),
        (b"", "empty"),
        (b'{"event": "Payment Attempted", ', "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'{"event": "caf\xe9"}', "not_utf8"),
        (valid(template, padding="x" * 5000), "too_large"),
        (orjson.dumps(without_time), "missing_field"),
        (valid(template, userId=None), "missing_field"),
        (valid(template, properties=[1]), "wrong_type"),
        (valid(template, type="identify"), "unsupported_type"),
        (valid(template, timestamp=now * 1000), "bad_timestamp"),
        (valid(template, timestamp="yesterday"), "bad_timestamp"),
        (valid(template, timestamp=now + 3600), "future_timestamp"),
    ]


def mixed_batch(
    events: list[dict[str, Any]], now: float, first_offset: int = 1000
) -> tuple[list[Record], list[tuple[Record, str]]]:
    """Valid events with bad records spread between them; returns (records, bad ones)."""
    bad = bad_values(events[0], now)
    records: list[Record] = []
    rejected: list[tuple[Record, str]] = []
    offset = first_offset
    for i, event in enumerate(events):
        records.append(Record(event["userId"].encode(), orjson.dumps(event), offset))
        offset += 1
        if i % 7 == 3 and bad:
            value, reason = bad.pop()
            record = Record(b"bad-%d" % offset, value, offset)
            records.append(record)
            rejected.append((record, reason))
            offset += 1
    assert not bad, "the batch is too short to hold every bad record"
    return records, rejected


def all_observations(result: IngestResult) -> list[tuple[int, list[Any]]]:
    return [
        (target, observation)
        for target, value in result.records.items()
        for observation in decode_record(value)[4]
    ]


# --- Ingestor ---------------------------------------------------------------------------------


def test_a_mixed_batch_gives_dead_letters_and_routed_observations() -> None:
    events = simulated(400)
    now = event_time(events[-1]) + 2.0
    records, rejected = mixed_batch(events, now)
    stage = ingestor(max_event_bytes=4096)
    result = stage.process(TOPIC, 3, 8, records, now=now)

    assert result.accepted == len(events)
    assert [(letter.reason, letter.offset) for letter in result.dead_letters] == [
        (reason, record.offset) for record, reason in rejected
    ]
    for letter, (record, _reason) in zip(result.dead_letters, rejected, strict=True):
        assert letter.value == record.value  # the original bytes, untouched
        assert letter.key == record.key
        assert (letter.topic, letter.partition) == (TOPIC, 3)
        assert isinstance(letter.detail, str) and letter.detail
        assert read_headers(letter.headers(now=0.0))[SOURCE_OFFSET] == str(record.offset)

    assert stage.consumed == {TOPIC: len(records)}
    assert stage.rejected == Counter((TOPIC, reason) for _record, reason in rejected)
    assert stage.delay.count == len(events)
    delays = [now - event_time(event) for event in events]
    assert stage.delay.total == pytest.approx(sum(delays))
    assert stage.delay.cumulative()[-1][1] == len(events)

    # Independently routed: every observation of every valid event, in some partition.
    reference = Router.compile(CATALOG)
    expected = Counter()
    for record in records:
        if any(record is bad for bad, _ in rejected):
            continue
        event = orjson.loads(record.value or b"")
        for key, value in reference.observe(name_of(event), event):
            expected[(key, event_time(event), value, record.offset)] += 1
    got = Counter(
        (key, time, value, offset)
        for _target, (key, time, value, offset) in all_observations(result)
    )
    assert got == expected
    assert stage.routed == sum(expected.values())


def test_observations_go_to_the_partition_owning_their_series() -> None:
    events = simulated(600)
    now = event_time(events[-1]) + 1.0
    records = [Record(None, orjson.dumps(event), i) for i, event in enumerate(events)]
    result = ingestor().process(TOPIC, 0, 1, records, now=now)
    seen_in: dict[str, set[int]] = {}
    for target, (key, *_rest) in all_observations(result):
        assert target == zlib.crc32(key.encode()) % PARTITIONS
        seen_in.setdefault(key, set()).add(target)
    assert all(len(targets) == 1 for targets in seen_in.values())
    assert {target for targets in seen_in.values() for target in targets} == set(range(PARTITIONS))


def test_every_observation_partition_gets_a_record() -> None:
    stage = ingestor()
    event = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-1",
        "userId": "u-1",
        "timestamp": START + 5,
        "properties": {"revenue": 10.0},
        "context": {},
    }
    # One event feeding three unsegmented series: at most three partitions have data.
    result = stage.process(TOPIC, 1, 2, [Record(b"u-1", orjson.dumps(event), 7)], now=START + 6)
    assert sorted(result.records) == list(range(PARTITIONS))
    decoded = {target: decode_record(value) for target, value in result.records.items()}
    for topic, partition, partitions, newest, _observations in decoded.values():
        assert (topic, partition, partitions, newest) == (TOPIC, 1, 2, START + 5)
    assert sum(len(d[4]) for d in decoded.values()) == 3
    assert any(not d[4] for d in decoded.values())

    only_bad = [Record(None, b"{", 8), Record(None, None, 9)]
    result = stage.process(TOPIC, 1, 2, only_bad, now=START + 7)
    assert {t: decode_record(v) for t, v in result.records.items()} == {
        target: (TOPIC, 1, 2, None, []) for target in range(PARTITIONS)
    }
    assert result.accepted == 0
    assert stage.consumed == {TOPIC: 3}
    assert stage.delay.count == 1

    result = stage.process(TOPIC, 0, 2, [], now=START + 8)
    assert sorted(result.records) == list(range(PARTITIONS))
    assert result.dead_letters == [] and result.accepted == 0


def test_newest_is_the_newest_accepted_event_of_the_batch() -> None:
    events = simulated(50)
    shuffled = events[10:] + events[:10]
    now = event_time(events[-1]) + 1.0
    records = [Record(None, orjson.dumps(event), i) for i, event in enumerate(shuffled)]
    too_new = valid(events[0], timestamp=now + 3600.0)  # rejected: must not move newest
    records.append(Record(None, too_new, len(records)))
    result = ingestor().process(TOPIC, 0, 1, records, now=now)
    for value in result.records.values():
        assert decode_record(value)[3] == max(event_time(event) for event in events)


KNOWN_PARTITIONS = {
    # key: (crc32, partition of 4, partition of 7), computed once with zlib.crc32
    "revenue": (3910233221, 1, 6),
    "conversion_rate": (3219465246, 2, 4),
    "nps\x1feu": (754703912, 0, 4),
    "checkout_success_rate\x1fweb\x1feu": (10773157, 1, 3),
    "page_latency_p95\x1fios": (1299989746, 2, 6),
}


@pytest.mark.parametrize("key", sorted(KNOWN_PARTITIONS))
def test_partition_for_is_crc32_modulo_the_partition_count(key: str) -> None:
    crc, of_four, of_seven = KNOWN_PARTITIONS[key]
    assert zlib.crc32(key.encode()) == crc
    for _ in range(2):  # the second call may come from a cache: same answer
        assert ingestor().partition_for(key) == of_four
        seven = Ingestor(router=Router.compile(CATALOG), observation_partitions=7)
        assert seven.partition_for(key) == of_seven


def test_partition_for_is_the_same_in_other_processes() -> None:
    keys = sorted(KNOWN_PARTITIONS)
    here = [ingestor().partition_for(key) for key in keys]
    script = (
        "import sys, json\n"
        "from agents.pipeline import Ingestor\n"
        "from models.routing import Router\n"
        "from models.catalog import load_catalog\n"
        "stage = Ingestor(Router.compile(load_catalog('catalog.example.yaml')), 4)\n"
        "print(json.dumps([stage.partition_for(k) for k in json.loads(sys.argv[1])]))\n"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script, orjson.dumps(keys).decode()],
            cwd=ROOT,
            env=env,
            capture_output=True,
            check=True,
            timeout=120,
        )
        assert orjson.loads(out.stdout) == here


_KEY = st.text(alphabet=st.characters(exclude_categories=("Cs",)))


@given(st.lists(_KEY, max_size=30), st.integers(1, 64))
def test_partition_for_is_in_range_and_stable(keys: list[str], partitions: int) -> None:
    first = Ingestor(router=Router.compile(CATALOG), observation_partitions=partitions)
    second = Ingestor(router=Router.compile(CATALOG), observation_partitions=partitions)
    for key in keys:
        partition = first.partition_for(key)
        assert 0 <= partition < partitions
        assert partition == zlib.crc32(key.encode()) % partitions
    for key in reversed(keys):
        assert second.partition_for(key) == first.partition_for(key)


# --- Aggregator -------------------------------------------------------------------------------


def two_partition_run(
    events: list[dict[str, Any]], batch_size: int
) -> list[tuple[int, list[dict[str, Any]], float]]:
    """Batches of two input partitions (split by user, as Kafka's partitioner would), in
    the order a worker would read them: (source partition, events, processing time)."""
    by_source: list[list[dict[str, Any]]] = [[], []]
    for event in events:
        by_source[zlib.crc32(event["userId"].encode()) % 2].append(event)
    runs = []
    for start in range(0, max(len(s) for s in by_source), batch_size):
        for source, stream in enumerate(by_source):
            batch = stream[start : start + batch_size]
            if batch:
                runs.append((source, batch, event_time(batch[-1]) + 1.0))
    # Processing time is read at each batch and never goes back.
    ordered, clock = [], 0.0
    for source, batch, now in runs:
        clock = max(clock, now)
        ordered.append((source, batch, clock))
    return ordered


def window_set(closed: list[ClosedWindow]) -> set[tuple[str, tuple[str, ...], float, Any, int]]:
    return {
        (c.indicator.name, c.segment, c.window.start, c.window.value, c.window.events)
        for c in closed
    }


def test_aggregating_the_records_equals_feeding_the_observations_directly() -> None:
    events = simulated(3000)
    stage = ingestor()
    aggregator = Aggregator(CATALOG, idle_timeout=IDLE)
    direct = PartitionSeries({i.name: i for i in CATALOG.indicators}, idle_timeout=IDLE)
    reference = Router.compile(CATALOG)
    topic = ObservationTopic(aggregator)
    via_records: list[ClosedWindow] = []
    fed_directly: list[ClosedWindow] = []
    newest: dict[int, float] = {}
    now = 0.0
    offset = 0
    for source, batch, now in two_partition_run(events, 100):
        records = []
        observations = []
        for event in batch:
            records.append(Record(None, orjson.dumps(event), offset))
            for key, value in reference.observe(name_of(event), event):
                observations.append([key, event_time(event), value, offset])
            offset += 1
        result = stage.process(TOPIC, source, 2, records, now=now)
        via_records.extend(topic.deliver_all(result, now))
        newest[source] = max(newest.get(source, 0.0), *(event_time(e) for e in batch))
        direct.apply((TOPIC, source, 2), newest[source], offset - 1, observations, now=now)
        fed_directly.extend(direct.close_due(now=now))
    assert via_records, "windows should close while the stream runs"
    assert window_set(via_records) == window_set(fed_directly)
    later = now + IDLE
    for number, windows in aggregator.close_idle(later, IDLE).items():
        assert windows and all(
            ingestor().partition_for(series_key(w.indicator.name, w.segment)) == number
            for w in windows
        )
        via_records.extend(windows)
    fed_directly.extend(direct.close_if_idle(later, IDLE))
    assert window_set(via_records) == window_set(fed_directly)
    assert len(via_records) == len(window_set(via_records))  # no window closed twice

    assert aggregator.applied == stage.routed
    assert sorted(aggregator.owned()) == list(range(PARTITIONS))
    for owned in aggregator.owned().values():
        assert owned.unknown == 0
        assert all(series.late_total == 0 for series in owned.series.values())
    # Each series lives in exactly one partition: the one its key hashes to.
    for number, owned in aggregator.owned().items():
        assert all(zlib.crc32(key.encode()) % PARTITIONS == number for key in owned.series)

    # And the values are what numpy computes from the events (P² quantiles aside).
    got = {
        (name, segment, start): (value, n)
        for name, segment, start, value, n in window_set(via_records)
    }
    checked = 0
    for indicator in CATALOG.indicators:
        if indicator.measure.kind == "quantile":
            continue
        for segment, windows in windows_by_segment(indicator, events).items():
            for start, values in windows.items():
                value, n = got.pop((indicator.name, segment, start))
                assert n == len(values)
                expected = value_of(indicator, values)
                assert value == (None if expected is None else pytest.approx(expected))
                checked += 1
    assert checked > 100
    assert all(name == "page_latency_p95" for name, _segment, _start in got)


def test_release_forgets_partitions() -> None:
    events = simulated(800)
    stage = ingestor()
    aggregator = Aggregator(CATALOG, idle_timeout=IDLE)
    now = event_time(events[-1]) + 1.0
    records = [Record(None, orjson.dumps(event), i) for i, event in enumerate(events)]
    topic = ObservationTopic(aggregator)
    topic.deliver_all(stage.process(TOPIC, 0, 1, records, now=now), now)
    assert sorted(aggregator.owned()) == [0, 1, 2, 3]
    kept = {key for n in (1, 3) for key in aggregator.owned()[n].series}
    released = {key for n in (0, 2) for key in aggregator.owned()[n].series}
    assert kept and released

    aggregator.release([0, 2, 99])
    assert sorted(aggregator.owned()) == [1, 3]
    remaining = {key for owned in aggregator.owned().values() for key in owned.series}
    assert remaining == kept
    flushed = aggregator.close_idle(now + IDLE, IDLE)
    assert set(flushed) == {1, 3}
    assert {series_key(c.indicator.name, c.segment) for n in (1, 3) for c in flushed[n]} <= kept

    # Taking partition 0 back starts from nothing: the old windows are gone.
    empty = stage.process(TOPIC, 0, 1, [], now=now + 1).records[0]
    assert topic.deliver(0, [empty], now=now + 1) == []
    assert aggregator.owned()[0].series == {}
    aggregator.release([0, 1, 2, 3])
    assert aggregator.owned() == {}


def test_a_broker_outage_is_taken_out_of_every_owned_partition() -> None:
    events = simulated(800)
    aggregator = Aggregator(CATALOG, idle_timeout=IDLE)
    now = event_time(events[-1]) + 1.0
    records = [Record(None, orjson.dumps(event), i) for i, event in enumerate(events)]
    ObservationTopic(aggregator).deliver_all(ingestor().process(TOPIC, 0, 1, records, now), now)
    open_before = {n: owned.open_windows() for n, owned in aggregator.owned().items()}
    assert sorted(open_before) == [0, 1, 2, 3] and all(open_before.values())

    # Away from just after the last batch until long past the idle timeout.
    back = now + 5 * IDLE
    assert sorted(aggregator.exclude_outage(now + 1.0, back)) == [0, 1, 2, 3]
    assert aggregator.close_idle(back + IDLE - 1.0 - 0.1, IDLE) == {}
    assert {n: owned.open_windows() for n, owned in aggregator.owned().items()} == open_before
    flushed = aggregator.close_idle(back + IDLE - 1.0, IDLE)
    assert sorted(flushed) == [0, 1, 2, 3]
    assert all(owned.open_windows() == 0 for owned in aggregator.owned().values())


def test_batches_merged_per_source_give_the_windows_of_separate_records() -> None:
    # What the outbox does while a delivery is in flight: consecutive batches of one
    # source become one record per observation partition.
    events = simulated(3000)
    separate, merged = ingestor(), ingestor()
    one_by_one = Aggregator(CATALOG, idle_timeout=IDLE)
    in_groups = Aggregator(CATALOG, idle_timeout=IDLE)
    closed_one_by_one: list[ClosedWindow] = []
    closed_in_groups: list[ClosedWindow] = []
    to_one_by_one, to_in_groups = ObservationTopic(one_by_one), ObservationTopic(in_groups)
    waiting: dict[int, RoutedBatch] = {}
    offsets = [0, 0]
    sources_sent = 0
    now = 0.0
    for turn, (source, batch, now) in enumerate(two_partition_run(events, 40)):
        records = []
        for event in batch:
            records.append(Record(None, orjson.dumps(event), offsets[source]))
            offsets[source] += 1
        closed_one_by_one += to_one_by_one.deliver_all(
            separate.process(TOPIC, source, 2, records, now), now
        )
        routed = merged.route(TOPIC, source, 2, records, now)
        if source in waiting:
            waiting[source].absorb(routed)
        else:
            waiting[source] = routed
        # A delivery goes out: everything waiting, one record per source.  (Every third
        # batch: here processing time runs with event time, and waiting longer than the
        # idle timeout would make a source silent.)
        if turn % 3 == 2:
            sources_sent += len(waiting)
            for held in waiting.values():
                closed_in_groups += to_in_groups.deliver_all(merged.finish(held), now)
            waiting.clear()
    sources_sent += len(waiting)
    for held in waiting.values():
        closed_in_groups += to_in_groups.deliver_all(merged.finish(held), now)
    later = now + IDLE
    for aggregator, closed in ((one_by_one, closed_one_by_one), (in_groups, closed_in_groups)):
        for windows in aggregator.close_idle(later, IDLE).values():
            closed.extend(windows)
    assert len(closed_one_by_one) > 100

    def by_window(closed: list[ClosedWindow]) -> dict[tuple[Any, ...], float | None]:
        # P² quantiles depend on the order of their values, and merging reorders the
        # sources within a series (as another split of fetches would): counts only.
        return {
            (c.indicator.name, c.segment, c.window.start): c.window.value
            for c in closed
            if c.indicator.measure.kind != "quantile"
        }

    def counts(closed: list[ClosedWindow]) -> Counter[tuple[Any, ...]]:
        return Counter(
            {(c.indicator.name, c.segment, c.window.start): c.window.events for c in closed}
        )

    assert counts(closed_in_groups) == counts(closed_one_by_one)
    assert len(closed_in_groups) == len(closed_one_by_one)  # no window closed twice
    # Equal up to the last bits of floating-point sums (added in other groupings).
    assert by_window(closed_in_groups) == pytest.approx(by_window(closed_one_by_one), rel=1e-12)
    assert in_groups.applied == one_by_one.applied == merged.routed == separate.routed
    for owned in in_groups.owned().values():
        assert all(series.late_total == 0 for series in owned.series.values())
    records_in_groups = sum(to_in_groups.next_offset.values())
    assert records_in_groups == PARTITIONS * sources_sent
    assert records_in_groups < sum(to_one_by_one.next_offset.values()) * 0.7


def test_batches_of_different_sources_are_never_merged() -> None:
    stage = ingestor()
    events = simulated(20)
    records = [Record(None, orjson.dumps(event), i) for i, event in enumerate(events)]
    first = stage.route(TOPIC, 0, 2, records[:10], START)
    with pytest.raises(ValueError, match="one source partition per record"):
        first.absorb(stage.route(TOPIC, 1, 2, records[10:], START))
