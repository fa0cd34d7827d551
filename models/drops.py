"""Drops: from the closed windows of one series to "is this CPI in trouble?".

A :class:`DropDetector` follows one series (one indicator in one segment) and is
given every closed window, oldest first.  It keeps three verdicts:

``below_target``
    The last judged window missed the target (``min``: value < target, ``max``:
    value > target).  Never true without a target.

``drop_active``
    The indicator has fallen away from its own normal in its *bad* direction
    (down when higher is better, up when lower is better), whether or not it
    has a target.

``baseline`` / ``deviation``
    What normal is, and how far the last judged window was from it.

Judged windows
    A window is judged (it *qualifies*) when it has a value and at least
    ``min_events`` events.  Other windows change nothing at all: a quiet night
    neither raises nor clears a verdict (silence is what the CpiStale alert is for).

Baseline band
    The baseline is the exponentially weighted mean of the learned windows and
    ``std`` their exponentially weighted standard deviation (River ``EWMean`` and
    ``EWVar`` with fading factor ``baseline_alpha``); the band is
    ``baseline ± band_k * std``.  Neither is reported before ``warmup_windows``
    windows have been learned.  ``std`` is at least ``min_std_ratio`` times the
    baseline's magnitude: a success rate stuck at exactly 1.0 has no spread, and
    its first 0.999 would otherwise be infinitely many deviations away.

``deviation``
    ``(value - baseline) / std`` with the baseline as it was *before* the window,
    signed in the raw direction: negative means below normal, whichever way is
    good.  The bad side is therefore ``deviation < -band_k`` when higher is better
    and ``deviation > band_k`` when lower is better.

When a drop starts
    - ``confirm_after`` consecutive judged windows lie outside the band on the bad
      side, or
    - the drift detector (River ``ADWIN`` or ``PageHinkley``) flags a lasting
      change in the bad direction, which catches shifts too small to leave the band.

    ``drops_total`` counts the starts.  Why confirm: the spread is estimated from
    about 20 windows, so deviations have heavier tails than a normal law.  In
    simulation (Gaussian noise, default settings) a steady series falls below a
    3-sigma band in about one window in 170, twice in a row somewhere in one
    series of 500 windows in 20, and three times in a row in none of 600.

When a drop ends
    After ``clear_after`` consecutive judged windows that are not outside the
    band on the bad side.  The band stays where it was when the drop started.
    A shift the drift detector caught inside the band therefore ends after
    ``clear_after`` windows, and the baseline then learns the new level.

What is learned
    The baseline and the drift detector learn a window only if no drop is active
    and the window is not outside the band on the bad side.  So a long outage
    never becomes the new normal, and a lone bad outlier neither starts a drop nor
    bends the band.  The flip side: a lasting bad shift stays a drop until the
    indicator recovers.

The drift detector
    It is fed the learned windows in standard deviations away from a reference
    baseline (the baseline when the detector last started), oriented so that bad
    is up.  That makes its options mean the same on every indicator whatever
    its unit.  Page-Hinkley only looks for rises (``mode="up"``); for ADWIN,
    a change is bad when the mean of the window it keeps after the cut is above
    the mean before.  After any change it flags, and whenever a drop starts,
    the detector starts over from the current baseline.

Detectors pickle (their state is checkpointed along with the windows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from river import drift, stats

from models.spec import DETECTOR_DEFAULTS, Better, DetectorKind, Indicator, Target

__all__ = ["DropDetector"]

# Below this the standard deviation is numerically zero (a baseline of exactly 0).
_TINY_STD = 1e-12


def _drift_detector(kind: DetectorKind, options: Mapping[str, float]) -> Any:
    if kind not in DETECTOR_DEFAULTS:
        known = ", ".join(DETECTOR_DEFAULTS)
        raise ValueError(f"unknown detector {kind!r}; use one of {known}")
    defaults = DETECTOR_DEFAULTS[kind]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise ValueError(f"{kind} takes no option {', '.join(unknown)}; its options: {known}")
    merged: dict[str, Any] = {**defaults, **options}
    if kind == "adwin":
        return drift.ADWIN(**merged)
    if kind == "page_hinkley":
        # The signal is oriented so that bad is up: only rises matter.
        return drift.PageHinkley(mode="up", **merged)
    return None


class DropDetector:
    """Target breach, baseline band and drift detection over one series' closed windows.

    Feed it ``update(value, events)`` once per closed window, oldest first.

    >>> detector = DropDetector(Target("min", 0.9), min_events=30)
    >>> for value in [0.95, 0.96] * 10:  # normal: 0.955 +/- 0.005
    ...     detector.update(value, events=500)
    >>> round(detector.baseline, 3), round(detector.std, 3), detector.drop_active
    (0.955, 0.005, False)
    >>> detector.update(0.80, events=12)  # too few events: not judged
    >>> detector.qualifying_windows, detector.drop_active
    (20, False)
    >>> for value in [0.80, 0.82]:  # an outage: far below the band...
    ...     detector.update(value, events=480)
    >>> detector.below_target, detector.drop_active
    (True, False)
    >>> detector.update(0.81, events=495)  # ...for confirm_after (3) windows: a drop
    >>> detector.below_target, detector.drop_active, detector.drops_total
    (True, True, 1)
    >>> round(detector.deviation)  # the baseline did not learn the outage
    -29
    >>> for value in [0.95, 0.96]:  # two windows back to normal end the drop
    ...     detector.update(value, events=510)
    >>> detector.below_target, detector.drop_active, detector.drops_total
    (False, False, 1)
    """

    __slots__ = (
        "_bad_sign",
        "_calm",
        "_drift",
        "_learned",
        "_mean",
        "_pending",
        "_reference",
        "_var",
        "band_k",
        "baseline_alpha",
        "below_target",
        "clear_after",
        "confirm_after",
        "deviation",
        "drop_active",
        "drops_total",
        "higher_is_better",
        "min_events",
        "min_std_ratio",
        "qualifying_windows",
        "target",
        "warmup_windows",
    )

    def __init__(
        self,
        target: Target | None = None,
        *,
        better: Better | None = None,
        min_events: int = 30,
        detector: DetectorKind = "adwin",
        detector_options: Mapping[str, float] | None = None,
        baseline_alpha: float = 0.1,
        band_k: float = 3.0,
        warmup_windows: int = 20,
        confirm_after: int = 3,
        clear_after: int = 2,
        min_std_ratio: float = 0.001,
    ) -> None:
        if better is not None and better not in ("higher", "lower"):
            raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")
        if (
            target is not None
            and better is not None
            and (target.bound == "min") != (better == "higher")
        ):
            raise ValueError(
                f"better={better!r} contradicts a {target.bound} target; leave better out, "
                "the target already says which way is good"
            )
        for name, value, low in (
            ("min_events", min_events, 1),
            ("warmup_windows", warmup_windows, 2),
            ("confirm_after", confirm_after, 1),
            ("clear_after", clear_after, 1),
        ):
            if not value >= low:
                raise ValueError(f"{name} must be a whole number >= {low}, not {value!r}")
        if not 0 < baseline_alpha <= 1:
            raise ValueError(f"baseline_alpha must be in (0, 1], not {baseline_alpha!r}")
        if not band_k > 0:
            raise ValueError(f"band_k must be above 0, not {band_k!r}")
        if not min_std_ratio >= 0:
            raise ValueError(f"min_std_ratio must be 0 or more, not {min_std_ratio!r}")
        self.target = target
        self.higher_is_better = target.bound == "min" if target is not None else better != "lower"
        self.min_events = min_events
        self.baseline_alpha = baseline_alpha
        self.band_k = band_k
        self.warmup_windows = warmup_windows
        self.confirm_after = confirm_after
        self.clear_after = clear_after
        self.min_std_ratio = min_std_ratio
        # Multiplying a deviation by this orients it so that bad is positive.
        self._bad_sign = -1.0 if self.higher_is_better else 1.0
        self._drift = _drift_detector(detector, dict(detector_options or {}))
        self._mean = stats.EWMean(baseline_alpha)
        self._var = stats.EWVar(baseline_alpha)
        self._learned = 0
        self._reference: tuple[float, float] | None = None
        self._pending = 0  # consecutive windows outside the band, no drop yet
        self._calm = 0  # consecutive windows back inside the band during a drop
        self.below_target = False
        self.drop_active = False
        self.drops_total = 0
        self.deviation: float | None = None
        self.qualifying_windows = 0

    @classmethod
    def for_indicator(cls, indicator: Indicator) -> DropDetector:
        """A detector configured from the indicator's target and ``alerting`` settings."""
        alerting = indicator.alerting
        return cls(
            indicator.target,
            better="higher" if indicator.higher_is_better else "lower",
            min_events=alerting.min_events,
            detector=alerting.detector,
            detector_options=dict(alerting.detector_options),
            baseline_alpha=alerting.baseline_alpha,
            band_k=alerting.band_k,
            warmup_windows=alerting.warmup_windows,
            confirm_after=alerting.confirm_after,
            clear_after=alerting.clear_after,
        )

    @property
    def baseline(self) -> float | None:
        """The normal value (EW mean of the learned windows); ``None`` during warm-up."""
        return self._mean.get() if self._learned >= self.warmup_windows else None

    @property
    def std(self) -> float | None:
        """The normal spread (EW standard deviation, floored); ``None`` during warm-up."""
        if self._learned < self.warmup_windows:
            return None
        spread = math.sqrt(max(self._var.get(), 0.0))  # EWVar may dip below 0 by rounding
        return max(spread, self.min_std_ratio * abs(self._mean.get()), _TINY_STD)

    def update(self, value: float | None, events: int) -> None:
        """Judge one closed window (ignored if undefined or with too few events)."""
        if value is None or events < self.min_events or not math.isfinite(value):
            return
        self.qualifying_windows += 1
        target = self.target
        if target is not None:
            self.below_target = (
                value < target.value if target.bound == "min" else value > target.value
            )
        baseline, std = self.baseline, self.std
        outside = bad_drift = False
        if baseline is not None and std is not None:
            self.deviation = (value - baseline) / std
            outside = self._bad_sign * self.deviation > self.band_k
            if not self.drop_active and not outside:
                bad_drift = self._feed_drift(value, baseline, std)
        if self.drop_active:
            self._calm = 0 if outside else self._calm + 1
            if self._calm >= self.clear_after:
                self.drop_active = False
        else:
            self._pending = self._pending + 1 if outside else 0
            if bad_drift or self._pending >= self.confirm_after:
                self._start_drop()
        if not self.drop_active and not outside:
            self._mean.update(value)
            self._var.update(value)
            self._learned += 1

    def _feed_drift(self, value: float, baseline: float, std: float) -> bool:
        """Give the drift detector one learned window; whether it flags a bad change."""
        if self._drift is None:
            return False
        if self._reference is None:
            self._reference = (baseline, std)
        mean, spread = self._reference
        before = self._drift.estimation if isinstance(self._drift, drift.ADWIN) else 0.0
        self._drift.update(self._bad_sign * (value - mean) / spread)
        if not self._drift.drift_detected:
            return False
        # PageHinkley only looks for rises; ADWIN says which side by its kept window's mean.
        bad = not isinstance(self._drift, drift.ADWIN) or self._drift.estimation > before
        self._restart_drift()
        return bad

    def _restart_drift(self) -> None:
        # River resets a detector at its next update after a change; restarting now
        # also moves the reference to the baseline of the next learned window.
        if self._drift is not None:
            self._drift = self._drift.clone()
        self._reference = None

    def _start_drop(self) -> None:
        self.drop_active = True
        self.drops_total += 1
        self._pending = 0
        self._calm = 0
        self._restart_drift()
