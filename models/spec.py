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
Better = Literal["higher", "lower"]
Severity = Literal["page", "ticket", "info"]
DetectorKind = Literal["adwin", "page_hinkley", "none"]

#: The options each drift detector takes from the catalog, with cpi-monitor's defaults.
#: The detector sees the CPI in standard deviations of its baseline (see models.drops),
#: so these defaults suit every CPI whatever its unit.  Integer defaults mark whole-number
#: options.  River's own defaults differ where they assume one value per event:
#: ADWIN checks for a change every window (clock 1, not 32) and Page-Hinkley's
#: delta and threshold are in standard deviations.
DETECTOR_DEFAULTS: dict[DetectorKind, dict[str, int | float]] = {
    "adwin": {"delta": 0.002, "clock": 1, "min_window_length": 5, "grace_period": 10},
    "page_hinkley": {"min_instances": 10, "delta": 0.5, "threshold": 20.0, "alpha": 0.9999},
    "none": {},
}

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
        "alertname",
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
class Alerting:
    """How closed windows of an indicator turn into verdicts and alerts (models.drops).

    - ``min_events``: windows with fewer events are ignored (too noisy to judge).
    - ``detector`` / ``detector_options``: the River drift detector watching for a
      lasting change (``none`` keeps only the band); options override
      :data:`DETECTOR_DEFAULTS`.
    - ``baseline_alpha``, ``band_k``, ``warmup_windows``: the baseline band is the
      exponentially weighted mean ± ``band_k`` EW standard deviations, trusted once
      ``warmup_windows`` windows have been learned.
    - ``confirm_after`` / ``clear_after``: consecutive windows outside (inside) the
      band that start (end) a drop.
    - ``better``: which way is good; ``None`` follows the target (``min`` → higher),
      else higher.
    - ``stale_windows``: windows without any event before the CPI counts as stale.
    - ``severity``: ``None`` means ``page`` with a target, ``ticket`` without.
    """

    min_events: int = 30
    detector: DetectorKind = "adwin"
    detector_options: tuple[tuple[str, float], ...] = ()
    baseline_alpha: float = 0.1
    band_k: float = 3.0
    warmup_windows: int = 20
    confirm_after: int = 3
    clear_after: int = 2
    better: Better | None = None
    stale_windows: int = 3
    severity: Severity | None = None


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
    alerting: Alerting = Alerting()

    @property
    def higher_is_better(self) -> bool:
        """Whether a rise is good: from the target's bound, else ``alerting.better``."""
        if self.target is not None:
            return self.target.bound == "min"
        return self.alerting.better != "lower"

    @property
    def severity(self) -> Severity:
        """Severity of this indicator's alerts: as set, else page with a target, else ticket."""
        if self.alerting.severity is not None:
            return self.alerting.severity
        return "page" if self.target is not None else "ticket"


#: A link's default ``min_windows``, in multiples of its ``history_windows`` (see Link).
LINK_MIN_WINDOWS_PER_HISTORY = 3
#: The largest ``min_windows`` a catalog may set, in multiples of ``history_windows``.
LINK_MAX_WINDOWS_PER_HISTORY = 10


@dataclass(frozen=True, slots=True)
class Link:
    """A CPI→KPI pair whose correlation is tracked across lags.

    ``min_windows`` defaults to three times ``history_windows``: a chance correlation
    between unrelated series lasts about as long as the history that holds it, so
    asking for less confirms them often (see :class:`models.correlation.LinkTracker`).
    """

    cpi: str
    kpi: str
    max_lag_windows: int = 5
    history_windows: int = 30
    min_windows: int = LINK_MIN_WINDOWS_PER_HISTORY * 30


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
