"""How late an alert can reach its owner: upper bounds derived from the settings on its path.

From an incident starting (or ending) to the notification at the owner's receiver,
every stage adds at most a known delay:

``2W`` (window)
    The incident may start just after a window started: that window is only partly
    bad, the next one is the first wholly bad window, and it ends at most ``2W`` after
    the start.  The same holds for the first wholly good window after the end.  A drop
    needs ``confirm_after`` bad windows in a row (models/drops.py), the first of them
    wholly bad at the latest, so ``(confirm_after + 1) W``; it ends after
    ``clear_after`` good ones, ``(clear_after + 1) W``.
``L`` (allowed lateness)
    A window closes when event time minus ``allowed_lateness`` passes its end.
``P`` (processing)
    The worker's own delay, from an event's time to the aggregate agent applying it:
    two hops through Kafka (journey events, then observations), each a fetch and a
    batch.  The window closes as that event is applied.  The one term that is measured
    rather than configured: ``cpimon_event_delay_seconds`` shows the first hop.
``S`` (scrape interval)
    The closed window's verdicts (``cpimon_cpi_below_target``, ``cpimon_cpi_drop_active``)
    are read at the next scrape.
``E`` (evaluation interval)
    The rules see the new sample at the next evaluation.  A ``for`` counts from that
    evaluation and ends at an evaluation, so it is rounded up to whole intervals.
``for``
    CpiTargetBreached waits its target's ``for`` (default two windows); CpiDropDetected
    has none (the worker already confirmed the drop over several windows).
``G`` (Alertmanager ``group_wait``)
    A new alert group's first notification waits ``group_wait`` for more alerts.
``I`` (Alertmanager ``group_interval``)
    A resolved alert joins its group's next notification, at most ``group_interval``
    after the previous one.

Hence, with ``D = L + P + S + E``::

    breach fires     2W + D + for + G        drop fires     (confirm_after + 1) W + D + G
    breach resolves  2W + D + I              drop resolves  (clear_after + 1) W + D + I

Assumed: every window of the series has at least ``min_events`` events (a window
with fewer is not judged and delays the verdict by one window).  Not counted:
Prometheus handing the alert to Alertmanager and Alertmanager's HTTP call
to the receiver (milliseconds on a healthy network), and the incident must last long
enough to be seen (a drop: ``(confirm_after + 1) W``; a breach: ``2W + for``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from agents.rules import GROUP_INTERVAL_SECONDS, GROUP_WAIT_SECONDS, target_for_seconds
from models.spec import Indicator

__all__ = [
    "PRODUCTION_PATH",
    "AlertPath",
    "NotificationBounds",
    "indicator_bounds",
    "notification_bounds",
]


@dataclass(frozen=True)
class AlertPath:
    """The settings an alert passes through after its window, in seconds."""

    #: L: the indicator's ``allowed_lateness``.
    lateness: float
    #: P: the worker's processing delay (see the module docstring).
    processing: float
    #: S: Prometheus ``scrape_interval`` of the cpimon job.
    scrape_interval: float
    #: E: Prometheus ``evaluation_interval`` of the rule group.
    evaluation_interval: float
    #: G: Alertmanager ``group_wait``.
    group_wait: float
    #: I: Alertmanager ``group_interval``.
    group_interval: float

    def __post_init__(self) -> None:
        for name in ("lateness", "processing", "scrape_interval", "group_wait", "group_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be 0 or more seconds, not {value!r}")
        if not (math.isfinite(self.evaluation_interval) and self.evaluation_interval > 0):
            raise ValueError(
                f"evaluation_interval must be above 0 seconds, not {self.evaluation_interval!r}"
            )

    @property
    def delivery(self) -> float:
        """D = L + P + S + E: from a window's end to the rules seeing its verdict."""
        return self.lateness + self.processing + self.scrape_interval + self.evaluation_interval


#: deploy/: Prometheus scrapes and evaluates every 15 s (deploy/prometheus/prometheus.yml),
#: Alertmanager waits 30 s and groups for 5 min (deploy/alertmanager/alertmanager.yml);
#: catalog.example.yaml allows 10 s of lateness; a worker keeping up processes an event
#: within a few seconds of its time: 5 s allowed.
PRODUCTION_PATH = AlertPath(
    lateness=10.0,
    processing=5.0,
    scrape_interval=15.0,
    evaluation_interval=15.0,
    group_wait=GROUP_WAIT_SECONDS,
    group_interval=GROUP_INTERVAL_SECONDS,
)


@dataclass(frozen=True)
class NotificationBounds:
    """Longest time, in seconds, from an incident's start to the firing notification and
    from its end to the resolved one."""

    breach_fires: float | None
    breach_resolves: float | None
    drop_fires: float
    drop_resolves: float


def notification_bounds(
    window: float,
    path: AlertPath,
    *,
    breach_for: float | None,
    confirm_after: int,
    clear_after: int,
) -> NotificationBounds:
    """The bounds for one indicator's series (``breach_for`` None: it has no target).

    >>> path = AlertPath(lateness=1, processing=2, scrape_interval=1, evaluation_interval=1,
    ...                  group_wait=1, group_interval=2)
    >>> notification_bounds(5, path, breach_for=10, confirm_after=3, clear_after=2)
    NotificationBounds(breach_fires=26.0, breach_resolves=17.0, drop_fires=26.0, drop_resolves=22.0)
    """
    if not (math.isfinite(window) and window > 0):
        raise ValueError(f"window must be above 0 seconds, not {window!r}")
    for name, count in (("confirm_after", confirm_after), ("clear_after", clear_after)):
        if count < 1:
            raise ValueError(f"{name} must be 1 or more windows, not {count!r}")
    delivery = path.delivery
    breach_fires = breach_resolves = None
    if breach_for is not None:
        if not (math.isfinite(breach_for) and breach_for >= 0):
            raise ValueError(f"breach_for must be 0 or more seconds, not {breach_for!r}")
        waited = math.ceil(breach_for / path.evaluation_interval) * path.evaluation_interval
        breach_fires = float(2 * window + delivery + waited + path.group_wait)
        breach_resolves = float(2 * window + delivery + path.group_interval)
    return NotificationBounds(
        breach_fires=breach_fires,
        breach_resolves=breach_resolves,
        drop_fires=float((confirm_after + 1) * window + delivery + path.group_wait),
        drop_resolves=float((clear_after + 1) * window + delivery + path.group_interval),
    )


def indicator_bounds(indicator: Indicator, path: AlertPath) -> NotificationBounds:
    """:func:`notification_bounds` with the indicator's window, target ``for`` (as the
    generated rules use it) and ``alerting`` settings; ``path.lateness`` is replaced by
    the indicator's ``allowed_lateness``."""
    return notification_bounds(
        indicator.window,
        dataclasses.replace(path, lateness=indicator.allowed_lateness),
        breach_for=None if indicator.target is None else target_for_seconds(indicator),
        confirm_after=indicator.alerting.confirm_after,
        clear_after=indicator.alerting.clear_after,
    )
