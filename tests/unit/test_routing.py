"""The router: the example catalog compiled, filters, value extraction, segment labels."""

from __future__ import annotations

import copy
import math
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.catalog import load_catalog, parse_catalog
from models.routing import (
    KEY_SEPARATOR,
    MAX_LABEL_VALUE_LENGTH,
    OTHER,
    UNKNOWN,
    Router,
    sanitize_label_value,
    series_key,
    split_series_key,
)
from models.spec import Catalog
from streams.simulator import EVENT_NAMES, PAGE_NAMES, JourneySimulator

EXAMPLE = Path(__file__).resolve().parents[2] / "catalog.example.yaml"
START = 1_800_000_000.0
SEP = KEY_SEPARATOR

CATALOG = load_catalog(EXAMPLE)
# A slow rate spreads journeys over enough simulated time for every step to occur.
EVENTS: list[dict[str, Any]] = list(
    JourneySimulator(seed=7, start_time=START).events(2500, rate=10.0)
)

Observation = tuple[str, float]


def name_of(event: dict[str, Any]) -> str:
    return str(event["event"] if event["type"] == "track" else event["name"])


def expected_observations(event: dict[str, Any]) -> list[Observation]:
    """What the example catalog must route from one simulator event, written out by hand."""
    props, ctx = event["properties"], event["context"]
    name = name_of(event)
    if event["type"] == "page":
        return [(f"page_latency_p95{SEP}{ctx['channel']}", props["latency_ms"])]
    if name == "Session Started":
        return [("conversion_rate", 0.0)]
    if name == "Payment Attempted":
        flag = 1.0 if props["success"] else 0.0
        return [(f"checkout_success_rate{SEP}{ctx['channel']}{SEP}{ctx['region']}", flag)]
    if name == "Order Completed":
        revenue = props["revenue"]
        return [("revenue", revenue), ("average_order_value", revenue), ("conversion_rate", 1.0)]
    if name == "Order Delivered":
        return [
            (f"delivered_on_time_rate{SEP}{ctx['region']}", 1.0 if props["on_time"] else 0.0),
            (f"arrived_intact_rate{SEP}{ctx['region']}", 1.0 if props["intact"] else 0.0),
        ]
    if name == "Support Ticket Closed":
        channel = props["support_channel"]
        fcr = 1.0 if props["first_contact_resolution"] else 0.0
        return [
            (f"support_first_contact_resolution{SEP}{channel}", fcr),
            (f"support_tickets_closed{SEP}{channel}", 1.0),
        ]
    if name == "Survey Submitted":
        return [(f"nps{SEP}{ctx['region']}", props["nps"]), ("csat", props["csat"])]
    raise AssertionError(f"no expectation for {name!r}")


def example_router() -> Router:
    return Router.compile(CATALOG)


def catalog_of(indicators_yaml: str) -> Catalog:
    """A catalog with one CPI per YAML item (the fields every CPI needs are added here)."""
    text = "cpis:\n" + textwrap.indent(textwrap.dedent(indicators_yaml), "  ")
    return parse_catalog(text, "test")


def cpi_yaml(name: str, body: str) -> str:
    head = f"- name: {name}\n  description: d\n  owner: team\n  journey_step: step\n"
    return head + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n"


def track(name: str, props: dict[str, Any] | None = None, **context: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "properties": props or {}, "context": context}


# --- the example catalog against simulator events ------------------------------------------


def test_the_simulated_stream_has_every_event_kind() -> None:
    kinds = Counter(name_of(event) for event in EVENTS)
    assert set(kinds) == set(EVENT_NAMES) | set(PAGE_NAMES)


@pytest.mark.parametrize("kind", [*EVENT_NAMES, *PAGE_NAMES])
def test_each_event_kind_feeds_exactly_its_indicators(kind: str) -> None:
    router = example_router()
    events = [event for event in EVENTS if name_of(event) == kind]
    assert events
    for event in events:
        observed = router.observe(kind, event)
        assert sorted(observed) == sorted(expected_observations(event)), event
        for _key, value in observed:
            assert type(value) is float
    assert not any(router.unmeasurable().values())
    assert router.folded() == {}


