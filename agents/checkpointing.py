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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from models import state
from streams.checkpoints import CheckpointStore

log = logging.getLogger(__name__)

Ack = Callable[[Any], Awaitable[Any]]


class PartitionedState(Protocol):
    """What a checkpointer saves: some state per partition this worker owns."""

    def owned(self) -> Mapping[int, Any]: ...

    def adopt(self, partition: int, restored: Any) -> None: ...

    def partition(self, number: int) -> Any: ...


class Checkpointer:
    """Holds processed batches per partition until a checkpoint covers them.

    ``flush`` is awaited before every checkpoint: records the agent produced
    while processing the covered batches (closed windows, for instance) must
    be on the broker before the state saying they were produced is.
    """

    def __init__(
        self,
        store: CheckpointStore,
        states: PartitionedState,
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.states = states
        self.flush = flush
        self.ack: Ack | None = None
        self._held: dict[int, list[Any]] = {}
        self._dirty: set[int] = set()
        self._lock = asyncio.Lock()
        self._restoring: dict[int, asyncio.Lock] = {}
        self.restored = 0
        self.failures = 0

    def hold(self, partition: int, event: Any) -> None:
        """Keep ``event`` unacked until the next checkpoint of ``partition``."""
        self._held.setdefault(partition, []).append(event)
        self._dirty.add(partition)

    def touched(self, partitions: Iterable[int]) -> None:
        """State changed outside a batch (idle windows closed): checkpoint it too."""
        self._dirty.update(partitions)

    async def restore(self, partition: int) -> None:
        """Adopt the partition's newest checkpoint, or start it fresh if it has none.

        Once per ownership: the assignment handler and the agent's first batch may
        both ask, and a second restore would overwrite batches applied since.
        """
        lock = self._restoring.setdefault(partition, asyncio.Lock())
        async with lock:
            if partition not in self.states.owned():
                await self._restore(partition)

    async def _restore(self, partition: int) -> None:
        data = await self.store.load(partition)
        if data is None:
            log.info("%s partition %d: no checkpoint, starting empty", self.store.name, partition)
            self.states.partition(partition)
            return
        restored = state.loads(data)
        self.states.adopt(partition, restored)
        self.restored += 1
        log.info(
            "%s partition %d: restored from its checkpoint (%r)",
            self.store.name,
            partition,
            restored,
        )

    async def checkpoint(self, partitions: Iterable[int] | None = None) -> int:
        """Save every changed partition (or those given) and ack what they cover."""
        async with self._lock:
            wanted = set(self._dirty if partitions is None else partitions)
            if wanted:
                await self.flush()
            saved = 0
            for partition in sorted(wanted):
                owned = self.states.owned().get(partition)
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
