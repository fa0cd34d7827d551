"""BatchConsumer's commit bookkeeping across rebalances and its handling of holes in
its own topics, on Faust's own structures.

The consumer is built by a real app but never started: these tests drive the
methods that decide what may be delivered and committed, with the group generation
moved by hand where a rebalance would move it, and seeks recorded instead of sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams import transport
from streams.app import CpimonApp, create_app
from streams.settings import Settings
from streams.transport import HOLE_PATIENCE, BatchConsumer, FetchHoles

EVENTS = "events-under-test"
TP0 = TP(EVENTS, 0)
OBSERVATIONS = "observations-under-test"
OBS1 = TP(OBSERVATIONS, 1)


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
    app, _topics = create_app(
        Settings(app_id="transport-test", events_topic=EVENTS, observations_topic=OBSERVATIONS)
    )
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
    return at_offsets(range(first, last + 1))


def at_offsets(offsets: Iterable[int]) -> list[Any]:
    return [
        SimpleNamespace(
            offset=offset,
            timestamp=1_000,
            timestamp_type=0,
            serialized_value_size=10,
            value=b"{}",
        )
        for offset in offsets
    ]


@pytest.fixture
def seeks(app: CpimonApp, monkeypatch: pytest.MonkeyPatch) -> list[tuple[TP, int]]:
    """The seeks the consumer makes, recorded instead of sent to its (unstarted) thread."""
    made: list[tuple[TP, int]] = []

    async def record_seek(tp: TP, offset: int) -> None:
        made.append((tp, offset))

    monkeypatch.setattr(consumer_of(app), "_seek", record_seek)
    return made


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


def test_the_worker_s_own_topics_are_the_contiguous_ones(app: CpimonApp) -> None:
    assert OBSERVATIONS in BatchConsumer.contiguous_topics
    assert EVENTS not in BatchConsumer.contiguous_topics  # producers may use transactions


def test_records_before_a_hole_are_delivered_and_the_hole_is_fetched_again(
    app: CpimonApp, loop: asyncio.AbstractEventLoop, seeks: list[tuple[TP, int]]
) -> None:
    consumer = consumer_of(app)
    consumer._expected = {OBS1: 10}
    deliverable = loop.run_until_complete(consumer._without_holes(OBS1, at_offsets([10, 11, 14])))
    assert [r.offset for r in deliverable] == [10, 11]
    assert seeks == [(OBS1, 12)]
    assert app.fetch_holes.seen == {OBSERVATIONS: 1}
    # The fetch from 12 finds the records the broker has made readable since.
    deliverable = loop.run_until_complete(consumer._without_holes(OBS1, records(12, 15)))
    assert [r.offset for r in deliverable] == [12, 13, 14, 15]
    assert consumer._expected[OBS1] == 16
    assert not app.fetch_holes.open and not app.fetch_holes.skipped


def test_a_fetch_starting_after_the_committed_offset_is_not_delivered(
    app: CpimonApp, loop: asyncio.AbstractEventLoop, seeks: list[tuple[TP, int]]
) -> None:
    consumer = consumer_of(app)
    consumer._expected = {OBS1: 100}  # what the seek to the committed offsets sets
    assert loop.run_until_complete(consumer._without_holes(OBS1, records(103, 110))) == []
    assert seeks == [(OBS1, 100)]


def test_a_hole_that_stays_is_given_up_after_the_patience_and_counted(
    app: CpimonApp,
    loop: asyncio.AbstractEventLoop,
    seeks: list[tuple[TP, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = consumer_of(app)
    consumer._expected = {OBS1: 10}
    clock = [1_000.0]
    monkeypatch.setattr(transport, "hole_clock", lambda: clock[0])
    fetch = at_offsets([10, 13, 14])
    assert len(loop.run_until_complete(consumer._without_holes(OBS1, fetch))) == 1
    clock[0] += HOLE_PATIENCE / 2
    assert len(loop.run_until_complete(consumer._without_holes(OBS1, fetch[1:]))) == 0
    assert app.fetch_holes.seen == {OBSERVATIONS: 1}  # one hole, fetched twice
    clock[0] += HOLE_PATIENCE / 2
    deliverable = loop.run_until_complete(consumer._without_holes(OBS1, fetch[1:]))
    assert [r.offset for r in deliverable] == [13, 14]
    assert app.fetch_holes.skipped == {OBSERVATIONS: 2}  # offsets 11 and 12
    assert seeks == [(OBS1, 11), (OBS1, 11)]
    assert consumer._expected[OBS1] == 15


def test_a_new_hole_restarts_the_patience() -> None:
    holes = FetchHoles()
    assert holes.meet(OBS1, 11, now=0.0) == (False, 1)
    assert holes.meet(OBS1, 11, now=HOLE_PATIENCE - 1) == (False, 2)
    assert holes.meet(OBS1, 20, now=HOLE_PATIENCE + 5) == (False, 1)
    assert holes.seen == {OBSERVATIONS: 2}
