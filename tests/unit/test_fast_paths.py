"""The hot-path shortcuts against the plain implementations they stand in for.

- compiled route plans (``Router.observe``) against running ``Route.observe`` of each
  route, on random catalogs and random events, folding and counters included;
- the cached-seconds timestamp path of ``decode_event`` against ``datetime``;
- the per-batch delay histogram of the Ingestor against ``DelayHistogram.observe_many``.
(``RecentIds`` against a plain model is in test_dedupe.py.)
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.metrics import DELAY_BUCKETS, DelayHistogram
from agents.pipeline import Ingestor
from models.errors import EventRejected
from models.routing import Groups, Router
from models.spec import Catalog, Indicator, Measure, MeasureKind, Scalar, Segment
from streams import codec
from streams.codec import decode_event

# --- route plans -----------------------------------------------------------------------------

NAMES = ["A", "B", "C"]
PATHS = ["type", "x", "p.a", "p.b", "c.r", "c.s", "p.q.z"]
#: Values a path may hold, of every JSON type and the cross-type equal ones (1, 1.0, True).
VALUES: list[Any] = [
    "page", "track", "eu", "us", "other", "", "x" * 70, "a b", 0, 1, 2, 1.0, 0.5, -3.0, 11,
    True, False, None, [1], {"k": 1}, 2**63 - 1, 2**63, -(2**63), float("inf"), float("nan"),
]  # fmt: skip

values = st.sampled_from(VALUES)
scalars: st.SearchStrategy[Scalar] = st.sampled_from(["page", "eu", 1, 1.0, True, 0, "track"])


@st.composite
def measures(draw: st.DrawFn) -> Measure:
    kinds: list[MeasureKind] = ["rate", "mean", "sum", "quantile", "count", "nps", "csat"]
    kind = draw(st.sampled_from(kinds))
    if kind == "count":
        return Measure(kind="count")
    path = draw(st.sampled_from(PATHS))
    if kind == "rate":
        return Measure(kind="rate", path=path, equals=draw(st.none() | scalars))
    if kind == "quantile":
        return Measure(kind="quantile", path=path, q=0.5)
    if kind == "csat":
        return Measure(kind="csat", path=path, threshold=4.0)
    return Measure(kind=kind, path=path)


@st.composite
def indicators(draw: st.DrawFn, number: int) -> Indicator:
    if draw(st.booleans()):
        measure = Measure(
            kind="ratio", numerator_events=tuple(draw(st.sets(st.sampled_from(NAMES))))
        )
    else:
        measure = draw(measures())
    events = tuple(
        draw(st.lists(st.sampled_from([*NAMES, "*"]), min_size=1, max_size=2, unique=True))
    )
    where_paths = draw(st.sampled_from([[], [], ["type"], *([p] for p in PATHS), PATHS[:2]]))
    where = tuple((path, draw(scalars)) for path in where_paths)
    segment_paths = draw(st.lists(st.sampled_from(PATHS), max_size=3))
    segments = tuple(
        Segment(label=f"l{i}", path=path, cap=draw(st.integers(1, 3)))
        for i, path in enumerate(segment_paths)
    )
    return Indicator(
        name=f"i{number}", kind="cpi", description="", owner="t", measure=measure,
        events=events, where=where, segment_by=segments,
    )  # fmt: skip


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    count = draw(st.integers(1, 5))
    return Catalog(source="test", cpis=tuple(draw(indicators(i)) for i in range(count)))


def random_events(rng: random.Random, count: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` (name, event) pairs over NAMES, PATHS and VALUES (plus unknown names)."""

    def node(depth: int) -> Any:
        if depth < 2 and rng.random() < 0.6:
            keys = rng.sample(["a", "b", "q", "r", "s", "z"], rng.randint(0, 4))
            return {key: node(depth + 1) for key in keys}
        return rng.choice(VALUES)

    out = []
    for _ in range(count):
        event: dict[str, Any] = {}
        for key in rng.sample(["type", "x", "p", "c"], rng.randint(1, 4)):
            event[key] = node(0) if key in ("p", "c") else rng.choice(VALUES)
        out.append((rng.choice([*NAMES, "Z"]), event))
    return out


def reference_observe(router: Router, name: str, event: dict[str, Any]) -> list[Any]:
    """The router before compilation: every route of the name, then every "*" route."""
    out = []
    for route in (*router.by_event.get(name, ()), *router.any_event):
        observation = route.observe(name, event)
        if observation is not None:
            out.append(observation)
    return out


def same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    return len(a) == len(b) and all(
        x[0] == y[0] and type(x[1]) is type(y[1]) and x[1] == y[1]
        for x, y in zip(a, b, strict=True)
    )


@settings(max_examples=80, deadline=None)
@given(catalogs(), st.randoms(use_true_random=False))
def test_compiled_plans_route_as_the_routes_do(catalog: Catalog, rng: random.Random) -> None:
    compiled, reference = Router.compile(catalog), Router.compile(catalog)
    stream = random_events(rng, 100)
    for name, event in stream * 2:  # twice: the second pass meets cached series keys
        assert same(compiled.observe(name, event), reference_observe(reference, name, event))
    assert compiled.folded() == reference.folded()
    assert compiled.unmeasurable() == reference.unmeasurable()


