"""The alerting end-to-end test's catalog against its own traffic, offline.

tests/integration/test_alerts_e2e.py demands that a steady stream raises no alert at all
and that a payment outage raises exactly the payments alerts.  Both depend on the catalog
(tests/data/catalog.alerts.yaml) being tuned to the simulator at the test's rate: here
the same events go through the worker's own routing, windows and drop detectors
(models.routing, models.aggregation) without a broker, over far more windows than the
end-to-end test can afford.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agents.rules import target_for_seconds
from agents.worker import all_segments_views
from models.aggregation import PartitionSeries
from models.catalog import load_catalog
from models.routing import Router, series_key
from streams.simulator import JourneySimulator, parse_incident
from tests.alerting import ALERTS_CATALOG, ALERTS_INCIDENT, ALERTS_RATE, ALERTS_SEED

START = 1_800_000_000.0  # a multiple of the 5 s windows
BATCH = 100  # events per batch, as the worker would get them (about 0.2 s of traffic)


@dataclass
class Verdicts:
    """What one series' detector did over a replay."""

    drops: int = 0
    judged: int = 0
    #: Most closed windows in a row after which the series was below its target.
    longest_breach: int = 0
    _breach: int = 0


def replay(windows: int, incidents: Sequence[str] = ()) -> dict[str, Verdicts]:
    """The test's traffic for ``windows`` windows through the worker's stages 1 and 2."""
    catalog = load_catalog(ALERTS_CATALOG)
    router = Router.compile(catalog, catalog.indicators + tuple(all_segments_views(catalog)))
    part = PartitionSeries({i.name: i for i in catalog.indicators}, idle_timeout=math.inf)
    [window] = {cpi.window for cpi in catalog.cpis}
    simulator = JourneySimulator(
        seed=ALERTS_SEED, start_time=START, incidents=[parse_incident(i) for i in incidents]
    )
    verdicts: dict[str, Verdicts] = {}
    batch: list[list[object]] = []
    count = int(windows * window * ALERTS_RATE)
    for offset, event in enumerate(simulator.events(count, rate=ALERTS_RATE)):
        name = event.get("event") or event["name"]
        now = START + offset / ALERTS_RATE
        batch += [[key, now, value, offset] for key, value in router.observe(name, event)]
        if len(batch) < BATCH and offset < count - 1:
            continue
        part.apply(("events", 0, 1), now, offset, batch, now=now)
        batch = []
        for closed in part.close_due(now):
            key = series_key(closed.indicator.name, closed.segment)
            detector = part.detectors[key]
            seen = verdicts.setdefault(key.replace("\x1f", "/"), Verdicts())
            seen.drops = detector.drops_total
            seen.judged = detector.qualifying_windows
            seen._breach = seen._breach + 1 if detector.below_target else 0
            seen.longest_breach = max(seen.longest_breach, seen._breach)
    return verdicts


def test_a_steady_stream_of_400_windows_raises_nothing() -> None:
    catalog = load_catalog(ALERTS_CATALOG)
    verdicts = replay(400)
    # Every CPI, with its segments and the series over all of them (checkout: 3 channels).
    assert len(verdicts) == 3 + 1 + 1 + 1, sorted(verdicts)
    for key, seen in verdicts.items():
        cpi = catalog.indicator(key.split("/")[0])
        assert seen.drops == 0, (key, seen)
        # CpiTargetBreached needs the breach to last its `for`: far from it.
        assert seen.longest_breach < target_for_seconds(cpi) / cpi.window, (key, seen)
        # Nearly every window is judged: a skipped one would delay a verdict.
        assert seen.judged >= 395, (key, seen)


def test_the_outage_of_the_end_to_end_test_drops_and_breaches_payments_only() -> None:
    verdicts = replay(36, [ALERTS_INCIDENT])
    for key, seen in verdicts.items():
        if key.startswith("checkout_success_rate"):
            assert seen.drops == 1 and seen.longest_breach >= 5, (key, seen)
        else:
            assert seen.drops == 0 and seen.longest_breach == 0, (key, seen)
