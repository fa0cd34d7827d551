"""Checkpoints of partition state in a Kafka topic.

Checkpoint partition *q* holds the state of observation partition *q*: one
checkpoint is one or more records (chunks, so that large state stays under the
broker's message size), written one after the other.  Loading reads the tail
of the partition up to the high watermark reported by fetch responses (not
ListOffsets, which some brokers understate) and returns the newest complete
checkpoint.  Keys are ``"<partition>:<chunk>"``, so a compacted topic keeps
exactly the newest checkpoint of every partition.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import AppT, TopicT

from models.errors import CheckpointError

CHUNK_BYTES = 512 * 1024
#: Records read back from the end of a partition; a checkpoint of more chunks than
#: this (over 32 MB of compressed state) would not be found.
LOOKBACK = 64

ID_HEADER = "cpimon-checkpoint-id"
PART_HEADER = "cpimon-checkpoint-part"


def chunk(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """``data`` cut into pieces of at most ``size`` bytes (one empty piece for no data).

    >>> [len(piece) for piece in chunk(b"x" * 10, size=4)]
    [4, 4, 2]
    """
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def newest_complete(records: Sequence[Any]) -> bytes | None:
    """The newest checkpoint whose chunks are all present, reassembled."""
    pieces: dict[str, dict[int, bytes]] = {}
    totals: dict[str, int] = {}
    order: list[str] = []
    for record in records:
        headers = dict(record.headers or ())
        if ID_HEADER not in headers or PART_HEADER not in headers:
            continue
        checkpoint_id = headers[ID_HEADER].decode()
        index, total = (int(x) for x in headers[PART_HEADER].decode().split("/"))
        if checkpoint_id not in pieces:
            pieces[checkpoint_id] = {}
            order.append(checkpoint_id)
        pieces[checkpoint_id][index] = record.value or b""
        totals[checkpoint_id] = total
    for checkpoint_id in reversed(order):
        parts = pieces[checkpoint_id]
        if len(parts) == totals[checkpoint_id]:
            return b"".join(parts[i] for i in range(totals[checkpoint_id]))
    return None


class CheckpointStore:
    """Saves through the app's producer; loads with a consumer of its own (no group)."""

    def __init__(
        self,
        app: AppT,
        topic: TopicT,
        bootstrap_servers: list[str],
        client_options: dict[str, Any],
    ) -> None:
        self.app = app
        self.topic = topic
        self._bootstrap_servers = bootstrap_servers
        self._client_options = client_options
        self._declared = False
        self._reader: AIOKafkaConsumer | None = None
        self._reader_lock = asyncio.Lock()
        self.saved = 0
        self.last_saved_at: float | None = None

    @property
    def name(self) -> str:
        return self.topic.get_topic_name()

    async def save(self, partition: int, data: bytes) -> None:
        """Write one checkpoint and wait until the broker has every chunk."""
        if not self._declared:
            await self.topic.maybe_declare()
            self._declared = True
        checkpoint_id = uuid.uuid4().hex
        pieces = chunk(data)
        for index, piece in enumerate(pieces):
            stored = await self.app.producer.send_and_wait(
                self.name,
                f"{partition}:{index}".encode(),
                piece,
                partition,
                None,
                [
                    (ID_HEADER, checkpoint_id.encode()),
                    (PART_HEADER, f"{index}/{len(pieces)}".encode()),
                ],
            )
            if stored.offset < 0:
                # Kafka never does this with acks; a test broker (Tansu) sometimes does.
                raise CheckpointError(
                    f"the broker acknowledged checkpoint {self.name}[{partition}] without "
                    "storing it; it is written again at the next checkpoint"
                )
        self.saved += 1
        self.last_saved_at = time.time()

    async def load(self, partition: int, timeout: float = 30.0) -> bytes | None:
        """The newest complete checkpoint of ``partition``, or None if it has none."""
        async with self._reader_lock:
            reader = await self._ensure_reader()
            tp = TopicPartition(self.name, partition)
            if partition not in (reader.partitions_for_topic(self.name) or set()):
                await reader.topics()  # refreshes the metadata of every topic
                if partition not in (reader.partitions_for_topic(self.name) or set()):
                    return None
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]
            if end == 0:
                return None
            reader.seek(tp, max(0, end - LOOKBACK))
            records: list[Any] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                fetched = await reader.getmany(tp, timeout_ms=500)
                records.extend(fetched.get(tp, []))
                highwater = reader.highwater(tp) or end
                if await reader.position(tp) >= max(end, highwater):
                    break
            return newest_complete(records)

    async def _ensure_reader(self) -> AIOKafkaConsumer:
        if self._reader is None:
            self._reader = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap_servers,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **self._client_options,
            )
            await self._reader.start()
        return self._reader

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None
