"""Stage 1's sends: one delivery in flight, and what comes meanwhile merged into the next.

Stage 1 acks an input batch only once the broker has stored the observation
records routed from it (see ``agents/worker.py``, ``_deliver``).  Waiting for that
before taking the next batch costs a broker round trip per batch: with the small
batches of a moderate load (tens of records per fetch and partition), the round
trips alone filled the agent's time and the events queued for seconds.

:class:`Outbox` keeps routing while a delivery is in flight.  The batches routed
meanwhile wait, merged per source partition (:meth:`RoutedBatch.absorb`), and go
out as the next delivery as soon as the one in flight is stored: one record per
observation partition, every source's observations back to back in it.  Batches
are acked after their delivery, in the order they came.

Order matters to stage 2, which drops observations of a source older than those
it has applied (replays).  Deliveries never overlap, and a delivery holds one
record per observation partition, so a record resent by ``_deliver`` is still
stored before anything later of its source.  A delivery that fails for
good leaves the outbox failed: nothing later is sent or acked (it would be stored
ahead of the failed records), and every later :meth:`Outbox.put` raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agents.pipeline import IngestResult, RoutedBatch
from models.errors import CpimonError

log = logging.getLogger(__name__)

#: Input records that may wait for the delivery in flight before :meth:`Outbox.put` waits.
MAX_WAITING = 50_000

Deliver = Callable[[list[IngestResult]], Awaitable[None]]
Ack = Callable[[Any], Awaitable[Any]]


class OutboxFailed(CpimonError):
    """A delivery of stage 1 failed for good; nothing after it was sent or acked."""


class Outbox:
    """Routed batches waiting for the broker, sent one delivery at a time.

    ``finish`` encodes a routed batch (``Ingestor.finish``), ``deliver`` sends the
    records of a delivery and returns once the broker has stored every one, and
    ``ack`` (set by the agent, which may restart) acks an input batch.
    """

    def __init__(
        self,
        finish: Callable[[RoutedBatch], IngestResult],
        deliver: Deliver,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.finish = finish
        self.deliver = deliver
        self.max_waiting = max_waiting
        self.ack: Ack | None = None
        #: Deliveries made, and input batches they carried.
        self.deliveries = 0
        self.batches_delivered = 0
        self.failure: BaseException | None = None
        self._waiting: dict[tuple[str, int], RoutedBatch] = {}
        self._receipts: list[Any] = []
        self._waiting_size = 0
        self._sending: asyncio.Task[None] | None = None
        self._room = asyncio.Event()

    async def put(self, routed: RoutedBatch, receipt: Any) -> None:
        """Queue ``routed``; ``receipt`` (its Faust event) is acked once it is stored.

        Returns at once, unless more than ``max_waiting`` input records wait already:
        then once the delivery in flight has finished.
        """
        self._raise_if_failed()
        source = (routed.topic, routed.partition)
        held = self._waiting.get(source)
        if held is None:
            self._waiting[source] = routed
        else:
            held.absorb(routed)
        self._receipts.append(receipt)
        self._waiting_size += routed.size
        if self._sending is None:
            self._sending = asyncio.ensure_future(self._drain())
        while self._waiting_size >= self.max_waiting and self.failure is None:
            self._room.clear()
            await self._room.wait()
        self._raise_if_failed()

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing is in flight."""
        return self._sending is None and not self._waiting

    async def flush(self) -> None:
        """Return once everything put so far is delivered (or the outbox failed)."""
        while self._sending is not None:
            await asyncio.shield(self._sending)
        self._raise_if_failed()

    async def _drain(self) -> None:
        try:
            while self._waiting:
                waiting, receipts = self._waiting, self._receipts
                self._waiting, self._receipts, self._waiting_size = {}, [], 0
                self._room.set()
                await self.deliver([self.finish(routed) for routed in waiting.values()])
                if self.ack is None:
                    raise RuntimeError("Outbox.ack is not set: the agent must set it")
                for receipt in receipts:
                    await self.ack(receipt)
                self.deliveries += 1
                self.batches_delivered += len(receipts)
        except Exception as error:
            self.failure = error
            log.error(
                "stage 1 stopped sending: %s. Batches routed since are neither sent nor "
                "acked; restart the worker once the broker is healthy, and they are read "
                "again from the last committed offsets.",
                error,
            )
        finally:
            self._sending = None
            self._room.set()

    def _raise_if_failed(self) -> None:
        if self.failure is not None:
            raise OutboxFailed(
                f"an earlier delivery of stage 1 failed ({self.failure}); restart the worker "
                "once the broker is healthy"
            ) from self.failure
