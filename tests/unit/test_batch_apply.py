"""Batch application (update_many, add_many, apply_groups) equals applying one by one, exactly."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.aggregation import ClosedWindow, PartitionSeries
from models.measures import make_estimator
from models.routing import series_key
from models.spec import Indicator, Measure
from models.windows import WindowedSeries

MEASURES = [
    Measure(kind="rate", path="ok"),
    Measure(kind="mean", path="ms"),
    Measure(kind="sum", path="x"),
    Measure(kind="count"),
    Measure(kind="quantile", path="ms", q=0.9),
    Measure(kind="nps", path="score"),
    Measure(kind="csat", path="rating", threshold=4.0),
    Measure(kind="ratio"),
]
IDS = [measure.kind for measure in MEASURES]


def values_for(measure: Measure, rng: random.Random, count: int) -> list[float]:
    if measure.kind in ("rate", "ratio"):
        return [float(rng.random() < 0.3) for _ in range(count)]
    if measure.kind == "nps":
        return [float(rng.randint(0, 10)) for _ in range(count)]
    if measure.kind == "csat":
        return [float(rng.randint(1, 5)) for _ in range(count)]
    return [rng.lognormvariate(4.0, 1.5) * rng.choice((-1, 1)) for _ in range(count)]


def chunks(values: list[float], rng: random.Random) -> list[list[float]]:
    out, start = [], 0
    while start < len(values):
        size = rng.randint(0, 40)
        out.append(values[start : start + size])
        start += size
    return out


@pytest.mark.parametrize("measure", MEASURES, ids=IDS)
@pytest.mark.parametrize("seed", range(5))
def test_update_many_gives_the_state_of_update_on_each(measure: Measure, seed: int) -> None:
    rng = random.Random(seed)
    values = values_for(measure, rng, 2_000)
    one_by_one, batched = make_estimator(measure), make_estimator(measure)
    for x in values:
        one_by_one.update(x)
    for chunk in chunks(values, rng):
        batched.update_many(chunk)
    assert batched.n == one_by_one.n == len(values)
    assert batched.get() == one_by_one.get()  # the same float, not merely close
    assert pickle.dumps(batched) == pickle.dumps(one_by_one)


@pytest.mark.parametrize(
    ("kind", "reference"),
    [("mean", np.mean), ("sum", np.sum)],
)
def test_update_many_agrees_with_numpy(kind: str, reference: object) -> None:
    values = np.random.default_rng(3).normal(250.0, 80.0, 10_000)
    estimator = make_estimator(Measure(kind=kind, path="x"))  # type: ignore[arg-type]
    estimator.update_many(values.tolist())
    assert estimator.get() == pytest.approx(reference(values), rel=1e-12)  # type: ignore[operator]


def series_state(series: WindowedSeries) -> tuple[object, ...]:
    return (
        series.late_total,
        series.events_total,
        series.open_windows,
        series.max_event_time,
        series.live,
        series.last_closed,
        pickle.dumps(series),
    )


@settings(max_examples=200, deadline=None)
@given(
    measure=st.sampled_from(MEASURES),
    seed=st.integers(0, 2**32),
    spread=st.sampled_from([5.0, 60.0, 400.0]),
)
def test_add_many_gives_the_state_of_add_on_each(
    measure: Measure, seed: int, spread: float
) -> None:
    """Batches of events spread over one or several windows, late ones included, with
    the watermark moving between batches."""
    rng = random.Random(seed)
    one_by_one = WindowedSeries(measure, window=60.0, allowed_lateness=10.0)
    batched = WindowedSeries(measure, window=60.0, allowed_lateness=10.0)
    clock = 1_800_000_000.0
    for _ in range(20):
        count = rng.randint(0, 30)
        times = [clock + rng.uniform(-spread, spread / 4) for _ in range(count)]
        values = values_for(measure, rng, count)
        accepted = sum(one_by_one.add(t, x) for t, x in zip(times, values, strict=True))
        assert batched.add_many(times, values) == accepted
        assert series_state(batched) == series_state(one_by_one)
        clock += rng.uniform(0.0, spread)
        assert batched.advance(clock) == one_by_one.advance(clock)
    assert batched.close_all() == one_by_one.close_all()


@pytest.mark.parametrize("odd", [math.nan, math.inf, -math.inf])
def test_add_many_treats_non_finite_times_as_add_does(odd: float) -> None:
    measure = Measure(kind="mean", path="ms")
    one_by_one = WindowedSeries(measure, window=60.0, allowed_lateness=0.0)
    batched = WindowedSeries(measure, window=60.0, allowed_lateness=0.0)
    times, values = [100.0, odd, 110.0], [1.0, 2.0, 3.0]
    accepted = [one_by_one.add(t, x) for t, x in zip(times, values, strict=True)]
    assert batched.add_many(times, values) == sum(accepted)
    assert series_state(batched) == series_state(one_by_one)


def indicator(name: str, measure: Measure) -> Indicator:
    return Indicator(
        name=name,
        kind="cpi",
        description="",
        owner="test",
        measure=measure,
        window=60.0,
        allowed_lateness=5.0,
    )


INDICATORS = {f"i{n}": indicator(f"i{n}", measure) for n, measure in enumerate(MEASURES)}


def partition_state(part: PartitionSeries) -> tuple[object, ...]:
    return (
        part.replayed,
        part.unknown,
        dict(part.applied_upto),
        sorted(part.series),
        {key: series_state(series) for key, series in part.series.items()},
    )


def by_series(closed: list[ClosedWindow]) -> list[ClosedWindow]:
    return sorted(closed, key=lambda c: (c.indicator.name, c.segment, c.window.start))


@pytest.mark.parametrize("seed", range(8))
def test_apply_groups_gives_the_state_of_apply(seed: int) -> None:
    """Input batches of two source partitions, replayed in part (a restart after a
    checkpoint), with series of unknown indicators mixed in."""
    rng = random.Random(seed)
    names = [*INDICATORS, "gone"]
    one_by_one = PartitionSeries(INDICATORS, idle_timeout=30.0)
    batched = PartitionSeries(INDICATORS, idle_timeout=30.0)
    offsets = {0: 0, 1: 0}
    clock = 1_800_000_000.0
    for step in range(40):
        source = rng.choice([0, 1])
        first = offsets[source]
        if rng.random() < 0.25:
            first = max(0, first - rng.randint(1, 20))  # replay overlapping applied offsets
        observations = []
        for offset in range(first, first + rng.randint(0, 40)):
            for _ in range(rng.randint(0, 3)):
                name = rng.choice(names)
                key = series_key(name, [rng.choice(["eu", "us"])])
                measure = INDICATORS[name].measure if name in INDICATORS else MEASURES[0]
                value = values_for(measure, rng, 1)[0]
                observations.append((key, clock + rng.uniform(-30.0, 5.0), value, offset))
        last = observations[-1][3] if observations else first - 1
        offsets[source] = max(offsets[source], last + 1)
        groups: dict[str, tuple[list[float], list[float], list[int]]] = {}
        for key, t, x, offset in observations:
            times, values, group_offsets = groups.setdefault(key, ([], [], []))
            times.append(t)
            values.append(x)
            group_offsets.append(offset)
        newest = max((o[1] for o in observations), default=None)
        source_id = ("events", source, 2)
        now = 100.0 + step
        one_by_one.apply(source_id, newest, last, observations, now)
        received = batched.apply_groups(
            source_id, newest, last, [(k, *columns) for k, columns in groups.items()], now
        )
        assert received == len(observations)
        assert partition_state(batched) == partition_state(one_by_one)
        clock += rng.uniform(0.0, 20.0)
        # Series may be created in another order (a key's first observation may be a
        # replay), so windows of different series may close in another order.
        assert by_series(batched.close_due(now)) == by_series(one_by_one.close_due(now))
