"""The validated catalog as plain immutable values.

:mod:`models.catalog` turns YAML into these objects (and explains every
mistake); everything downstream (routing, estimators, windows, exporter,
rules, dashboards) reads only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

IndicatorKind = Literal["cpi", "kpi", "metric"]
MeasureKind = Literal["rate", "mean", "quantile", "count", "sum", "nps", "csat", "ratio"]
Bound = Literal["min", "max"]
Scalar = str | int | float | bool

#: Label names cpi-monitor sets itself; a segment label may not take one of them.
RESERVED_LABELS = frozenset(
    {
        "cpi",
        "kpi",
        "owner",
        "journey_step",
        "bound",
        "le",
        "quantile",
        "instance",
        "job",
        "topic",
        "reason",
        "partition",
        "indicator",
        "kind",
        "lag_seconds",
        "severity",
    }
)


@dataclass(frozen=True, slots=True)
class Measure:
    """What is computed over the values selected from each matching event.

    - ``rate``: share of events whose ``path`` is true (or equals ``equals``).
    - ``mean`` / ``sum`` / ``quantile`` (with ``q``): of the number at ``path``.
    - ``count``: number of matching events (no path).
    - ``nps``: % promoters (9-10) minus % detractors (0-6) of 0-10 scores at ``path``.
    - ``csat``: share of ratings at ``path`` that are ``>= threshold``.
    - ``ratio``: count of ``numerator_events`` over count of the indicator's ``events``
      (e.g. conversion = orders / sessions).
    """

    kind: MeasureKind
    path: str | None = None
    q: float | None = None
    equals: Scalar | None = None
    threshold: float | None = None
    numerator_events: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Target:
    """The value an indicator must stay above (``min``) or below (``max``)."""

    bound: Bound
    value: float
    for_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Segment:
    """One ``segment_by`` entry: a Prometheus label filled from a dotted path."""

    label: str
    path: str
    cap: int = 50


@dataclass(frozen=True, slots=True)
class Indicator:
    """A CPI, a KPI or a plain operational metric.

    ``events`` lists the event names that feed it (the ``event`` field of
    track events, the ``name`` of page/screen events); ``where`` holds
    equality filters on dotted paths that must all hold.  ``window`` and
    ``allowed_lateness`` are seconds of event time.
    """

    name: str
    kind: IndicatorKind
    description: str
    owner: str
    measure: Measure
    events: tuple[str, ...] = ()
    where: tuple[tuple[str, Scalar], ...] = ()
    journey_step: str = ""
    segment_by: tuple[Segment, ...] = ()
    window: float = 60.0
    allowed_lateness: float = 10.0
    target: Target | None = None
    unit: str = ""
    runbook_url: str = ""
    #: KPIs only: ``events`` derive it from journey events, ``topic`` reads it from the KPI topic.
    source: Literal["events", "topic"] = "events"


@dataclass(frozen=True, slots=True)
class Link:
    """A CPI→KPI pair whose correlation is tracked across lags."""

    cpi: str
    kpi: str
    max_lag_windows: int = 5
    history_windows: int = 30
    min_windows: int = 10


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every indicator and link of one catalog file, validated."""

    source: str
    cpis: tuple[Indicator, ...]
    kpis: tuple[Indicator, ...] = ()
    metrics: tuple[Indicator, ...] = ()
    links: tuple[Link, ...] = ()
    settings: dict[str, Scalar] = field(default_factory=dict)

    @property
    def indicators(self) -> tuple[Indicator, ...]:
        """CPIs, KPIs and metrics, in that order."""
        return self.cpis + self.kpis + self.metrics

    def indicator(self, name: str) -> Indicator:
        """The indicator called ``name``; ``KeyError`` if there is none."""
        for indicator in self.indicators:
            if indicator.name == name:
                return indicator
        raise KeyError(name)