def test_star_routes_are_indexed_by_their_top_level_filter() -> None:
    page = Indicator(
        name="latency", kind="cpi", description="", owner="t",
        measure=Measure(kind="mean", path="p.ms"), events=("*",), where=(("type", "page"),),
    )  # fmt: skip
    router = Router.compile(Catalog(source="test", cpis=(page,)))
    assert router.observe("Home", {"type": "page", "p": {"ms": 5}}) == [("latency", 5.0)]
    # Events whose type cannot match run a plan without the route at all.
    plan = router.plan("Home", {"type": "track", "p": {"ms": 5}})
    groups: Groups = {}
    plan("Home", {"type": "track", "p": {"ms": 5}}, groups, 1.0, 7)
    assert groups == {}
    router.plan("Home", {"type": "page", "p": {"ms": 5}})(
        "Home", {"type": "page", "p": {"ms": 6}}, groups, 1.0, 7
    )
    assert groups == {"latency": [(1.0, 6.0, 7)]}
    assert "latency" not in router.sources[(None, None)]
    assert router.observe("Home", {"type": ["page"], "p": {"ms": 5}}) == []  # unhashable
    assert router.unmeasurable() == {"latency": 0}


def test_a_series_key_cache_never_hides_folding() -> None:
    region = Indicator(
        name="n", kind="cpi", description="", owner="t", measure=Measure(kind="count"),
        events=("A",), segment_by=(Segment(label="region", path="c.r", cap=2),),
    )  # fmt: skip
    router = Router.compile(Catalog(source="test", cpis=(region,)))
    keys = [router.observe("A", {"c": {"r": r}})[0][0] for r in ["eu", "us", "apac", "apac", "eu"]]
    assert keys == ["n\x1feu", "n\x1fus", "n\x1fother", "n\x1fother", "n\x1feu"]
    assert router.folded() == {("n", "region"): 2}  # each folded event counted


# --- timestamps ------------------------------------------------------------------------------

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC).timestamp()


def raw_event(stamp: object) -> bytes:
    return orjson.dumps({"event": "e", "messageId": "m", "userId": "u", "timestamp": stamp})


def slow(stamp: object) -> float | str:
    """What the full parse gives: the time, or the rejection reason."""
    codec._seconds.clear()
    try:
        return decode_event(raw_event(stamp), now=NOW)[1]
    except EventRejected as rejection:
        return rejection.reason


@given(
    st.datetimes(min_value=datetime(1999, 12, 31), max_value=datetime(2101, 1, 2)),
    st.sampled_from(["Z", "+00:00", "z", "-00:00", "+01:00", ""]),
    st.sampled_from(["T", " ", "t"]),
    st.integers(0, 999),
    st.sampled_from(["ms", "none", "us", "odd"]),
)
def test_cached_seconds_give_what_datetime_gives(
    when: datetime, zone: str, separator: str, millis: int, fraction: str
) -> None:
    head = when.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
    tail = {"ms": f".{millis:03d}", "none": "", "us": f".{millis:06d}", "odd": f".{millis}"}
    stamp = head + tail[fraction] + zone
    expected = slow(stamp)  # cold: also remembers the seconds when the shape allows
    for again in (stamp, head + ".500" + zone, head + zone):
        cold = slow(again)
        slow(stamp)  # warm the cache with the first shape
        try:
            warm: float | str = decode_event(raw_event(again), now=NOW)[1]
        except EventRejected as rejection:
            warm = rejection.reason
        assert warm == cold
        if type(cold) is float:
            assert cold == datetime.fromisoformat(again.upper()).timestamp()
    assert expected == slow(stamp)


def test_cached_seconds_keep_the_range_and_future_checks() -> None:
    codec._seconds.clear()
    late = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=400)
    stamp = late.strftime("%Y-%m-%dT%H:%M:%S") + ".000Z"
    for _ in range(2):  # cold, then from the cache
        with pytest.raises(EventRejected) as info:
            decode_event(raw_event(stamp), now=NOW)
        assert info.value.reason == "future_timestamp"
    assert decode_event(raw_event(stamp), now=NOW + 200)[1] == NOW + 400
    for _ in range(2):
        with pytest.raises(EventRejected) as info:
            decode_event(raw_event("2101-01-01T00:00:00.000Z"), now=5e9)
        assert info.value.reason == "bad_timestamp"


# --- delay histogram and message ids ---------------------------------------------------------


@given(
    st.floats(1.7e9, 1.9e9),
    st.lists(
        st.one_of(st.floats(-500.0, 5000.0), st.sampled_from([*DELAY_BUCKETS, 0.0])), max_size=200
    ),
)
def test_batch_delays_fill_the_histogram_as_observe_many(now: float, delays: list[float]) -> None:
    stage = Ingestor(router=Router.compile(Catalog(source="t", cpis=())), observation_partitions=1)
    reference = DelayHistogram()
    times = [now - delay for delay in delays]
    for _ in range(2):
        stage._observe_delays(now, times)
        reference.observe_many([now - t for t in times])
    assert stage.delay.counts == reference.counts
    assert (stage.delay.count, stage.delay.total) == (reference.count, reference.total)
