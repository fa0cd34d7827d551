"""The catalog reader: the example file, every validation rule, durations."""

from __future__ import annotations

import copy
import re
import textwrap
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from models.catalog import DurationError, load_catalog, parse_catalog, parse_duration
from models.errors import CatalogError
from models.spec import Alerting, Link, Measure, Segment, Target

EXAMPLE = Path(__file__).resolve().parents[2] / "catalog.example.yaml"

BASE: dict[str, Any] = {
    "version": 1,
    "cpis": [
        {
            "name": "checkout_success_rate",
            "description": "Share of payment attempts that succeed",
            "owner": "payments",
            "journey_step": "checkout",
            "event": "Payment Attempted",
            "measure": {"rate": "properties.success"},
        }
    ],
    "kpis": [
        {
            "name": "revenue",
            "description": "Revenue of completed orders",
            "owner": "finance",
            "event": "Order Completed",
            "measure": {"sum": "properties.revenue"},
        }
    ],
}


def document(cpi: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """BASE with the CPI's fields updated by ``cpi`` (None deletes) and top-level keys set."""
    doc = copy.deepcopy(BASE)
    for key, value in (cpi or {}).items():
        if value is None:
            doc["cpis"][0].pop(key, None)
        else:
            doc["cpis"][0][key] = value
    doc.update(top)
    return doc


def kpi(**fields: Any) -> dict[str, Any]:
    base = {"name": "conversion", "description": "Orders per session", "owner": "growth"}
    return {**base, "event": "Session Started", "measure": "count", **fields}


def parse(doc: dict[str, Any] | str) -> Any:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    return parse_catalog(text, "test.yaml")


def problems_of(doc: dict[str, Any] | str) -> list[tuple[str, str]]:
    with pytest.raises(CatalogError) as caught:
        parse(doc)
    assert caught.value.source == "test.yaml"
    return caught.value.problems


def without_line(location: str) -> str:
    return re.sub(r" \(line \d+\)$", "", location)


def assert_problem(doc: dict[str, Any] | str, location: str, *gist: str) -> None:
    """Exactly the problem at ``location`` is reported, and its message contains ``gist``."""
    problems = problems_of(doc)
    messages = [message for where, message in problems if without_line(where) == location]
    assert messages, f"nothing reported at {location}; got {problems}"
    assert any(all(part in message for part in gist) for message in messages), problems


# --- the example catalog ---------------------------------------------------------------


@pytest.fixture(scope="module")
def example() -> Any:
    return load_catalog(EXAMPLE)


def test_example_has_the_shop_indicators_in_order(example: Any) -> None:
    assert [i.name for i in example.cpis] == [
        "checkout_success_rate",
        "page_latency_p95",
        "delivered_on_time_rate",
        "arrived_intact_rate",
        "support_first_contact_resolution",
        "nps",
        "csat",
    ]
    assert [i.name for i in example.kpis] == ["revenue", "conversion_rate", "average_order_value"]
    assert [i.name for i in example.metrics] == ["support_tickets_closed"]
    assert example.source == str(EXAMPLE)


def test_example_checkout_success_rate(example: Any) -> None:
    checkout = example.indicator("checkout_success_rate")
    assert checkout.kind == "cpi"
    assert (checkout.owner, checkout.journey_step) == ("payments", "checkout")
    assert checkout.events == ("Payment Attempted",)
    assert checkout.measure == Measure(kind="rate", path="properties.success")
    assert [s.label for s in checkout.segment_by] == ["channel", "region"]
    assert checkout.segment_by[0] == Segment("channel", "context.channel", cap=50)
    assert checkout.target == Target("min", 0.95, for_seconds=300.0)
    assert (checkout.window, checkout.allowed_lateness, checkout.unit) == (60.0, 10.0, "ratio")
    assert checkout.runbook_url.startswith("https://")


def test_example_measures_filters_and_segments(example: Any) -> None:
    latency = example.indicator("page_latency_p95")
    assert latency.events == ("*",)
    assert latency.where == (("type", "page"),)
    assert latency.measure == Measure(kind="quantile", path="properties.latency_ms", q=0.95)
    assert latency.target == Target("max", 800.0)
    support = example.indicator("support_first_contact_resolution")
    assert support.segment_by == (Segment("support_channel", "properties.support_channel", 5),)
    assert example.indicator("nps").measure == Measure(kind="nps", path="properties.nps")
    assert example.indicator("csat").measure.threshold == 4.0
    assert example.indicator("csat").segment_by == ()
    conversion = example.indicator("conversion_rate")
    assert conversion.measure == Measure(kind="ratio", numerator_events=("Order Completed",))
    assert conversion.events == ("Session Started",)
    assert example.indicator("revenue").measure.kind == "sum"
    assert example.indicator("average_order_value").target is None
    tickets = example.indicator("support_tickets_closed")
    assert (tickets.kind, tickets.measure, tickets.target) == ("metric", Measure("count"), None)


def test_example_links_every_cpi_to_every_kpi(example: Any) -> None:
    assert len(example.links) == 7 * 3
    pairs = {(link.cpi, link.kpi) for link in example.links}
    assert pairs == {(c.name, k.name) for c in example.cpis for k in example.kpis}
    assert example.links[0] == Link("checkout_success_rate", "revenue", 5, 30, 90)
    assert example.links[0] == Link("checkout_success_rate", "revenue")


# --- loading and YAML -------------------------------------------------------------------


def test_missing_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as caught:
        load_catalog(tmp_path / "nope.yaml")
    assert caught.value.problems == [("file", caught.value.problems[0][1])]
    assert "no such file" in caught.value.problems[0][1]
    assert "catalog.example.yaml" in str(caught.value)


def test_yaml_syntax_error_gives_line_and_column() -> None:
    text = "cpis:\n  - name: a\n   owner: b\n"
    [(where, message)] = problems_of(text)
    assert where == "line 3, column 4"  # where "owner" starts, one column off the list item
    assert message.startswith("invalid YAML")


def test_unquoted_star_event_suggests_quoting() -> None:
    [(where, message)] = problems_of("cpis:\n  - name: a\n    event: *\n")
    assert where.startswith("line 3,")
    assert 'event: "*"' in message


@pytest.mark.parametrize(("text", "gist"), [("", "empty"), ("[1, 2]", "got a list")])
def test_document_must_be_a_mapping(text: str, gist: str) -> None:
    assert_problem(text, "catalog", gist)


def test_duplicate_yaml_key_is_reported() -> None:
    text = yaml.safe_dump(BASE, sort_keys=False) + "version: 1\n"
    assert_problem(text, "version", "appears twice")


def test_location_carries_name_and_line() -> None:
    text = textwrap.dedent("""\
        cpis:
          - name: page_latency_p95
            description: slow pages
            owner: web
            journey_step: browse
            event: "*"
            measure:
              quantile: properties.latency_ms
              q: 1.5
        """)
    [(where, message)] = problems_of(text)
    assert where == "cpis[page_latency_p95].measure.q (line 9)"
    assert "between 0 and 1 exclusive, e.g. 0.95" in message


def test_every_problem_is_reported_at_once() -> None:
    doc = document({"owner": "Payments", "window": "7s", "tagret": {"min": 1}}, version=2)
    locations = [without_line(where) for where, _ in problems_of(doc)]
    assert locations == [
        "version",
        "cpis[checkout_success_rate].owner",
        "cpis[checkout_success_rate].window",
        "cpis[checkout_success_rate].tagret",
    ]


def test_unknown_key_suggests_the_closest_one() -> None:
    doc = document({"tagret": {"min": 0.9}})
    assert_problem(doc, "cpis[checkout_success_rate].tagret", "did you mean 'target'?")


def test_unknown_key_without_a_close_match_lists_the_allowed_ones() -> None:
    assert_problem(document(colour="red"), "colour", "allowed keys here: version, defaults")


def test_version_must_be_1() -> None:
    assert_problem(document(version=2), "version", "write version: 1")


# --- indicators ---------------------------------------------------------------------------


def test_at_least_one_cpi_is_required() -> None:
    assert_problem(document(cpis=[]), "cpis", "at least one CPI")


@pytest.mark.parametrize("name", ["Checkout", "2fast", "check-out", "check out"])
def test_name_must_be_snake_case(name: str) -> None:
    assert_problem(document({"name": name}), "cpis[0].name", "not a valid name", "e.g. checkout_")


def test_names_are_unique_across_sections() -> None:
    doc = document(kpis=[kpi(name="checkout_success_rate")])
    assert_problem(doc, "kpis[0].name", "already used by cpis[checkout_success_rate]")


@pytest.mark.parametrize("field", ["name", "description", "owner", "event", "measure"])
def test_required_fields(field: str) -> None:
    location = f"cpis[{'0' if field == 'name' else 'checkout_success_rate'}].{field}"
    assert_problem(document({field: None}), location, f"{field} is required: add")


def test_owner_must_be_a_routing_label() -> None:
    doc = document({"owner": "Payments Team"})
    assert_problem(doc, "cpis[checkout_success_rate].owner", "not a valid owner", "e.g.")


def test_cpi_needs_a_journey_step() -> None:
    doc = document({"journey_step": None})
    assert_problem(doc, "cpis[checkout_success_rate].journey_step", "required", "e.g. checkout")


def test_kpi_cannot_have_a_journey_step() -> None:
    doc = document(kpis=[kpi(journey_step="checkout")])
    assert_problem(doc, "kpis[conversion].journey_step", "only applies to CPIs")


def test_metric_cannot_have_a_target() -> None:
    doc = document(metrics=[kpi(name="tickets", target={"min": 1})])
    assert_problem(doc, "metrics[tickets].target", "a KPI or a CPI", "move it to kpis or cpis")


def test_runbook_url_must_be_a_link() -> None:
    doc = document({"runbook_url": "wiki/checkout"})
    assert_problem(doc, "cpis[checkout_success_rate].runbook_url", "https://")


@pytest.mark.parametrize(
    ("event", "gist"),
    [(["Payment Attempted", "*"], "list it alone"), ([], "event name or a list"), (7, "quoted")],
)
def test_event_rules(event: Any, gist: str) -> None:
    assert_problem(document({"event": event}), "cpis[checkout_success_rate].event", gist)


def test_event_list_keeps_order_without_duplicates() -> None:
    catalog = parse(document({"event": ["B", "A", "B"]}))
    assert catalog.cpis[0].events == ("B", "A")


def test_where_values_must_be_scalars() -> None:
    doc = document({"where": {"context.channel": ["web", "ios"]}})
    location = "cpis[checkout_success_rate].where.context.channel"
    assert_problem(doc, location, "one text, number or true/false", "not a list")


@pytest.mark.parametrize(
    ("path", "gist"),
    [
        ("properties", "name a field in it, e.g. properties.amount"),
        ("properties..success", "empty segment"),
        ("success", "did you mean properties.success?"),
        ("propertes.success", "did you mean properties.success?"),
        ("userid", "top-level field"),
    ],
)
def test_paths_are_checked(path: str, gist: str) -> None:
    doc = document({"where": {path: True}})
    assert_problem(doc, f"cpis[checkout_success_rate].where.{path}", gist)


@pytest.mark.parametrize("path", ["properties.a.b", "context.region", "traits.plan", "userId"])
def test_valid_paths_are_accepted(path: str) -> None:
    assert parse(document({"where": {path: "x"}})).cpis[0].where == ((path, "x"),)


def test_topic_kpi_needs_no_event_or_measure() -> None:
    topic = {key: value for key, value in kpi(source="topic").items() if key != "measure"}
    del topic["event"]
    indicator = parse(document(kpis=[topic])).kpis[0]
    assert (indicator.source, indicator.events, indicator.measure) == ("topic", (), Measure("mean"))


def test_topic_kpi_rejects_event() -> None:
    assert_problem(document(kpis=[kpi(source="topic")]), "kpis[conversion].event", "remove it")


def test_source_must_be_events_or_topic() -> None:
    assert_problem(document(kpis=[kpi(source="kafka")]), "kpis[conversion].source", "topic")


# --- measures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("measure", "expected"),
    [
        ("count", Measure("count")),
        ({"count": True}, Measure("count")),
        (
            {"rate": "properties.m", "equals": "card"},
            Measure("rate", "properties.m", equals="card"),
        ),
        ({"mean": "properties.amount"}, Measure("mean", "properties.amount")),
        ({"sum": "properties.amount"}, Measure("sum", "properties.amount")),
        ({"quantile": "properties.ms", "q": 0.99}, Measure("quantile", "properties.ms", q=0.99)),
        ({"nps": "properties.nps"}, Measure("nps", "properties.nps")),
        ({"csat": "properties.csat"}, Measure("csat", "properties.csat", threshold=4.0)),
        ({"csat": "properties.c", "threshold": 8}, Measure("csat", "properties.c", threshold=8.0)),
        ({"ratio": {"numerator": ["A", "B"]}}, Measure("ratio", numerator_events=("A", "B"))),
    ],
)
def test_measure_forms(measure: Any, expected: Measure) -> None:
    assert parse(document({"measure": measure, "target": None})).cpis[0].measure == expected


