"""Bulk unpacking of fetched records gives what aiokafka's per-record path gives."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from streams.fetching import BulkPartitionRecords

TP = TopicPartition("events", 3)
_CONTROL = 0x20


def batch(base: int, deltas: list[int], *, control: bool = False) -> bytes:
    """A v2 record batch whose records have offsets ``base + delta`` (gaps: compaction)."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for delta in deltas:
        key = None if delta % 3 == 0 else f"k{base + delta}".encode()
        builder.append(delta, 1_800_000_000_000 + delta, key, f"v{base + delta}".encode(), [])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)  # the broker sets the base offset
    if control:
        (attributes,) = struct.unpack_from(">h", data, 21)
        struct.pack_into(">h", data, 21, attributes | _CONTROL)
        struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    return bytes(data)


def partition_records(data: bytes, fetch_offset: int) -> Any:
    return PartitionRecords(
        TP, MemoryRecords(data), None, fetch_offset, None, None, True, READ_UNCOMMITTED
    )


def fetch(rng: random.Random) -> tuple[bytes, int]:
    """Batches with gaps and control batches; a fetch offset inside the first batch."""
    parts, base = [], rng.randint(0, 1000)
    first = base
    for _ in range(rng.randint(1, 6)):
        deltas = sorted(rng.sample(range(12), rng.randint(1, 12)))
        control = rng.random() < 0.2
        parts.append(batch(base, deltas, control=control))
        base += deltas[-1] + 1 + rng.choice([0, 0, 3])
    return b"".join(parts), first + rng.randint(0, 4)


def seen(record: Any) -> tuple[int, bytes | None, bytes | None, int]:
    return record.offset, record.key, record.value, record.timestamp


@pytest.mark.parametrize("seed", range(40))
def test_bulk_records_are_aiokafkas_records(seed: int) -> None:
    rng = random.Random(seed)
    data, fetch_offset = fetch(rng)
    reference = partition_records(data, fetch_offset)
    expected = [seen(record) for record in reference]

    bulk = BulkPartitionRecords(partition_records(data, fetch_offset))
    got: list[Any] = []
    used_up = False
    while not used_up:
        limit = rng.choice([None, 1, 2, 5, 100])
        taken, used_up = bulk.take(limit)
        assert limit is None or len(taken) <= limit
        assert used_up or len(taken) == limit
        got.extend(taken)
        if taken and not used_up:
            # Where the consumer resumes: just after what it was handed.
            assert bulk.next_fetch_offset == taken[-1].offset + 1
    assert [seen(record) for record in got] == expected
    assert all(record.offset >= fetch_offset for record in got)
    # The next fetch starts where aiokafka's would: after the last batch, gaps included.
    assert bulk.next_fetch_offset == reference.next_fetch_offset


def test_a_control_batch_alone_moves_the_position_and_yields_nothing() -> None:
    data = batch(40, [0], control=True)
    bulk = BulkPartitionRecords(partition_records(data, 40))
    assert bulk.take(None) == ([], True)
    assert bulk.next_fetch_offset == 41


def test_a_corrupt_batch_is_refused_as_aiokafka_refuses_it() -> None:
    data = bytearray(batch(0, [0, 1, 2]))
    data[-1] ^= 0xFF
    with pytest.raises(CorruptRecordException):
        list(partition_records(bytes(data), 0))
    with pytest.raises(CorruptRecordException):
        BulkPartitionRecords(partition_records(bytes(data), 0)).take(None)
