"""Hostile input and broker outages against a real worker on a real broker."""

from __future__ import annotations

import math
import os
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from models.catalog import load_catalog
from models.errors import EventRejected
from streams.broker import EmbeddedBroker
from streams.codec import decode_event
from streams.deadletter import REASON, SOURCE_OFFSET, SOURCE_PARTITION, read_headers
from streams.simulator import JourneySimulator
from tests.reference import observation_count
from tests.support import EXAMPLE_CATALOG, wait_for, worker_process

pytestmark = pytest.mark.broker


def hostile_corpus(rng: random.Random, template: dict[str, Any], size: int) -> list[bytes]:
    """Broken messages of every kind the reliability issue lists, deterministic for a seed."""
    valid = orjson.dumps(template)

    def mutated(**changes: Any) -> bytes:
        return orjson.dumps({**template, **changes})

    makers = [
        lambda: rng.randbytes(rng.randint(1, 300)),
        lambda: valid[: rng.randint(1, len(valid) - 1)],
        lambda: b'{"event": ' * rng.randint(1100, 3000),
        lambda: b"[" * 5000 + b"]" * 5000,
        lambda: valid.replace(b'"properties":{', b'"n": 1e999999, "properties":{', 1),
        lambda: valid.replace(b'"properties":{', b'"n": NaN, "properties":{', 1),
        lambda: valid.replace(b'"properties":{', b'"n": -Infinity, "properties":{', 1),
        lambda: mutated(event=rng.choice([1, 2.5, True, None, [], {}])),
        lambda: mutated(messageId=rng.choice([1, True, [], {"id": 1}])),
        lambda: mutated(userId=rng.choice([7, False, ["u"]]), anonymousId=None),
        lambda: mutated(properties=rng.choice([[], "x", 3, True])),
        lambda: mutated(context=rng.choice([[1], "web", 0.5])),
        lambda: mutated(timestamp=rng.choice(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])),
        lambda: mutated(timestamp=rng.choice(["soon", "", "2026-13-45T99:00:00Z", [2026]])),
        lambda: mutated(properties={"blob": "x" * 100_000}),
        lambda: b'{"event": "\xff\xfe\xfd", "timestamp": 1}',
        lambda: valid.replace(b"{", b"\xc3\x28{", 1),
        lambda: mutated(type=rng.choice(["identify", "alias", "group", 5])),
        lambda: b"",
        lambda: b"null",
        lambda: b'"just a string"',
    ]
    return [rng.choice(makers)() for _ in range(size)]