@pytest.mark.parametrize(
    ("measure", "where", "gist"),
    [
        ({}, "", "exactly one kind"),
        ({"rate": "properties.a", "mean": "properties.b"}, "", "found rate, mean"),
        ({"rat": "properties.a"}, ".rat", "did you mean 'rate'?"),
        ("average", "", "expected a measure"),
        ({"quantile": "properties.ms"}, ".q", "it is missing"),
        ({"quantile": "properties.ms", "q": 0}, ".q", "between 0 and 1 exclusive"),
        ({"quantile": "properties.ms", "q": 1}, ".q", "between 0 and 1 exclusive"),
        ({"quantile": "properties.ms", "q": 95}, ".q", "did you mean 0.95?"),
        ({"mean": "properties.ms", "q": 0.5}, ".q", "only applies to quantile"),
        ({"rate": "properties.ok", "equals": [1]}, ".equals", "one text, number"),
        ({"count": False}, ".count", "count: true"),
        ({"ratio": {}}, ".ratio.numerator", "event is the denominator"),
        ({"csat": "properties.csat", "threshold": "high"}, ".threshold", "such as 4"),
        ({"sum": "amount"}, ".sum", "did you mean properties.amount?"),
    ],
)
def test_measure_rules(measure: Any, where: str, gist: str) -> None:
    doc = document({"measure": measure, "target": None})
    assert_problem(doc, f"cpis[checkout_success_rate].measure{where}", gist)


