"""The drop detector: target breach, baseline band, drift detection, hysteresis."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from models.drops import DropDetector
from models.spec import Alerting, Indicator, Measure, Target

EVENTS = 500  # comfortably above the default min_events
MIN = Target("min", 0.5)  # far below every series here: only the drop logic speaks
MAX = Target("max", 5000.0)
DETECTORS = ("adwin", "page_hinkley", "none")


def feed(detector: DropDetector, values: Any, events: int = EVENTS) -> list[bool]:
    """Feed every value; drop_active after each one."""
    active = []
    for value in values:
        detector.update(float(value), events)
        active.append(detector.drop_active)
    return active


def state(detector: DropDetector) -> tuple[Any, ...]:
    return (
        detector.below_target,
        detector.drop_active,
        detector.drops_total,
        detector.baseline,
        detector.std,
        detector.deviation,
        detector.qualifying_windows,
    )


def steady(seed: int, n: int, mean: float = 0.95, std: float = 0.01) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, std, n)


def ew_reference(values: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """EW mean and std after each value, as River defines them: the first value
    weighs (1 - alpha)^(t-1), the i-th alpha (1 - alpha)^(t-i); var = E[x^2] - E[x]^2."""
    n = len(values)
    t, i = np.indices((n, n))
    weights = np.where(i <= t, alpha * (1 - alpha) ** (t - i).clip(min=0), 0.0)
    weights[:, 0] = (1 - alpha) ** np.arange(n)
    mean = weights @ values
    return mean, np.sqrt(weights @ values**2 - mean**2)


# --- baseline and deviation -------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_baseline_and_deviation_match_numpy_on_the_qualifying_windows(alpha: float) -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(120.0, 8.0, 60)
    # band_k so wide that no window is an outlier: every qualifying window is learned.
    detector = DropDetector(MAX, baseline_alpha=alpha, band_k=1e9, detector="none")
    judged: list[float] = []
    deviations: list[float | None] = []
    for index, value in enumerate(values):
        if index % 7 == 3:  # windows the detector must skip entirely
            detector.update(None, EVENTS)
            detector.update(float(value) * 10, events=29)
        detector.update(float(value), EVENTS)
        judged.append(value)
        deviations.append(detector.deviation)
    mean, std = ew_reference(np.array(judged), alpha)
    assert detector.qualifying_windows == len(judged)
    assert detector.baseline == pytest.approx(mean[-1], rel=1e-12)
    assert detector.std == pytest.approx(std[-1], rel=1e-9)
    warmup = detector.warmup_windows
    assert deviations[:warmup] == [None] * warmup
    # Each window is measured against the baseline before it.
    expected = (np.array(judged[warmup:]) - mean[warmup - 1 : -1]) / std[warmup - 1 : -1]
    np.testing.assert_allclose(np.array(deviations[warmup:], dtype=float), expected, rtol=1e-9)


def test_baseline_is_unknown_during_warm_up() -> None:
    detector = DropDetector(MIN, warmup_windows=5)
    feed(detector, [0.9, 0.91, 0.92, 0.93])
    assert (detector.baseline, detector.std, detector.deviation) == (None, None, None)
    feed(detector, [0.94])
    assert detector.baseline is not None and detector.std is not None
    assert detector.deviation is None  # no window judged against the band yet
    feed(detector, [0.95])
    assert detector.deviation is not None


def test_deviation_keeps_the_raw_sign_whichever_way_is_good() -> None:
    for target in (MIN, MAX):
        detector = DropDetector(target, detector="none")
        feed(detector, [100.0, 102.0] * 15)
        feed(detector, [90.0])
        assert detector.deviation is not None and detector.deviation < -3


def test_std_has_a_floor_for_series_that_never_moved() -> None:
    detector = DropDetector(MIN, detector="none")
    feed(detector, [1.0] * 30)
    assert detector.std == pytest.approx(0.001)  # min_std_ratio of the baseline
    feed(detector, [0.999])
    assert detector.deviation == pytest.approx(-1.0)


# --- drops --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DETECTORS)
def test_a_step_down_of_5_std_is_one_drop_within_a_few_windows(kind: Any) -> None:
    detector = DropDetector(MIN, detector=kind)
    assert not any(feed(detector, steady(1, 30)))
    before = detector.baseline
    active = feed(detector, steady(2, 40, mean=0.95 - 5 * 0.01))
    assert active.index(True) <= 3  # confirm_after is 3
    assert all(active[3:]), "the drop must hold while the CPI stays down"
    assert detector.drops_total == 1
    assert detector.baseline == before, "the baseline must not learn the outage"
    assert detector.deviation is not None and detector.deviation < -3


@pytest.mark.parametrize("kind", DETECTORS)
def test_a_drop_ends_when_the_cpi_recovers(kind: Any) -> None:
    detector = DropDetector(MIN, detector=kind)
    feed(detector, steady(1, 30))
    feed(detector, steady(2, 10, mean=0.90))
    active = feed(detector, steady(4, 50))
    assert active[:2] == [True, False]  # clear_after is 2
    assert not any(active[2:])
    assert detector.drops_total == 1


@pytest.mark.parametrize("kind", DETECTORS)
def test_a_rise_of_a_higher_is_better_cpi_is_no_drop(kind: Any) -> None:
    detector = DropDetector(MIN, detector=kind)
    feed(detector, steady(1, 30))
    assert not any(feed(detector, steady(2, 200, mean=0.95 + 5 * 0.01)))
    assert detector.drops_total == 0


@pytest.mark.parametrize("kind", DETECTORS)
def test_lower_is_better_drops_upwards_only(kind: Any) -> None:
    latency = DropDetector(MAX, detector=kind)
    feed(latency, steady(1, 30, mean=500.0, std=20.0))
    assert not any(feed(latency, steady(2, 200, mean=400.0, std=20.0)))
    assert latency.drops_total == 0
    slower = DropDetector(MAX, detector=kind)
    feed(slower, steady(1, 30, mean=500.0, std=20.0))
    assert any(feed(slower, steady(2, 10, mean=600.0, std=20.0)))
    assert slower.drops_total == 1


@pytest.mark.parametrize("kind", DETECTORS)
@pytest.mark.parametrize("seed", range(5))
def test_a_steady_noisy_series_raises_no_drop(kind: Any, seed: int) -> None:
    detector = DropDetector(MIN, detector=kind)
    assert not any(feed(detector, steady(seed, 500)))
    assert detector.drops_total == 0


@pytest.mark.parametrize("kind", ["adwin", "page_hinkley"])
def test_the_drift_detector_catches_a_shift_inside_the_band(kind: Any) -> None:
    # 2 std down: windows rarely leave a 3-std band, so the band alone misses it.
    shifted = np.r_[steady(11, 60), steady(12, 60, mean=0.95 - 2 * 0.01)]
    band_only = DropDetector(MIN, detector="none")
    feed(band_only, shifted)
    assert band_only.drops_total == 0
    detector = DropDetector(MIN, detector=kind)
    active = feed(detector, shifted)
    assert detector.drops_total >= 1
    assert active.index(True) >= 60


def test_a_single_outlier_is_no_drop_and_is_not_learned() -> None:
    detector = DropDetector(MIN, detector="none")
    feed(detector, [0.95, 0.96] * 15)
    before = (detector.baseline, detector.std)
    feed(detector, [0.80, 0.80])  # below the band, but fewer than confirm_after windows
    assert not detector.drop_active and detector.drops_total == 0
    assert (detector.baseline, detector.std) == before
    feed(detector, [0.95])
    assert detector.baseline != before[0]  # a normal window is learned again


def test_hysteresis() -> None:
    detector = DropDetector(MIN, detector="none", confirm_after=1, clear_after=2)
    feed(detector, [0.95, 0.96] * 15)
    assert feed(detector, [0.80]) == [True]
    # One window back inside the band is not enough; a bad one restarts the count.
    assert feed(detector, [0.955, 0.80, 0.955]) == [True, True, True]
    assert feed(detector, [0.96]) == [False]
    assert detector.drops_total == 1
    assert feed(detector, [0.80]) == [True]
    assert detector.drops_total == 2


def test_a_window_above_the_band_counts_as_recovered_for_higher_is_better() -> None:
    detector = DropDetector(MIN, detector="none", confirm_after=1)
    feed(detector, [0.95, 0.96] * 15)
    feed(detector, [0.80])
    assert feed(detector, [0.99, 0.99]) == [True, False]


# --- target and judged windows ------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "value", "below"),
    [
        (Target("min", 0.95), 0.94, True),
        (Target("min", 0.95), 0.95, False),
        (Target("max", 800.0), 801.0, True),
        (Target("max", 800.0), 800.0, False),
    ],
)
def test_below_target(target: Target, value: float, below: bool) -> None:
    detector = DropDetector(target)
    feed(detector, [value])
    assert detector.below_target is below


def test_without_a_target_nothing_is_below_target() -> None:
    detector = DropDetector(better="lower")
    feed(detector, [1e9])
    assert detector.below_target is False


def test_windows_with_too_few_events_or_no_value_change_nothing() -> None:
    detector = DropDetector(Target("min", 0.9), min_events=30, confirm_after=1)
    feed(detector, [0.95, 0.96] * 15)
    before = pickle.dumps(detector)
    for _ in range(10):
        detector.update(0.1, events=29)
        detector.update(None, events=5000)
        detector.update(float("nan"), events=5000)
    assert pickle.dumps(detector) == before
    assert not detector.below_target and not detector.drop_active
    detector.update(0.1, events=30)  # exactly min_events: judged
    assert detector.below_target and detector.drop_active
    assert detector.qualifying_windows == 31


# --- configuration and persistence --------------------------------------------------------


@pytest.mark.parametrize("kind", DETECTORS)
def test_pickle_round_trip_continues_identically(kind: Any) -> None:
    detector = DropDetector(MIN, detector=kind)
    values = np.r_[steady(5, 40), steady(6, 20, mean=0.90), steady(7, 40)]
    feed(detector, values[:50])
    clone = pickle.loads(pickle.dumps(detector))
    assert state(clone) == state(detector)
    for value in values[50:]:
        detector.update(float(value), EVENTS)
        clone.update(float(value), EVENTS)
        assert state(clone) == state(detector)
    assert detector.drops_total >= 1  # the round trip happened in the middle of a drop


def test_for_indicator_reads_the_catalog() -> None:
    alerting = Alerting(
        min_events=50,
        detector="page_hinkley",
        detector_options=(("threshold", 25.0),),
        baseline_alpha=0.2,
        band_k=4.0,
        warmup_windows=5,
        confirm_after=2,
        clear_after=3,
    )
    measure = Measure("quantile", "properties.latency_ms", q=0.95)
    latency = Indicator("p95", "cpi", "", "web", measure, target=MAX, alerting=alerting)
    detector = DropDetector.for_indicator(latency)
    assert not detector.higher_is_better
    assert (detector.min_events, detector.baseline_alpha, detector.band_k) == (50, 0.2, 4.0)
    assert (detector.warmup_windows, detector.confirm_after, detector.clear_after) == (5, 2, 3)
    assert detector._drift.threshold == 25.0 and detector._drift.mode == "up"
    unbounded = Indicator("q", "cpi", "", "t", measure, alerting=Alerting(better="lower"))
    assert not DropDetector.for_indicator(unbounded).higher_is_better
    assert DropDetector.for_indicator(Indicator("r", "cpi", "", "t", measure)).higher_is_better


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"better": "lower"}, "contradicts a min target"),
        ({"better": "up"}, "'higher' or 'lower'"),
        ({"min_events": 0}, "min_events must be a whole number >= 1"),
        ({"warmup_windows": 1}, "warmup_windows must be a whole number >= 2"),
        ({"baseline_alpha": 0.0}, "baseline_alpha must be in (0, 1]"),
        ({"band_k": 0.0}, "band_k must be above 0"),
        ({"detector": "kswin"}, "unknown detector 'kswin'"),
        ({"detector_options": {"threshold": 5.0}}, "adwin takes no option threshold"),
    ],
)
def test_invalid_settings_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        DropDetector(MIN, **options)
