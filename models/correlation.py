"""Lag-aware correlation of one CPI with one KPI, over closed windows.

Each link pairs the CPI value of window ``t`` with the KPI value of window
``t + lag`` for every lag ``0 ... max_lag`` (in windows) and keeps, per lag, a
rolling Pearson correlation over the newest ``history`` pairs: a River
``PearsonCorr`` that takes each new pair with ``update`` and lets the oldest go
with ``revert``, so a new pair costs constant time.  Windows missing on either
side simply form no pair: nothing is ever filled in with zeros.

Reverting subtracts what was once added, so rounding errors pile up instead of
washing out (after a KPI drops from millions to a constant near zero, the
leftover error looks like real variation).  When a lag is read, its statistics
are therefore recomputed exactly (two passes, ``math.fsum``) from the pairs it
holds and loaded back into River's state, if ``history`` pairs have been
reverted since the last time or if a variance is small next to the largest
value the lag has taken since then, where that error would matter.  Reads
happen at every evaluation, so this costs about one extra update per pair.

Nothing here needs SciPy: the Fisher interval uses the normal quantile as a
constant and the F distribution for the Granger p-value is computed in pure
Python (regularized incomplete beta function by continued fraction).
"""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass
from typing import Any

from river import stats

__all__ = ["Z_95", "LagStats", "LinkTracker", "f_sf", "fisher_interval", "granger_f_test"]

#: The two-sided 95 % quantile of the standard normal distribution (``norm.ppf(0.975)``).
Z_95 = 1.959963984540054

# atanh(±1) is infinite: |r| is clamped just inside 1 first.
_R_LIMIT = 1.0 - 1e-12
# A side whose variance is below this share of its largest squared magnitude, i.e.
# whose standard deviation is within 1e-9 of its size, is constant: values that differ
# only by float rounding (0.1 + 0.2 against 0.3) must not produce a correlation.
_CONSTANT = 1e-18
# Below this share, drift left over by revert could be most of the variance: rebuild.
_SUSPECT = 1e-6
# Two Granger regressors whose determinant is this close to zero are collinear.
_COLLINEAR = 1e-12


def fisher_interval(r: float, n: int) -> tuple[float, float] | None:
    """The 95 % confidence interval of a Pearson ``r`` from ``n`` pairs (Fisher z).

    ``z = atanh(r)``, ``se = 1 / sqrt(n - 3)``, interval ``tanh(z ± 1.96 se)``;
    ``None`` when ``n < 4``.  ``r`` is clamped to ``(-1 + 1e-12, 1 - 1e-12)`` so
    a perfect correlation still has finite bounds.

    >>> low, high = fisher_interval(0.5, 30)
    >>> round(low, 4), round(high, 4)
    (0.1704, 0.729)
    >>> print(fisher_interval(0.9, 3))
    None
    """
    if n < 4:
        return None
    z = math.atanh(min(max(r, -_R_LIMIT), _R_LIMIT))
    half = Z_95 / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def _beta_fraction(a: float, b: float, x: float) -> float:
    # Continued fraction of the incomplete beta function, modified Lentz method
    # (Numerical Recipes, betacf); it converges fast for x < (a + 1) / (a + b + 2).
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        step = m * (b - m) * x / ((a - 1.0 + m2) * (a + m2))
        d = 1.0 + step * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + step / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        step = -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2))
        d = 1.0 + step * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + step / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return h


def _betainc(a: float, b: float, x: float, y: float) -> float:
    # The regularized incomplete beta function I_x(a, b) (scipy.special.betainc), with
    # y = 1 - x passed in: computed by the caller without rounding x towards 1 first.
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    # Evaluate the fraction on the side where it converges; the symmetry
    # I_x(a, b) = 1 - I_{1-x}(b, a) gives the other side.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, y) / b


def f_sf(f: float, d1: float, d2: float) -> float:
    """Survival function ``P(F > f)`` of the F distribution with ``d1``, ``d2`` degrees of freedom.

    Computed as ``I_{d2 / (d2 + d1 f)}(d2 / 2, d1 / 2)`` so that small p-values
    keep their relative precision; agrees with ``scipy.stats.f.sf``.

    >>> round(f_sf(4.0, 1, 20), 6)
    0.059266
    >>> f_sf(0.0, 2, 10), f_sf(math.inf, 2, 10)
    (1.0, 0.0)
    """
    if not f > 0.0:
        return 1.0
    if math.isinf(f):
        return 0.0
    denominator = d2 + d1 * f
    return _betainc(d2 / 2.0, d1 / 2.0, d2 / denominator, d1 * f / denominator)


