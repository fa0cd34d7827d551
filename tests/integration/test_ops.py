"""The ops commands (watch, tail, replay, lag, dlq) as operators run them, on the Tansu broker.

Every command runs as a real ``cpimon`` subprocess with ``COLUMNS=120``; content is
checked through ``--json``, and each command's terminal rendering once by its key cells.
"""

from __future__ import annotations

import base64
import gzip
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from agents.ops.common import event_time
from agents.ops.watch import BARS
from streams.broker import EmbeddedBroker, free_port
from streams.deadletter import DeadLetter
from streams.simulator import JourneySimulator, iso_timestamp
from tests.support import ROOT, WorkerProcess, wait_for, worker_process

pytestmark = pytest.mark.broker

NOBODY = "kafka://127.0.0.1:{port}"  # a free port: nothing listens there


def cpimon(
    *args: str, broker: EmbeddedBroker | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "120", **env}
    if broker is not None:
        full_env["CPIMON_BROKER"] = broker.url
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=full_env,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def read_topic(broker: EmbeddedBroker, topic: str, expected: int, quiet: float = 5.0) -> list[Any]:
    """The topic's records, once ``expected`` have arrived or after ``quiet`` s without any."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(quiet * 1000),
        group_id=None,
    )
    records: list[Any] = []
    try:
        for record in consumer:
            records.append(record)
            if len(records) >= expected > 0:
                break
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def produce(
    broker: EmbeddedBroker, topic: str, messages: list[tuple[bytes | None, bytes, dict[str, Any]]]
) -> list[tuple[int, int]]:
    """Send (key, value, send options); return each message's (partition, offset)."""
    # linger_ms batches several records together: the tools must not trust ListOffsets.
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    try:
        futures = [
            producer.send(topic, key=key, value=value, **options)
            for key, value, options in messages
        ]
        producer.flush()
        metadata = [future.get(timeout=30) for future in futures]
    finally:
        producer.close()
    return [(m.partition, m.offset) for m in metadata]


def no_broker() -> str:
    return NOBODY.format(port=free_port())


# --- tail --------------------------------------------------------------------------------


@dataclass
class EventsTopic:
    topic: str
    events: list[dict[str, Any]]
    #: (partition, offset) -> the produced event, or the rejection reason of a bad message
    positions: dict[tuple[int, int], dict[str, Any] | str]
    old: int  # messages written with a record time an hour ago


@pytest.fixture(scope="module")
def events_topic(broker: EmbeddedBroker) -> EventsTopic:
    topic = f"ops-events-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 2})
    now = time.time()
    events = list(JourneySimulator(seed=3, start_time=now - 200).events(120, rate=1.0))
    old, hour_ago = 20, int((now - 3600) * 1000)
    future = iso_timestamp(now + 86_400)
    bad = [
        ("invalid_json", b'{"event": "Payment Attempted", '),
        (
            "future_timestamp",
            orjson.dumps({**events[0], "timestamp": future, "messageId": "late-1"}),
        ),
    ]
    messages: list[tuple[bytes | None, bytes, dict[str, Any]]] = [
        (e["userId"].encode(), orjson.dumps(e), {"timestamp_ms": hour_ago} if i < old else {})
        for i, e in enumerate(events)
    ]
    messages += [(b"bad", value, {}) for _reason, value in bad]
    positions = produce(broker, topic, messages)
    produced: list[dict[str, Any] | str] = [*events, *(reason for reason, _ in bad)]
    return EventsTopic(topic, events, dict(zip(positions, produced, strict=True)), old)


def test_tail_decodes_every_message_and_marks_the_rejected_ones(
    broker: EmbeddedBroker, events_topic: EventsTopic
) -> None:
    result = cpimon(
        "tail", events_topic.topic, "--from-beginning", "--no-follow", "--json", broker=broker
    )
    assert result.returncode == 0, result.stderr
    shown = json_lines(result.stdout)
    assert len(shown) == len(events_topic.positions)
    for message in shown:
        produced = events_topic.positions[(message["partition"], message["offset"])]
        if isinstance(produced, str):
            assert not message["valid"]
            assert message["reason"] == produced
            assert message["detail"]
        else:
            assert message["valid"], message
            assert message["value"] == produced
            assert message["key"] == produced["userId"]
            name = produced.get("event") or produced.get("name")
            assert message["event"] == name