def test_every_event_fed_indicator_is_routed_and_topic_kpis_are_not() -> None:
    router = example_router()
    names = {indicator.name for indicator in CATALOG.indicators}
    assert {route.indicator.name for route in router.routes} == names
    assert router.unmeasurable() == dict.fromkeys(names, 0)
    topic_kpi = parse_catalog(
        textwrap.dedent(
            """
            cpis:
              - {name: ok, description: d, owner: t, journey_step: s, event: A, measure: count}
            kpis:
              - {name: churn, description: d, owner: t, source: topic}
            """
        )
    )
    router = Router.compile(topic_kpi)
    assert [route.indicator.name for route in router.routes] == ["ok"]
    assert router.observe("churn", track("churn")) == []
    assert router.observe("A", track("A")) == [("ok", 1.0)]


def test_unknown_event_names_feed_nothing() -> None:
    router = example_router()
    assert router.observe("Newsletter Opened", track("Newsletter Opened", {"success": True})) == []
    assert not any(router.unmeasurable().values())


def test_only_the_compiled_subset_is_routed() -> None:
    nps = CATALOG.indicator("nps")
    router = Router.compile(CATALOG, [nps])
    survey = track("Survey Submitted", {"nps": 9, "csat": 5}, region="eu")
    assert router.observe("Survey Submitted", survey) == [(f"nps{SEP}eu", 9.0)]


# --- values per measure kind ----------------------------------------------------------------


@pytest.mark.parametrize(("success", "expected"), [(True, 1.0), (False, 0.0)])
def test_rate_takes_a_boolean_flag(success: bool, expected: float) -> None:
    router = example_router()
    event = track("Payment Attempted", {"success": success}, channel="web", region="eu")
    assert router.observe("Payment Attempted", event) == [
        (f"checkout_success_rate{SEP}web{SEP}eu", expected)
    ]


@pytest.mark.parametrize("score", [0, 6, 7, 9, 10, 8.5])
def test_nps_takes_scores_from_0_to_10(score: float) -> None:
    router = example_router()
    event = track("Survey Submitted", {"nps": score, "csat": 4}, region="us")
    assert (f"nps{SEP}us", float(score)) in router.observe("Survey Submitted", event)
    assert router.unmeasurable()["nps"] == 0


@pytest.mark.parametrize("score", [-1, -0.5, 10.5, 11, 100])
def test_nps_outside_0_to_10_is_unmeasurable(score: float) -> None:
    router = example_router()
    event = track("Survey Submitted", {"nps": score, "csat": 4}, region="us")
    assert router.observe("Survey Submitted", event) == [("csat", 4.0)]
    assert router.unmeasurable()["nps"] == 1
    assert router.unmeasurable()["csat"] == 0


@pytest.mark.parametrize("rating", [1, 3, 4, 5, 4.5])
def test_csat_takes_the_rating(rating: float) -> None:
    router = example_router()
    event = track("Survey Submitted", {"nps": 10, "csat": rating}, region="us")
    assert ("csat", float(rating)) in router.observe("Survey Submitted", event)


def test_quantile_takes_the_number() -> None:
    router = example_router()
    page = {"type": "page", "name": "Home", "properties": {"latency_ms": 123.4}, "context": {}}
    assert router.observe("Home", page) == [(f"page_latency_p95{SEP}{UNKNOWN}", 123.4)]
    page["properties"]["latency_ms"] = 90
    assert router.observe("Home", page) == [(f"page_latency_p95{SEP}{UNKNOWN}", 90.0)]


