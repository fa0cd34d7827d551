"""The two stages of a worker, free of Faust so that they can be driven by tests directly.

Stage 1, :class:`Ingestor`: a batch of raw journey events → decoded, validated,
routed observations grouped by the observation partition that owns their
series, plus the dead letters.

Stage 2, :class:`Aggregator`: batches of observations → windowed series of the
partitions this worker owns.
"""

from __future__ import annotations

import logging
import zlib
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.metrics import DelayHistogram
from models.aggregation import ClosedWindow, PartitionSeries
from models.dedupe import RecentIds
from models.errors import EventRejected
from models.routing import Groups, Router
from models.spec import Catalog
from streams.codec import decode_event
from streams.deadletter import DeadLetter
from streams.observations import decode_observation_records, encode_observations

log = logging.getLogger(__name__)

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
class RoutedBatch:
    """The observations routed from consecutive input batches of one source partition,
    not yet encoded: later batches of the same source can still be merged in
    (:meth:`absorb`) and sent as one record per observation partition."""

    topic: str
    partition: int
    #: Partition count of ``topic``.
    partitions: int
    #: Newest event time among the accepted events (None: none accepted).
    newest: float | None
    last_offset: int
    #: Series key → its (event time, value, input offset) observations, in input order.
    by_key: Groups
    dead_letters: list[DeadLetter]
    accepted: int
    #: Input records the batches held.
    size: int

    @classmethod
    def of(
        cls,
        source: tuple[str, int, int],
        records: Sequence[Any],
        newest: float | None,
        by_key: Groups,
        dead_letters: list[DeadLetter],
        duplicates: int = 0,
    ) -> RoutedBatch:
        """What the input ``records`` of ``source`` (topic, partition, partition count)
        routed; the records neither dead-lettered nor duplicates count as accepted."""
        topic, partition, partitions = source
        last_offset = records[-1].offset if records else -1
        accepted = len(records) - len(dead_letters) - duplicates
        return cls(
            topic,
            partition,
            partitions,
            newest,
            last_offset,
            by_key,
            dead_letters,
            accepted,
            len(records),
        )

    def absorb(self, later: RoutedBatch) -> None:
        """Append the next batch of the same source partition, as if it had been fetched
        with this one: every series keeps its input order.

        >>> first = RoutedBatch("events", 0, 1, 5.0, 7, {"k": [(5.0, 1.0, 7)]}, [], 1, 1)
        >>> first.absorb(RoutedBatch("events", 0, 1, 4.0, 9, {"k": [(4.0, 0.0, 9)]}, [], 1, 2))
        >>> first.by_key, first.newest, first.last_offset, first.size
        ({'k': [(5.0, 1.0, 7), (4.0, 0.0, 9)]}, 5.0, 9, 3)
        """
        if (later.topic, later.partition) != (self.topic, self.partition):
            raise ValueError(
                f"cannot merge {later.topic}[{later.partition}] into "
                f"{self.topic}[{self.partition}]: one source partition per record"
            )
        by_key = self.by_key
        for key, observations in later.by_key.items():
            held = by_key.get(key)
            if held is None:
                by_key[key] = observations
            else:
                held.extend(observations)
        if later.newest is not None and (self.newest is None or later.newest > self.newest):
            self.newest = later.newest
        if later.size:
            self.last_offset = later.last_offset
        self.dead_letters.extend(later.dead_letters)
        self.accepted += later.accepted
        self.size += later.size


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
    #: Sends of records (observations, dead letters) the broker did not store, by topic;
    #: each was sent again.
    undelivered: dict[str, int] = field(default_factory=dict)
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
        """Decode, route and encode one batch of records (aiokafka ConsumerRecord-like).

        ``partitions`` is the partition count of ``topic``.  Every observation
        partition gets a record, empty or not, so that each learns how far this
        source has progressed in event time (see :class:`models.aggregation.SourceClock`).
        """
        return self.finish(self.route(topic, partition, partitions, records, now))

    def finish(self, routed: RoutedBatch) -> IngestResult:
        """The records to send for ``routed``: one per observation partition."""
        encoded = self.encode(
            routed.topic,
            routed.partition,
            routed.partitions,
            routed.newest,
            routed.last_offset,
            routed.by_key,
        )
        return IngestResult(encoded, routed.dead_letters, routed.accepted)

    def route(
        self,
        topic: str,
        partition: int,
        partitions: int,
        records: Sequence[Any],
        now: float,
    ) -> RoutedBatch:
        """Decode, validate, dedupe and route one batch; the counters move now."""
        # Series key → its (event time, value, input offset) observations, in input order.
        by_key: Groups = {}
        dead_letters: list[DeadLetter] = []
        times: list[float] = []
        keep_time = times.append
        duplicates = 0
        recent = self._recent_ids.get((topic, partition))
        if recent is None:
            recent = self._recent_ids[(topic, partition)] = RecentIds(self.dedupe_horizon)
        seen = recent.seen
        plan_for = self.router.plan
        max_bytes, horizon = self.max_event_bytes, self.max_future_seconds
        for record in records:
            try:
                name, event_time, event = decode_event(record.value, now, max_bytes, horizon)
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
            message_id = event["messageId"]
            if seen(message_id):
                duplicates += 1
                continue
            keep_time(event_time)
            plan_for(name, event)(name, event, by_key, event_time, record.offset)
        self._observe_delays(now, times)
        self.consumed[topic] = self.consumed.get(topic, 0) + len(records)
        if duplicates:
            self.duplicates[topic] = self.duplicates.get(topic, 0) + duplicates
        for letter in dead_letters:
            counter_key = (topic, letter.reason)
            self.rejected[counter_key] = self.rejected.get(counter_key, 0) + 1
        self.routed += sum(map(len, by_key.values()))
        source = (topic, partition, partitions)
        newest = max(times) if times else None
        return RoutedBatch.of(source, records, newest, by_key, dead_letters, duplicates)

    def encode(
        self,
        topic: str,
        partition: int,
        partitions: int,
        newest: float | None,
        last_offset: int,
        by_key: Mapping[str, Sequence[tuple[float, float, int]]],
    ) -> dict[int, bytes]:
        """One observations record per observation partition, empty or not (so that each
        learns how far this source has progressed in event time)."""
        by_partition: list[list[tuple[str, Sequence[tuple[float, float, int]]]]] = [
            [] for _ in range(self.observation_partitions)
        ]
        partition_for = self.partition_for
        for key, observations in by_key.items():
            by_partition[partition_for(key)].append((key, observations))
        return {
            target: encode_observations(topic, partition, partitions, newest, last_offset, groups)
            for target, groups in enumerate(by_partition)
        }

    def _observe_delays(self, now: float, times: list[float]) -> None:
        """Add ``now - t`` of every event time to the delay histogram, as
        ``DelayHistogram.observe_many`` does, but counted per bucket bound on the sorted
        delays (a few bisections per batch instead of one per event)."""
        if not times:
            return
        delays = [now - t for t in times]
        histogram = self.delay
        histogram.total += sum(delays)  # in event order, as observe_many adds them
        histogram.count += len(delays)
        delays.sort()  # nearly sorted already: one partition's events come in time order
        counts = histogram.counts
        below = 0
        for bucket, bound in enumerate(histogram.buckets):
            # observe_many puts a value equal to a bound in that bound's bucket (le).
            upto = bisect_right(delays, bound, lo=below)
            counts[bucket] += upto - below
            below = upto
        counts[-1] += len(delays) - below


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
        #: Partitions read since this worker took them over (their first batch is logged).
        self._reading: set[int] = set()

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
        if records and partition not in self._reading:
            self._reading.add(partition)
            log.info(
                "observations partition %d: reading from offset %d, its state expects %d",
                partition,
                records[0].offset,
                owned.next_offset,
            )
        if records and records[0].offset > owned.next_offset > 0:
            # Nothing but a commit past the state's checkpoint (or deleted records) can
            # make the consumer resume after the offset the state expects next.
            log.warning(
                "observations partition %d: offsets %d-%d were never applied (its state "
                "expected %d next); their observations are missing from its series",
                partition,
                owned.next_offset,
                records[0].offset - 1,
                owned.next_offset,
            )
        for record in records:
            if record.offset < owned.next_offset:
                continue
            for decoded in decode_observation_records(record.value):
                self.applied += owned.apply_groups(
                    (decoded.topic, decoded.partition, decoded.partitions),
                    decoded.newest,
                    decoded.last_offset,
                    decoded.groups,
                    now,
                )
            owned.next_offset = record.offset + 1
        return owned.close_due(now)

    def adopt(self, partition: int, restored: object) -> None:
        """Take over a partition's state restored from a checkpoint."""
        if not isinstance(restored, PartitionSeries):
            raise TypeError(f"checkpoint of partition {partition} is not partition state")
        restored.rebind(self._indicators)
        self.partitions[partition] = restored
        self._reading.discard(partition)

    def close_idle(self, now: float, idle_timeout: float) -> dict[int, list[ClosedWindow]]:
        """Windows closed by the passing of processing time, by partition."""
        closed = {}
        for number, owned in self.partitions.items():
            windows = owned.close_if_idle(now, idle_timeout)
            if windows:
                closed[number] = windows
        return closed

    def exclude_outage(self, start: float, end: float) -> list[int]:
        """Take a broker outage out of every owned partition's idle clocks; return the
        partitions changed (their checkpoints must carry it to a next owner)."""
        for owned in self.partitions.values():
            owned.exclude_outage(start, end)
        return list(self.partitions)

    def release(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns, so it stops exposing their series."""
        for number in partitions:
            self.partitions.pop(number, None)
            self._reading.discard(number)

    def keep_only(self, partitions: Iterable[int]) -> list[int]:
        """Release every partition not in ``partitions``; return the released ones."""
        keep = set(partitions)
        gone = [number for number in self.partitions if number not in keep]
        self.release(gone)
        return gone

    def owned(self) -> Mapping[int, PartitionSeries]:
        return self.partitions