# --- segments -------------------------------------------------------------------------------


def test_segment_label_comes_from_the_last_path_component() -> None:
    doc = document({"segment_by": ["properties.Support-Channel", "context.region"]})
    segments = parse(doc).cpis[0].segment_by
    assert [(s.label, s.path) for s in segments] == [
        ("support_channel", "properties.Support-Channel"),
        ("region", "context.region"),
    ]


def test_segment_cap_defaults_to_defaults_segment_cap() -> None:
    doc = document({"segment_by": ["context.region"]}, defaults={"segment_cap": 7})
    assert parse(doc).cpis[0].segment_by == (Segment("region", "context.region", 7),)


@pytest.mark.parametrize(
    ("segment", "where", "gist"),
    [
        ({"label": "owner", "path": "context.team"}, "[0].label", "label 'owner' is reserved"),
        ("properties.severity", "[0]", "{label: severity_segment, path: properties.severity}"),
        ({"label": "2fa", "path": "context.x"}, "[0].label", "not a valid Prometheus label"),
        ({"label": "__x", "path": "context.x"}, "[0].label", "not a valid Prometheus label"),
        ({"path": "context.region", "cap": 0}, "[0].cap", "whole number >= 1"),
        ({"label": "region"}, "[0].path", "path is required"),
    ],
)
def test_segment_rules(segment: Any, where: str, gist: str) -> None:
    doc = document({"segment_by": [segment]})
    assert_problem(doc, f"cpis[checkout_success_rate].segment_by{where}", gist)