def test_tail_filters_by_event_name_and_field(
    broker: EmbeddedBroker, events_topic: EventsTopic
) -> None:
    result = cpimon(
        "tail",
        events_topic.topic,
        "--from-beginning",
        "--no-follow",
        "--json",
        "--event",
        "Payment Attempted",
        "--where",
        "context.channel=web",
        broker=broker,
    )
    assert result.returncode == 0, result.stderr
    expected = {
        e["messageId"]
        for e in events_topic.events
        if e.get("event") == "Payment Attempted" and e["context"]["channel"] == "web"
    }
    # The rejected future_timestamp copy of event 0 is also a web payment when event 0 is one.
    first = events_topic.events[0]
    if first.get("event") == "Payment Attempted" and first["context"]["channel"] == "web":
        expected.add("late-1")
    assert expected, "the simulator produced no web payment: pick another seed"
    assert {m["value"]["messageId"] for m in json_lines(result.stdout)} == expected


def test_tail_since_skips_messages_written_before(
    broker: EmbeddedBroker, events_topic: EventsTopic
) -> None:
    result = cpimon(
        "tail", events_topic.topic, "--since", "10m", "--no-follow", "--json", broker=broker
    )
    assert result.returncode == 0, result.stderr
    assert len(json_lines(result.stdout)) == len(events_topic.positions) - events_topic.old


def test_tail_shows_the_cpis_each_event_feeds(
    broker: EmbeddedBroker, events_topic: EventsTopic
) -> None:
    result = cpimon(
        "tail",
        events_topic.topic,
        "--from-beginning",
        "--no-follow",
        "--json",
        "--event",
        "Payment Attempted",
        "--show-cpis",
        broker=broker,
    )
    assert result.returncode == 0, result.stderr
    payments = [m for m in json_lines(result.stdout) if m["valid"]]
    assert payments
    for message in payments:
        event = message["value"]
        expected = {
            "indicator": "checkout_success_rate",
            "segment": {
                "channel": event["context"]["channel"],
                "region": event["context"]["region"],
            },
            "value": 1.0 if event["properties"]["success"] else 0.0,
        }
        assert expected in message["feeds"]