def test_count_is_one_whatever_the_properties() -> None:
    router = example_router()
    ticket = track("Support Ticket Closed", {"support_channel": "chat"})
    observed = dict(router.observe("Support Ticket Closed", ticket))
    assert observed == {f"support_tickets_closed{SEP}chat": 1.0}
    # first_contact_resolution was missing: only the rate is unmeasurable, not the count.
    assert router.unmeasurable()["support_first_contact_resolution"] == 1
    assert router.unmeasurable()["support_tickets_closed"] == 0


def test_ratio_numerator_is_one_and_denominator_zero() -> None:
    router = example_router()
    assert router.observe("Session Started", track("Session Started")) == [("conversion_rate", 0.0)]
    completed = dict(router.observe("Order Completed", track("Order Completed")))
    assert completed == {"conversion_rate": 1.0}  # revenue missing: sum and mean skip it
    assert router.unmeasurable()["revenue"] == 1
    assert router.unmeasurable()["average_order_value"] == 1
    assert router.unmeasurable()["conversion_rate"] == 0


def test_equals_rate_compares_the_value() -> None:
    catalog = catalog_of(
        cpi_yaml(
            "card_share",
            "event: Payment Attempted\nmeasure: {rate: properties.method, equals: card}",
        )
    )
    router = Router.compile(catalog)
    observe = router.observe
    assert observe("Payment Attempted", track("Payment Attempted", {"method": "card"})) == [
        ("card_share", 1.0)
    ]
    assert observe("Payment Attempted", track("Payment Attempted", {"method": "paypal"})) == [
        ("card_share", 0.0)
    ]
    assert observe("Payment Attempted", track("Payment Attempted", {"method": None})) == [
        ("card_share", 0.0)
    ]
    assert router.unmeasurable()["card_share"] == 0
    assert observe("Payment Attempted", track("Payment Attempted", {})) == []
    assert router.unmeasurable()["card_share"] == 1


def test_equals_rate_with_a_number() -> None:
    catalog = catalog_of(
        cpi_yaml(
            "single_item", "event: Order Completed\nmeasure: {rate: properties.items, equals: 1}"
        )
    )
    router = Router.compile(catalog)
    values = [
        router.observe("Order Completed", track("Order Completed", {"items": items}))
        for items in (1, 2, 1.0, "1")
    ]
    assert values == [
        [("single_item", 1.0)],
        [("single_item", 0.0)],
        [("single_item", 1.0)],
        [("single_item", 0.0)],
    ]


# --- where filters and "*" -------------------------------------------------------------------


def test_star_with_where_takes_page_views_of_any_name() -> None:
    router = example_router()
    page = {"type": "page", "name": "Anything", "properties": {"latency_ms": 5.0}, "context": {}}
    assert router.observe("Anything", page) == [(f"page_latency_p95{SEP}{UNKNOWN}", 5.0)]
    # A track event carrying a latency is filtered out by `where: {type: page}`...
    timed = track("Anything", {"latency_ms": 5.0}, channel="web")
    assert router.observe("Anything", timed) == []
    # ...before its value is read: filtered events are not unmeasurable.
    assert router.observe("Session Started", track("Session Started")) == [("conversion_rate", 0.0)]
    assert router.unmeasurable()["page_latency_p95"] == 0
    screen = {"type": "screen", "name": "Home", "properties": {"latency_ms": 5.0}, "context": {}}
    assert router.observe("Home", screen) == []


def test_star_without_where_takes_every_event() -> None:
    catalog = catalog_of(cpi_yaml("all_events", 'event: "*"\nmeasure: count'))
    router = Router.compile(catalog)
    for event in EVENTS[:200]:
        assert router.observe(name_of(event), event) == [("all_events", 1.0)]


