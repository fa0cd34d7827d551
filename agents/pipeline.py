"""The two stages of a worker, free of Faust so that they can be driven by tests directly.

Stage 1, :class:`Ingestor`: a batch of raw journey events → decoded, validated,
routed observations grouped by the observation partition that owns their
series, plus the dead letters.

Stage 2, :class:`Aggregator`: batches of observations → windowed series of the
partitions this worker owns.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from agents.metrics import DelayHistogram
from models.aggregation import ClosedWindow, PartitionSeries
from models.dedupe import RecentIds
from models.errors import EventRejected
from models.routing import Router
from models.spec import Catalog
from streams.codec import decode_event
from streams.deadletter import DeadLetter

#: Series key → observation partition, remembered for the keys seen most (bounded).
_PARTITION_CACHE_LIMIT = 100_000


@dataclass
class IngestResult:
    """What one batch of raw events turned into."""

    #: observation partition → encoded observations record value
    records: dict[int, bytes]
    dead_letters: list[DeadLetter]
    accepted: int


@dataclass
class Ingestor:
    """Stage 1: decode, validate, route and repartition journey events."""

    router: Router
    observation_partitions: int
    max_event_bytes: int = 64 * 1024
    max_future_seconds: float = 300.0
    #: Message ids remembered per input partition to drop producer duplicates.
    dedupe_horizon: int = 100_000
    consumed: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    rejected: dict[tuple[str, str], int] = field(default_factory=dict)
    delay: DelayHistogram = field(default_factory=DelayHistogram)
    #: Observations sent to the observations topic.
    routed: int = 0
    _partition_of: dict[str, int] = field(default_factory=dict)
    _recent_ids: dict[tuple[str, int], RecentIds] = field(default_factory=dict)

    def partition_for(self, key: str) -> int:
        """Stable across processes and restarts (unlike ``hash``), so every worker agrees."""
        partition = self._partition_of.get(key)
        if partition is None:
            partition = zlib.crc32(key.encode()) % self.observation_partitions
            if len(self._partition_of) >= _PARTITION_CACHE_LIMIT:
                self._partition_of.clear()
            self._partition_of[key] = partition
        return partition

    def process(
        self,
        topic: str,
        partition: int,
        partitions: int,
        records: Sequence[Any],
        now: float,
    ) -> IngestResult:
        """Decode and route one batch of records (aiokafka ConsumerRecord-like).

        ``partitions`` is the partition count of ``topic``.  Every observation
        partition gets a record, empty or not, so that each learns how far this
        source has progressed in event time (see :class:`models.aggregation.SourceClock`).
        """
        by_partition: dict[int, list[list[Any]]] = {
            target: [] for target in range(self.observation_partitions)
        }
        dead_letters: list[DeadLetter] = []
        delays: list[float] = []
        newest: float | None = None
        duplicates = 0
        recent = self._recent_ids.get((topic, partition))
        if recent is None:
            recent = self._recent_ids[(topic, partition)] = RecentIds(self.dedupe_horizon)
        seen = recent.seen
        observe = self.router.observe
        partition_for = self.partition_for
        max_bytes, horizon = self.max_event_bytes, self.max_future_seconds
        for record in records:
            try:
                name, event_time, event = decode_event(
                    record.value, now=now, max_bytes=max_bytes, max_future_seconds=horizon
                )
            except EventRejected as rejection:
                dead_letters.append(
                    DeadLetter(
                        record.key,
                        record.value,
                        rejection.reason,
                        rejection.detail,
                        topic,
                        partition,
                        record.offset,
                    )
                )
                continue
            if seen(event["messageId"]):
                duplicates += 1
                continue
            delays.append(now - event_time)
            if newest is None or event_time > newest:
                newest = event_time
            offset = record.offset
            for key, value in observe(name, event):
                by_partition[partition_for(key)].append([key, event_time, value, offset])
        self.delay.observe_many(delays)
        self.consumed[topic] = self.consumed.get(topic, 0) + len(records)
        if duplicates:
            self.duplicates[topic] = self.duplicates.get(topic, 0) + duplicates
        for letter in dead_letters:
            counter_key = (topic, letter.reason)
            self.rejected[counter_key] = self.rejected.get(counter_key, 0) + 1
        last_offset = records[-1].offset if records else -1
        self.routed += sum(len(observations) for observations in by_partition.values())
        encoded = {
            target: orjson.dumps([topic, partition, partitions, newest, last_offset, observations])
            for target, observations in by_partition.items()
        }
        return IngestResult(encoded, dead_letters, len(records) - len(dead_letters) - duplicates)


@dataclass
class Aggregator:
    """Stage 2: the windowed series of the observation partitions this worker owns."""

    catalog: Catalog
    idle_timeout: float = 30.0
    partitions: dict[int, PartitionSeries] = field(default_factory=dict)
    #: Observations taken from the observations topic (late ones included).
    applied: int = 0

    def __post_init__(self) -> None:
        self._indicators = {indicator.name: indicator for indicator in self.catalog.indicators}

    def partition(self, number: int) -> PartitionSeries:
        owned = self.partitions.get(number)
        if owned is None:
            owned = self.partitions[number] = PartitionSeries(self._indicators, self.idle_timeout)
        return owned

    def process(self, partition: int, records: Sequence[Any], now: float) -> list[ClosedWindow]:
        """Apply observation records (``.offset``, ``.value``) of one partition.

        Records before the partition's ``next_offset`` are already in its state
        (restored from a checkpoint) and are skipped.  Returns the windows that closed.
        """
        owned = self.partition(partition)
        for record in records:
            if record.offset < owned.next_offset:
                continue
            topic, source_partition, source_partitions, newest, last_offset, observations = (
                orjson.loads(record.value)
            )
            owned.apply(
                (topic, source_partition, source_partitions), newest, last_offset, observations, now
            )
            owned.next_offset = record.offset + 1
            self.applied += len(observations)
        return owned.close_due(now)

    def adopt(self, partition: int, restored: PartitionSeries) -> None:
        """Take over a partition's state restored from a checkpoint."""
        restored.rebind(self._indicators)
        self.partitions[partition] = restored

    def close_idle(self, now: float, idle_timeout: float) -> dict[int, list[ClosedWindow]]:
        """Windows closed by the passing of processing time, by partition."""
        closed = {}
        for number, owned in self.partitions.items():
            windows = owned.close_if_idle(now, idle_timeout)
            if windows:
                closed[number] = windows
        return closed

    def release(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns, so it stops exposing their series."""
        for number in partitions:
            self.partitions.pop(number, None)

    def keep_only(self, partitions: Iterable[int]) -> list[int]:
        """Release every partition not in ``partitions``; return the released ones."""
        keep = set(partitions)
        gone = [number for number in self.partitions if number not in keep]
        self.release(gone)
        return gone

    def owned(self) -> Mapping[int, PartitionSeries]:
        return self.partitions