def test_tail_renders_events_and_rejections_for_the_terminal(
    broker: EmbeddedBroker, events_topic: EventsTopic
) -> None:
    result = cpimon(
        "tail", events_topic.topic, "--from-beginning", "--no-follow", "--show-cpis", broker=broker
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "✗ REJECTED invalid_json" in out
    assert "✗ REJECTED future_timestamp" in out
    payment = next(e for e in events_topic.events if e.get("event") == "Payment Attempted")
    assert "✓ Payment Attempted" in out
    channel, region = payment["context"]["channel"], payment["context"]["region"]
    assert f"→ checkout_success_rate{{channel={channel},region={region}}} = " in out
    assert f"user={payment['userId']}" in out
    assert all(len(line) <= 120 for line in out.splitlines() if "properties" not in line)
    assert "tailing" in result.stderr and "from the beginning" in result.stderr


def test_tail_follows_new_messages_only(broker: EmbeddedBroker, events_topic: EventsTopic) -> None:
    ends: dict[int, int] = {}
    for partition, offset in events_topic.positions:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "tail", events_topic.topic, "--json", "--max", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CPIMON_BROKER": broker.url},
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()  # printed once tail sits at the end
        assert "from the end" in banner, banner
        fresh = [
            orjson.dumps({**events_topic.events[i], "messageId": f"fresh-{i}"}) for i in range(3)
        ]
        produce(broker, events_topic.topic, [(b"u-fresh", value, {}) for value in fresh])
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    shown = json_lines(out)
    assert [m["value"]["messageId"] for m in shown] == ["fresh-0", "fresh-1", "fresh-2"]
    assert all(m["offset"] >= ends[m["partition"]] for m in shown)


def test_tail_errors_are_one_line(broker: EmbeddedBroker, events_topic: EventsTopic) -> None:
    missing = events_topic.topic + "-typo"
    assert_one_line_error(
        cpimon("tail", missing, "--no-follow", broker=broker),
        f"topic '{missing}' does not exist",
        f"did you mean '{events_topic.topic}'",
    )
    assert_one_line_error(
        cpimon("tail", events_topic.topic, "--broker", no_broker()), "cannot reach the Kafka broker"
    )
    assert_one_line_error(
        cpimon("tail", events_topic.topic, "--where", "no-equals-sign", broker=broker),
        "PATH=VALUE",
    )


# --- replay ------------------------------------------------------------------------------


def recording(start: float, count: int, gap: float) -> list[dict[str, Any]]:
    events = list(JourneySimulator(seed=11, start_time=start).events(count, rate=1 / gap))
    events[1].pop("userId")
    events[1]["anonymousId"] = "anon-1"
    return events


def test_replay_retimes_reports_bad_lines_and_sends_the_rest(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = f"ops-replay-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 2})
    events = recording(start=1_767_225_600.0, count=5, gap=2.5)  # 2026-01-01, 2.5 s apart
    lines = [orjson.dumps(e) for e in events]
    lines.insert(2, b'{"event": "Payment Attempted", ')  # line 3: truncated
    lines.insert(5, b"[1, 2, 3]")  # line 6: not an object
    lines.insert(6, b"")  # line 7: blank, ignored
    path = tmp_path / "recording.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))

    before = time.time()
    result = cpimon(
        "replay",
        str(path),
        "--topic",
        topic,
        "--retime",
        "--as-fast-as-possible",
        "--json",
        broker=broker,
    )
    assert result.returncode == 1, result.stderr
    summary = orjson.loads(result.stdout)
    assert (summary["sent"], summary["failed"], summary["malformed"]) == (5, 0, 2)
    assert [bad["line"] for bad in summary["malformed_lines"]] == [3, 6]
    assert f"{path}:3: not JSON" in result.stderr
    assert f"{path}:6: a JSON array" in result.stderr

    records = read_topic(broker, topic, 5)
    sent = {orjson.loads(r.value)["messageId"]: r for r in records}
    assert len(sent) == 5
    shifted = []
    for event in events:
        record = sent[event["messageId"]]
        assert record.key == (event.get("userId") or event["anonymousId"]).encode()
        shifted.append(orjson.loads(record.value)["timestamp"])
    times = [event_time(t) or math.nan for t in shifted]
    assert all(isinstance(t, str) and t.endswith("Z") for t in shifted)  # strings stay strings
    assert before - 1 <= times[0] <= time.time() + 1
    for i in range(1, 5):  # gaps kept to the millisecond
        assert times[i] - times[0] == pytest.approx(2.5 * i, abs=0.002)


def test_replay_sends_lines_unchanged_and_renders_a_summary(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = f"ops-replay-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 1})
    lines = [orjson.dumps(e) for e in recording(start=time.time() - 60, count=3, gap=1.0)]
    path = tmp_path / "recording.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = cpimon("replay", str(path), "--topic", topic, "--rate", "200", broker=broker)
    assert result.returncode == 0, result.stderr
    assert f"replay of {path} to {topic}" in result.stdout
    out = result.stdout.splitlines()
    header = next(i for i, line in enumerate(out) if "malformed" in line)
    assert out[header].split()[:4] == ["lines", "sent", "failed", "malformed"]
    assert out[header + 2].split()[:4] == ["3", "3", "0", "0"]
    assert [r.value for r in read_topic(broker, topic, 3)] == lines


def test_replay_errors_are_one_line(broker: EmbeddedBroker, tmp_path: Path) -> None:
    missing = tmp_path / "nothing.jsonl"
    assert_one_line_error(
        cpimon("replay", str(missing), "--topic", "x", broker=broker), "does not exist"
    )
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(recording(time.time(), 2, 1.0)[0]) + b"\n")
    assert_one_line_error(
        cpimon("replay", str(path), "--topic", "no-such-topic-here", broker=broker),
        "topic 'no-such-topic-here' does not exist",
    )
    assert_one_line_error(
        cpimon("replay", str(path), "--topic", "x", "--broker", no_broker()),
        "cannot reach the Kafka broker",
    )


# --- lag ---------------------------------------------------------------------------------


@dataclass
class LagSetup:
    topic: str
    group: str
    last_event_time: float  # of partition 0's last event


@pytest.fixture(scope="module")
def lag_setup(broker: EmbeddedBroker) -> LagSetup:
    topic, group = f"ops-lag-{uuid.uuid4().hex[:8]}", f"ops-group-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 2})
    events = list(JourneySimulator(seed=5, start_time=time.time() - 100).events(7, rate=1.0))
    messages: list[tuple[bytes | None, bytes, dict[str, Any]]] = [
        (None, orjson.dumps(e), {"partition": 0}) for e in events
    ]
    # Partition 1 ends with a message that is not an event: its time is the record's.
    messages += [(None, b"not an event", {"partition": 1}) for _ in range(4)]
    produce(broker, topic, messages)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group)
    try:
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(5, "", -1)})
    finally:
        consumer.close()
    when = event_time(events[-1]["timestamp"])
    assert when is not None
    return LagSetup(topic, group, when)