def test_where_filters_must_all_hold() -> None:
    catalog = catalog_of(
        cpi_yaml(
            "web_eu_success",
            """
            event: Payment Attempted
            where: {context.channel: web, context.region: eu, properties.attempt: 1}
            measure: {rate: properties.success}
            """,
        )
    )
    router = Router.compile(catalog)

    def observe(attempt: Any, **context: Any) -> list[Observation]:
        event = track("Payment Attempted", {"success": True, "attempt": attempt}, **context)
        return router.observe("Payment Attempted", event)

    assert observe(1, channel="web", region="eu") == [("web_eu_success", 1.0)]
    assert observe(1, channel="ios", region="eu") == []
    assert observe(1, channel="web", region="us") == []
    assert observe(2, channel="web", region="eu") == []
    assert observe("1", channel="web", region="eu") == []
    assert observe(1, channel="web") == []  # region missing
    assert observe(1) == []
    unmatched = {"type": "track", "event": "Payment Attempted", "properties": {"success": True}}
    assert router.observe("Payment Attempted", {**unmatched, "context": "web"}) == []
    assert router.unmeasurable()["web_eu_success"] == 0


# --- unusable values --------------------------------------------------------------------------

UNUSABLE_NUMBERS: list[Any] = [
    None,
    True,
    False,
    "120",
    "",
    [120],
    {"ms": 120},
    float("nan"),
    float("inf"),
    float("-inf"),
    2**64,
    -(2**70),
]


@pytest.mark.parametrize("value", UNUSABLE_NUMBERS, ids=repr)
@pytest.mark.parametrize(
    ("event_name", "field", "indicators"),
    [
        ("Home", "latency_ms", ["page_latency_p95"]),
        ("Order Completed", "revenue", ["revenue", "average_order_value"]),
        ("Survey Submitted", "nps", ["nps"]),
        ("Survey Submitted", "csat", ["csat"]),
    ],
)
def test_numbers_must_be_finite_json_numbers(
    value: Any, event_name: str, field: str, indicators: list[str]
) -> None:
    router = example_router()
    props = {"latency_ms": 100.0, "revenue": 10.0, "nps": 10, "csat": 5, field: value}
    kind = "page" if event_name in PAGE_NAMES else "track"
    event = {"type": kind, "event": event_name, "name": event_name, "properties": props}
    event["context"] = {"channel": "web", "region": "eu"}
    observed = router.observe(event_name, event)
    assert {split_series_key(key)[0] for key, _ in observed}.isdisjoint(indicators)
    unmeasurable = router.unmeasurable()
    for name in indicators:
        assert unmeasurable[name] == 1
    assert sum(unmeasurable.values()) == len(indicators)


def test_missing_fields_are_unmeasurable_and_counted() -> None:
    router = example_router()
    for props in ({}, {"success": None}, {"other": True}):
        event = track("Payment Attempted", props, channel="web", region="eu")
        assert router.observe("Payment Attempted", event) == []
    no_properties = {"type": "track", "event": "Order Delivered", "context": {"region": "eu"}}
    assert router.observe("Order Delivered", no_properties) == []
    not_an_object = {**no_properties, "properties": ["on_time"]}
    assert router.observe("Order Delivered", not_an_object) == []
    unmeasurable = router.unmeasurable()
    assert unmeasurable["checkout_success_rate"] == 3
    assert unmeasurable["delivered_on_time_rate"] == 2
    assert unmeasurable["arrived_intact_rate"] == 2
    assert unmeasurable["nps"] == 0


@pytest.mark.parametrize(
    "flag", ["true", "yes", 2, -1, 0.5, float("nan"), [True], {"v": True}, None]
)
def test_rate_flags_of_the_wrong_type_are_unmeasurable(flag: Any) -> None:
    router = example_router()
    event = track("Order Delivered", {"on_time": flag, "intact": True}, region="eu")
    assert router.observe("Order Delivered", event) == [(f"arrived_intact_rate{SEP}eu", 1.0)]
    assert router.unmeasurable()["delivered_on_time_rate"] == 1


#: Indicators of the example catalog that read a number (not a flag, not the event name).
NUMERIC = frozenset({"page_latency_p95", "revenue", "average_order_value", "nps", "csat"})


