"""The Faust worker: thin agents joining the topics to the two pipeline stages.

``journey-events`` ──ingest──▶ ``cpimon-observations`` (keyed by indicator and
segment) ──aggregate──▶ windowed series ──▶ ``/metrics``.

Repartitioning by series means every (indicator, segment) series lives in
exactly one observation partition, hence on exactly one worker, which alone
exposes it.
"""

from __future__ import annotations

import logging
import time
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
from agents.health import BrokerProbe
from agents.pipeline import Aggregator, Ingestor
from models.routing import Router
from models.spec import Catalog
from streams.app import CpimonApp, Topics, create_app
from streams.checkpoints import CheckpointStore
from streams.settings import Settings
from streams.transport import RecordBatch

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """A configured worker: the Faust app, its topics, both stages and the metrics registry."""

    settings: Settings
    catalog: Catalog
    app: CpimonApp
    topics: Topics
    router: Router
    ingestor: Ingestor
    aggregator: Aggregator
    checkpointer: Checkpointer
    broker: BrokerProbe
    registry: CollectorRegistry


def build_worker(
    settings: Settings, catalog: Catalog, registry: CollectorRegistry | None = None
) -> Worker:
    """Wire agents, timers and the metrics page onto a new Faust app."""
    app, topics = create_app(settings)
    router = Router.compile(catalog)
    ingestor = Ingestor(
        router,
        settings.observation_partitions,
        max_event_bytes=settings.max_event_bytes,
        max_future_seconds=settings.max_future_seconds,
        dedupe_horizon=settings.dedupe_horizon,
    )
    aggregator = Aggregator(catalog, idle_timeout=settings.idle_timeout)
    client_options = settings.kafka_client_options()
    store = CheckpointStore(app, topics.checkpoints, settings.bootstrap_servers, client_options)
    checkpointer = Checkpointer(store, aggregator)
    broker = BrokerProbe(settings.bootstrap_servers, client_options)
    registry = CollectorRegistry() if registry is None else registry
    setup_prometheus_sensors(app, pattern="/metrics", registry=registry, name_prefix="faust")
    worker = Worker(
        settings,
        catalog,
        app,
        topics,
        router,
        ingestor,
        aggregator,
        checkpointer,
        broker,
        registry,
    )
    registry.register(WorkerCollector(worker))
    _wire_agents(worker)
    register_api(worker)
    return worker


def _wire_agents(worker: Worker) -> None:
    app, topics, settings = worker.app, worker.topics, worker.settings
    ingestor, aggregator, checkpointer = worker.ingestor, worker.aggregator, worker.checkpointer
    observations_topic = settings.observations_topic

    @app.agent(topics.events, name="cpimon.ingest")
    async def ingest(batches: StreamT[RecordBatch]) -> None:
        producer = app.producer
        async for batch in batches:
            partitions = app.consumer.topic_partitions(batch.topic) or batch.partition + 1
            result = ingestor.process(
                batch.topic, batch.partition, partitions, batch.records, time.time()
            )
            for target, value in result.records.items():
                await producer.send(observations_topic, None, value, target, None, None)
            for letter in result.dead_letters:
                await producer.send(
                    settings.dead_letter_topic,
                    letter.key,
                    letter.value,
                    None,
                    None,
                    letter.headers(),
                )

    @app.agent(topics.observations, name="cpimon.aggregate")
    async def aggregate(batches: StreamT[RecordBatch]) -> None:
        # Acks wait for the checkpoint that covers the batch (see agents/checkpointing.py).
        manual = cast(Stream, batches).noack()
        checkpointer.ack = manual.ack
        async for event in manual.events():
            batch: RecordBatch = event.value
            if batch.partition not in aggregator.partitions:
                await checkpointer.restore(batch.partition)
            aggregator.process(batch.partition, batch.records, time.monotonic())
            checkpointer.hold(batch.partition, event)

    @app.timer(interval=1.0)
    async def close_idle_windows() -> None:
        closed = aggregator.close_idle(time.monotonic(), settings.idle_timeout)
        checkpointer.touched(closed)

    @app.timer(interval=settings.checkpoint_interval)
    async def save_checkpoints() -> None:
        try:
            await checkpointer.checkpoint()
        except Exception as error:  # the broker may be away; held batches wait for the next try
            log.warning("checkpoint failed, will retry: %s", error)

    @app.timer(interval=5.0)
    async def probe_broker() -> None:
        await worker.broker.probe()

    async def checkpoint_before_rebalance() -> None:
        await checkpointer.checkpoint(list(aggregator.partitions))

    app.before_wait_empty = checkpoint_before_rebalance

    async def on_assigned(
        sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any
    ) -> None:
        # Faust sends the assigned partitions as the first positional argument.
        assigned: set[TP] = args[0] if args else set()
        mine = {tp.partition for tp in assigned if tp.topic == observations_topic}
        gone = aggregator.keep_only(mine)
        if gone:
            checkpointer.forget(gone)
            log.info("observation partitions %s now belong to another worker", sorted(gone))

    app.on_partitions_assigned.connect(on_assigned)