def test_fuzz_corpus_dead_letters_every_bad_message_and_counts_every_valid_one_once(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    topic = f"hostile-{run}"
    broker.create_topics({topic: 4})
    rng = random.Random(20261123)
    start = math.floor(time.time() / 60) * 60 - 240
    events = list(JourneySimulator(seed=5, start_time=start).events(4_000, rate=20))
    template = dict(events[0])
    corpus = hostile_corpus(rng, template, 1_500)
    now = time.time()
    expected_reasons: dict[bytes, str] = {}
    for raw in corpus:
        try:
            decode_event(raw, now=now)
        except EventRejected as rejection:
            expected_reasons[raw] = rejection.reason
        else:  # pragma: no cover - the corpus is meant to be all bad
            raise AssertionError(f"corpus item is valid: {raw[:80]!r}")

    # Duplicate keys and valid-but-odd events must be taken, once.
    odd = [
        b'{"type":"track","event":"Survey Submitted","messageId":"dup-keys-1","userId":"u-1",'
        b'"timestamp":"%s","properties":{"nps":3,"nps":10,"csat":5},"context":{"region":"eu"}}'
        % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 100)).encode(),
    ]
    events.append(orjson.loads(odd[0]))

    # Bad messages at random places; valid events keep their time order.
    messages: list[tuple[bytes, bytes]] = [
        (e["userId"].encode(), orjson.dumps(e)) for e in events[:-1]
    ]
    messages.insert(len(messages) // 2, (b"odd", odd[0]))
    for i, raw in enumerate(corpus):
        messages.insert(rng.randrange(len(messages) + 1), (b"bad-%d" % i, raw))
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    origins: dict[tuple[int, int], bytes] = {}
    for key, value in messages:
        metadata = producer.send(topic, key=key, value=value).get(timeout=30)
        origins[(metadata.partition, metadata.offset)] = value
    producer.close()

    catalog = load_catalog(EXAMPLE_CATALOG)
    observations = observation_count(catalog, events)
    env = {
        "CPIMON_EVENTS_TOPIC": topic,
        "CPIMON_APP_ID": f"hostile-{run}",
        "CPIMON_IDLE_TIMEOUT": "6",
    }
    with worker_process(broker.url, tmp_path, env) as worker:
        wait_for(
            lambda: (
                worker.value("cpimon_events_consumed_total") == len(messages)
                and worker.counted() == observations
                and worker.value("cpimon_open_windows") == 0
            ),
            120,
            f"{len(messages)} consumed and {observations} observations counted",
            describe=lambda: f"counted {worker.counted()}; {worker.describe()}",
        )
        rejected = worker.value("cpimon_events_rejected_total")
        late = worker.value("cpimon_events_late_total") or 0
    assert rejected == len(corpus)
    assert late == 0

    consumer = KafkaConsumer(
        f"hostile-{run}-dead-letters",
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5_000,
    )
    letters = list(consumer)
    consumer.close()
    assert len(letters) == len(corpus)
    for letter in letters:
        headers = read_headers(letter.headers)
        origin = (int(headers[SOURCE_PARTITION]), int(headers[SOURCE_OFFSET]))
        assert (letter.value or b"") == origins[origin]
        assert headers[REASON] == expected_reasons[origins[origin]]


def test_a_cardinality_attack_folds_into_other_and_keeps_series_bounded(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    topic = f"cardinality-{run}"
    broker.create_topics({topic: 4})
    attack = 100_000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 120))
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=262_144)
    for i in range(attack):
        event = {
            "type": "track",
            "event": "Payment Attempted",
            "messageId": f"attack-{i}",
            "userId": f"u-{i % 997}",
            "timestamp": stamp,
            "properties": {"success": i % 10 != 0},
            "context": {"channel": "web", "region": f"region-{i}"},
        }
        producer.send(topic, key=event["userId"].encode(), value=orjson.dumps(event))
    producer.flush()
    producer.close()
    cap = load_catalog(EXAMPLE_CATALOG).indicator("checkout_success_rate").segment_by[1].cap
    env = {"CPIMON_EVENTS_TOPIC": topic, "CPIMON_APP_ID": f"card-{run}", "CPIMON_IDLE_TIMEOUT": "6"}
    with worker_process(broker.url, tmp_path, env) as worker:
        wait_for(
            lambda: (
                worker.value("cpimon_events_consumed_total") == attack
                and worker.value("cpimon_cpi_events_total", cpi="checkout_success_rate")
                == 2 * attack
            ),
            120,
            "the attack consumed and counted (per segment and over all segments)",
            describe=worker.describe,
        )
        series = [
            labels
            for name, labels, _ in worker.samples()
            if name == "cpimon_cpi_events_total" and labels["cpi"] == "checkout_success_rate"
        ]
        folded = worker.value(
            "cpimon_segment_values_folded_total", cpi="checkout_success_rate", label="region"
        )
    regions = {labels.get("region") for labels in series}
    assert len(regions - {None}) == cap + 1  # cap distinct values, plus "other"
    assert "other" in regions
    assert len(series) <= cap + 2  # one channel: cap + other + the all-segments series
    assert folded == attack - cap


def test_broker_outage_keeps_metrics_served_and_loses_nothing(tmp_path: Path) -> None:
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        topic = "outage"
        broker.create_topics({topic: 4})
        start = math.floor(time.time() / 60) * 60 - 180
        events = list(JourneySimulator(seed=9, start_time=start).events(3_000, rate=20))
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)

        def send(chunk: list[dict[str, Any]]) -> None:
            for event in chunk:
                producer.send(topic, key=event["userId"].encode(), value=orjson.dumps(event))
            producer.flush()

        catalog = load_catalog(EXAMPLE_CATALOG)
        observations = observation_count(catalog, events)
        env = {"CPIMON_EVENTS_TOPIC": topic, "CPIMON_APP_ID": "outage", "CPIMON_IDLE_TIMEOUT": "60"}
        with worker_process(broker.url, tmp_path, env) as worker:
            send(events[:1_500])
            wait_for(lambda: worker.value("cpimon_broker_up") == 1, 30, "broker_up 1")
            assert broker.pid is not None
            # A frozen broker is an unreachable one that keeps its data: the outage,
            # not a wipe of the test broker's memory storage.
            broker_process = broker.pid
            os.kill(broker_process, signal.SIGSTOP)
            try:
                wait_for(
                    lambda: worker.value("cpimon_broker_up") == 0,
                    40,
                    "broker_up 0 while the broker is away",
                )
                assert worker.value("cpimon_events_consumed_total") is not None  # still served
            finally:
                os.kill(broker_process, signal.SIGCONT)
            wait_for(lambda: worker.value("cpimon_broker_up") == 1, 60, "broker_up 1 again")
            send(events[1_500:])
            wait_for(
                lambda: worker.counted() == observations,
                120,
                f"{observations} observations counted after the outage",
                describe=lambda: f"counted {worker.counted()}; {worker.describe()}",
            )
        producer.close()
