"""KPI samples from the KPI topic, routed like journey events to the observations topic."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from agents.pipeline import Ingestor, RoutedBatch
from models.errors import EventRejected
from models.routing import Groups, Router
from models.spec import Catalog, Indicator
from streams.codec import decode_kpi_sample
from streams.deadletter import DeadLetter


def sample_routes(catalog: Catalog) -> list[Indicator]:
    """Topic-sourced KPIs as routes over samples ``{"kpi", "value", "dims"}``."""
    return [
        dataclasses.replace(
            kpi,
            events=(kpi.name,),
            measure=dataclasses.replace(kpi.measure, path="value"),
            source="events",
        )
        for kpi in catalog.kpis
        if kpi.source == "topic"
    ]


class KpiIngestor:
    """Stage 1 for the KPI topic; counts into the journey ingestor's counters.

    KPI samples are few (one per KPI and window, typically), so this path
    favours reuse over speed.
    """

    def __init__(self, catalog: Catalog, ingestor: Ingestor) -> None:
        self.router = Router.compile(catalog, sample_routes(catalog))
        self.ingestor = ingestor

    def route(
        self, topic: str, partition: int, partitions: int, records: Sequence[Any], now: float
    ) -> RoutedBatch:
        ingestor = self.ingestor
        by_key: Groups = {}
        dead_letters = []
        newest: float | None = None
        for record in records:
            try:
                name, event_time, value, dims = decode_kpi_sample(
                    record.value,
                    now=now,
                    max_bytes=ingestor.max_event_bytes,
                    max_future_seconds=ingestor.max_future_seconds,
                )
            except EventRejected as rejection:
                dead_letters.append(
                    DeadLetter(
                        record.key,
                        record.value,
                        rejection.reason,
                        rejection.detail,
                        topic,
                        partition,
                        record.offset,
                    )
                )
                continue
            newest = event_time if newest is None else max(newest, event_time)
            sample = {"kpi": name, "value": value, "dims": dims}
            self.router.plan(name, sample)(name, sample, by_key, event_time, record.offset)
        ingestor.consumed[topic] = ingestor.consumed.get(topic, 0) + len(records)
        for letter in dead_letters:
            reason = (topic, letter.reason)
            ingestor.rejected[reason] = ingestor.rejected.get(reason, 0) + 1
        return RoutedBatch.of((topic, partition, partitions), records, newest, by_key, dead_letters)
