"""Prometheus view of a worker, read from the estimators at scrape time.

Nothing on the event path touches prometheus-client: the collector walks the
series this worker owns when Prometheus scrapes.  An undefined value (a
window without a usable sample, an NPS of nobody) is left out rather than
exposed as NaN.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from models.routing import split_series_key
from models.spec import Indicator
from streams.transport import HOLE_PATIENCE

if TYPE_CHECKING:
    from agents.worker import Worker

KINDS = ("cpi", "kpi", "metric")


def _identity_labels(indicator: Indicator) -> dict[str, str]:
    labels = {indicator.kind: indicator.name, "owner": indicator.owner}
    if indicator.kind == "cpi":
        labels["journey_step"] = indicator.journey_step
    return labels


def _by_topic(name: str, documentation: str, counts: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=["topic"])
    for topic, count in sorted(counts.items()):
        family.add_metric([topic], count)
    return family


class WorkerCollector(Collector):
    """Every cpimon_* metric of one worker."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.catalog = worker.catalog
        self.ingestor = worker.ingestor
        self.aggregator = worker.aggregator
        self.router = worker.router

    def describe(self) -> Iterator[Metric]:
        # Families depend on the catalog, not on data; describing none keeps
        # registration from calling collect() before the worker runs.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from self._indicator_families()
        yield from self._target_families()
        yield from self._pipeline_families()
        yield from self._reliability_families()
        yield from self._link_families()

    def _indicator_families(self) -> Iterator[Metric]:
        families: dict[tuple[str, str], Metric] = {}

        def family(kind: str, suffix: str, doc: str, counter: bool = False) -> Metric:
            name = f"cpimon_{kind}_{suffix}"
            if (kind, suffix) not in families:
                cls = CounterMetricFamily if counter else GaugeMetricFamily
                families[(kind, suffix)] = cls(name, doc, labels=None)
            return families[(kind, suffix)]

        late: dict[tuple[str, str], int] = {}
        open_windows = 0
        for owned in self.aggregator.owned().values():
            open_windows += owned.open_windows()
            for key, series in owned.series.items():
                name, segment = split_series_key(key)
                indicator = owned.indicators.get(name)
                if indicator is None:
                    continue
                labels = _identity_labels(indicator)
                labels.update(zip((s.label for s in indicator.segment_by), segment, strict=False))
                kind: str = indicator.kind
                closed, live = series.last_closed, series.live
                if closed is not None and closed.value is not None:
                    family(kind, "value", f"{kind} value of the last closed window").add_sample(
                        f"cpimon_{kind}_value", labels, closed.value
                    )
                if live is not None and live.value is not None:
                    family(
                        kind, "live_value", f"{kind} value of the open window so far"
                    ).add_sample(f"cpimon_{kind}_live_value", labels, live.value)
                family(kind, "events", f"Events counted into the {kind}", counter=True).add_sample(
                    f"cpimon_{kind}_events_total", labels, series.events_total
                )
                detector = owned.detectors.get(key)
                if detector is not None:
                    family(
                        kind, "below_target", f"1 if the last {kind} window breached its target"
                    ).add_sample(
                        f"cpimon_{kind}_below_target", labels, float(detector.below_target)
                    )
                    family(kind, "drop_active", f"1 while a {kind} drop is detected").add_sample(
                        f"cpimon_{kind}_drop_active", labels, float(detector.drop_active)
                    )
                    family(kind, "drops", f"{kind} drops detected", counter=True).add_sample(
                        f"cpimon_{kind}_drops_total", labels, detector.drops_total
                    )
                    if detector.baseline is not None:
                        family(kind, "baseline", f"normal {kind} value (EW mean)").add_sample(
                            f"cpimon_{kind}_baseline", labels, detector.baseline
                        )
                    if detector.deviation is not None:
                        family(
                            kind,
                            "deviation",
                            f"{kind} distance from normal, in standard deviations",
                        ).add_sample(f"cpimon_{kind}_deviation", labels, detector.deviation)
                late_key = (kind, name)
                late[late_key] = late.get(late_key, 0) + series.late_total
        yield from families.values()
        late_family = CounterMetricFamily(
            "cpimon_events_late", "Events dropped because their window had closed", labels=None
        )
        for (kind, name), count in sorted(late.items()):
            late_family.add_sample("cpimon_events_late_total", {kind: name}, count)
        yield late_family
        yield GaugeMetricFamily(
            "cpimon_open_windows", "Windows open on this worker", value=open_windows
        )
        yield GaugeMetricFamily(
            "cpimon_owned_partitions",
            "Observation partitions whose series this worker exposes",
            value=len(self.aggregator.owned()),
        )

    def _target_families(self) -> Iterator[Metric]:
        for kind in KINDS:
            targets = GaugeMetricFamily(
                f"cpimon_{kind}_target", f"Target of each {kind}", labels=[kind, "owner", "bound"]
            )
            for indicator in self.catalog.indicators:
                if indicator.kind == kind and indicator.target is not None:
                    targets.add_metric(
                        [indicator.name, indicator.owner, indicator.target.bound],
                        indicator.target.value,
                    )
            if targets.samples:
                yield targets

    def _pipeline_families(self) -> Iterator[Metric]:
        consumed = CounterMetricFamily(
            "cpimon_events_consumed", "Messages read from input topics", labels=["topic"]
        )
        for topic, count in sorted(self.ingestor.consumed.items()):
            consumed.add_metric([topic], count)
        yield consumed
        rejected = CounterMetricFamily(
            "cpimon_events_rejected",
            "Messages sent to the dead-letter topic, by reason",
            labels=["topic", "reason"],
        )
        for (topic, reason), count in sorted(self.ingestor.rejected.items()):
            rejected.add_metric([topic, reason], count)
        yield rejected
        yield CounterMetricFamily(
            "cpimon_observations_routed",
            "Observations this worker sent to the observations topic",
            value=self.ingestor.routed,
        )
        yield _by_topic(
            "cpimon_records_undelivered",
            "Sends of records (observations, dead letters) the broker did not store; each "
            "is sent again",
            self.ingestor.undelivered,
        )
        holes = self.worker.fetch_holes
        yield _by_topic(
            "cpimon_fetch_holes",
            "Fetches of the worker's own topics that skipped offsets the broker had not made "
            "readable yet; each hole was fetched again",
            holes.seen,
        )
        yield _by_topic(
            "cpimon_offsets_skipped",
            "Offsets of the worker's own topics still missing after fetching them again for "
            f"{HOLE_PATIENCE:g} s, and skipped",
            holes.skipped,
        )
        yield CounterMetricFamily(
            "cpimon_observations_applied",
            "Observations this worker applied to its windows",
            value=self.aggregator.applied,
        )
        histogram = self.ingestor.delay
        delay = HistogramMetricFamily(
            "cpimon_event_delay_seconds",
            "Processing time minus event time",
            labels=None,
        )
        delay.add_metric(
            [],
            [(_bound(b), float(c)) for b, c in histogram.cumulative()],
            sum_value=histogram.total,
        )
        yield delay
        folded = CounterMetricFamily(
            "cpimon_segment_values_folded",
            "Segment values beyond the cap, counted into 'other'",
            labels=["cpi", "label"],
        )
        for (name, label), count in sorted(self.router.folded().items()):
            folded.add_metric([name, label], count)
        yield folded
        unmeasurable = CounterMetricFamily(
            "cpimon_events_unmeasurable",
            "Matching events whose measured field was missing or not usable",
            labels=["indicator"],
        )
        for name, count in sorted(self.router.unmeasurable().items()):
            unmeasurable.add_metric([name], count)
        yield unmeasurable

    def _reliability_families(self) -> Iterator[Metric]:
        worker = self.worker
        if worker.broker.up is not None:
            yield GaugeMetricFamily(
                "cpimon_broker_up",
                "1 if the worker reached the Kafka cluster at its last probe (every 5 s)",
                value=1.0 if worker.broker.up else 0.0,
            )
        duplicates = CounterMetricFamily(
            "cpimon_events_duplicate",
            "Events dropped because their messageId was seen recently on the same partition",
            labels=["topic"],
        )
        for topic, count in sorted(self.ingestor.duplicates.items()):
            duplicates.add_metric([topic], count)
        yield duplicates
        yield CounterMetricFamily(
            "cpimon_observations_replayed",
            "Observations skipped because a checkpoint already held them (replays after a crash)",
            value=sum(owned.replayed for owned in self.aggregator.owned().values()),
        )
        yield CounterMetricFamily(
            "cpimon_checkpoints_saved",
            "Partition checkpoints written by this worker",
            value=worker.checkpointer.store.saved,
        )
        yield CounterMetricFamily(
            "cpimon_checkpoints_restored",
            "Partition states restored from a checkpoint by this worker",
            value=worker.checkpointer.restored,
        )

    def _link_families(self) -> Iterator[Metric]:
        links = self.worker.links.current()
        if links is None:
            return
        pair = ["cpi", "kpi"]
        by_lag = [*pair, "lag_seconds"]
        correlation = GaugeMetricFamily(
            "cpimon_link_correlation", "Pearson r of the CPI and the KPI lag later", labels=by_lag
        )
        lower = GaugeMetricFamily(
            "cpimon_link_correlation_lower", "Lower bound of r's 95 % interval", labels=by_lag
        )
        upper = GaugeMetricFamily(
            "cpimon_link_correlation_upper", "Upper bound of r's 95 % interval", labels=by_lag
        )
        samples = GaugeMetricFamily(
            "cpimon_link_samples", "Window pairs behind the correlation", labels=by_lag
        )
        best_lag = GaugeMetricFamily(
            "cpimon_link_best_lag_seconds",
            "Lag with the strongest significant correlation",
            labels=pair,
        )
        impact = GaugeMetricFamily(
            "cpimon_link_impact", "KPI units per CPI unit at the best lag", labels=pair
        )
        granger = GaugeMetricFamily(
            "cpimon_link_granger_p",
            "p-value: does the CPI's past add to predicting the KPI (Granger-style F test)",
            labels=pair,
        )
        confirmed = GaugeMetricFamily(
            "cpimon_link_confirmed",
            "1 once the link held for min_windows windows",
            labels=["cpi", "kpi", "cpi_owner", "kpi_owner"],
        )
        catalog = self.catalog
        for (cpi, kpi), tracker in sorted(links.trackers.items()):
            for stats in tracker.lags():
                labels = [cpi, kpi, f"{stats.lag * tracker.window:g}"]
                samples.add_metric(labels, stats.n)
                if stats.r is not None:
                    correlation.add_metric(labels, stats.r)
                if stats.low is not None and stats.high is not None:
                    lower.add_metric(labels, stats.low)
                    upper.add_metric(labels, stats.high)
            best = tracker.best()
            if best is not None:
                best_lag.add_metric([cpi, kpi], best.lag * tracker.window)
                if best.slope is not None:
                    impact.add_metric([cpi, kpi], best.slope)
            p_value = tracker.granger_p
            if p_value is not None:
                granger.add_metric([cpi, kpi], p_value)
            owners = [catalog.indicator(cpi).owner, catalog.indicator(kpi).owner]
            confirmed.add_metric([cpi, kpi, *owners], float(tracker.confirmed))
        yield from (correlation, lower, upper, samples, best_lag, impact, granger, confirmed)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
