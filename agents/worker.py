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
from typing import Any

from faust.sensors.prometheus import setup_prometheus_sensors
from faust.types import TP, StreamT
from mode.types.signals import BaseSignalT
from prometheus_client import CollectorRegistry

from agents.exporter import WorkerCollector
from agents.pipeline import Aggregator, Ingestor
from models.routing import Router
from models.spec import Catalog
from streams.app import CpimonApp, Topics, create_app
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
    )
    aggregator = Aggregator(catalog, idle_timeout=settings.idle_timeout)
    registry = CollectorRegistry() if registry is None else registry
    setup_prometheus_sensors(app, pattern="/metrics", registry=registry, name_prefix="faust")
    registry.register(WorkerCollector(catalog, ingestor, aggregator, router))
    worker = Worker(settings, catalog, app, topics, router, ingestor, aggregator, registry)
    _wire_agents(worker)
    return worker


def _wire_agents(worker: Worker) -> None:
    app, topics, settings = worker.app, worker.topics, worker.settings
    ingestor, aggregator = worker.ingestor, worker.aggregator
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
        async for batch in batches:
            aggregator.process(
                batch.partition, (record.value for record in batch.records), time.monotonic()
            )

    @app.timer(interval=1.0)
    async def close_idle_windows() -> None:
        aggregator.close_idle(time.monotonic(), settings.idle_timeout)

    async def on_revoked(
        sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any
    ) -> None:
        # Faust sends the revoked partitions as the first positional argument.
        revoked: set[TP] = args[0] if args else set()
        gone = [tp.partition for tp in revoked if tp.topic == observations_topic]
        if gone:
            log.info("no longer owning observation partitions %s", sorted(gone))
            aggregator.release(gone)

    app.on_partitions_revoked.connect(on_revoked)
