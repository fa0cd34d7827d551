"""The alert delay bounds (agents/alert_timing.py): the formula, its window terms against
the real drop detector, and the production figures against the deploy/ files."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.alert_timing import (
    PRODUCTION_PATH,
    AlertPath,
    NotificationBounds,
    indicator_bounds,
    notification_bounds,
)
from models.catalog import load_catalog
from models.drops import DropDetector
from models.spec import Target

ROOT = Path(__file__).resolve().parents[2]
PATH = AlertPath(
    lateness=1,
    processing=2,
    scrape_interval=1,
    evaluation_interval=1,
    group_wait=1,
    group_interval=2,
)


def bounds(path: AlertPath = PATH, **overrides: Any) -> NotificationBounds:
    options: dict[str, Any] = {"breach_for": 10.0, "confirm_after": 3, "clear_after": 2}
    options.update(overrides)
    window = options.pop("window", 5.0)
    return notification_bounds(window, path, **options)


def test_the_formula_on_the_test_settings() -> None:
    # D = L + P + S + E = 5; breach: 2W + D + for + G; drop: (confirm + 1)W + D + G.
    assert bounds() == NotificationBounds(
        breach_fires=10 + 5 + 10 + 1,
        breach_resolves=10 + 5 + 2,
        drop_fires=20 + 5 + 1,
        drop_resolves=15 + 5 + 2,
    )


@pytest.mark.parametrize(
    ("term", "breach_fires", "breach_resolves", "drop_fires", "drop_resolves"),
    [
        # Every second added to one setting lands in exactly the bounds it belongs to.
        ("lateness", 1, 1, 1, 1),
        ("processing", 1, 1, 1, 1),
        ("scrape_interval", 1, 1, 1, 1),
        ("group_wait", 1, 0, 1, 0),
        ("group_interval", 0, 1, 0, 1),
    ],
)
def test_each_setting_adds_to_the_bounds_it_delays(
    term: str, breach_fires: float, breach_resolves: float, drop_fires: float, drop_resolves: float
) -> None:
    before = bounds()
    after = bounds(dataclasses.replace(PATH, **{term: getattr(PATH, term) + 1}))
    assert before.breach_fires is not None and after.breach_fires is not None
    assert before.breach_resolves is not None and after.breach_resolves is not None
    assert after.breach_fires - before.breach_fires == breach_fires
    assert after.breach_resolves - before.breach_resolves == breach_resolves
    assert after.drop_fires - before.drop_fires == drop_fires
    assert after.drop_resolves - before.drop_resolves == drop_resolves


def test_windows_count_twice_for_breaches_and_per_confirmation_for_drops() -> None:
    wider = bounds(window=6.0)
    assert wider.breach_fires == bounds().breach_fires + 2  # type: ignore[operator]
    assert wider.drop_fires == bounds().drop_fires + 4
    assert wider.drop_resolves == bounds().drop_resolves + 3
    assert bounds(confirm_after=5).drop_fires == bounds().drop_fires + 2 * 5
    assert bounds(clear_after=1).drop_resolves == bounds().drop_resolves - 5


def test_for_ends_on_an_evaluation() -> None:
    slow = dataclasses.replace(PATH, evaluation_interval=4.0)
    # for 10 s with evaluations every 4 s: firing at the third evaluation after activation.
    assert bounds(slow).breach_fires == 2 * 5 + (1 + 2 + 1 + 4) + 12 + 1
    assert bounds(slow, breach_for=0.0).breach_fires == 2 * 5 + (1 + 2 + 1 + 4) + 0 + 1


def test_no_target_no_breach_bounds() -> None:
    none = bounds(breach_for=None)
    assert none.breach_fires is None and none.breach_resolves is None
    assert none.drop_fires == bounds().drop_fires


@pytest.mark.parametrize(
    ("call", "gist"),
    [
        (lambda: bounds(window=0.0), "window must be above 0"),
        (lambda: bounds(confirm_after=0), "confirm_after must be 1 or more"),
        (lambda: bounds(breach_for=-1.0), "breach_for must be 0 or more"),
        (lambda: dataclasses.replace(PATH, processing=-1.0), "processing must be 0 or more"),
        (lambda: dataclasses.replace(PATH, evaluation_interval=0.0), "evaluation_interval"),
    ],
)
def test_bad_settings_are_refused(call: Any, gist: str) -> None:
    with pytest.raises(ValueError, match=gist):
        call()


# --- the window terms against the drop detector ------------------------------------------


NORMAL, OUTAGE = (0.96, 0.98), 0.5
PHASES = [(step + 0.5) / 200 for step in range(200)]


def _warm_detector() -> DropDetector:
    detector = DropDetector(Target("min", 0.9), warmup_windows=10, confirm_after=3, clear_after=2)
    for index in range(30):
        detector.update(NORMAL[index % 2], events=1000)
    return detector


def _until(detector: DropDetector, phase: float, good_to_bad: bool, done: Any) -> float:
    """Windows of 1 s, an incident edge ``phase`` s into the first: seconds from the edge to
    the end of the window after which ``done(detector)`` holds."""
    before, after = (NORMAL[0], OUTAGE) if good_to_bad else (OUTAGE, NORMAL[0])
    # The window holding the edge mixes both sides in proportion to their time in it.
    for count in range(1, 20):
        value = before * phase + after * (1 - phase) if count == 1 else after
        detector.update(value, events=1000)
        if done(detector):
            return count - phase
    raise AssertionError("the detector never changed its verdict")


def _breached(detector: DropDetector) -> bool:
    return detector.below_target


def _dropped(detector: DropDetector) -> bool:
    return detector.drop_active


def _recovered(detector: DropDetector) -> bool:
    return not detector.drop_active


def test_the_window_terms_hold_for_an_edge_anywhere_in_a_window() -> None:
    """The verdicts start within 2W (breach) and (confirm_after + 1)W (drop) of the
    incident's start, and the drop ends within (clear_after + 1)W of its end, wherever
    in a window the edge falls; and one window less would not be enough."""
    breach, drop, recovery = [], [], []
    for phase in PHASES:
        breach.append(_until(_warm_detector(), phase, True, _breached))
        detector = _warm_detector()
        drop.append(_until(detector, phase, True, _dropped))
        recovery.append(_until(detector, phase, False, _recovered))
    assert 1 < max(breach) <= 2
    assert 3 < max(drop) <= 3 + 1
    assert 2 < max(recovery) <= 2 + 1


# --- the production figures ----------------------------------------------------------------


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]]


def test_the_production_path_is_what_deploy_configures() -> None:
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    route = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())["route"]
    example = load_catalog(ROOT / "catalog.example.yaml")
    assert PRODUCTION_PATH.scrape_interval == _seconds(prometheus["global"]["scrape_interval"])
    assert PRODUCTION_PATH.evaluation_interval == _seconds(
        prometheus["global"]["evaluation_interval"]
    )
    assert PRODUCTION_PATH.group_wait == _seconds(route["group_wait"])
    assert PRODUCTION_PATH.group_interval == _seconds(route["group_interval"])
    assert {cpi.allowed_lateness for cpi in example.cpis} == {PRODUCTION_PATH.lateness}


def test_production_bounds_of_the_example_catalog() -> None:
    """The figures the README states."""
    example = load_catalog(ROOT / "catalog.example.yaml")
    checkout = indicator_bounds(example.indicator("checkout_success_rate"), PRODUCTION_PATH)
    # 2 x 60 + (10 + 5 + 15 + 15) + 5 min + 30 s; the others wait the default 2 windows.
    assert checkout == NotificationBounds(
        breach_fires=8 * 60 + 15,
        breach_resolves=7 * 60 + 45,
        drop_fires=5 * 60 + 15,
        drop_resolves=8 * 60 + 45,
    )
    nps = indicator_bounds(example.indicator("nps"), PRODUCTION_PATH)
    assert nps.breach_fires == 5 * 60 + 15