def _centered(values: list[float]) -> tuple[list[float], float] | None:
    # Deviations from the mean and their sum of squares; None for a constant series.
    n = len(values)
    mean = math.fsum(values) / n
    deviations = [v - mean for v in values]
    squares = math.fsum(d * d for d in deviations)
    peak = max(abs(v) for v in values)
    if not squares > _CONSTANT * peak * peak * (n - 1):
        return None
    return deviations, squares


def granger_f_test(kpi: list[float], kpi_before: list[float], cpi: list[float]) -> float | None:
    """p-value of an F test that ``cpi`` improves an AR(1) prediction of ``kpi``.

    Row ``i`` holds a KPI value, the KPI value one window earlier and the
    (lagged) CPI value.  The restricted model regresses ``kpi`` on an intercept
    and ``kpi_before``; the full model adds ``cpi``.  With ``RSS`` the residual
    sums of squares and ``n`` rows, ``F = (RSS_r - RSS_f) / (RSS_f / (n - 3))``
    on 1 and ``n - 3`` degrees of freedom.  ``None`` with fewer than 4 rows or
    when a column is constant or the two regressors are collinear.

    >>> kpi = [2.0, 3.5, 1.0, 4.0, 2.5, 5.0, 1.5, 3.0]
    >>> before = [1.0, 2.0, 3.5, 1.0, 4.0, 2.5, 5.0, 1.5]
    >>> cpi = [1.0, 1.8, 0.4, 2.1, 1.2, 2.4, 0.9, 1.4]
    >>> round(granger_f_test(kpi, before, cpi), 6)
    4.2e-05
    """
    n = len(kpi)
    if n < 4:
        return None
    target = _centered(kpi)
    own = _centered(kpi_before)
    other = _centered(cpi)
    if target is None or own is None or other is None:
        return None
    t, _ = target
    a, saa = own
    b, sbb = other
    sab = math.fsum(p * q for p, q in zip(a, b, strict=True))
    sat = math.fsum(p * q for p, q in zip(a, t, strict=True))
    sbt = math.fsum(p * q for p, q in zip(b, t, strict=True))
    det = saa * sbb - sab * sab
    if not det > _COLLINEAR * saa * sbb:
        return None
    # Residuals are summed directly rather than as differences of sums of squares,
    # which cancel badly when the fit is nearly perfect.
    slope = sat / saa
    rss_restricted = math.fsum((y - slope * p) ** 2 for y, p in zip(t, a, strict=True))
    beta_a = (sbb * sat - sab * sbt) / det
    beta_b = (saa * sbt - sab * sat) / det
    rss_full = math.fsum(
        (y - beta_a * p - beta_b * q) ** 2 for y, p, q in zip(t, a, b, strict=True)
    )
    df = n - 3
    if not rss_full > 0.0:
        return 0.0
    return f_sf(max(rss_restricted - rss_full, 0.0) / (rss_full / df), 1, df)


@dataclass(frozen=True, slots=True)
class LagStats:
    """The correlation of one link at one lag, over its rolling history of pairs.

    ``lag`` is in windows; ``n`` is the number of pairs held; ``r`` the Pearson
    correlation (``None`` with fewer than 2 pairs or a constant side); ``low``
    and ``high`` its 95 % Fisher-z interval (``None`` unless ``r`` is defined
    and ``n >= 4``); ``slope`` the least-squares slope of the KPI on the CPI,
    in KPI units per CPI unit (``None`` when ``r`` is).
    """

    lag: int
    n: int
    r: float | None
    low: float | None
    high: float | None
    slope: float | None

    @property
    def significant(self) -> bool:
        """True when the 95 % interval excludes 0."""
        return (self.low is not None and self.low > 0.0) or (
            self.high is not None and self.high < 0.0
        )