def test_lag_reports_committed_offsets_high_watermarks_and_newest_times(
    broker: EmbeddedBroker, lag_setup: LagSetup
) -> None:
    started = time.time()
    result = cpimon("lag", "--group", lag_setup.group, "--json", broker=broker)
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    rows = {row["partition"]: row for row in report["partitions"]}
    assert set(rows) == {0, 1}
    assert {row["topic"] for row in rows.values()} == {lag_setup.topic}
    zero, one = rows[0], rows[1]
    assert (zero["committed"], zero["high_watermark"], zero["lag"]) == (5, 7, 2)
    assert zero["time_source"] == "event"
    assert zero["newest_time"] == pytest.approx(lag_setup.last_event_time, abs=0.001)
    assert (one["committed"], one["high_watermark"], one["lag"]) == (None, 4, None)
    assert one["time_source"] == "record"
    assert started - 120 < one["newest_time"] <= time.time()
    assert report["total_lag"] == {lag_setup.topic: 2}


def test_lag_renders_a_table(broker: EmbeddedBroker, lag_setup: LagSetup) -> None:
    result = cpimon("lag", "--group", lag_setup.group, broker=broker)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if lag_setup.topic in line]
    assert rows[0][:5] == [lag_setup.topic, "0", "5", "7", "2"]
    assert rows[1][:6] == [lag_setup.topic, "1", "-", "4", "no", "commit"]
    assert "(record)" in rows[1]
    assert f"{lag_setup.topic}: lag 2" in result.stdout


def test_lag_errors_are_one_line(broker: EmbeddedBroker, lag_setup: LagSetup) -> None:
    assert_one_line_error(
        cpimon("lag", "--group", "nobody-committed-here", broker=broker),
        "has no committed offsets",
        "--group",
    )
    assert_one_line_error(
        cpimon("lag", "--group", lag_setup.group, "--topic", "nope-nope", broker=broker),
        "topic 'nope-nope' does not exist",
    )
    assert_one_line_error(
        cpimon("lag", "--group", lag_setup.group, "--broker", no_broker()),
        "cannot reach the Kafka broker",
    )


# --- dlq ---------------------------------------------------------------------------------


@dataclass
class DeadLetters:
    topic: str
    letters: dict[tuple[int, int], DeadLetter]


@pytest.fixture(scope="module")
def dead_letters(broker: EmbeddedBroker) -> DeadLetters:
    topic = f"ops-dlq-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 2})
    future = orjson.dumps({"event": "X", "messageId": "m", "userId": "u", "timestamp": 4.0e9})
    letters = [
        (0, DeadLetter(b"k-0", b'{"event": ', "invalid_json", "truncated", "events", 1, 10)),
        (
            0,
            DeadLetter(
                b"\xfe-key", b"\xff\xfe", "not_utf8", "invalid UTF-8 at byte 0", "events", 0, 3
            ),
        ),
        (1, DeadLetter(b"k-2", future, "future_timestamp", "too far ahead", "events", 1, 11)),
        (1, DeadLetter(None, future, "future_timestamp", "too far ahead", "events", 0, 4)),
    ]
    positions = produce(
        broker,
        topic,
        [
            (letter.key, letter.value or b"", {"partition": p, "headers": letter.headers()})
            for p, letter in letters
        ],
    )
    return DeadLetters(topic, dict(zip(positions, (letter for _, letter in letters), strict=True)))


