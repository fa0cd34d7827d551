"""Stage 1 and checkpoints count a record only once the broker reports where it stored it.

The producer here answers as a broker would (a future per send, resolved with the
record's metadata); it can be told to answer some sends with offset -1, as Tansu
sometimes does, or with an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from agents.pipeline import IngestResult
from agents.worker import DELIVERY_ATTEMPTS, OutgoingRecord, _deliver, _send_results
from models.errors import CheckpointError, CpimonError
from streams.checkpoints import CheckpointStore
from tests.unit.test_exporter import Worker as Stages


class Broker:
    """Stores what it is sent, except the sends ``answers`` say to drop."""

    def __init__(self, answers: Iterator[str]) -> None:
        self.answers = answers
        self.stored: list[tuple[str, bytes | None]] = []
        self.sends = 0

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> asyncio.Future[Any]:
        self.sends += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answer = next(self.answers, "store")
        if answer == "error":
            future.set_exception(RuntimeError("NotLeaderForPartition"))
        elif answer == "no offset":
            future.set_result(SimpleNamespace(offset=-1))
        else:
            self.stored.append((topic, value))
            future.set_result(SimpleNamespace(offset=len(self.stored) - 1))
        return future

    async def send_and_wait(self, *args: Any) -> Any:
        return await await_future(await self.send(*args))


async def await_future(future: asyncio.Future[Any]) -> Any:
    return await future


def stages_with(broker: Broker) -> Stages:
    stages = Stages()
    cast(Any, stages).app = SimpleNamespace(producer=broker)
    return stages


RECORDS: list[OutgoingRecord] = [
    ("observations", None, b"to partition 0", 0, None),
    ("observations", None, b"to partition 1", 1, None),
    ("dead-letters", b"key", b"{", None, [("reason", b"invalid_json")]),
]


def test_records_the_broker_did_not_store_are_sent_again_and_counted() -> None:
    broker = Broker(iter(["store", "no offset", "error", "store", "no offset"]))
    stages = stages_with(broker)
    asyncio.run(_deliver(cast(Any, stages), RECORDS))
    # Round 1 stores the first record; round 2 the second; round 3 the dead letter.
    assert broker.stored == [
        ("observations", b"to partition 0"),
        ("observations", b"to partition 1"),
        ("dead-letters", b"{"),
    ]
    assert broker.sends == 6
    assert stages.value("cpimon_records_undelivered_total", topic="observations") == 1
    assert stages.value("cpimon_records_undelivered_total", topic="dead-letters") == 2


def test_a_broker_that_never_stores_a_record_stops_stage_1_uncommitted() -> None:
    broker = Broker(iter(["store"] + ["no offset"] * DELIVERY_ATTEMPTS))
    with pytest.raises(CpimonError, match="did not store 1 records for observations"):
        asyncio.run(_deliver(cast(Any, stages_with(broker)), RECORDS[:2]))
    assert broker.sends == 1 + DELIVERY_ATTEMPTS


def checkpoint_store(broker: Broker) -> CheckpointStore:
    topic = SimpleNamespace(get_topic_name=lambda: "checkpoints")
    store = CheckpointStore(cast(Any, SimpleNamespace(producer=broker)), cast(Any, topic), [], {})
    store._declared = True  # the topic exists; nothing to create
    return store


def test_a_checkpoint_the_broker_did_not_store_is_refused() -> None:
    store = checkpoint_store(Broker(iter(["no offset"])))
    with pytest.raises(CheckpointError, match="without storing it"):
        asyncio.run(store.save(3, b"state"))
    assert store.saved == 0


def test_a_stored_checkpoint_is_counted() -> None:
    broker = Broker(iter([]))
    store = checkpoint_store(broker)
    asyncio.run(store.save(3, b"state"))
    assert store.saved == 1
    assert broker.stored == [("checkpoints", b"state")]


def test_one_delivery_sends_one_record_per_observation_partition() -> None:
    broker = Broker(iter([]))
    stages = stages_with(broker)
    cast(Any, stages).settings = SimpleNamespace(
        observations_topic="observations", dead_letter_topic="dead-letters"
    )
    letter = SimpleNamespace(key=b"k", value=b"{", headers=lambda: [("reason", b"invalid_json")])
    results = [
        IngestResult({0: b"source 0 to 0", 1: b"source 0 to 1"}, [], 3),
        IngestResult({0: b"source 1 to 0", 1: b"source 1 to 1"}, [cast(Any, letter)], 2),
    ]
    asyncio.run(_send_results(cast(Any, stages), results))
    assert broker.stored == [
        ("observations", b"source 0 to 0source 1 to 0"),
        ("observations", b"source 0 to 1source 1 to 1"),
        ("dead-letters", b"{"),
    ]