class _LagHistory:
    # The newest `history` pairs of one lag, by CPI window index, and their statistics.
    __slots__ = ("corr", "history", "pairs", "peak_x", "peak_y", "reverts")

    def __init__(self, history: int) -> None:
        self.history = history
        self.pairs: list[tuple[int, float, float]] = []
        self.corr = stats.PearsonCorr()
        self.reverts = 0
        # Largest magnitudes taken since the last rebuild: the scale of the drift.
        self.peak_x = 0.0
        self.peak_y = 0.0

    def add(self, index: int, x: float, y: float) -> bool:
        pairs = self.pairs
        if len(pairs) >= self.history and index < pairs[0][0]:
            return False  # older than a full history: it would be evicted at once
        if not pairs or index > pairs[-1][0]:
            pairs.append((index, x, y))
        else:
            insort(pairs, (index, x, y))
        self.corr.update(x, y)
        if abs(x) > self.peak_x:
            self.peak_x = abs(x)
        if abs(y) > self.peak_y:
            self.peak_y = abs(y)
        if len(pairs) > self.history:
            _, old_x, old_y = pairs.pop(0)
            self.corr.revert(old_x, old_y)
            self.reverts += 1
        return True

    def _rebuild(self) -> None:
        # Two passes with exact sums over the pairs held, loaded into River's own
        # state: what forward updates would reach, without their rounding either.
        n = len(self.pairs)
        xs = [x for _, x, _ in self.pairs]
        ys = [y for _, _, y in self.pairs]
        mean_x = math.fsum(xs) / n
        mean_y = math.fsum(ys) / n
        dx = [x - mean_x for x in xs]
        dy = [y - mean_y for y in ys]
        dof = n - 1
        corr = stats.PearsonCorr()
        corr.var_x = stats.Var._from_state(n, mean_x, math.fsum(d * d for d in dx) / dof)
        corr.var_y = stats.Var._from_state(n, mean_y, math.fsum(d * d for d in dy) / dof)
        cov = math.fsum(a * b for a, b in zip(dx, dy, strict=True)) / dof
        corr.cov_xy = stats.Cov._from_state(n, mean_x, mean_y, cov)
        self.corr = corr
        self.reverts = 0
        self.peak_x = max(map(abs, xs))
        self.peak_y = max(map(abs, ys))

    def stats(self, lag: int) -> LagStats:
        n = len(self.pairs)
        if n < 2:
            return LagStats(lag, n, None, None, None, None)
        var_x = self.corr.var_x.get()
        var_y = self.corr.var_y.get()
        if self.reverts and (
            self.reverts >= self.history
            or var_x <= _SUSPECT * self.peak_x * self.peak_x
            or var_y <= _SUSPECT * self.peak_y * self.peak_y
        ):
            self._rebuild()
            var_x = self.corr.var_x.get()
            var_y = self.corr.var_y.get()
        # Written as "not >" so that a NaN variance also counts as constant.
        if not (
            var_x > _CONSTANT * self.peak_x * self.peak_x
            and var_y > _CONSTANT * self.peak_y * self.peak_y
        ):
            return LagStats(lag, n, None, None, None, None)
        cov = self.corr.cov_xy.get()
        r = min(max(cov / math.sqrt(var_x * var_y), -1.0), 1.0)
        interval = fisher_interval(r, n)
        low, high = interval if interval is not None else (None, None)
        return LagStats(lag, n, r, low, high, cov / var_x)


#: Windows one side of a link may run ahead of the other (a day of one-minute windows).
_DEFAULT_MAX_SKEW = 1_440


