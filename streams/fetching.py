"""Hand out fetched records in bulk, as the records aiokafka's C parser made.

aiokafka turns every fetched record into a ``ConsumerRecord`` dataclass (eleven
fields, the headers copied into a tuple) through a generator and two Python calls
per record: about 1 µs each, an eighth of a worker's time in ``make bench``.  The
batch topics need only ``offset``, ``key``, ``value`` and ``timestamp``, which the
record objects of aiokafka's parser (``DefaultRecord``, written in C) already
carry.  :func:`fetched_records` is aiokafka 0.14's ``Fetcher.fetched_records``
with one change: for partitions of the given topics it takes each Kafka record
batch with one ``list(batch)`` (C) instead of the per-record generator.

Position bookkeeping is aiokafka's: :class:`BulkPartitionRecords` keeps
``next_fetch_offset`` as ``PartitionRecords`` does (the offset after the last
record handed out, or the batch's next offset once a batch is done, so that
control batches and compacted gaps are stepped over), and the fetch result moves
the consumer's position to it.  Transactions: with ``read_committed`` (aborted
batches must be filtered) aiokafka's own path is kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.structs import TopicPartition

__all__ = ["BulkPartitionRecords", "fetched_records", "supported"]

_READ_COMMITTED = aiokafka_fetcher.READ_COMMITTED
_FETCHER_PRIVATES = (
    "_subscriptions",
    "_records",
    "_notify",
    "_wait_consume_future",
    "_create_fetch_waiter",
    "_closed",
)


def supported(fetcher: Any) -> bool:
    """Whether ``fetcher`` is the aiokafka Fetcher this module was written against."""
    return all(hasattr(fetcher, name) for name in _FETCHER_PRIVATES) and hasattr(
        aiokafka_fetcher, "FetchResult"
    )


class BulkPartitionRecords:
    """Takes the place of aiokafka's ``PartitionRecords`` in a fetch result."""

    __slots__ = ("_check_crcs", "_pending", "_pending_next", "_records", "_tp", "next_fetch_offset")

    def __init__(self, original: Any) -> None:
        self._tp = original._tp
        self._records = original._records
        self._check_crcs = original._check_crcs
        self.next_fetch_offset: int = original.next_fetch_offset
        self._pending: list[Any] = []
        self._pending_next = 0

    def take(self, limit: int | None) -> tuple[list[Any], bool]:
        """Up to ``limit`` records (all if None) in offset order, and whether the fetch is
        used up."""
        out: list[Any] = []
        records = self._records
        while limit is None or len(out) < limit:
            if not self._pending:
                if not records.has_next():
                    return out, True
                batch = records.next_batch()
                if self._check_crcs and not batch.validate_crc():
                    raise kafka_errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    continue
                unpacked = list(batch)
                # A compressed v0/v1 message set may start before the fetch offset.
                if unpacked and unpacked[0].offset < self.next_fetch_offset:
                    start = self.next_fetch_offset
                    unpacked = [record for record in unpacked if record.offset >= start]
                if not unpacked:
                    self.next_fetch_offset = batch.next_offset
                    continue
                self._pending, self._pending_next = unpacked, batch.next_offset
            pending = self._pending
            room = len(pending) if limit is None else limit - len(out)
            if room >= len(pending):
                out.extend(pending)
                self._pending = []
                self.next_fetch_offset = self._pending_next
            else:
                out.extend(pending[:room])
                self._pending = pending[room:]
                self.next_fetch_offset = out[-1].offset + 1
        return out, not self._pending and not records.has_next()


def _take(result: Any, max_records: int | None, bulk_topics: Collection[str]) -> list[Any]:
    """``FetchResult.getall``, in bulk for partitions of ``bulk_topics``."""
    tp = result._topic_partition
    if tp.topic not in bulk_topics:
        return list(result.getall(max_records))
    if not result.check_assignment(tp) or not result.has_more():
        return []
    partition_records = result._partition_records
    if not isinstance(partition_records, BulkPartitionRecords):
        if partition_records._isolation_level == _READ_COMMITTED:
            return list(result.getall(max_records))
        partition_records = result._partition_records = BulkPartitionRecords(partition_records)
    records, used_up = partition_records.take(max_records)
    result._update_position()
    if used_up:
        result._partition_records = None
    return records


async def fetched_records(
    fetcher: Any,
    partitions: Collection[TopicPartition],
    bulk_topics: Collection[str],
    timeout: float = 0,
    max_records: int | None = None,
) -> dict[TopicPartition, list[Any]]:
    """aiokafka's ``Fetcher.fetched_records``, records of ``bulk_topics`` taken in bulk."""
    while True:
        # As aiokafka: no records of a partition that may move away in a rebalance.
        if fetcher._subscriptions.reassignment_in_progress:
            await fetcher._subscriptions.wait_for_assignment()

        start_time = time.monotonic()
        drained: dict[TopicPartition, list[Any]] = {}
        for tp in list(fetcher._records.keys()):
            if partitions and tp not in partitions:
                if not fetcher._subscriptions.is_assigned(tp):
                    del fetcher._records[tp]
                continue
            res_or_error = fetcher._records[tp]
            if type(res_or_error) is aiokafka_fetcher.FetchResult:
                records = _take(res_or_error, max_records, bulk_topics)
                if not res_or_error.has_more():
                    del fetcher._records[tp]  # used up: ask for more
                    fetcher._notify(fetcher._wait_consume_future)
                if not records:
                    continue
                drained[tp] = records
                if max_records is not None:
                    max_records -= len(records)
                    if max_records <= 0:
                        break
            elif drained:
                return drained  # the error is raised at the next call
            else:
                del fetcher._records[tp]
                fetcher._notify(fetcher._wait_consume_future)
                res_or_error.check_raise()

        if drained or not timeout:
            return drained

        waiter = fetcher._create_fetch_waiter()
        done, pending = await asyncio.wait([waiter], timeout=timeout)
        if not done or fetcher._closed:
            if pending:
                pending.pop().cancel()
            return {}
        if waiter.done():
            waiter.result()  # authorization errors
        timeout = max(0, timeout - (time.monotonic() - start_time))