@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(),
        st.booleans(),
        st.text(max_size=5),
        st.none(),
    )
)
def test_no_observation_value_is_ever_a_non_finite_or_a_boolean(raw: Any) -> None:
    router = example_router()
    props = {"latency_ms": raw, "revenue": raw, "nps": raw, "csat": raw, "success": raw}
    props |= {"on_time": raw, "intact": raw, "first_contact_resolution": raw}
    for name in ("Home", "Order Completed", "Survey Submitted", "Payment Attempted"):
        event = {"type": "page" if name == "Home" else "track", "name": name, "event": name}
        event |= {"properties": props, "context": {"channel": "web", "region": "eu"}}
        for key, value in router.observe(name, event):
            assert type(value) is float and math.isfinite(value), (key, raw)
            indicator = split_series_key(key)[0]
            if isinstance(raw, bool):
                assert indicator not in NUMERIC, f"boolean {raw} became a number for {indicator}"
            if indicator == "nps":
                assert 0.0 <= value <= 10.0


# --- segment labels ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("eu", "eu"),
        ("EU West\n", "EU_West_"),
        ('a"b\\c{d}=e,f', "a_b_c_d__e_f"),
        (f"x{SEP}y", "x_y"),
        ("", UNKNOWN),
        (None, UNKNOWN),
        ({"nested": 1}, UNKNOWN),
        (["eu"], UNKNOWN),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        ("x" * 500, "x" * MAX_LABEL_VALUE_LENGTH),
    ],
)
def test_segment_values_are_sanitized(raw: Any, label: str) -> None:
    assert sanitize_label_value(raw) == label
    router = example_router()
    survey = track("Survey Submitted", {"nps": 9, "csat": 5}, region=raw)
    assert (f"nps{SEP}{label}", 9.0) in router.observe("Survey Submitted", survey)


def test_missing_segment_path_is_unknown() -> None:
    router = example_router()
    event = {"type": "track", "event": "Payment Attempted", "properties": {"success": True}}
    assert router.observe("Payment Attempted", event) == [
        (f"checkout_success_rate{SEP}{UNKNOWN}{SEP}{UNKNOWN}", 1.0)
    ]


@given(st.lists(st.text(), min_size=2, max_size=2))
def test_a_segment_value_never_adds_or_removes_key_parts(values: list[str]) -> None:
    router = example_router()
    channel, region = values
    event = track("Payment Attempted", {"success": False}, channel=channel, region=region)
    [(key, _)] = router.observe("Payment Attempted", event)
    name, segment = split_series_key(key)
    assert name == "checkout_success_rate"
    assert len(segment) == 2
    for label in segment:
        assert 0 < len(label) <= MAX_LABEL_VALUE_LENGTH
        assert label.isprintable() and " " not in label and '"' not in label


def test_segment_values_beyond_the_cap_fold_into_other() -> None:
    router = example_router()
    cap = CATALOG.indicator("nps").segment_by[0].cap
    regions = [f"r{i}" for i in range(cap + 10)]
    keys = []
    for region in regions:
        survey = track("Survey Submitted", {"nps": 9, "csat": 5}, region=region)
        keys.append(router.observe("Survey Submitted", survey)[0][0])
    assert keys[:cap] == [f"nps{SEP}{region}" for region in regions[:cap]]
    assert keys[cap:] == [f"nps{SEP}{OTHER}"] * 10
    assert router.folded() == {("nps", "region"): 10}
    # Values seen before the cap keep their own series.
    again = track("Survey Submitted", {"nps": 9, "csat": 5}, region="r0")
    assert router.observe("Survey Submitted", again)[0][0] == f"nps{SEP}r0"
    assert router.folded() == {("nps", "region"): 10}


