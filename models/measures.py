"""Estimators: one running value per indicator window, computed incrementally with River.

Each estimator follows River's conventions: hyperparameters go to ``__init__``,
``update(x)`` takes one value, ``get()`` returns the current value (``None``
while it is undefined) and ``n`` is the number of values taken.

The router has already turned each event's field into a float, so estimators
only ever see floats: ``1.0``/``0.0`` for rates and ratios, the number itself
for means, sums and quantiles, the 0-10 score for NPS, the rating for CSAT.
Estimators do not validate their input: they sit on the hot path and the
router is the one place where values are checked.

Where the value is read straight off one River statistic (rate, mean, count,
ratio) the estimator's ``update`` *is* that statistic's bound ``update``, so
taking a value costs a single call; the others (sum, quantile, NPS, CSAT) add
one thin call in front of River.

All estimators pickle (window state is checkpointed to Kafka).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from river import stats

from models.spec import Measure, MeasureKind

__all__ = [
    "CountOf",
    "Estimator",
    "MeanOf",
    "NetPromoterScore",
    "QuantileOf",
    "Rate",
    "Ratio",
    "Satisfaction",
    "SumOf",
    "make_estimator",
]


class Estimator(Protocol):
    """What windows need from an estimator."""

    @property
    def n(self) -> int:
        """Number of values taken."""
        ...

    def update(self, x: float) -> None:
        """Take one value."""
        ...

    def update_many(self, xs: Sequence[float]) -> None:
        """Take several values, in order: the same state as ``update`` on each, exactly."""
        ...

    def get(self) -> float | None:
        """The current value, or ``None`` while it is undefined."""
        ...


class _MeanBased:
    # Holds a River Mean and exposes its bound ``update`` as its own, so taking a
    # value costs one call.  Subclassing Mean instead would make ``get`` return
    # None where River promises a float (and break River code such as ``+=``).
    __slots__ = ("_mean", "update")
    update: Callable[[float], None]

    def __init__(self) -> None:
        self._mean = stats.Mean()
        self.update = self._mean.update

    def update_many(self, xs: Sequence[float]) -> None:
        _mean_update_many(self._mean, xs)

    @property
    def n(self) -> int:
        return int(self._mean.n)

    def get(self) -> float | None:
        # River's Mean reports 0.0 before any value; an empty window has no mean.
        return self._mean.get() if self._mean.n else None


class Rate(_MeanBased):
    """Share of values equal to ``1.0`` (the others are ``0.0``): a River ``Mean``.

    >>> rate = Rate()
    >>> print(rate.get())
    None
    >>> for x in [1.0, 0.0, 1.0, 1.0]:
    ...     rate.update(x)
    >>> rate.get(), rate.n
    (0.75, 4)
    """

    __slots__ = ()


class MeanOf(_MeanBased):
    """Arithmetic mean of the values: a River ``Mean``.

    >>> mean = MeanOf()
    >>> for x in [120.0, 80.0, 250.0, 30.0]:
    ...     mean.update(x)
    >>> mean.get(), mean.n
    (120.0, 4)
    """

    __slots__ = ()


class Ratio(_MeanBased):
    """Count of ``1.0`` values (numerator) over count of ``0.0`` values (denominator).

    ``None`` while the denominator is zero.  Conversion = orders / sessions is
    fed ``1.0`` per order and ``0.0`` per session.

    The estimator keeps a River ``Mean`` of those values: with ``p`` the share
    of ``1.0`` among ``n`` values, the numerator is ``p * n`` and the
    denominator ``n - p * n``.  Both are integers, so rounding recovers them
    exactly (the mean's rounding error is far below 0.5 / n) and ``update``
    stays a single River call.  Any value other than ``0.0`` or ``1.0`` would be
    counted fractionally: the router never sends one.

    >>> ratio = Ratio()
    >>> for x in [0.0, 0.0, 0.0, 0.0, 1.0]:  # 4 sessions, 1 order
    ...     ratio.update(x)
    >>> ratio.get(), ratio.numerator, ratio.denominator, ratio.n
    (0.25, 1, 4, 5)
    >>> only_orders = Ratio()
    >>> only_orders.update(1.0)
    >>> print(only_orders.get())
    None
    """

    __slots__ = ()

    @property
    def numerator(self) -> int:
        return round(self._mean.get() * self._mean.n)

    @property
    def denominator(self) -> int:
        return round(self._mean.n) - self.numerator

    def get(self) -> float | None:
        denominator = self.denominator
        return self.numerator / denominator if denominator else None


class CountOf:
    """Number of values taken; the values themselves are ignored: a River ``Count``.

    A count is defined from the start, so ``get()`` is ``0.0`` before any value.

    >>> count = CountOf()
    >>> count.get()
    0.0
    >>> for x in [3.0, 0.0, 7.5]:
    ...     count.update(x)
    >>> count.get(), count.n
    (3.0, 3)
    """

    __slots__ = ("_count", "update")
    update: Callable[[float], None]

    def __init__(self) -> None:
        self._count = stats.Count()
        self.update = self._count.update  # one call per value, as in _MeanBased

    def update_many(self, xs: Sequence[float]) -> None:
        self._count.n += len(xs)

    @property
    def n(self) -> int:
        return self._count.n

    def get(self) -> float:
        return float(self._count.n)


class SumOf:
    """Sum of the values: a River ``Sum``, plus the count of values.

    The sum of no values is defined: ``get()`` is ``0.0`` before any value.

    >>> total = SumOf()
    >>> for x in [19.5, 5.25, 0.25]:
    ...     total.update(x)
    >>> total.get(), total.n
    (25.0, 3)
    """

    __slots__ = ("_sum", "n")

    def __init__(self) -> None:
        self._sum = stats.Sum()
        self.n = 0

    def update(self, x: float) -> None:
        self._sum.update(x)
        self.n += 1

    def update_many(self, xs: Sequence[float]) -> None:
        # Added one by one, in order (not sum(), which may compensate rounding): the
        # same float as update() on each.
        total = self._sum.sum
        for x in xs:
            total += x
        self._sum.sum = total
        self.n += len(xs)

    def get(self) -> float:
        return float(self._sum.get())


class QuantileOf:
    """The ``q`` quantile of the values: a River ``Quantile`` (the P² algorithm).

    P² keeps five markers instead of the values, so memory and time per value
    are constant, but the result is an *approximation*: on a few thousand
    values from a smooth distribution it typically lands within about a
    percentile rank of the exact quantile, and it is rougher on small samples
    (with fewer than five values it returns one of the values, not an
    interpolation as ``numpy.quantile`` does) and in the far tails.

    >>> p90 = QuantileOf(0.9)
    >>> print(p90.get())
    None
    >>> for x in range(1, 1001):
    ...     p90.update(float(x))
    >>> round(p90.get()), p90.n
    (900, 1000)
    """

    __slots__ = ("_quantile", "n", "q")

    def __init__(self, q: float) -> None:
        self.q = q
        self._quantile = stats.Quantile(q)  # raises ValueError unless 0 < q < 1
        self.n = 0

    def update(self, x: float) -> None:
        self._quantile.update(x)
        self.n += 1

    def update_many(self, xs: Sequence[float]) -> None:
        update = self._quantile.update  # P² is sequential: one update per value
        for x in xs:
            update(x)
        self.n += len(xs)

    def get(self) -> float | None:
        return self._quantile.get()


class NetPromoterScore:
    """Net Promoter Score of 0-10 scores: 100 * (share >= 9 - share <= 6), in [-100, 100].

    Each score is mapped to +1 (promoter), 0 (passive) or -1 (detractor) and a
    River ``Mean`` of that is kept: the mean is exactly the promoter share minus
    the detractor share.

    >>> nps = NetPromoterScore()
    >>> for score in [10.0, 9.0, 8.0, 7.0, 3.0]:  # 2 promoters, 2 passives, 1 detractor
    ...     nps.update(score)
    >>> round(nps.get(), 6), nps.n
    (20.0, 5)
    """

    __slots__ = ("_balance",)

    def __init__(self) -> None:
        self._balance = stats.Mean()

    @property
    def n(self) -> int:
        return int(self._balance.n)

    def update(self, x: float) -> None:
        # bool - bool is an int in {-1, 0, 1}: no branches on the hot path.
        self._balance.update((x >= 9.0) - (x <= 6.0))

    def update_many(self, xs: Sequence[float]) -> None:
        _mean_update_many(self._balance, [(x >= 9.0) - (x <= 6.0) for x in xs])

    def get(self) -> float | None:
        return 100.0 * self._balance.get() if self._balance.n else None


class Satisfaction:
    """Share of ratings ``>= threshold`` (CSAT): a River ``Mean`` of that condition.

    >>> csat = Satisfaction(threshold=4.0)
    >>> for rating in [5.0, 4.0, 2.0, 3.0]:
    ...     csat.update(rating)
    >>> csat.get(), csat.n
    (0.5, 4)
    """

    __slots__ = ("_share", "threshold")

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._share = stats.Mean()

    @property
    def n(self) -> int:
        return int(self._share.n)

    def update(self, x: float) -> None:
        self._share.update(x >= self.threshold)

    def update_many(self, xs: Sequence[float]) -> None:
        threshold = self.threshold
        _mean_update_many(self._share, [x >= threshold for x in xs])

    def get(self) -> float | None:
        return self._share.get() if self._share.n else None


def _mean_update_many(mean: stats.Mean, xs: Sequence[float]) -> None:
    """``mean.update(x)`` for each value, with River's arithmetic inlined (same floats)."""
    n, value = mean.n, mean._mean
    for x in xs:
        n += 1.0
        value += (1.0 / n) * (x - value)
    mean.n, mean._mean = n, value


def _quantile(measure: Measure) -> Estimator:
    if measure.q is None:
        raise ValueError(f"a quantile measure needs q: {measure!r}")
    return QuantileOf(measure.q)


def _satisfaction(measure: Measure) -> Estimator:
    if measure.threshold is None:
        raise ValueError(f"a csat measure needs a threshold: {measure!r}")
    return Satisfaction(measure.threshold)


_FACTORIES: dict[MeasureKind, Callable[[Measure], Estimator]] = {
    "rate": lambda _: Rate(),
    "mean": lambda _: MeanOf(),
    "sum": lambda _: SumOf(),
    "count": lambda _: CountOf(),
    "quantile": _quantile,
    "nps": lambda _: NetPromoterScore(),
    "csat": _satisfaction,
    "ratio": lambda _: Ratio(),
}


def make_estimator(measure: Measure) -> Estimator:
    """A fresh, empty estimator for ``measure``.

    ``ValueError`` if the measure is incomplete (the catalog rules this out).

    >>> estimator = make_estimator(Measure(kind="quantile", path="latency_ms", q=0.5))
    >>> type(estimator).__name__, estimator.q
    ('QuantileOf', 0.5)
    """
    try:
        factory = _FACTORIES[measure.kind]
    except KeyError:
        raise ValueError(f"unknown measure kind {measure.kind!r}") from None
    return factory(measure)
