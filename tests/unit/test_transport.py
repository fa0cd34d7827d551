"""BatchConsumer's commit bookkeeping across rebalances, on Faust's own structures.

The consumer is built by a real app but never started: these tests drive the
methods that decide what may be committed, with the group generation moved by hand
where a rebalance would move it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.app import CpimonApp, create_app
from streams.settings import Settings
from streams.transport import BatchConsumer

EVENTS = "events-under-test"
TP0 = TP(EVENTS, 0)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # The app's services bind their events to the loop current when it is made.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


@pytest.fixture
def app(loop: asyncio.AbstractEventLoop) -> Iterator[CpimonApp]:
    app, _topics = create_app(Settings(app_id="transport-test", events_topic=EVENTS))
    app.consumer_generation_id = 4
    # What subscribing an acking agent to the topic does when the app starts.
    app.topics.acking_topics.add(EVENTS)
    yield app
    if app._consumer is not None:
        # The consumer made, never started, its thread's event loop.
        app._consumer._thread.thread_loop.close()


def consumer_of(app: CpimonApp) -> BatchConsumer:
    consumer = app.consumer
    assert isinstance(consumer, BatchConsumer)
    return consumer


def records(first: int, last: int) -> list[Any]:
    return [
        SimpleNamespace(
            offset=offset,
            timestamp=1_000,
            timestamp_type=0,
            serialized_value_size=10,
            value=b"{}",
        )
        for offset in range(first, last + 1)
    ]


def test_an_ack_of_the_current_generation_counts(app: CpimonApp) -> None:
    consumer = consumer_of(app)
    consumer._committed_offset[TP0] = 100
    message = consumer._to_batch_message(TP0, records(100, 100))
    assert consumer.ack(message)
    assert consumer._new_offset(TP0) == 101


def test_a_skipped_batch_of_an_earlier_generation_does_not_move_the_commit(
    app: CpimonApp,
) -> None:
    consumer = consumer_of(app)
    # Delivered in generation 4, skipped by the stream after the rebalance to 5,
    # which acks what it skips.  Its record (offset 100, the committed offset) is
    # read again in generation 5 but not applied yet.
    stale = consumer._to_batch_message(TP0, records(100, 100))
    app.consumer_generation_id = 5
    consumer._committed_offset[TP0] = 100
    assert not consumer.ack(stale)
    assert stale.acked  # nothing waits for it
    assert consumer.stale_acks_ignored == 1
    # Faust's rule lets the first acked offset be one past the committed one, so the
    # stale ack alone would have committed 101 and lost record 100 on a crash.
    assert consumer._new_offset(TP0) is None


def test_a_batch_is_not_delivered_into_a_generation_that_began_during_its_commit(
    app: CpimonApp, loop: asyncio.AbstractEventLoop
) -> None:
    consumer = consumer_of(app)
    consumer._n_acked = consumer._commit_every or 1
    consumer._commit_every = consumer._n_acked
    delivered: list[Any] = []

    async def rebalance_during_commit(*_args: Any, **_kwargs: Any) -> bool:
        app.consumer_generation_id = 5
        return True

    async def callback(message: Any) -> None:
        delivered.append(message)

    consumer.commit = rebalance_during_commit  # type: ignore[method-assign]

    async def deliver() -> bool:
        return await consumer._deliver_batch(TP0, records(100, 120), 99, callback, 4)

    assert loop.run_until_complete(deliver()) is False
    assert delivered == []
    # No gap was left behind for records no agent was given.
    assert not consumer._gap[TP0]


def test_a_batch_of_the_current_generation_is_delivered_with_its_gap(
    app: CpimonApp, loop: asyncio.AbstractEventLoop
) -> None:
    consumer = consumer_of(app)
    consumer._committed_offset[TP0] = 100
    delivered: list[Any] = []

    async def callback(message: Any) -> None:
        delivered.append(message)

    async def deliver() -> bool:
        return await consumer._deliver_batch(TP0, records(100, 120), 99, callback, 4)

    assert loop.run_until_complete(deliver()) is True
    assert [m.offset for m in delivered] == [120]
    assert len(delivered[0].value) == 21
    assert consumer.ack(delivered[0])
    assert consumer._new_offset(TP0) == 121
