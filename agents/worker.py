"""The Faust worker: thin agents joining the topics to the pipeline stages.

``journey-events`` ──ingest──▶ ``cpimon-observations`` (keyed by indicator and
segment) ──aggregate──▶ windowed series ──▶ ``/metrics``
                                  └─ closed windows ──▶ ``cpimon-windows`` ──links──▶ ``/metrics``

Repartitioning by series means every (indicator, segment) series lives in
exactly one observation partition, hence on exactly one worker, which alone
exposes it.  The windows topic has one partition, so all links live on one
worker too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from faust import Stream
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.types import TP, StreamT
from mode.types.signals import BaseSignalT
from prometheus_client import CollectorRegistry

from agents.api import register_api
from agents.checkpointing import Checkpointer
from agents.exporter import WorkerCollector
from agents.health import BrokerProbe, Outage
from agents.kpis import KpiIngestor, sample_routes
from agents.links import LinkBoard, encode_windows
from agents.outbox import Outbox
from agents.pipeline import Aggregator, Ingestor, IngestResult, RoutedBatch
from models.aggregation import ClosedWindow
from models.errors import CpimonError
from models.routing import Router
from models.spec import Catalog, Indicator
from streams.app import CpimonApp, Topics, create_app
from streams.checkpoints import CheckpointStore
from streams.settings import Settings
from streams.transport import FetchHoles, RecordBatch

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """A configured worker: the Faust app, its topics, its stages and the metrics registry."""

    settings: Settings
    catalog: Catalog
    app: CpimonApp
    topics: Topics
    router: Router
    ingestor: Ingestor
    kpi_ingestor: KpiIngestor
    aggregator: Aggregator
    checkpointer: Checkpointer
    links: LinkBoard
    link_checkpointer: Checkpointer
    broker: BrokerProbe
    registry: CollectorRegistry
    #: Holes the consumer met in the worker's own topics (kept by the app).
    fetch_holes: FetchHoles


def all_segments_views(catalog: Catalog) -> list[Indicator]:
    """Every segmented indicator once more without segments: its value over all segments,
    the series links and overview dashboards read."""
    return [
        dataclasses.replace(indicator, segment_by=())
        for indicator in catalog.indicators
        if indicator.segment_by and indicator.source == "events"
    ]


def build_worker(
    settings: Settings, catalog: Catalog, registry: CollectorRegistry | None = None
) -> Worker:
    """Wire agents, timers and the metrics page onto a new Faust app."""
    app, topics = create_app(settings)
    router = Router.compile(catalog, catalog.indicators + tuple(all_segments_views(catalog)))
    ingestor = Ingestor(
        router,
        settings.observation_partitions,
        max_event_bytes=settings.max_event_bytes,
        max_future_seconds=settings.max_future_seconds,
        dedupe_horizon=settings.dedupe_horizon,
    )
    aggregator = Aggregator(catalog, idle_timeout=settings.idle_timeout)
    links = LinkBoard(catalog)
    client_options = settings.kafka_client_options()

    async def flush() -> None:
        await app.producer.flush()

    def checkpointer(topic: Any, states: Any) -> Checkpointer:
        store = CheckpointStore(app, topic, settings.bootstrap_servers, client_options)
        return Checkpointer(store, states, flush)

    registry = CollectorRegistry() if registry is None else registry
    setup_prometheus_sensors(app, pattern="/metrics", registry=registry, name_prefix="faust")
    worker = Worker(
        settings=settings,
        catalog=catalog,
        app=app,
        topics=topics,
        router=router,
        ingestor=ingestor,
        kpi_ingestor=KpiIngestor(catalog, ingestor),
        aggregator=aggregator,
        checkpointer=checkpointer(topics.checkpoints, aggregator),
        links=links,
        link_checkpointer=checkpointer(topics.link_checkpoints, links),
        broker=BrokerProbe(settings.bootstrap_servers, client_options),
        registry=registry,
        fetch_holes=app.fetch_holes,
    )
    registry.register(WorkerCollector(worker))
    _wire_ingest(worker)
    _wire_aggregate(worker)
    _wire_links(worker)
    _wire_rebalance(worker)
    register_api(worker)
    return worker


#: (topic, key, value, partition, headers) of a record stage 1 produces.
OutgoingRecord = tuple[str, bytes | None, bytes | None, int | None, Any]
#: Sends of one record before stage 1 gives up on a broker that does not store it.
DELIVERY_ATTEMPTS = 5


def _stored(future: asyncio.Future[Any]) -> str | None:
    """None if the send stored its record, else what went wrong."""
    if future.cancelled():
        return "the send was cancelled"
    if future.exception() is not None:
        return f"the send failed: {future.exception()!r}"
    if future.result().offset < 0:
        # Kafka never answers a send with acks so; a test broker (Tansu) sometimes does.
        return "the broker acknowledged it without an offset (not stored)"
    return None


async def _deliver(worker: Worker, records: list[OutgoingRecord]) -> None:
    """Send ``(topic, key, value, partition, headers)`` records and wait until the broker
    has stored each, resending those it did not store.

    Faust flushes the producer before it commits, but a record whose send failed is
    flushed too: without this check its input offset would be committed and the record
    lost.  Waiting here keeps each partition's records in order (a resent record is
    stored before the next delivery's), which stage 2's replay detection relies on.
    """
    producer = worker.app.producer
    pending = records
    for attempt in range(1, DELIVERY_ATTEMPTS + 1):
        futures: list[asyncio.Future[Any]] = []
        for topic, key, value, partition, headers in pending:
            sent = await producer.send(topic, key, value, partition, None, headers)
            futures.append(cast(asyncio.Future[Any], sent))
        await asyncio.wait(futures)
        failed = [
            (record, problem)
            for record, future in zip(pending, futures, strict=True)
            if (problem := _stored(future)) is not None
        ]
        if not failed:
            return
        for (topic, *_rest), problem in failed:
            worker.ingestor.undelivered[topic] = worker.ingestor.undelivered.get(topic, 0) + 1
            log.warning("a record for %s was not stored (%s); sending it again", topic, problem)
        pending = [record for record, _problem in failed]
        await asyncio.sleep(0.1 * attempt)
    raise CpimonError(
        f"the broker did not store {len(pending)} records for {pending[0][0]} after "
        f"{DELIVERY_ATTEMPTS} attempts; check the broker's health. Stage 1 stops without "
        "committing them; once the worker is restarted, they are processed again."
    )


async def _send_results(worker: Worker, results: list[IngestResult]) -> None:
    """One delivery: one record per observation partition, holding every source's
    observations back to back, and the dead letters."""
    settings = worker.settings
    by_target: dict[int, list[bytes]] = {}
    for result in results:
        for target, value in result.records.items():
            by_target.setdefault(target, []).append(value)
    # One record per partition, not one per source: on the Tansu test broker, several
    # records sent at once to one partition sometimes left a send unanswered for good.
    records: list[OutgoingRecord] = [
        (settings.observations_topic, None, b"".join(values), target, None)
        for target, values in by_target.items()
    ]
    records += [
        (settings.dead_letter_topic, letter.key, letter.value, None, letter.headers())
        for result in results
        for letter in result.dead_letters
    ]
    await _deliver(worker, records)


def _acker(stream: StreamT[Any]) -> Callable[[tuple[Any, float]], Awaitable[None]]:
    """``Stream.ack`` for receipts ``(event, monotonic time received)``, with Faust's event
    runtime sensors fed (``faust_events_runtime_ms``): a noack stream drops the sensor
    state, so its runtime would go unrecorded.  The runtime of a batch of stage 1 runs
    from its receipt until its records are stored."""
    sensors = stream.app.sensors

    async def ack(receipt: tuple[Any, float]) -> None:
        event, received = receipt
        last_stream_to_ack = event.ack()
        message = event.message
        # Faust's Monitor sensors read "time_in" (monotonic) from their state.
        state = {sensor: {"time_in": received} for sensor in sensors}
        sensors.on_stream_event_out(message.tp, message.offset, stream, event, state)
        if last_stream_to_ack:
            sensors.on_message_out(message.tp, message.offset, message)

    return ack


def _wire_ingest(worker: Worker) -> None:
    app, topics = worker.app, worker.topics

    def partitions_of(batch: RecordBatch) -> int:
        return app.consumer.topic_partitions(batch.topic) or batch.partition + 1

    def wire(topic: Any, name: str, route: Callable[..., RoutedBatch]) -> None:
        # One outbox per input topic for the worker's life: an agent restarted by its
        # supervisor must not start a delivery beside one still in flight.
        outbox = Outbox(worker.ingestor.finish, functools.partial(_send_results, worker))

        @app.agent(topic, name=name)
        async def ingest(batches: StreamT[RecordBatch]) -> None:
            # Acked by the outbox once the batch's records are stored.
            manual = cast(Stream, batches).noack()
            outbox.ack = _acker(manual)
            async for event in manual.events():
                received = time.monotonic()
                batch: RecordBatch = event.value
                routed = route(
                    batch.topic, batch.partition, partitions_of(batch), batch.records, time.time()
                )
                await outbox.put(routed, (event, received))

    wire(topics.events, "cpimon.ingest", worker.ingestor.route)
    if sample_routes(worker.catalog):
        wire(topics.kpis, "cpimon.ingest_kpis", worker.kpi_ingestor.route)


def _wire_aggregate(worker: Worker) -> None:
    app, topics, settings = worker.app, worker.topics, worker.settings
    aggregator, checkpointer = worker.aggregator, worker.checkpointer
    linked = {name for link in worker.catalog.links for name in (link.cpi, link.kpi)}

    async def publish(closed: Iterable[ClosedWindow]) -> None:
        for value in encode_windows(closed, linked):
            await app.producer.send(settings.windows_topic, None, value, 0, None, None)

    def exclude(outage: Outage | None) -> None:
        if outage is not None:
            checkpointer.touched(aggregator.exclude_outage(outage.start, outage.end))

    @app.agent(topics.observations, name="cpimon.aggregate")
    async def aggregate(batches: StreamT[RecordBatch]) -> None:
        # Acks wait for the checkpoint that covers the batch (see agents/checkpointing.py).
        manual = cast(Stream, batches).noack()
        checkpointer.ack = manual.ack
        async for event in manual.events():
            batch: RecordBatch = event.value
            # A batch says the broker is back: take the outage out of the idle clocks
            # before this batch's sources count the others as silent.
            exclude(await worker.broker.recheck())
            if batch.partition not in aggregator.partitions:
                await checkpointer.restore(batch.partition)
            closed = aggregator.process(batch.partition, batch.records, time.time())
            await publish(closed)
            checkpointer.hold(batch.partition, event)

    @app.timer(interval=1.0)
    async def close_idle_windows() -> None:
        if worker.broker.up is False:
            # Nothing can arrive while the broker is away: that is no idleness, and
            # windows closed now would turn the events that follow the outage late.
            return
        closed = aggregator.close_idle(time.time(), settings.idle_timeout)
        for windows in closed.values():
            await publish(windows)
        checkpointer.touched(closed)

    @app.timer(interval=settings.checkpoint_interval)
    async def save_checkpoints() -> None:
        for saver in (checkpointer, worker.link_checkpointer):
            try:
                await saver.checkpoint()
            except Exception as error:  # the broker may be away; held batches wait
                log.warning("checkpoint to %s failed, will retry: %s", saver.store.name, error)

    @app.timer(interval=5.0)
    async def probe_broker() -> None:
        exclude(await worker.broker.probe())


def _wire_links(worker: Worker) -> None:
    app, topics = worker.app, worker.topics
    links, checkpointer = worker.links, worker.link_checkpointer

    @app.agent(topics.windows, name="cpimon.links")
    async def track_links(batches: StreamT[RecordBatch]) -> None:
        manual = cast(Stream, batches).noack()
        checkpointer.ack = manual.ack
        async for event in manual.events():
            batch: RecordBatch = event.value
            if batch.partition not in links.links:
                await checkpointer.restore(batch.partition)
            links.process(batch.partition, batch.records)
            checkpointer.hold(batch.partition, event)


def _wire_rebalance(worker: Worker) -> None:
    app, settings = worker.app, worker.settings
    aggregator, links = worker.aggregator, worker.links

    async def checkpoint_before_rebalance() -> None:
        await worker.checkpointer.checkpoint(list(aggregator.partitions))
        await worker.link_checkpointer.checkpoint(list(links.links))

    app.before_wait_empty = checkpoint_before_rebalance

    async def on_assigned(
        sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any
    ) -> None:
        # Faust sends the assigned partitions as the first positional argument.
        assigned: set[TP] = args[0] if args else set()
        for topic, state, checkpointer in (
            (settings.observations_topic, aggregator, worker.checkpointer),
            (settings.windows_topic, links, worker.link_checkpointer),
        ):
            mine = {tp.partition for tp in assigned if tp.topic == topic}
            gone = state.keep_only(mine)
            if gone:
                checkpointer.forget(gone)
                log.info("%s partitions %s now belong to another worker", topic, sorted(gone))
            # Restore now, not at the partition's next batch: a quiet partition must
            # keep exposing its series (and closing its windows) after it moved.
            for partition in sorted(mine - set(state.owned())):
                await checkpointer.restore(partition)

    app.on_partitions_assigned.connect(on_assigned)
