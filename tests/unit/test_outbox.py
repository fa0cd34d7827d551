"""Stage 1's outbox: one delivery in flight, batches routed meanwhile merged into the next."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from agents.outbox import Outbox, OutboxFailed
from agents.pipeline import IngestResult, RoutedBatch
from models.errors import CpimonError
from streams.observations import decode_observations
from tests.unit.test_pipeline import PARTITIONS, TOPIC, Record, ingestor, simulated

NOW = 1_800_000_100.0


class Broker:
    """Deliveries as the worker makes them, each held until the test lets it finish."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.deliveries: list[list[IngestResult]] = []
        self.gates: list[asyncio.Event] = []
        self.fail_on = fail_on

    async def deliver(self, results: list[IngestResult]) -> None:
        self.deliveries.append(results)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail_on == len(self.deliveries):
            raise CpimonError("the broker did not store 1 records for observations")

    async def finish(self, number: int) -> None:
        """Let delivery ``number`` (from 1) finish, once it has started."""
        while len(self.gates) < number:
            await asyncio.sleep(0)
        self.gates[number - 1].set()
        for _ in range(5):
            await asyncio.sleep(0)


class Batches:
    """Routed batches of simulated events, with consecutive offsets per source partition."""

    def __init__(self) -> None:
        self.stage = ingestor()
        self.events = iter(simulated(400))
        self.offsets: dict[int, int] = {}

    def route(self, partition: int, size: int = 10) -> RoutedBatch:
        records = []
        for _ in range(size):
            offset = self.offsets.get(partition, 0)
            self.offsets[partition] = offset + 1
            records.append(Record(None, orjson.dumps(next(self.events)), offset))
        return self.stage.route(TOPIC, partition, 2, records, NOW)


def outbox_for(broker: Broker, batches: Batches, **options: Any) -> tuple[Outbox, list[str]]:
    acked: list[str] = []

    async def ack(receipt: str) -> None:
        acked.append(receipt)

    outbox = Outbox(batches.stage.finish, broker.deliver, **options)
    outbox.ack = ack
    return outbox, acked


def offsets_in(result: IngestResult) -> list[int]:
    """Input offsets of every observation of a result, over all observation partitions."""
    return sorted(
        offset
        for value in result.records.values()
        for group in decode_observations(value).groups
        for offset in group.offsets
    )


def observations_of(routed: RoutedBatch) -> list[tuple[float, float, int]]:
    return [observation for group in routed.by_key.values() for observation in group]


def test_batches_routed_during_a_delivery_go_out_merged_in_the_next() -> None:
    async def scenario() -> None:
        broker, batches = Broker(), Batches()
        outbox, acked = outbox_for(broker, batches)
        first = batches.route(0)
        await outbox.put(first, "a")
        await asyncio.sleep(0)
        assert len(broker.deliveries) == 1 and acked == []

        later = [(batches.route(0), "b"), (batches.route(1), "c"), (batches.route(0), "d")]
        expected_offsets = {
            0: sorted(o for r, _ in later if r.partition == 0 for _, _, o in observations_of(r)),
            1: sorted(o for r, _ in later if r.partition == 1 for _, _, o in observations_of(r)),
        }
        for routed, receipt in later:
            await outbox.put(routed, receipt)
        assert len(broker.deliveries) == 1 and acked == []  # nothing acked before it is stored

        await broker.finish(1)
        assert acked == ["a"]
        assert len(broker.deliveries) == 2
        second = broker.deliveries[1]
        # One result per source partition, each a record per observation partition.
        assert len(second) == 2
        assert all(sorted(result.records) == list(range(PARTITIONS)) for result in second)
        sources = [decode_observations(result.records[0]).partition for result in second]
        assert sorted(sources) == [0, 1]
        for source, result in zip(sources, second, strict=True):
            assert offsets_in(result) == expected_offsets[source]
            last = max(batches.offsets[source] - 1, 0)
            assert decode_observations(result.records[0]).last_offset == last

        await broker.finish(2)
        assert acked == ["a", "b", "c", "d"]
        assert outbox.idle and outbox.deliveries == 2 and outbox.batches_delivered == 4

    asyncio.run(scenario())


def test_a_failed_delivery_stops_the_outbox_and_nothing_later_is_acked() -> None:
    async def scenario() -> None:
        broker, batches = Broker(fail_on=1), Batches()
        outbox, acked = outbox_for(broker, batches)
        await outbox.put(batches.route(0), "a")
        await outbox.put(batches.route(0), "b")  # waits behind the delivery that fails
        await broker.finish(1)
        assert acked == []
        assert isinstance(outbox.failure, CpimonError)
        with pytest.raises(OutboxFailed, match="restart the worker"):
            await outbox.put(batches.route(1), "c")
        with pytest.raises(OutboxFailed):
            await outbox.flush()
        await asyncio.sleep(0)
        assert len(broker.deliveries) == 1  # "b" was never sent ahead of "a"
        assert acked == []

    asyncio.run(scenario())


def test_put_waits_while_too_many_records_wait() -> None:
    async def scenario() -> None:
        broker, batches = Broker(), Batches()
        outbox, acked = outbox_for(broker, batches, max_waiting=25)
        await outbox.put(batches.route(0), "a")
        await asyncio.sleep(0)  # "a" is in flight; what follows waits
        await outbox.put(batches.route(0), "b")
        full = asyncio.ensure_future(outbox.put(batches.route(1, size=15), "c"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not full.done()  # 25 records wait for the delivery in flight
        await broker.finish(1)
        await asyncio.wait_for(full, 1.0)
        assert acked == ["a"]
        flushed = asyncio.ensure_future(outbox.flush())
        await broker.finish(2)
        await asyncio.wait_for(flushed, 1.0)
        assert acked == ["a", "b", "c"]

    asyncio.run(scenario())


def test_an_outbox_without_ack_fails_loudly() -> None:
    async def scenario() -> None:
        broker, batches = Broker(), Batches()
        outbox = Outbox(batches.stage.finish, broker.deliver)
        await outbox.put(batches.route(0), "a")
        await broker.finish(1)
        assert isinstance(outbox.failure, RuntimeError)
        assert "ack is not set" in str(outbox.failure)

    asyncio.run(scenario())