def test_segment_labels_must_be_distinct() -> None:
    doc = document({"segment_by": ["context.region", {"label": "region", "path": "traits.r"}]})
    location = "cpis[checkout_success_rate].segment_by[1]"
    assert_problem(doc, location, "label 'region' is used twice")


# --- targets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "where", "gist"),
    [
        ({"min": 0.9, "max": 0.99}, "", "exactly one of min or max"),
        ({"for": "5m"}, "", "exactly one of min or max"),
        ({"min": "high"}, ".min", "must be a number"),
        ({"min": 95}, ".min", "did you mean 0.95?"),
        ({"min": 0.9, "for": "a while"}, ".for", "not a duration"),
    ],
)
def test_target_rules(target: Any, where: str, gist: str) -> None:
    doc = document({"target": target})
    assert_problem(doc, f"cpis[checkout_success_rate].target{where}", gist)


def test_nps_target_must_lie_on_the_nps_scale() -> None:
    doc = document({"measure": {"nps": "properties.nps"}, "target": {"min": 130}})
    assert_problem(doc, "cpis[checkout_success_rate].target.min", "between -100 and 100")


def test_target_with_for() -> None:
    doc = document({"target": {"max": 0.2, "for": "2m"}})
    assert parse(doc).cpis[0].target == Target("max", 0.2, 120.0)


