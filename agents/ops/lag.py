"""``cpimon lag``: how far a consumer group is behind, per partition.

For each partition of the group's topics: the committed offset (OffsetFetch
through the admin client), the high watermark (from a fetch response: see
:mod:`agents.ops.kafka` for why never ListOffsets), the lag between the two,
and the time of the newest message: its ``timestamp`` field when it is a
journey event, else the Kafka record time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from rich import box
from rich.table import Table

from agents.ops import OpsError
from agents.ops.common import console, event_time, format_age, format_recent, settings_from
from agents.ops.kafka import check_reachable, partition_ends, require_topic, start_consumer
from streams.settings import Settings

__all__ = ["PartitionLag", "committed_offsets", "main", "measure", "newest_time"]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition's position in a group."""

    topic: str
    partition: int
    committed: int | None
    high_watermark: int
    newest_time: float | None
    #: "event" (the message's timestamp field), "record" (Kafka's) or None (empty partition).
    time_source: str | None

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(self.high_watermark - self.committed, 0)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "high_watermark": self.high_watermark,
            "lag": self.lag,
            "newest_time": self.newest_time,
            "newest_age_seconds": None
            if self.newest_time is None
            else round(now - self.newest_time, 3),
            "time_source": self.time_source,
        }


def newest_time(record: Any) -> tuple[float | None, str | None]:
    """Time of a record: the ``timestamp`` of the JSON event in it, else the Kafka timestamp.

    >>> from types import SimpleNamespace as R
    >>> newest_time(R(value=b'{"timestamp": "2026-11-23T10:00:00Z"}', timestamp=5000))
    (1795428000.0, 'event')
    >>> newest_time(R(value=b'["internal", 1]', timestamp=5000))
    (5.0, 'record')
    """
    if record is None:
        return None, None
    try:
        decoded = orjson.loads(record.value) if record.value else None
    except orjson.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict):
        when = event_time(decoded.get("timestamp"))
        if when is not None:
            return when, "event"
    timestamp = getattr(record, "timestamp", None)
    if isinstance(timestamp, int) and timestamp >= 0:
        return timestamp / 1000, "record"
    return None, None


def committed_offsets(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets, (topic, partition) -> offset."""
    from kafka import KafkaAdminClient

    check_reachable(settings)
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="cpimon-ops",
        request_timeout_ms=15_000,
        **settings.kafka_client_options(),
    )
    try:
        # kafka-python 3: list_group_offsets(group_ids...) -> {group: {TopicPartition: meta}}.
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {
        (tp.topic, tp.partition): meta.offset
        for tp, meta in offsets.items()
        if meta is not None and meta.offset >= 0
    }


async def measure(
    settings: Settings, group: str, topics: Sequence[str] | None
) -> list[PartitionLag]:
    """Committed offset, high watermark and newest time of every partition of ``topics``
    (default: every topic the group committed)."""
    committed = committed_offsets(settings, group)
    if topics:
        chosen = list(dict.fromkeys(topics))
    else:
        chosen = sorted({topic for topic, _ in committed})
        if not chosen:
            raise OpsError(
                f"group {group!r} has no committed offsets on {settings.broker}; check --group "
                "(the workers' CPIMON_APP_ID), or name topics with --topic to see their ends"
            )
    consumer = await start_consumer(settings, fetch_max_wait_ms=100)
    try:
        partitions = [
            tp for topic in chosen for tp in await require_topic(consumer, topic, settings)
        ]
        ends = await partition_ends(consumer, partitions)
    finally:
        await consumer.stop()
    rows = []
    for tp in partitions:
        end = ends[tp]
        when, source = newest_time(end.last)
        rows.append(
            PartitionLag(
                tp.topic,
                tp.partition,
                committed.get((tp.topic, tp.partition)),
                end.high_watermark,
                when,
                source,
            )
        )
    return rows


def totals(rows: Sequence[PartitionLag]) -> dict[str, int | None]:
    """Lag per topic over its partitions with a committed offset; None when none has one."""
    total: dict[str, int | None] = {}
    for row in rows:
        lag = row.lag
        held = total.get(row.topic)
        total[row.topic] = held if lag is None else (held or 0) + lag
    return total


def table(group: str, rows: Sequence[PartitionLag], now: float) -> Table:
    result = Table(
        title=f"consumer group {group}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    # Topic names give way on a narrow terminal; the numbers never do.
    result.add_column("topic", overflow="fold")
    result.add_column("partition", justify="right", no_wrap=True)
    result.add_column("committed", justify="right", no_wrap=True)
    result.add_column("end", justify="right", no_wrap=True)
    result.add_column("lag", justify="right", no_wrap=True)
    result.add_column("newest message", no_wrap=True)
    result.add_column("age", justify="right", no_wrap=True)
    by_topic = totals(rows)
    previous = None
    for row in rows:
        if previous is not None and row.topic != previous:
            result.add_section()
        previous = row.topic
        lag = row.lag
        newest = format_recent(row.newest_time, now)
        if row.time_source == "record":
            newest += " (record)"
        result.add_row(
            row.topic,
            str(row.partition),
            "-" if row.committed is None else f"{row.committed:,}",
            f"{row.high_watermark:,}",
            "no commit" if lag is None else f"{lag:,}",
            newest,
            format_age(None if row.newest_time is None else now - row.newest_time),
            style="yellow" if lag else None,
        )
    result.caption = "  ".join(
        f"{topic}: lag {'-' if lag is None else f'{lag:,}'}" for topic, lag in by_topic.items()
    )
    result.caption_justify = "left"
    return result


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    group = args.group or settings.app_id
    rows = asyncio.run(measure(settings, group, args.topic))
    now = time.time()
    if args.json:
        document: Mapping[str, Any] = {
            "group": group,
            "broker": settings.broker,
            "time": now,
            "partitions": [row.to_json(now) for row in rows],
            "total_lag": totals(rows),
        }
        print(orjson.dumps(document).decode())
    else:
        console().print(table(group, rows, now))
    return 0
