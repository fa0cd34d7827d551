"""The Faust application and its topics, built from :class:`~streams.settings.Settings`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import ConsumerT, TopicT, TransportT

from streams.settings import Settings
from streams.transport import BATCH_CODEC, BatchConsumer, BatchTransport, FetchHoles


class CpimonApp(faust.App):
    """A Faust app whose consumer delivers batch topics as :class:`RecordBatch` values."""

    #: Awaited during a rebalance once no new batch can start, before Faust waits for
    #: every delivered message to be acked (a worker checkpoints and acks there).
    before_wait_empty: Callable[[], Awaitable[None]] | None = None
    #: Seconds a broker may hold a fetch without data (Settings.fetch_max_wait).
    fetch_max_wait: float = Settings.fetch_max_wait
    #: Holes the consumer met in the worker's own topics (see streams/transport.py).
    fetch_holes: FetchHoles

    def _new_transport(self) -> TransportT:
        return BatchTransport(self.conf.broker_consumer, self)

    async def _consumer_wait_empty(self, consumer: ConsumerT, logger: Any) -> None:
        if self.before_wait_empty is not None:
            await self.before_wait_empty()
        await super()._consumer_wait_empty(consumer, logger)


@dataclass(frozen=True)
class Topics:
    """The topics a worker reads and writes."""

    #: Journey events, consumed in batches.
    events: TopicT
    #: KPI samples, consumed in batches.
    kpis: TopicT
    #: Internal: observations keyed by (indicator, segment), consumed in batches.
    observations: TopicT
    #: Rejected messages with their reason in headers.
    dead_letters: TopicT
    #: Internal, compacted: state checkpoints, one partition per observation partition.
    checkpoints: TopicT
    #: Internal, one partition: closed windows for the links agent.
    windows: TopicT
    #: Internal, compacted: checkpoints of the links state.
    link_checkpoints: TopicT


def credentials(settings: Settings) -> Any:
    """Faust broker credentials for the configured security protocol (None for PLAINTEXT)."""
    context = settings.ssl_context()
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(settings: Settings) -> tuple[CpimonApp, Topics]:
    """The Faust app with every setting taken from ``settings``, and its topics."""
    app = CpimonApp(
        settings.app_id,
        broker=settings.broker_urls,
        broker_credentials=credentials(settings),
        autodiscover=False,
        datadir=settings.data_dir,
        store="memory://",
        web_enabled=True,
        web_bind=settings.metrics_host,
        web_host=settings.metrics_host,
        web_port=settings.metrics_port,
        web_in_thread=False,
        consumer_auto_offset_reset=settings.auto_offset_reset,
        broker_commit_interval=settings.commit_interval,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_max_poll_records=settings.max_poll_records,
        producer_max_batch_size=settings.producer_max_batch_size,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        loghandlers=[],
    )
    app.fetch_max_wait = settings.fetch_max_wait
    app.fetch_holes = FetchHoles()
    topics = Topics(
        events=app.topic(settings.events_topic, value_serializer=BATCH_CODEC),
        kpis=app.topic(settings.kpi_topic, value_serializer=BATCH_CODEC),
        observations=app.topic(
            settings.observations_topic,
            value_serializer=BATCH_CODEC,
            partitions=settings.observation_partitions,
            internal=True,
        ),
        dead_letters=app.topic(
            settings.dead_letter_topic,
            value_serializer="raw",
            key_serializer="raw",
            partitions=settings.topic_partitions,
            internal=True,
        ),
        checkpoints=app.topic(
            settings.checkpoint_topic,
            value_serializer="raw",
            key_serializer="raw",
            partitions=settings.observation_partitions,
            internal=True,
            compacting=True,
        ),
        windows=app.topic(
            settings.windows_topic, value_serializer=BATCH_CODEC, partitions=1, internal=True
        ),
        link_checkpoints=app.topic(
            settings.link_checkpoint_topic,
            value_serializer="raw",
            key_serializer="raw",
            partitions=1,
            internal=True,
            compacting=True,
        ),
    )
    BatchConsumer.batch_topics.update(
        {
            settings.events_topic,
            settings.kpi_topic,
            settings.observations_topic,
            settings.windows_topic,
        }
    )
    # Written by workers only, never in transactions nor compacted: no offset is empty.
    BatchConsumer.contiguous_topics.update({settings.observations_topic, settings.windows_topic})
    logging.getLogger("faust").setLevel(settings.log_level.upper())
    return app, topics