def test_dlq_lists_every_dead_letter_with_reason_and_origin(
    broker: EmbeddedBroker, dead_letters: DeadLetters
) -> None:
    result = cpimon("dlq", "--topic", dead_letters.topic, "--json", broker=broker)
    assert result.returncode == 0, result.stderr
    listing = orjson.loads(result.stdout)
    assert listing["count"] == listing["total"] == 4
    assert listing["by_reason"] == {"invalid_json": 1, "not_utf8": 1, "future_timestamp": 2}
    for message in listing["messages"]:
        letter = dead_letters.letters[(message["partition"], message["offset"])]
        assert message["reason"] == letter.reason
        assert message["detail"] == letter.detail
        assert message["source"] == {
            "topic": letter.topic,
            "partition": letter.partition,
            "offset": letter.offset,
        }
    only = cpimon(
        "dlq",
        "--topic",
        dead_letters.topic,
        "--reason",
        "future_timestamp",
        "--json",
        broker=broker,
    )
    assert [m["reason"] for m in orjson.loads(only.stdout)["messages"]] == ["future_timestamp"] * 2


def test_dlq_exports_json_lines_with_base64_for_raw_bytes(
    broker: EmbeddedBroker, dead_letters: DeadLetters, tmp_path: Path
) -> None:
    export = tmp_path / "letters.jsonl"
    result = cpimon(
        "dlq", "--topic", dead_letters.topic, "--export", str(export), "--json", broker=broker
    )
    assert result.returncode == 0, result.stderr
    lines = json_lines(export.read_text())
    assert len(lines) == 4
    for line in lines:
        letter = dead_letters.letters[(line["partition"], line["offset"])]
        value = base64.b64decode(line["value"]) if line["value_base64"] else line["value"].encode()
        assert value == letter.value
        if line["key"] is None:
            assert letter.key is None
        else:
            key = base64.b64decode(line["key"]) if line["key_base64"] else line["key"].encode()
            assert key == letter.key
        assert {h["name"]: h["value"] for h in line["headers"]}["cpimon-reason"] == letter.reason
    flagged = next(line for line in lines if line["reason"] == "not_utf8")
    assert flagged["value_base64"] and flagged["key_base64"]
    assert not next(line for line in lines if line["reason"] == "invalid_json")["value_base64"]


def test_dlq_resubmits_the_original_bytes_and_key(
    broker: EmbeddedBroker, dead_letters: DeadLetters
) -> None:
    target = f"ops-resubmit-{uuid.uuid4().hex[:8]}"
    broker.create_topics({target: 1})
    chosen = [
        position
        for position, letter in dead_letters.letters.items()
        if letter.reason != "invalid_json"
    ]
    offsets = ",".join(f"{p}:{o}" for p, o in chosen)
    result = cpimon(
        "dlq",
        "--topic",
        dead_letters.topic,
        "--resubmit",
        "--to",
        target,
        "--offsets",
        offsets,
        broker=broker,
    )
    assert result.returncode == 0, result.stderr
    assert f"resubmitted 3 of 3 dead letters to {target}" in result.stderr
    records = read_topic(broker, target, 3)
    got = {dict(r.headers)["cpimon-resubmitted-from"]: (r.key, r.value) for r in records}
    want = {
        f"{dead_letters.topic}:{p}:{o}".encode(): (
            dead_letters.letters[(p, o)].key,
            dead_letters.letters[(p, o)].value,
        )
        for p, o in chosen
    }
    assert got == want


def test_dlq_refuses_offsets_it_cannot_name_exactly(
    broker: EmbeddedBroker, dead_letters: DeadLetters
) -> None:
    target = f"ops-resubmit-{uuid.uuid4().hex[:8]}"
    broker.create_topics({target: 1})
    common = ("dlq", "--topic", dead_letters.topic, "--resubmit", "--to", target)
    # Offset 0 exists in both partitions: ambiguous without its partition.
    assert_one_line_error(cpimon(*common, "--offsets", "0", broker=broker), "write P:O")
    assert_one_line_error(
        cpimon(*common, "--offsets", "1:99", broker=broker), "no dead letter at 1:99"
    )
    assert_one_line_error(
        cpimon("dlq", "--topic", dead_letters.topic, "--reason", "bogus", broker=broker),
        "future_timestamp",
    )
    assert read_topic(broker, target, 0, quiet=2.0) == []