class LinkTracker:
    """One CPI→KPI link: pairs closed windows across lags, keeps a rolling Pearson
    correlation per lag, picks the best lag and decides whether the link is confirmed.

    Feed it the values of *closed* windows with ``add_cpi`` and ``add_kpi``
    (``window_start`` in seconds, a multiple of ``window``, as
    :class:`models.windows.WindowedSeries` closes them); either side may come
    first and windows may arrive somewhat out of order.  A window with no value
    (``None``, NaN or infinite) is skipped, never taken as zero.

    What it reports, per lag ``0 ... max_lag`` (in windows; lag ``k`` pairs the
    CPI of window ``t`` with the KPI of window ``t + k``), over the newest
    ``history`` pairs where both windows have a value:

    - ``r``: the Pearson correlation, from -1 to 1; ``None`` while it is
      undefined (fewer than 2 pairs, or the CPI or KPI was constant).
    - ``low``/``high``: its 95 % confidence interval (Fisher z, needs 4 pairs).
      An interval that excludes 0 makes the lag *significant*.
    - ``slope``: the *impact*, in KPI units per CPI unit: how much the KPI moves,
      on average, when the CPI moves by one (least squares; ``r`` times the
      KPI's standard deviation over the CPI's).

    The *best lag* is the significant lag with the largest ``|r|`` (the
    smallest such lag on a tie); there is none when no lag is significant.

    The link is evaluated once for every window that has closed on both sides
    (each window counts once, whatever order its values arrive in).  It becomes
    *confirmed* after ``min_windows`` evaluations in a row with a best lag (any
    lag, not necessarily the same one each time), and it is *lost* again only
    after ``lose_after`` evaluations in a row without one (by default half of
    ``min_windows``, at least 2), so that one noisy window does not flip it.

    A confirmed link says the two series move together with that delay. It
    does not say the CPI causes the KPI: both may follow a third cause such as
    traffic, a release or the time of day.  Chance matters too: ``max_lag + 1``
    lags are tried at once and consecutive evaluations share all but one pair,
    so a chance correlation lasts for many windows.  In simulations of two
    unrelated series with ``max_lag`` 5 and ``history`` 30, ``min_windows`` 10
    kept the link confirmed about 13 % of the time and confirmed it at least
    once in every simulated day of one-minute windows; ``min_windows`` of about
    three times ``history`` brought that below roughly 1 % of days.

    ``granger_p`` (``None`` without a best lag of 1 or more) is the p-value of a
    Granger-style F test at the best lag ``L``: over the newest ``history``
    windows held, does adding ``CPI[t - L]`` to a regression of ``KPI[t]`` on
    ``KPI[t - 1]`` improve it?  A small value says the CPI's past helps predict
    the KPI beyond the KPI's own past; it is still not proof of causation.

    Memory is bounded: each side keeps about ``history + max_lag`` windows of
    raw values behind the newest window of the side that is behind, and values
    older than that are ignored.  One side may run up to ``max_skew`` windows
    ahead of the other: a worker catching up a backlog closes the windows of
    some series long before those of others, and a link fed that way must see
    the same pairs as one fed in step.  Beyond ``max_skew`` the oldest windows
    are dropped (a side silent that long is not behind, it has no data).
    Duplicates of a window already held are ignored too; ``ignored`` counts
    every value not taken.

    >>> cpi = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0, 9.0, 7.0]
    >>> tracker = LinkTracker(window=60.0, max_lag=2, history=10, min_windows=3)
    >>> for t, value in enumerate(cpi):
    ...     tracker.add_cpi(60.0 * t, value)
    ...     # the KPI follows the CPI one window later: 10 + 2 x CPI, plus a wobble
    ...     tracker.add_kpi(60.0 * (t + 1), 10.0 + 2.0 * value + (t % 3 - 1) * 0.5)
    >>> best = tracker.best()
    >>> best.lag, best.n, round(best.r, 3), round(best.slope, 2), best.significant
    (1, 10, 0.997, 2.08, True)
    >>> [(lag.lag, round(lag.r, 2)) for lag in tracker.lags()]
    [(0, 0.02), (1, 1.0), (2, 0.01)]
    >>> tracker.confirmed, tracker.evaluations
    (True, 13)
    >>> tracker.granger_p < 1e-6  # the CPI's past predicts the KPI beyond its own past
    True
    """

    __slots__ = (
        "_cpi",
        "_granger",
        "_hits",
        "_kpi",
        "_lags",
        "_misses",
        "_newest",
        "_retain",
        "_stats",
        "_version",
        "confirmed",
        "evaluations",
        "history",
        "ignored",
        "lose_after",
        "max_lag",
        "max_skew",
        "min_windows",
        "window",
    )

    def __init__(
        self,
        window: float,
        max_lag: int = 5,
        history: int = 30,
        min_windows: int = 10,
        lose_after: int | None = None,
        max_skew: int = _DEFAULT_MAX_SKEW,
    ) -> None:
        if not window > 0:
            raise ValueError(f"window must be a positive number of seconds, not {window!r}")
        if max_lag < 0:
            raise ValueError(f"max_lag must be 0 or more windows, not {max_lag!r}")
        if history < 4:
            # Fewer than 4 pairs never have a confidence interval: nothing could be confirmed.
            raise ValueError(f"history must be at least 4 windows, not {history!r}")
        if min_windows < 1:
            raise ValueError(f"min_windows must be at least 1, not {min_windows!r}")
        if lose_after is not None and lose_after < 1:
            raise ValueError(f"lose_after must be at least 1, not {lose_after!r}")
        if max_skew < 0:
            raise ValueError(f"max_skew must be 0 or more windows, not {max_skew!r}")
        self.window = float(window)
        self.max_lag = max_lag
        self.history = history
        self.min_windows = min_windows
        self.lose_after = max(2, min_windows // 2) if lose_after is None else lose_after
        # Raw values by window index (start / window), kept while a partner may still come.
        self._cpi: dict[int, float] = {}
        self._kpi: dict[int, float] = {}
        self.max_skew = max_skew
        # A partner of window i is at most max_lag windows away, and the Granger test
        # reads `history` windows of raw values back.
        self._retain = history + max_lag
        # Newest window index taken on either side.
        self._newest: int | None = None
        self._lags = [_LagHistory(history) for _ in range(max_lag + 1)]
        self._stats: list[LagStats] | None = None
        self._version = 0
        self._granger: tuple[int, float | None] | None = None
        self._hits = 0
        self._misses = 0
        self.confirmed = False
        self.evaluations = 0
        self.ignored = 0

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        # Checkpoints written before max_skew existed restore with its default.
        _, slots = state
        for name, value in slots.items():
            setattr(self, name, value)
        if "max_skew" not in slots:
            self.max_skew = _DEFAULT_MAX_SKEW

    def add_cpi(self, window_start: float, value: float | None) -> None:
        """Take the CPI value of the closed window starting at ``window_start``."""
        index = self._take(self._cpi, window_start, value)
        if index is None:
            return
        x = self._cpi[index]
        kpi = self._kpi
        formed = False
        for lag, history in enumerate(self._lags):
            y = kpi.get(index + lag)
            if y is not None and history.add(index, x, y):
                formed = True
        if formed:
            self._stats = None
        if index in kpi:
            self._evaluate()

    def add_kpi(self, window_start: float, value: float | None) -> None:
        """Take the KPI value of the closed window starting at ``window_start``."""
        index = self._take(self._kpi, window_start, value)
        if index is None:
            return
        y = self._kpi[index]
        cpi = self._cpi
        formed = False
        for lag, history in enumerate(self._lags):
            x = cpi.get(index - lag)
            if x is not None and history.add(index - lag, x, y):
                formed = True
        if formed:
            self._stats = None
        if index in cpi:
            self._evaluate()

    def _take(self, side: dict[int, float], window_start: float, value: float | None) -> int | None:
        # Stores the value and returns its window index, or None if it is not taken.
        if value is None or not math.isfinite(value):
            self.ignored += 1
            return None
        index = round(window_start / self.window)
        if index in side or (self._newest is not None and index < self._floor(self._newest)):
            self.ignored += 1
            return None
        side[index] = float(value)
        self._version += 1
        if self._newest is None or index > self._newest:
            self._newest = index
        floor = self._floor(self._newest)
        for held in (self._cpi, self._kpi):
            for old in [i for i in held if i < floor]:
                del held[old]
        return index

    def _floor(self, newest: int) -> int:
        """The oldest window index still of use: ``history + max_lag`` behind the side
        that is behind, and never more than ``max_skew`` further back than ``newest``."""
        floor = newest - self._retain - self.max_skew
        if self._cpi and self._kpi:
            floor = max(floor, min(max(self._cpi), max(self._kpi)) - self._retain)
        return floor

    def _evaluate(self) -> None:
        self.evaluations += 1
        if self.best() is not None:
            self._hits += 1
            self._misses = 0
            if self._hits >= self.min_windows:
                self.confirmed = True
        else:
            self._misses += 1
            self._hits = 0
            if self._misses >= self.lose_after:
                self.confirmed = False

    def lags(self) -> list[LagStats]:
        """The statistics of every lag, lag 0 first."""
        if self._stats is None:
            self._stats = [history.stats(lag) for lag, history in enumerate(self._lags)]
        return list(self._stats)

    def best(self) -> LagStats | None:
        """The significant lag with the largest ``|r|``; ``None`` if no lag is significant."""
        best: LagStats | None = None
        strongest = -1.0
        for lag in self.lags():
            # A significant lag always has an r; the check is for the type checker.
            if lag.significant and lag.r is not None and abs(lag.r) > strongest:
                best, strongest = lag, abs(lag.r)
        return best

    @property
    def granger_p(self) -> float | None:
        """p-value of the Granger-style F test at the best lag (see the class docstring)."""
        if self._granger is not None and self._granger[0] == self._version:
            return self._granger[1]
        best = self.best()
        p = None if best is None or best.lag == 0 else self._granger_at(best.lag)
        self._granger = (self._version, p)
        return p

    def _granger_at(self, lag: int) -> float | None:
        kpi, cpi = self._kpi, self._cpi
        rows = [t for t in sorted(kpi, reverse=True) if t - 1 in kpi and t - lag in cpi]
        rows = rows[: self.history]
        return granger_f_test(
            [kpi[t] for t in rows], [kpi[t - 1] for t in rows], [cpi[t - lag] for t in rows]
        )