# --- windows --------------------------------------------------------------------------------


def test_defaults_apply_unless_overridden() -> None:
    doc = document({"window": "30s"}, defaults={"window": "5m", "allowed_lateness": "1m"})
    doc["kpis"][0]["allowed_lateness"] = 0
    checkout, revenue = parse(doc).indicators
    assert (checkout.window, checkout.allowed_lateness) == (30.0, 60.0)
    assert (revenue.window, revenue.allowed_lateness) == (300.0, 0.0)


@pytest.mark.parametrize(
    ("field", "value", "gist"),
    [
        ("window", 0, "at least 1ms"),
        ("window", "7s", "does not divide one day evenly: windows align to the epoch"),
        ("window", "2d", "does not divide one day evenly"),
        ("window", "soon", "not a duration"),
        ("allowed_lateness", "-5s", "negative"),
        ("allowed_lateness", -1, "finite number >= 0"),
    ],
)
def test_window_rules(field: str, value: Any, gist: str) -> None:
    assert_problem(document({field: value}), f"cpis[checkout_success_rate].{field}", gist)


def test_default_window_is_checked_where_it_is_written() -> None:
    assert_problem(document(defaults={"window": "7s"}), "defaults.window", "divide one day")


# --- links ----------------------------------------------------------------------------------


def link(**fields: Any) -> dict[str, Any]:
    return {"cpi": "checkout_success_rate", "kpi": "revenue", **fields}


def test_explicit_links() -> None:
    doc = document(links=[link(max_lag=0, history=4, min_windows=3)])
    assert parse(doc).links == (Link("checkout_success_rate", "revenue", 0, 4, 3),)


def test_default_min_windows_is_three_histories() -> None:
    # Chance correlations last about a history: the default follows the history given.
    assert parse(document(links=[link()])).links[0].min_windows == 90
    assert parse(document(links=[link(history=4)])).links[0].min_windows == 12
    assert parse(document(links=[link(history=20)])).links[0].min_windows == 60


@pytest.mark.parametrize("min_windows", [1, 20, 21, 200])
def test_min_windows_may_exceed_history_up_to_ten_histories(min_windows: int) -> None:
    doc = document(links=[link(history=20, min_windows=min_windows)])
    assert parse(doc).links[0].min_windows == min_windows


def test_empty_links_means_no_links() -> None:
    assert parse(document(links=[])).links == ()


@pytest.mark.parametrize(
    ("entry", "where", "gist"),
    [
        (link(cpi="checkout_sucess_rate"), ".cpi", "did you mean 'checkout_success_rate'?"),
        (link(cpi="revenue"), ".cpi", "'revenue' is a KPI, not a CPI"),
        (link(kpi=None), ".kpi", "kpi is required"),
        (link(max_lag=-1), ".max_lag", "whole number >= 0"),
        (link(history=3), ".history", "whole number >= 4"),
        (link(min_windows=0), ".min_windows", "whole number >= 1"),
        (link(history=5, min_windows=51), ".min_windows", "more than 10 x history (50 windows)"),
        (link(min_windows=301), ".min_windows", "the default is 3 x history"),
        (link(lag=1), ".lag", "did you mean 'max_lag'?"),
    ],
)
def test_link_rules(entry: dict[str, Any], where: str, gist: str) -> None:
    assert_problem(document(links=[entry]), f"links[0]{where}", gist)