def test_dlq_renders_a_table(broker: EmbeddedBroker, dead_letters: DeadLetters) -> None:
    result = cpimon("dlq", "--topic", dead_letters.topic, broker=broker)
    assert result.returncode == 0, result.stderr
    assert f"{dead_letters.topic}: 4 of 4 dead letters" in result.stdout
    for (p, o), letter in dead_letters.letters.items():
        row = next(line for line in result.stdout.splitlines() if line.split()[:1] == [f"{p}:{o}"])
        assert letter.reason in row
        assert f"events[{letter.partition}]@{letter.offset}" in row
    assert "future_timestamp: 2" in result.stdout
    assert_one_line_error(
        cpimon("dlq", "--topic", dead_letters.topic, "--broker", no_broker()),
        "cannot reach the Kafka broker",
    )


# --- watch, and the other tools on a running worker --------------------------------------


@dataclass
class WorkerRun:
    worker: WorkerProcess
    topics: dict[str, str]
    app_id: str
    bad_reasons: list[str]


@pytest.fixture(scope="module")
def worker_run(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerRun]:
    run_id = uuid.uuid4().hex[:8]
    topics = {
        "CPIMON_EVENTS_TOPIC": f"ops-w-events-{run_id}",
        "CPIMON_DEAD_LETTER_TOPIC": f"ops-w-dead-{run_id}",
        "CPIMON_OBSERVATIONS_TOPIC": f"ops-w-observations-{run_id}",
        "CPIMON_KPI_TOPIC": f"ops-w-kpis-{run_id}",
    }
    app_id = f"ops-watch-{run_id}"
    broker.create_topics({topics["CPIMON_EVENTS_TOPIC"]: 2})
    start = math.floor(time.time() / 60) * 60 - 180  # three whole minutes of event time
    events = JourneySimulator(seed=9, start_time=start).events(1800, rate=10.0)
    messages: list[tuple[bytes | None, bytes, dict[str, Any]]] = [
        (e["userId"].encode(), orjson.dumps(e), {}) for e in events
    ]
    bad = [("invalid_json", b"{"), ("not_an_object", b"[1]"), ("empty", b"")]
    messages += [(b"bad", value, {}) for _reason, value in bad]
    produce(broker, topics["CPIMON_EVENTS_TOPIC"], messages)
    env = {**topics, "CPIMON_APP_ID": app_id, "CPIMON_IDLE_TIMEOUT": "6"}
    with worker_process(broker.url, tmp_path_factory.mktemp("ops-worker"), env) as worker:
        wait_for(
            lambda: (
                worker.value("cpimon_events_consumed_total") == len(messages)
                and worker.value("cpimon_open_windows") == 0
                and worker.value("cpimon_cpi_value", cpi="checkout_success_rate")
            ),
            90,
            "every event consumed and every window closed",
        )
        yield WorkerRun(worker, topics, app_id, [reason for reason, _ in bad])


def base_url(worker: WorkerProcess) -> str:
    return f"http://127.0.0.1:{worker.port}"


def test_watch_json_matches_the_workers_metrics(worker_run: WorkerRun) -> None:
    result = cpimon("watch", "--worker", base_url(worker_run.worker), "--once", "--json")
    assert result.returncode == 0, result.stderr
    state = orjson.loads(result.stdout)
    (worker,) = state["workers"]
    assert worker["app_id"] == worker_run.app_id
    assert worker["owned_partitions"] == [0, 1, 2, 3]
    indicators = {i["name"]: i for i in state["indicators"]}
    assert indicators["checkout_success_rate"]["target"] == {"bound": "min", "value": 0.95}
    samples = worker_run.worker.samples()
    exported = {(name, tuple(sorted(labels.items()))): value for name, labels, value in samples}
    compared = judged = 0
    for name, labels, value in samples:
        if name != "cpimon_cpi_value":
            continue
        indicator = indicators[labels["cpi"]]
        segment = {k: v for k, v in labels.items() if k not in ("cpi", "owner", "journey_step")}
        (entry,) = [s for s in indicator["series"] if s["segment"] == segment]
        assert entry["value"] == pytest.approx(value, rel=1e-12)
        assert entry["history"] and entry["history"][-1]["value"] == entry["value"]
        key = tuple(sorted(labels.items()))
        verdict = exported.get(("cpimon_cpi_below_target", key))
        if verdict is not None:  # the worker's drop detector judges the series: same verdict
            assert entry["below_target"] is bool(verdict)
            assert entry["drop_active"] is bool(exported[("cpimon_cpi_drop_active", key)])
            judged += 1
        elif indicator["target"] is not None:
            target = indicator["target"]
            missed = (
                value < target["value"] if target["bound"] == "min" else value > target["value"]
            )
            assert entry["below_target"] is missed
        compared += 1
    assert compared >= 10
    assert judged == compared  # every closed window went through drop detection


