"""streams.broker: the embedded Tansu broker works with a real Kafka client."""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from models.errors import BrokerError
from streams.broker import EmbeddedBroker, free_port, tansu_binary
from tests.s3 import s3_broker

pytestmark = pytest.mark.broker

MESSAGES = 1000


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_produce_and_consume_then_stop(tmp_path: Path, topic_name: str) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        pid = broker.pid
        assert pid is not None and pid_exists(pid)
        assert broker.url == f"kafka://{broker.bootstrap}"
        broker.create_topics({topic_name: 4})

        sent = [(f"user-{i % 37}".encode(), f"event-{i:04d}".encode()) for i in range(MESSAGES)]
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
        for key, value in sent:
            producer.send(topic_name, key=key, value=value)
        producer.flush(timeout=30)
        producer.close(timeout=10)

        consumer = KafkaConsumer(
            topic_name,
            bootstrap_servers=broker.bootstrap,
            group_id=f"{topic_name}-group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            # Tansu holds JoinGroup for half the session timeout (BROKER.md).
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        )
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        deadline = time.monotonic() + 60
        while sum(map(len, by_partition.values())) < MESSAGES and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                by_partition[tp.partition].extend((r.key, r.value) for r in records)
        consumer.close()

        received = [record for records in by_partition.values() for record in records]
        assert sorted(received) == sorted(sent)  # all of them, nothing twice
        assert set(by_partition) == {0, 1, 2, 3}
        partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
        for partition, records in by_partition.items():
            here = set(records)
            assert records == [record for record in sent if record in here]  # in send order
            for key, _ in records:
                partitions_of_key[key].add(partition)
        assert all(len(partitions) == 1 for partitions in partitions_of_key.values())
    finally:
        broker.stop()

    assert broker.pid is None
    assert not pid_exists(pid)
    broker.stop()  # idempotent


def _group_consumer(broker: EmbeddedBroker, topic: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,  # Tansu holds JoinGroup for half of it (BROKER.md)
        heartbeat_interval_ms=500,
    )


def _poll(consumer: KafkaConsumer, count: int, timeout: float = 60) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of the next ``count`` records, fewer only at the deadline."""
    received: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=500, max_records=count - len(received))
        for tp, records in batches.items():
            received.extend((tp.partition, r.offset, r.value) for r in records)
    return received


def test_s3_storage_keeps_records_and_committed_offsets_across_a_restart(
    tmp_path: Path, topic_name: str
) -> None:
    with s3_broker(tmp_path) as (broker, s3):
        broker.create_topics({topic_name: 3})
        sent = [f"record-{i:04d}".encode() for i in range(MESSAGES)]
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
        for i, value in enumerate(sent):
            producer.send(topic_name, key=f"k{i % 29}".encode(), value=value)
        producer.flush(timeout=30)
        producer.close(timeout=10)
        group = f"{topic_name}-group"
        consumer = _group_consumer(broker, topic_name, group)
        first = _poll(consumer, 400)
        consumer.commit()
        consumer.close()
        assert len(first) == 400
        assert s3.object_count() > 0  # the data is in the bucket, not in the broker's memory

        old_pid, port = broker.pid, broker.port
        broker.halt()
        assert old_pid is not None and not pid_exists(old_pid)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # nothing listens while it is halted
        broker.restart()
        assert broker.port == port and broker.pid not in (None, old_pid)

        # Every record produced before the restart is there, at its offset.
        reader = KafkaConsumer(
            topic_name,
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=5_000,
        )
        everything = sorted((r.partition, r.offset, r.value) for r in reader)
        reader.close()
        assert sorted(value for _, _, value in everything) == sorted(sent)
        assert set(first) <= set(everything)

        # The group resumes where it committed: the rest, nothing twice.
        consumer = _group_consumer(broker, topic_name, group)
        rest = _poll(consumer, MESSAGES - 400)
        extra = _poll(consumer, 1, timeout=3)
        consumer.close()
        assert sorted(first + rest) == everything
        assert extra == []


def test_restart_of_memory_storage_comes_back_empty(tmp_path: Path, topic_name: str) -> None:
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        broker.create_topics({topic_name: 1})
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        producer.send(topic_name, b"gone after the restart").get(timeout=30)
        producer.close(timeout=10)
        broker.restart()
        reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=3_000)
        topics = reader.topics()
        reader.close()
    assert topic_name not in topics
    assert (tmp_path / "tansu.log").read_text().count("ready in") == 2  # both runs logged


def test_unsupported_storage_is_a_clear_error() -> None:
    with pytest.raises(BrokerError, match="memory://tansu/ or s3://BUCKET/"):
        EmbeddedBroker(storage="postgres://localhost/tansu")


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log")
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port}: the port is already in use"):
            broker.start(timeout=10)
    assert broker.pid is None


def test_port_taken_after_the_check_is_found_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tansu exits with status 0 when it cannot bind; only its log says why.
    monkeypatch.setattr(EmbeddedBroker, "_check_port_free", lambda self: None)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        broker = EmbeddedBroker(port=squatter.getsockname()[1], log_path=tmp_path / "t.log")
        with pytest.raises(BrokerError, match="already in use") as info:
            broker.start(timeout=10)
    assert "AddrInUse" in str(info.value)  # the log tail is part of the message
    assert broker.pid is None


def test_create_topics_rules(broker: EmbeddedBroker, topic_name: str) -> None:
    broker.create_topics({topic_name: 3, f"{topic_name}.b": 1})
    broker.create_topics({topic_name: 3})  # existing with the same shape: fine
    with pytest.raises(BrokerError, match="already exists with 3 partitions, not 5"):
        broker.create_topics({topic_name: 5})
    # Tansu itself would accept all of these.
    for bad in ({"": 1}, {"no spaces": 1}, {"..": 1}, {topic_name + "-z": 0}):
        with pytest.raises(BrokerError):
            broker.create_topics(bad)


def test_only_loopback_hosts() -> None:
    for host in ("0.0.0.0", "192.0.2.1", "localhost", "::"):
        with pytest.raises(BrokerError, match="loopback"):
            EmbeddedBroker(host=host)


def test_free_port_and_binary() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert os.access(tansu_binary(), os.X_OK)