def test_duplicate_links_are_reported() -> None:
    assert_problem(document(links=[link(), link()]), "links[1]", "linked twice")


def test_links_must_be_a_list() -> None:
    assert_problem(document(links=None), "links", "links: [] for none")


# --- alerting -------------------------------------------------------------------------------


def test_example_alerting(example: Any) -> None:
    checkout = example.indicator("checkout_success_rate")
    assert checkout.alerting == Alerting()
    assert (checkout.severity, checkout.higher_is_better) == ("page", True)
    latency = example.indicator("page_latency_p95")
    assert latency.alerting == Alerting(
        min_events=100, detector="page_hinkley", detector_options=(("threshold", 25),)
    )
    assert (latency.severity, latency.higher_is_better) == ("page", False)
    csat = example.indicator("csat")
    assert (csat.alerting.min_events, csat.alerting.stale_windows) == (20, 15)
    assert csat.severity == "ticket"
    assert example.indicator("average_order_value").severity == "ticket"  # no target


def test_alerting_defaults_when_absent() -> None:
    indicator = parse(document({"target": {"min": 0.9}})).cpis[0]
    assert indicator.alerting == Alerting()
    assert (indicator.severity, indicator.higher_is_better) == ("page", True)
    kpi_without_target = parse(document()).kpis[0]
    assert (kpi_without_target.severity, kpi_without_target.higher_is_better) == (
        "ticket",
        True,
    )


def test_every_alerting_field() -> None:
    alerting = {
        "min_events": 5,
        "detector": "page_hinkley",
        "detector_options": {"threshold": 30, "min_instances": 20, "alpha": 0.99, "delta": 0},
        "baseline_alpha": 1,
        "band_k": 2.5,
        "warmup_windows": 2,
        "confirm_after": 1,
        "clear_after": 4,
        "better": "lower",
        "stale_windows": 10,
        "severity": "info",
    }
    indicator = parse(document({"alerting": alerting})).cpis[0]
    options = (("alpha", 0.99), ("delta", 0), ("min_instances", 20), ("threshold", 30))
    assert indicator.alerting == Alerting(
        min_events=5,
        detector="page_hinkley",
        detector_options=options,
        baseline_alpha=1.0,
        band_k=2.5,
        warmup_windows=2,
        confirm_after=1,
        clear_after=4,
        better="lower",
        stale_windows=10,
        severity="info",
    )
    assert (indicator.severity, indicator.higher_is_better) == ("info", False)


def test_better_agreeing_with_the_target_is_accepted() -> None:
    doc = document({"target": {"max": 0.1}, "alerting": {"better": "lower"}})
    assert not parse(doc).cpis[0].higher_is_better


def test_defaults_alerting_apply_key_by_key() -> None:
    defaults = {
        "alerting": {
            "min_events": 50,
            "severity": "ticket",
            "detector": "page_hinkley",
            "detector_options": {"threshold": 30},
        }
    }
    own = {"min_events": 10, "detector_options": {"alpha": 0.99}}
    doc = document({"alerting": own}, defaults=defaults)
    checkout, revenue = parse(doc).indicators
    assert checkout.alerting == Alerting(
        min_events=10,
        severity="ticket",
        detector="page_hinkley",
        detector_options=(("alpha", 0.99), ("threshold", 30)),
    )
    assert revenue.alerting == Alerting(
        min_events=50,
        severity="ticket",
        detector="page_hinkley",
        detector_options=(("threshold", 30),),
    )


def test_another_detector_drops_the_default_options() -> None:
    defaults = {"alerting": {"detector": "page_hinkley", "detector_options": {"threshold": 30}}}
    doc = document({"alerting": {"detector": "adwin"}}, defaults=defaults)
    assert parse(doc).cpis[0].alerting == Alerting(detector="adwin")