def test_values_sanitizing_to_one_label_take_one_slot() -> None:
    catalog = catalog_of(
        cpi_yaml(
            "per_city",
            """
            event: A
            measure: count
            segment_by: [{label: city, path: context.city, cap: 2}]
            """,
        )
    )
    router = Router.compile(catalog)
    long_prefix = "y" * MAX_LABEL_VALUE_LENGTH
    raws = ["new york", "new_york", "new\tyork", long_prefix + "1", long_prefix + "2"]
    raws += [long_prefix + str(i) for i in range(1000)]
    keys = {router.observe("A", track("A", city=raw))[0][0] for raw in raws}
    assert keys == {f"per_city{SEP}new_york", f"per_city{SEP}{long_prefix}"}
    assert router.folded() == {}
    assert router.observe("A", track("A", city="paris"))[0][0] == f"per_city{SEP}{OTHER}"
    assert router.folded() == {("per_city", "city"): 1}


def test_a_cardinality_attack_is_bounded() -> None:
    router = example_router()
    cap = 50
    assert all(s.cap == cap for s in CATALOG.indicator("delivered_on_time_rate").segment_by)
    keys: set[str] = set()
    attempts = 100_000
    for i in range(attempts):
        event = track("Order Delivered", {"on_time": True, "intact": False}, region=f"x-{i}")
        for key, _ in router.observe("Order Delivered", event):
            keys.add(key)
    by_indicator = Counter(split_series_key(key)[0] for key in keys)
    assert by_indicator == {"delivered_on_time_rate": cap + 1, "arrived_intact_rate": cap + 1}
    assert f"delivered_on_time_rate{SEP}{OTHER}" in keys
    folded = router.folded()
    assert folded == {
        ("delivered_on_time_rate", "region"): attempts - cap,
        ("arrived_intact_rate", "region"): attempts - cap,
    }


def test_segments_fold_per_indicator_and_label() -> None:
    router = example_router()
    cap = 5  # support_first_contact_resolution caps support_channel at 5
    for i in range(8):
        ticket = track(
            "Support Ticket Closed",
            {"first_contact_resolution": True, "support_channel": f"c{i}"},
        )
        router.observe("Support Ticket Closed", ticket)
    # The metric on the same path keeps the default cap of 50.
    assert router.folded() == {("support_first_contact_resolution", "support_channel"): 8 - cap}


def test_folding_is_per_router() -> None:
    first, second = example_router(), example_router()
    for i in range(60):
        first.observe("Survey Submitted", track("Survey Submitted", {"nps": 1}, region=f"r{i}"))
    fresh = track("Survey Submitted", {"nps": 1}, region="late-comer")
    assert second.observe("Survey Submitted", fresh)[0][0] == f"nps{SEP}late-comer"
    assert second.folded() == {}


def test_events_are_not_modified() -> None:
    router = example_router()
    for event in EVENTS[:500]:
        before = copy.deepcopy(event)
        router.observe(name_of(event), event)
        assert event == before


# --- series keys ------------------------------------------------------------------------------

_PART = st.text().filter(lambda text: SEP not in text)


@given(_PART, st.lists(_PART, max_size=4))
def test_series_key_round_trip(name: str, segment: list[str]) -> None:
    key = series_key(name, segment)
    assert split_series_key(key) == (name, tuple(segment))
    assert split_series_key(series_key(name, iter(segment))) == (name, tuple(segment))


@given(_PART, st.lists(_PART, min_size=1, max_size=3), st.lists(_PART, min_size=1, max_size=3))
def test_different_segments_give_different_keys(
    name: str, first: list[str], second: list[str]
) -> None:
    if first != second:
        assert series_key(name, first) != series_key(name, second)


def test_router_keys_are_series_keys() -> None:
    router = example_router()
    event = track("Payment Attempted", {"success": True}, channel="ios", region="apac")
    [(key, _)] = router.observe("Payment Attempted", event)
    assert key == series_key("checkout_success_rate", ["ios", "apac"])
    assert router.observe("Order Completed", track("Order Completed", {"revenue": 5}))[0][0] == (
        series_key("revenue", [])
    )