def test_watch_board_renders_the_filtered_cpis(worker_run: WorkerRun) -> None:
    result = cpimon(
        "watch", "--worker", base_url(worker_run.worker), "--once", "--owner", "payments"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "1/1 workers" in out and "partitions 0,1,2,3" in out
    row = next(line for line in out.splitlines() if "checkout_success_rate" in line)
    assert "≥ 95.0%" in row and "payments" in row
    assert any(bar in row for bar in BARS)
    assert "%" in row.split("checkout_success_rate")[1]
    assert ("ok" in row) or ("below target" in row)
    assert "page_latency_p95" not in out  # owned by web-platform
    assert all(len(line) <= 120 for line in out.splitlines())


def test_watch_refreshes_until_interrupted(worker_run: WorkerRun) -> None:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "agents.cli", "watch"),
            *("--worker", base_url(worker_run.worker), "--interval", "0.3", "--cpi", "nps"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "120"},
        # A runner started in the background (`make test &`) passes SIGINT on ignored,
        # and Python then never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        frames = 0
        while frames < 3:  # not a terminal: one whole frame per refresh
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else ""
            frames += line.startswith("cpimon watch · 1/1 workers")
        process.send_signal(signal.SIGINT)  # Ctrl-C is how a board is closed
        _, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()  # closes the pipes: a failure here stays this test's
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_watch_merges_workers_and_names_the_unreachable_one(worker_run: WorkerRun) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = cpimon(
        "watch", "--worker", base_url(worker_run.worker), "--worker", down, "--once", "--json"
    )
    assert result.returncode == 0, result.stderr
    state = orjson.loads(result.stdout)
    assert [("error" in w) for w in state["workers"]] == [False, True]
    assert down in result.stderr and "unreachable" in result.stderr
    assert any(i["series"] for i in state["indicators"])
    assert_one_line_error(cpimon("watch", "--worker", down, "--once"), "no worker answered", down)


def test_lag_of_the_worker_group_drops_to_zero(
    broker: EmbeddedBroker, worker_run: WorkerRun
) -> None:
    events_topic = worker_run.topics["CPIMON_EVENTS_TOPIC"]

    def caught_up() -> dict[str, Any] | None:
        result = cpimon("lag", "--group", worker_run.app_id, "--json", broker=broker)
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = orjson.loads(result.stdout)
        return report if report["total_lag"].get(events_topic) == 0 else None

    report = wait_for(caught_up, 30, "the worker group's committed offsets at the end")
    rows = [row for row in report["partitions"] if row["topic"] == events_topic]
    assert len(rows) == 2
    assert sum(row["high_watermark"] for row in rows) == 1800 + len(worker_run.bad_reasons)


def test_dlq_shows_what_the_worker_dead_lettered(
    broker: EmbeddedBroker, worker_run: WorkerRun
) -> None:
    result = cpimon(
        "dlq", "--topic", worker_run.topics["CPIMON_DEAD_LETTER_TOPIC"], "--json", broker=broker
    )
    assert result.returncode == 0, result.stderr
    messages = orjson.loads(result.stdout)["messages"]
    assert sorted(m["reason"] for m in messages) == sorted(worker_run.bad_reasons)
    assert {m["source"]["topic"] for m in messages} == {worker_run.topics["CPIMON_EVENTS_TOPIC"]}