@pytest.mark.parametrize(
    ("alerting", "where", "gist"),
    [
        ("strict", "", "expected a mapping such as {min_events: 50"),
        ({"min_event": 5}, ".min_event", "did you mean 'min_events'?"),
        ({"min_events": 0}, ".min_events", "whole number >= 1 (events a window needs"),
        ({"min_events": 2.5}, ".min_events", "whole number >= 1"),
        ({"warmup_windows": 1}, ".warmup_windows", "whole number >= 2"),
        ({"confirm_after": 0}, ".confirm_after", "whole number >= 1"),
        ({"clear_after": True}, ".clear_after", "whole number >= 1"),
        ({"stale_windows": 0}, ".stale_windows", "windows without any event"),
        ({"detector": "kswin"}, ".detector", "adwin (the default), page_hinkley, or none"),
        ({"detector_options": [1]}, ".detector_options", "mapping of adwin options, e.g."),
        (
            {"detector": "page_hinkley", "detector_options": {"treshold": 9}},
            ".detector_options.treshold",
            "did you mean 'threshold'?",
        ),
        (
            {"detector_options": {"threshold": 9}},
            ".detector_options.threshold",
            "an option of page_hinkley, not of this detector; set detector: page_hinkley",
        ),
        (
            {"detector": "page_hinkley", "detector_options": {"threshold": 0}},
            ".detector_options.threshold",
            "above 0 (evidence needed",
        ),
        ({"detector_options": {"delta": 1}}, ".detector_options.delta", "between 0 and 1"),
        ({"detector_options": {"clock": 0.5}}, ".detector_options.clock", "whole number >= 1"),
        (
            {"detector": "page_hinkley", "detector_options": {"alpha": 1.5}},
            ".detector_options.alpha",
            "at most 1",
        ),
        (
            {"detector": "none", "detector_options": {"delta": 0.1}},
            ".detector_options",
            "detector: none takes no detector_options",
        ),
        ({"baseline_alpha": 0}, ".baseline_alpha", "above 0 and at most 1"),
        ({"baseline_alpha": 1.5}, ".baseline_alpha", "above 0 and at most 1"),
        ({"band_k": "wide"}, ".band_k", "above 0 (the band's half-width"),
        ({"better": "up"}, ".better", "higher or lower"),
        ({"severity": "critical"}, ".severity", "page, ticket or info"),
    ],
)
def test_alerting_rules(alerting: Any, where: str, gist: str) -> None:
    doc = document({"alerting": alerting})
    assert_problem(doc, f"cpis[checkout_success_rate].alerting{where}", gist)


def test_better_must_agree_with_the_target() -> None:
    doc = document({"target": {"min": 0.9}, "alerting": {"better": "lower"}})
    location = "cpis[checkout_success_rate].alerting.better"
    assert_problem(doc, location, "min means higher is better", "remove better")


def test_better_is_not_a_default() -> None:
    doc = document(defaults={"alerting": {"better": "lower"}})
    assert_problem(doc, "defaults.alerting.better", "cannot be a default")


def test_default_alerting_problems_are_reported_under_defaults() -> None:
    doc = document(defaults={"alerting": {"band_k": 0}})
    assert_problem(doc, "defaults.alerting.band_k", "above 0")


# --- settings -------------------------------------------------------------------------------


def test_settings_pass_through() -> None:
    settings = {"title": "Shop", "replicas": 3, "debug": False}
    assert parse(document(settings=settings)).settings == settings


def test_settings_must_be_single_values() -> None:
    assert_problem(document(settings={"topics": ["a"]}), "settings.topics", "not a list")


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("1m", 60.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.1m", 66.0),
        (" 10 s ", 10.0),
        ("45", 45.0),
        (90, 90.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "1M", "m", "-5s", "1h30m", True, float("inf")])
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(DurationError, match=r"duration|negative"):
        parse_duration(text)


FACTORS = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600)}
FACTORS["d"] = Fraction(86400)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(FACTORS)))
def test_parse_duration_is_n_times_the_unit(n: int, unit: str) -> None:
    assert parse_duration(f"{n}{unit}") == float(n * FACTORS[unit])
