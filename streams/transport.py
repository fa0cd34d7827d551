"""A Faust transport whose consumer hands whole fetches to agents.

Stock Faust turns every Kafka record into a message, an event and a task
raced against ``suspend_flow`` (about 100 µs each, see BASELINES.md).  For the
topics named in :attr:`BatchConsumer.batch_topics`, this consumer instead
delivers one :class:`RecordBatch` per partition and fetch: the agent receives
the raw records of the batch at once and Faust's machinery runs once per
batch.  Everything else (group membership, rebalancing, pausing during table
recovery, acks, commits, sensors) stays Faust's.

Commit bookkeeping: the batch's Faust message carries the offset of its last
record; the offsets before it are registered as a gap, which Faust's own
commit logic fills when that message is acked (over ranges, see
:mod:`streams.commit_offsets`).  So an offset is committed only once the agent
has finished the batch holding it.

Holes: in the topics named in :attr:`BatchConsumer.contiguous_topics` (the
worker's own, never compacted nor written in transactions) every offset holds a
record, so a fetch that skips offsets means the broker returned newer records
before older ones were readable (the Tansu test broker does this under
concurrent producers; Kafka never does).  Taken as is, the skipped records would
be committed past and lost.  The consumer instead fetches again from the first
missing offset, and gives a hole up (logged, counted) only after
:data:`HOLE_PATIENCE` seconds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiokafka.errors import ConsumerStoppedError
from faust.serializers import codecs
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, ConsumerMessage, Message
from faust.types.tuples import ack_lock
from mode import ServiceT

from streams import fetching
from streams.commit_offsets import next_commit_offset

BATCH_CODEC = "cpimon-batch"

#: Seconds a hole in a contiguous topic is fetched again before it is given up.
HOLE_PATIENCE = 10.0
#: The clock of that patience.
hole_clock = time.monotonic

log = logging.getLogger(__name__)


@dataclass
class FetchHoles:
    """Holes met in contiguous topics, by topic (exported by the worker)."""

    #: Holes found, each fetched again from its first missing offset.
    seen: dict[str, int] = field(default_factory=dict)
    #: Offsets given up after :data:`HOLE_PATIENCE` seconds of fetching them again.
    skipped: dict[str, int] = field(default_factory=dict)
    #: Partition → (first missing offset, when first seen, fetches since).
    open: dict[TP, tuple[int, float, int]] = field(default_factory=dict)

    def meet(self, tp: TP, missing: int, now: float) -> tuple[bool, int]:
        """A hole at ``missing``: (whether to give it up now, fetches of it so far)."""
        known = self.open.get(tp)
        if known is None or known[0] != missing:
            self.open[tp] = (missing, now, 1)
            self.seen[tp.topic] = self.seen.get(tp.topic, 0) + 1
            return False, 1
        _missing, since, fetches = known
        self.open[tp] = (missing, since, fetches + 1)
        return now - since >= HOLE_PATIENCE, fetches + 1

    def give_up(self, tp: TP, count: int) -> None:
        self.open.pop(tp, None)
        self.skipped[tp.topic] = self.skipped.get(tp.topic, 0) + count


def contiguous_prefix(
    records: Sequence[Any], expected: int | None
) -> tuple[Sequence[Any], int | None]:
    """The records that follow ``expected`` (the next offset to read, None if unknown)
    without a missing offset, and the first missing offset (None if there is none).

    >>> from types import SimpleNamespace as R
    >>> batch = [R(offset=o) for o in (5, 6, 8)]
    >>> prefix, missing = contiguous_prefix(batch, 5)
    >>> [r.offset for r in prefix], missing
    ([5, 6], 7)
    >>> contiguous_prefix(batch, 4)[1]
    4
    """
    first = records[0].offset
    if expected is not None and first > expected:
        return records[:0], expected
    if records[-1].offset - first + 1 == len(records):
        return records, None
    for index, record in enumerate(records):
        if record.offset != first + index:
            return records[:index], first + index
    return records, None


class RecordBatch:
    """The records of one partition from one fetch, in offset order.

    ``records`` are the record objects of aiokafka's parser (``.offset``, ``.key``,
    ``.value``, ``.headers``, ``.timestamp``; see streams/fetching.py).
    """

    __slots__ = ("partition", "records", "topic")

    def __init__(self, topic: str, partition: int, records: Sequence[Any]) -> None:
        self.topic = topic
        self.partition = partition
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"<RecordBatch {self.topic}[{self.partition}] {len(self.records)} records>"


class _PassThroughCodec(codecs.Codec):
    """Hands the RecordBatch to the agent untouched: its records are decoded there, in bulk."""

    def _loads(self, s: Any) -> Any:
        return s

    def _dumps(self, s: Any) -> Any:
        raise TypeError("RecordBatch values are never produced")


codecs.register(BATCH_CODEC, _PassThroughCodec())


#: Generation-0 threshold of the cyclic garbage collector while batches flow (CPython: 700).
GC_THRESHOLD_0 = 50_000
_gc_tuned = False


def tune_gc_for_batches() -> None:
    """Make CPython's cyclic garbage collector cheap for a process handling batches.

    With the default thresholds a collection starts every 700 net allocations of
    container objects.  A fetch of 10,000 records allocates tens of thousands
    (records, decoded events, observations) that stay alive until the batch is
    done, so collections run in the middle of every batch, promote the batch to
    the old generations and soon trigger full collections that walk every object
    of the process (about 140,000 in a worker: ~100 ms each; ``make bench`` spent
    about a third of the worker's CPU in them).  Those objects hold no reference
    cycles: reference counting frees them when the batch is done.

    So: everything built at start-up (modules, the Faust app, the catalog) is
    moved to the permanent generation (``gc.freeze()``), which collections never
    walk, and generation 0 is collected every :data:`GC_THRESHOLD_0` net
    allocations (about once per batch); the older generations keep their ratios.
    Called once per process, when the worker's consumer starts.
    """
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD_0, older, oldest)


class BatchConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with a shorter fetch wait (``fetch_max_wait``
    of the app, from CPIMON_FETCH_MAX_WAIT).

    aiokafka keeps one fetch request in flight per broker, for every assigned
    partition it holds no unread records of.  Faust asks brokers to hold a fetch up
    to 1.5 s for data; when the partitions in that request are idle (caught up, or
    a quiet topic such as the KPI topic) while the agents work through the others'
    records, the next fetch for the busy partitions waits for that hold to expire:
    the worker stalls for up to 1.5 s at a time (seen in ``make bench`` as gaps of
    1.1-1.5 s between batches).  With a wait of 100 ms an idle fetch costs one small
    request every 100 ms per broker instead.
    """

    @property
    def fetch_max_wait_ms(self) -> int:
        """How long the broker may hold a fetch without data (Faust: 1500, aiokafka: 500);
        the app's ``fetch_max_wait`` (CPIMON_FETCH_MAX_WAIT)."""
        return max(1, round(getattr(self.app, "fetch_max_wait", 0.1) * 1000))

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher.
        if not hasattr(consumer, "_fetch_max_wait_ms"):  # pragma: no cover - aiokafka changed
            raise RuntimeError("aiokafka changed: review BatchConsumerThread")
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        # Faust's _fetch_records, with the bulk unpacking of streams/fetching.py for
        # the batch topics.
        fetcher = consumer._fetcher
        if not fetching.supported(fetcher):  # pragma: no cover - aiokafka changed
            return await super()._fetch_records(consumer, active_partitions, timeout, max_records)
        if not self.consumer.flow_active:
            return {}
        if consumer._closed or fetcher._closed:
            raise ConsumerStoppedError()
        with fetcher._subscriptions.fetch_context():
            return await fetching.fetched_records(
                fetcher,
                active_partitions,
                BatchConsumer.batch_topics,
                timeout=timeout or 0,
                max_records=max_records,
            )


class BatchConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer with a per-batch path for :attr:`batch_topics`."""

    #: Topics delivered as RecordBatch values; filled by the app before start.
    batch_topics: ClassVar[set[str]] = set()
    #: Topics in which every offset holds a record (see the module's "Holes").
    contiguous_topics: ClassVar[set[str]] = set()
    #: Acks of messages from an earlier generation, not counted (see :meth:`ack`).
    stale_acks_ignored: int = 0
    #: Next offset to read of each contiguous-topic partition, where known.
    _expected: dict[TP, int]

    def __post_init__(self) -> None:
        super().__post_init__()
        self._expected = {}

    @property
    def holes(self) -> FetchHoles:
        """The app's hole counters (a CpimonApp's: it outlives its consumers)."""
        holes: FetchHoles = self.app.fetch_holes  # type: ignore[attr-defined]
        return holes

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets, which are also the offsets to read next."""
        await super().perform_seek()
        self._expected = {
            tp: offset
            for tp, offset in self._committed_offset.items()
            if offset is not None and tp.topic in self.contiguous_topics
        }

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self._expected[partition] = offset

    async def _without_holes(self, tp: TP, records: list[Any]) -> list[Any]:
        """The records of a contiguous topic that may be delivered now: all of them, or
        those before a hole, after a seek that fetches the hole again."""
        expected = self._expected
        prefix, missing = contiguous_prefix(records, expected.get(tp))
        if missing is None:
            self.holes.open.pop(tp, None)
            expected[tp] = records[-1].offset + 1
            return records
        following = records[len(prefix)].offset if len(prefix) < len(records) else missing
        give_up, fetches = self.holes.meet(tp, missing, hole_clock())
        if give_up:
            log.error(
                "%s[%d]: offsets %d-%d are still missing after %.0f s of fetching them again; "
                "they are skipped (cpimon_offsets_skipped_total). Check the broker: this "
                "topic is written without transactions and must not be compacted.",
                tp.topic,
                tp.partition,
                missing,
                following - 1,
                HOLE_PATIENCE,
            )
            self.holes.give_up(tp, following - missing)
            expected[tp] = records[-1].offset + 1
            return records
        if fetches == 1:
            log.warning(
                "%s[%d]: the broker returned offset %d before %d-%d were readable; "
                "fetching them again",
                tp.topic,
                tp.partition,
                following,
                missing,
                following - 1,
            )
        else:
            # The same hole again: the broker has not made it readable yet.
            await asyncio.sleep(min(0.01 * fetches, 0.5))
        await self._seek(tp, missing)
        expected[tp] = missing
        return list(prefix)

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _to_batch_message(self, tp: TP, records: Sequence[Any]) -> ConsumerMessage:
        last = records[-1]
        timestamp = last.timestamp / 1000.0 if last.timestamp is not None else None
        # ConsumerMessage is typed for bytes values; this one carries the batch.
        make_message: Any = ConsumerMessage
        message: ConsumerMessage = make_message(
            tp.topic,
            tp.partition,
            last.offset,
            timestamp,
            last.timestamp_type,
            [],
            None,
            RecordBatch(tp.topic, tp.partition, records),
            None,
            0,
            # serialized_value_size: Faust sets it and never reads it; summing the
            # values' lengths (aiokafka's C records carry no size) took 2 % of the worker.
            0,
            tp,
            generation_id=self.app.consumer_generation_id,
        )
        return message

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover
        # Same loop as faust.transport.consumer.Consumer._drain_messages, with
        # batch delivery for batch topics.  Kept structurally close to the
        # original so that upgrades of faust-streaming are easy to compare.
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set  # type: ignore[attr-defined]
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        batch_topics = self.batch_topics
        contiguous_topics = self.contiguous_topics
        tune_gc_for_batches()
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active_partitions = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    # As stock Faust does: a rebalance may have taken the partitions
                    # away since; the next assignment seeks again.
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning("exception performing seek when flow not active %r", exc)
                    continue
                generation_id = self.app.consumer_generation_id
                for tp, tp_records in records.items():
                    if not self.flow_active or generation_id != self.app.consumer_generation_id:
                        break
                    if not (
                        active_partitions is None
                        or tp in active_partitions
                        or tp in self._buffered_partitions
                    ):
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    read_offset = get_read_offset(tp)
                    if read_offset is not None:
                        tp_records = [r for r in tp_records if r.offset >= read_offset]
                    if not tp_records:
                        continue
                    if tp.topic in contiguous_topics:
                        tp_records = await self._without_holes(tp, tp_records)
                        if not tp_records:
                            continue
                    if tp.topic in batch_topics:
                        delivered = await self._deliver_batch(
                            tp, tp_records, read_offset, callback, generation_id
                        )
                    else:
                        delivered = await self._deliver_each(
                            tp, tp_records, callback, acks_enabled_for, generation_id
                        )
                    if not delivered:
                        # A rebalance came while delivering: the new generation seeks
                        # to the committed offsets, and its read offsets must stay.
                        break
                    set_read_offset(tp, tp_records[-1].offset)
                    await asyncio.sleep(0)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    def _current(self, generation_id: int) -> bool:
        """Whether records fetched in ``generation_id`` may still be handed to agents."""
        return self.flow_active and generation_id == self.app.consumer_generation_id

    async def _deliver_batch(
        self,
        tp: TP,
        records: Sequence[Any],
        read_offset: int | None,
        callback: Any,
        generation_id: int,
    ) -> bool:
        """Hand one batch to the agents; False if a rebalance came first (not delivered)."""
        await self._maybe_commit()
        # The commit may have waited through a whole rebalance.  A batch of the old
        # generation delivered now would be skipped by the stream and acked unapplied,
        # and its gap would let Faust commit past records nobody applied.
        if not self._current(generation_id):
            return False
        first, last = records[0].offset, records[-1].offset
        if read_offset is not None and first > read_offset + 1:
            first = read_offset + 1  # offsets skipped by the broker (compaction, markers)
        if last > first and self.app.topics.acks_enabled_for(tp.topic):
            await self._add_gap(tp, first, last - 1)
        await self.wait_first(
            callback(self._to_batch_message(tp, records)), self.suspend_flow.wait()
        )
        return self._current(generation_id)

    async def _deliver_each(
        self,
        tp: TP,
        records: Sequence[Any],
        callback: Any,
        acks_enabled_for: Any,
        generation_id: int,
    ) -> bool:
        get_read_offset = self._read_offset.__getitem__
        for record in records:
            await self._maybe_commit()
            if not self._current(generation_id):
                return False
            read_offset = get_read_offset(tp)
            if (
                read_offset is not None
                and record.offset - read_offset > 1
                and acks_enabled_for(tp.topic)
            ):
                await self._add_gap(tp, read_offset + 1, record.offset)
            await self.wait_first(callback(self._to_message(tp, record)), self.suspend_flow.wait())
            if not self._current(generation_id):
                return False
            self._read_offset[tp] = record.offset
        return True

    def ack(self, message: Message) -> bool:
        """Faust's ack, except for messages of an earlier generation of the group.

        Streams ack the messages they skip, among them those delivered before a
        rebalance that reach the agent after it.  Counted, such an ack would let
        the new generation commit past records it has not applied yet (they are
        read again from the committed offset and acked when applied).
        """
        generation_id = message.generation_id
        if generation_id is not None and generation_id != self.app.consumer_generation_id:
            with ack_lock:
                message.acked = True  # nothing is to wait for it any more
            self.stale_acks_ignored += 1
            return False
        return super().ack(message)

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's offset to commit next, over ranges instead of one int per offset."""
        acked = self._acked[tp]
        if not acked:
            return None
        return next_commit_offset(
            acked, self._acked_index[tp], self._gap[tp], self._committed_offset[tp]
        )

    async def _maybe_commit(self) -> None:
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()


class BatchTransport(aiokafka_driver.Transport):
    """The aiokafka transport with :class:`BatchConsumer`."""

    Consumer = BatchConsumer
