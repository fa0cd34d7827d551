"""When partition state is saved, and when offsets may be committed.

The aggregate agent does not let Faust ack its batches as it goes: it *holds*
them.  A checkpoint snapshots a partition's state (windows, clock, next
offset, input offsets applied) together with the batches it contains, writes
it, and only then acks those batches, so a committed offset is always covered
by a checkpoint.  After a crash the partition's next owner restores the newest
checkpoint, the consumer resumes at or before its offset, and nothing is
counted twice or lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from agents.pipeline import Aggregator
from models import state
from models.aggregation import PartitionSeries
from streams.checkpoints import CheckpointStore

log = logging.getLogger(__name__)

Ack = Callable[[Any], Awaitable[Any]]


class Checkpointer:
    """Holds processed batches per partition until a checkpoint covers them."""

    def __init__(self, store: CheckpointStore, aggregator: Aggregator) -> None:
        self.store = store
        self.aggregator = aggregator
        self.ack: Ack | None = None
        self._held: dict[int, list[Any]] = {}
        self._dirty: set[int] = set()
        self._lock = asyncio.Lock()
        self.restored = 0
        self.failures = 0

    def hold(self, partition: int, event: Any) -> None:
        """Keep ``event`` unacked until the next checkpoint of ``partition``."""
        self._held.setdefault(partition, []).append(event)
        self._dirty.add(partition)

    def touched(self, partitions: Iterable[int]) -> None:
        """State changed outside a batch (idle windows closed): checkpoint it too."""
        self._dirty.update(partitions)

    async def restore(self, partition: int) -> PartitionSeries:
        """The partition's state from its newest checkpoint, or fresh state if it has none."""
        data = await self.store.load(partition)
        if data is None:
            log.info("observation partition %d: no checkpoint, starting empty", partition)
            return self.aggregator.partition(partition)
        restored = state.loads(data)
        if not isinstance(restored, PartitionSeries):
            raise TypeError(f"checkpoint of partition {partition} is not partition state")
        self.aggregator.adopt(partition, restored)
        self.restored += 1
        log.info(
            "observation partition %d: restored %d series, resuming at offset %d",
            partition,
            len(restored.series),
            restored.next_offset,
        )
        return restored

    async def checkpoint(self, partitions: Iterable[int] | None = None) -> int:
        """Save every changed partition (or those given) and ack what they cover."""
        async with self._lock:
            wanted = set(self._dirty if partitions is None else partitions)
            saved = 0
            for partition in sorted(wanted):
                owned = self.aggregator.partitions.get(partition)
                events = self._held.pop(partition, [])
                self._dirty.discard(partition)
                if owned is None:
                    continue
                # Snapshot and the events it covers are taken together, before any
                # await, so batches processed meanwhile wait for the next checkpoint.
                data = state.dumps(owned)
                try:
                    await self.store.save(partition, data)
                except Exception:
                    self.failures += 1
                    self._held.setdefault(partition, [])[:0] = events
                    self._dirty.add(partition)
                    raise
                await self._ack_all(events)
                saved += 1
            return saved

    async def _ack_all(self, events: list[Any]) -> None:
        if self.ack is None:
            return
        for event in events:
            await self.ack(event)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions now owned elsewhere: their held batches were acked by the last checkpoint."""
        for partition in partitions:
            self._held.pop(partition, None)
            self._dirty.discard(partition)
