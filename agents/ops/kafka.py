"""Kafka plumbing shared by the ops commands: connect, check a topic, read to the end.

The end of a partition (its high watermark) is always taken from a fetch
response, never from ListOffsets(LATEST): every broker puts the real high
watermark in fetch responses, while some (the Tansu test broker) answer
ListOffsets with the start of the last record batch plus one.  ListOffsets is
only used as a starting point, to read the last few records.

Consumers here never join a consumer group and never commit: looking at a
topic must not move anyone's offsets.
"""

from __future__ import annotations

import difflib
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from models.errors import BrokerError
from streams.settings import Settings

__all__ = [
    "PartitionEnd",
    "check_reachable",
    "partition_ends",
    "read_range",
    "require_topic",
    "start_consumer",
    "start_producer",
]

#: Seconds without any fetch answer after which reading to the end gives up.
STALL_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class PartitionEnd:
    """Where a partition ends: its high watermark and its last record (None if empty)."""

    high_watermark: int
    last: Any | None


def _servers(settings: Settings) -> str:
    return ",".join(settings.bootstrap_servers)


def check_reachable(settings: Settings, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when no bootstrap server accepts a TCP connection.

    Kafka clients retry an unreachable bootstrap server for many seconds and
    then report it in terms of their own internals; an operator needs to know
    at once that nothing listens where ``--broker`` points.
    """
    problems = []
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return
        except ValueError:
            problems.append(f"{server}: no port")
        except OSError as exc:
            problems.append(f"{server}: {exc.strerror or exc}")
    raise BrokerError(
        f"cannot reach the Kafka broker ({'; '.join(problems)}); start it, or point "
        f"--broker / CPIMON_BROKER at a running one"
    )


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": _servers(settings),
        "client_id": "cpimon-ops",
        **settings.kafka_client_options(),
    }


async def start_consumer(settings: Settings, **options: Any) -> Any:
    """A started aiokafka consumer without a group (caller stops it); nothing auto-commits."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    check_reachable(settings)
    consumer = AIOKafkaConsumer(
        **_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **options,
    )
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise BrokerError(
            f"cannot connect to Kafka at {settings.broker} ({exc}); check --broker / "
            "CPIMON_BROKER and the CPIMON_SECURITY_PROTOCOL / SASL / SSL settings"
        ) from exc
    return consumer


async def start_producer(settings: Settings, **options: Any) -> Any:
    """A started aiokafka producer (caller stops it)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    check_reachable(settings)
    producer = AIOKafkaProducer(**_options(settings), **options)
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise BrokerError(
            f"cannot connect to Kafka at {settings.broker} ({exc}); check --broker / "
            "CPIMON_BROKER and the CPIMON_SECURITY_PROTOCOL / SASL / SSL settings"
        ) from exc
    return producer


def unknown_topic(topic: str, known: Iterable[str], broker: str) -> BrokerError:
    """The error for a topic the broker does not have, naming the likely intended one.

    >>> str(unknown_topic("journey-event", ["journey-events", "kpi-values"], "kafka://k:9092"))
    "topic 'journey-event' does not exist on kafka://k:9092; did you mean 'journey-events'?"
    """
    visible = sorted(name for name in known if not name.startswith("__"))
    close = difflib.get_close_matches(topic, visible, n=1)
    if close:
        hint = f"did you mean {close[0]!r}?"
    elif visible:
        shown = ", ".join(visible[:8]) + (", …" if len(visible) > 8 else "")
        hint = f"check the name (topics there: {shown})"
    else:
        hint = "the broker has no topics yet: check --broker"
    return BrokerError(f"topic {topic!r} does not exist on {broker}; {hint}")


async def require_topic(consumer: Any, topic: str, settings: Settings) -> list[Any]:
    """Every partition of ``topic`` as aiokafka TopicPartitions, or an error naming it."""
    from aiokafka import TopicPartition

    # topics() asks for fresh metadata of every topic; asking for one topic by name
    # would let a broker with auto-creation create a mistyped one.
    known = await consumer.topics()
    partitions = consumer.partitions_for_topic(topic) if topic in known else None
    if not partitions:
        raise unknown_topic(topic, known, settings.broker)
    return [TopicPartition(topic, partition) for partition in sorted(partitions)]


async def read_range(
    consumer: Any, starts: Mapping[Any, int], *, stall_timeout: float = STALL_TIMEOUT
) -> AsyncIterator[Any]:
    """Yield the records of each partition from its start offset to its high watermark.

    The consumer is assigned exactly ``starts``' partitions.  A partition is
    done once its position reaches the high watermark of the latest fetch
    response, so records written while reading may or may not be included.
    """
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    pending = set(starts)
    last_progress = time.monotonic()
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=200)
        for records in batch.values():
            for record in records:
                yield record
        progressed = bool(batch)
        for tp in list(pending):
            high = consumer.highwater(tp)
            if high is not None and await consumer.position(tp) >= high:
                pending.discard(tp)
                progressed = True
        now = time.monotonic()
        if progressed:
            last_progress = now
        elif now - last_progress > stall_timeout:
            names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(pending))
            raise BrokerError(
                f"no fetch answer for {names} in {stall_timeout:g} s; is the broker healthy?"
            )


async def partition_ends(consumer: Any, partitions: Iterable[Any]) -> dict[Any, PartitionEnd]:
    """High watermark and last record of each partition, both from fetch responses.

    Reading starts one record before the ListOffsets end (at least at the log
    start): on a broker that understates the end this reads the last batch,
    on Kafka exactly the last record.
    """
    tps = list(partitions)
    consumer.assign(tps)
    beginning = await consumer.beginning_offsets(tps)
    listed = await consumer.end_offsets(tps)
    starts = {tp: max(beginning[tp], listed[tp] - 1) for tp in tps}
    last: dict[Any, Any] = {}
    async for record in read_range(consumer, starts):
        last[(record.topic, record.partition)] = record
    ends = {}
    for tp in tps:
        high = consumer.highwater(tp)
        ends[tp] = PartitionEnd(high if high is not None else 0, last.get((tp.topic, tp.partition)))
    return ends
