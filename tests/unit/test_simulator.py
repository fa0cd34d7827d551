"""The journey simulator: determinism, event-time grid, vocabulary, proportions, incidents,
the CPI -> KPI dependence model, and producing (pacing, speed, KPI samples)."""

from __future__ import annotations

import asyncio
import math
import re
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pytest

import streams.simulator as simulator_module
from agents.cli import build_parser, main
from models.errors import BrokerError
from streams.broker import EmbeddedBroker, free_port
from streams.codec import decode_event, decode_kpi_sample
from streams.simulator import (
    DEFAULT_CHANNELS,
    DEFAULT_REGIONS,
    EVENT_NAMES,
    KPI_SAMPLE_NAME,
    NPS_LAG_WINDOWS,
    PAGE_NAMES,
    REVENUE_LAG_WINDOWS,
    Incident,
    JourneySimulator,
    iso_timestamp,
    parse_incident,
    produce,
)

START = 1795428000.0  # 2026-11-23T10:00:00Z
Event = dict[str, Any]


@pytest.fixture(scope="module")
def stream() -> list[Event]:
    """150k events (150 s of event time at the default rate), shared by proportion tests."""
    return list(JourneySimulator(seed=7, start_time=START).events(150_000))


def epoch(event: Event) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def name(event: Event) -> str:
    return str(event["event"] if event["type"] == "track" else event["name"])


def of(events: Iterable[Event], wanted: str) -> list[Event]:
    return [e for e in events if name(e) == wanted]


def assert_share(hits: int, n: int, p: float) -> None:
    """hits/n is within 4 binomial standard deviations of p (deterministic seed, no flakes)."""
    assert n > 100, f"only {n} samples"
    tolerance = 4 * math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) <= tolerance, (
        f"{hits}/{n} = {hits / n:.4f}, expected {p} ± {tolerance:.4f}"
    )


def nps(scores: list[int]) -> float:
    return 100.0 * (sum(s >= 9 for s in scores) - sum(s <= 6 for s in scores)) / len(scores)


# -- determinism and time ---------------------------------------------------------------


def test_same_seed_and_start_give_the_same_events() -> None:
    a = list(JourneySimulator(seed=3, start_time=START).events(5000))
    b = list(JourneySimulator(seed=3, start_time=START).events(5000))
    assert a == b


def test_each_call_starts_the_stream_afresh() -> None:
    sim = JourneySimulator(seed=3, start_time=START)
    assert list(sim.events(1000)) == list(sim.events(1000))


def test_another_seed_gives_other_journeys() -> None:
    a = [e["userId"] for e in JourneySimulator(seed=1, start_time=START).events(1000)]
    b = [e["userId"] for e in JourneySimulator(seed=2, start_time=START).events(1000)]
    assert a != b


def test_message_ids_differ_between_start_times_but_journeys_do_not() -> None:
    a = list(JourneySimulator(seed=3, start_time=START).events(1000))
    b = list(JourneySimulator(seed=3, start_time=START + 60).events(1000))
    assert [e["userId"] for e in a] == [e["userId"] for e in b]
    assert not {e["messageId"] for e in a} & {e["messageId"] for e in b}


def test_message_ids_are_unique_uuid4(stream: list[Event]) -> None:
    ids = [e["messageId"] for e in stream]
    assert len(set(ids)) == len(ids)
    for text in ids[:2000]:
        assert str(uuid.UUID(text)) == text
        assert uuid.UUID(text).version == 4


@pytest.mark.parametrize("rate", [1000.0, 10.0, 3.0])
def test_event_time_advances_one_slot_per_event(rate: float) -> None:
    events = list(JourneySimulator(seed=1, start_time=START).events(3000, rate=rate))
    for i, event in enumerate(events):
        assert abs(epoch(event) - (START + i / rate)) <= 0.0005 + 1e-6, (i, event["timestamp"])
    times = [epoch(e) for e in events]
    assert times == sorted(times)


def test_default_start_time_is_now() -> None:
    before = time.time()
    first = next(iter(JourneySimulator().events(1)))
    assert before - 0.001 <= epoch(first) <= time.time() + 0.001


def test_iso_timestamp_rounds_to_milliseconds() -> None:
    assert iso_timestamp(START) == "2026-11-23T10:00:00.000Z"
    assert iso_timestamp(START + 0.0004) == "2026-11-23T10:00:00.000Z"
    assert iso_timestamp(START + 59.9996) == "2026-11-23T10:01:00.000Z"
    assert iso_timestamp(START + 86399.25) == "2026-11-24T09:59:59.250Z"


def test_count_zero_and_unbounded_streams() -> None:
    sim = JourneySimulator(seed=1, start_time=START)
    assert list(sim.events(0)) == []
    endless = sim.events()
    assert len([next(endless) for _ in range(10)]) == 10


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        JourneySimulator().events(10, rate=rate)


# -- schema and vocabulary --------------------------------------------------------------

COMMON = {"type", "messageId", "userId", "timestamp", "properties", "context"}
PROPERTIES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "Session Started": {},
    "Payment Attempted": {
        "order_id": str,
        "amount": float,
        "currency": str,
        "method": str,
        "success": bool,
        "error_code": (str, type(None)),
    },
    "Order Completed": {"order_id": str, "revenue": float, "items": int, "currency": str},
    "Order Delivered": {"order_id": str, "on_time": bool, "intact": bool, "carrier": str},
    "Support Ticket Closed": {
        "ticket_id": str,
        "first_contact_resolution": bool,
        "support_channel": str,
    },
    "Survey Submitted": {"nps": int, "csat": int},
    **{page: {"path": str, "latency_ms": float} for page in PAGE_NAMES},
}
REGION_ONLY = {"Order Delivered", "Support Ticket Closed", "Survey Submitted"}


def test_every_event_has_the_fields_and_only_vocabulary_names(stream: list[Event]) -> None:
    assert set(PROPERTIES) == set(EVENT_NAMES) | set(PAGE_NAMES)
    for event in stream:
        if event["type"] == "track":
            assert set(event) == COMMON | {"event"}
            assert event["event"] in EVENT_NAMES
        else:
            assert event["type"] == "page"
            assert set(event) == COMMON | {"name"}
            assert event["name"] in PAGE_NAMES
        assert re.fullmatch(r"u-\d+", event["userId"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["timestamp"])
        spec = PROPERTIES[name(event)]
        props = event["properties"]
        assert set(props) == set(spec), name(event)
        for key, kind in spec.items():
            assert isinstance(props[key], kind), (name(event), key, props[key])
        context = event["context"]
        if name(event) in REGION_ONLY:
            assert set(context) == {"region"}
        else:
            assert set(context) == {"channel", "region"}
            assert context["channel"] in DEFAULT_CHANNELS
        assert context["region"] in DEFAULT_REGIONS


def test_property_values_are_in_range(stream: list[Event]) -> None:
    for event in of(stream, "Payment Attempted"):
        p = event["properties"]
        assert p["currency"] == "EUR" and p["amount"] > 0
        assert p["method"] in {"card", "paypal", "applepay"}
        assert (p["error_code"] is None) == p["success"]
    for event in of(stream, "Support Ticket Closed"):
        assert event["properties"]["support_channel"] in {"chat", "email", "phone"}
    for event in of(stream, "Survey Submitted"):
        assert 0 <= event["properties"]["nps"] <= 10
        assert 1 <= event["properties"]["csat"] <= 5
    for page in PAGE_NAMES:
        assert all(e["properties"]["latency_ms"] > 0 for e in of(stream, page))
    assert {e["properties"]["nps"] for e in of(stream, "Survey Submitted")} == set(range(11))


def test_journeys_follow_the_shop_funnel(stream: list[Event]) -> None:
    """Orders complete only after a successful payment and are delivered only after that."""
    paid: dict[str, str] = {}
    completed: dict[str, str] = {}
    sessions: set[str] = set()
    for event in stream:
        p, user = event["properties"], event["userId"]
        match name(event):
            case "Session Started":
                sessions.add(user)
            case "Home" | "Product" | "Cart" | "Checkout" | "Payment Attempted":
                assert user in sessions
                if p.get("success"):
                    paid[p["order_id"]] = user
            case "Order Completed":
                assert paid.pop(p["order_id"]) == user
                assert p["revenue"] > 0 and 1 <= p["items"] <= 8
                completed[p["order_id"]] = user
            case "Order Delivered":
                assert completed.pop(p["order_id"]) == user
    assert len(of(stream, "Order Delivered")) > 1000


def test_journey_steps_take_realistic_simulated_time(stream: list[Event]) -> None:
    """Users think seconds between pages; deliveries arrive 10-40 s after the order."""
    last_page: dict[str, float] = {}
    think: list[float] = []
    ordered: dict[str, float] = {}
    shipping: list[float] = []
    for event in stream:
        user, when = event["userId"], epoch(event)
        if event["type"] == "page":
            if event["name"] != "Home" and user in last_page:
                think.append(when - last_page[user])
            last_page[user] = when
        elif event["event"] == "Order Completed":
            ordered[event["properties"]["order_id"]] = when
        elif event["event"] == "Order Delivered":
            shipping.append(when - ordered[event["properties"]["order_id"]])
    assert 1.5 <= statistics.median(think) <= 3.0  # exponential, mean 3 s
    assert min(shipping) >= 10.0
    assert 20.0 <= statistics.median(shipping) <= 30.0


def test_a_users_region_is_fixed(stream: list[Event]) -> None:
    region: dict[str, str] = {}
    for event in stream:
        assert (
            region.setdefault(event["userId"], event["context"]["region"])
            == (event["context"]["region"])
        )


# -- proportions ------------------------------------------------------------------------


def test_payment_success_rate(stream: list[Event]) -> None:
    payments = of(stream, "Payment Attempted")
    assert_share(sum(e["properties"]["success"] for e in payments), len(payments), 0.97)


def test_delivery_on_time_and_intact_rates(stream: list[Event]) -> None:
    deliveries = of(stream, "Order Delivered")
    assert_share(sum(e["properties"]["on_time"] for e in deliveries), len(deliveries), 0.93)
    assert_share(sum(e["properties"]["intact"] for e in deliveries), len(deliveries), 0.99)


def test_first_contact_resolution_rate(stream: list[Event]) -> None:
    tickets = of(stream, "Support Ticket Closed")
    hits = sum(e["properties"]["first_contact_resolution"] for e in tickets)
    assert_share(hits, len(tickets), 0.75)


@pytest.mark.parametrize(
    ("field", "weights"), [("channel", DEFAULT_CHANNELS), ("region", DEFAULT_REGIONS)]
)
def test_channel_and_region_mix(
    stream: list[Event], field: str, weights: Mapping[str, float]
) -> None:
    counts = Counter(e["context"][field] for e in of(stream, "Session Started"))
    for key, weight in weights.items():
        assert_share(counts[key], counts.total(), weight)


def test_funnel_conversion_is_plausible(stream: list[Event]) -> None:
    sessions = len(of(stream, "Session Started"))
    orders = len(of(stream, "Order Completed"))
    assert 0.15 <= orders / sessions <= 0.25
    assert len(of(stream, "Home")) <= sessions
    assert len(of(stream, "Checkout")) < len(of(stream, "Cart")) < len(of(stream, "Home"))


def test_nps_is_around_plus_35_and_lower_after_bad_deliveries(stream: list[Event]) -> None:
    last_delivery_ok: dict[str, bool] = {}
    by_experience: dict[bool, list[int]] = {True: [], False: []}
    for event in stream:
        if name(event) == "Order Delivered":
            p = event["properties"]
            last_delivery_ok[event["userId"]] = p["on_time"] and p["intact"]
        elif name(event) == "Survey Submitted":
            by_experience[last_delivery_ok[event["userId"]]].append(event["properties"]["nps"])
    scores = by_experience[True] + by_experience[False]
    assert len(scores) > 1000
    assert 29 <= nps(scores) <= 41
    assert nps(by_experience[False]) < nps(by_experience[True]) - 15


def test_csat_mostly_4_or_5_and_following_nps(stream: list[Event]) -> None:
    surveys = [e["properties"] for e in of(stream, "Survey Submitted")]
    assert_share(sum(s["csat"] >= 4 for s in surveys), len(surveys), 0.85)
    promoters = [s["csat"] for s in surveys if s["nps"] >= 9]
    detractors = [s["csat"] for s in surveys if s["nps"] <= 6]
    assert statistics.mean(promoters) > statistics.mean(detractors) + 1.5


def test_mobile_pages_are_slower_than_web(stream: list[Event]) -> None:
    def median_latency(channels: set[str]) -> float:
        pages = [e for e in of(stream, "Home") if e["context"]["channel"] in channels]
        return statistics.median(e["properties"]["latency_ms"] for e in pages)

    ratio = median_latency({"ios", "android"}) / median_latency({"web"})
    assert 1.4 <= ratio <= 1.8


# -- incidents --------------------------------------------------------------------------


def split(events: Iterable[Event], start: float, end: float) -> tuple[list[Event], list[Event]]:
    inside: list[Event] = []
    outside: list[Event] = []
    for event in events:
        (inside if START + start <= epoch(event) < START + end else outside).append(event)
    return inside, outside


def incident_stream(text: str) -> list[Event]:
    sim = JourneySimulator(seed=11, start_time=START, incidents=[parse_incident(text)])
    return list(sim.events(80_000))


def test_payment_outage_drops_success_only_inside_its_interval() -> None:
    payments = of(incident_stream("payment-outage@20s+30s"), "Payment Attempted")
    inside, outside = split(payments, 20, 50)
    assert_share(sum(e["properties"]["success"] for e in inside), len(inside), 0.5)
    assert_share(sum(e["properties"]["success"] for e in outside), len(outside), 0.97)
    assert {e["properties"]["error_code"] for e in inside} == {None, "psp_unavailable"}
    assert "psp_unavailable" not in {e["properties"]["error_code"] for e in outside}


def test_slow_pages_multiply_latency_only_inside_its_interval() -> None:
    pages = of(incident_stream("slow-pages@20s+30s"), "Product")
    inside, outside = split(pages, 20, 50)
    ratio = statistics.median(e["properties"]["latency_ms"] for e in inside) / statistics.median(
        e["properties"]["latency_ms"] for e in outside
    )
    assert 3.5 <= ratio <= 4.5


def test_late_deliveries_drop_on_time_only_inside_its_interval() -> None:
    deliveries = of(incident_stream("late-deliveries@30s+30s"), "Order Delivered")
    inside, outside = split(deliveries, 30, 60)
    assert_share(sum(e["properties"]["on_time"] for e in inside), len(inside), 0.5)
    assert_share(sum(e["properties"]["on_time"] for e in outside), len(outside), 0.93)


def test_without_incidents_the_same_seed_is_unaffected() -> None:
    plain = list(JourneySimulator(seed=11, start_time=START).events(20_000))
    late = JourneySimulator(
        seed=11, start_time=START, incidents=[Incident("payment-outage", 3600, 60)]
    )
    assert list(late.events(20_000)) == plain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payment-outage@2m+3m", Incident("payment-outage", 120, 180)),
        ("slow-pages@30s+1h", Incident("slow-pages", 30, 3600)),
        ("late-deliveries@0+90", Incident("late-deliveries", 0, 90)),
        (" slow-pages@1.5m+0.5s ", Incident("slow-pages", 90, 0.5)),
    ],
)
def test_parse_incident(text: str, expected: Incident) -> None:
    assert parse_incident(text) == expected
    assert parse_incident(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("payment-outage", "expected KIND@START\\+DURATION"),
        ("payment-outage@2m", "expected KIND@START\\+DURATION"),
        ("", "expected KIND@START\\+DURATION"),
        ("dns-outage@2m+3m", "unknown incident kind 'dns-outage'"),
        ("slow-pages@2x+3m", "'2x' is not a duration"),
        ("slow-pages@-2m+3m", "'-2m' is not a duration"),
        ("slow-pages@2m+0s", "duration must be > 0"),
        ("slow-pages@2m+3d", "'3d' is not a duration"),
    ],
)
def test_parse_incident_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_incident(text)


def test_incident_validates_fields() -> None:
    with pytest.raises(ValueError, match="start must be >= 0"):
        Incident("slow-pages", -1, 10)
    with pytest.raises(ValueError, match="unknown incident kind"):
        Incident("meteor", 0, 10)


# -- dependence model -------------------------------------------------------------------

WINDOW = 60.0
# Events per window: about 67 payment attempts, 65 orders, 60 deliveries, 17 surveys and
# 2.5 support tickets, enough for per-window rates that carry the model's drift.
PER_WINDOW = 1500
LAGS = 6  # 0..5, the catalog's default max_lag


@dataclass(frozen=True)
class Series:
    """Per-window indicator values as the catalog computes them (NaN: no events)."""

    checkout_success_rate: np.ndarray
    delivered_on_time_rate: np.ndarray
    support_first_contact_resolution: np.ndarray
    revenue: np.ndarray
    conversion_rate: np.ndarray
    average_order_value: np.ndarray
    nps: np.ndarray
    marketing_spend: np.ndarray
    payments: np.ndarray  # payment attempts per window

    def __getitem__(self, name: str) -> np.ndarray:
        value: np.ndarray = getattr(self, name)
        return value


def per_window(sim: JourneySimulator, windows: int) -> Series:
    """Generate ``windows`` windows of PER_WINDOW events from START and aggregate them."""
    counts = {key: np.zeros(windows) for key in ("pay", "ok", "rev", "orders", "sessions")}
    counts |= {key: np.zeros(windows) for key in ("dl", "ot", "tk", "fcr", "sv", "pro", "det")}
    rate = PER_WINDOW / WINDOW
    for event in sim.events(windows * PER_WINDOW, rate=rate):
        if event["type"] != "track":
            continue
        k = int((epoch(event) - START) // WINDOW)
        p = event["properties"]
        match event["event"]:
            case "Payment Attempted":
                counts["pay"][k] += 1
                counts["ok"][k] += p["success"]
            case "Order Completed":
                counts["orders"][k] += 1
                counts["rev"][k] += p["revenue"]
            case "Session Started":
                counts["sessions"][k] += 1
            case "Order Delivered":
                counts["dl"][k] += 1
                counts["ot"][k] += p["on_time"]
            case "Support Ticket Closed":
                counts["tk"][k] += 1
                counts["fcr"][k] += p["first_contact_resolution"]
            case "Survey Submitted":
                counts["sv"][k] += 1
                counts["pro"][k] += p["nps"] >= 9
                counts["det"][k] += p["nps"] <= 6
    spend = [sim.kpi_sample(START + k * WINDOW)["value"] for k in range(windows)]
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 -> NaN: an empty window
        return Series(
            checkout_success_rate=counts["ok"] / counts["pay"],
            delivered_on_time_rate=counts["ot"] / counts["dl"],
            support_first_contact_resolution=counts["fcr"] / counts["tk"],
            revenue=counts["rev"],
            conversion_rate=counts["orders"] / counts["sessions"],
            average_order_value=counts["rev"] / counts["orders"],
            nps=100.0 * (counts["pro"] - counts["det"]) / counts["sv"],
            marketing_spend=np.array(spend),
            payments=counts["pay"],
        )


def lagged_r(cpi: np.ndarray, kpi: np.ndarray) -> np.ndarray:
    """Pearson r of CPI window t with KPI window t + lag, lag 0..5 (as LinkTracker pairs
    them), over the windows where both are defined."""
    rs = []
    for lag in range(LAGS):
        x, y = cpi[: len(cpi) - lag], kpi[lag:]
        both = np.isfinite(x) & np.isfinite(y)
        assert both.sum() > 50, f"only {both.sum()} pairs at lag {lag}"
        rs.append(np.corrcoef(x[both], y[both])[0, 1])
    return np.array(rs)


def model(seed: int = 4, **options: Any) -> JourneySimulator:
    return JourneySimulator(seed=seed, start_time=START, window=WINDOW, **options)


@pytest.fixture(scope="module")
def drifting() -> Series:
    """200 windows with the model on (defaults but for the NPS effect: doubled, as a
    window has only about 17 surveys)."""
    return per_window(model(cpi_variation=1.0, nps_gain=1.5), 200)


@pytest.fixture(scope="module")
def constant() -> Series:
    """60 windows with the model off (the default)."""
    return per_window(model(), 60)


def assert_peak(r: np.ndarray, lag: int, minimum: float) -> None:
    shown = " ".join(f"{value:+.2f}" for value in r)
    assert int(np.argmax(r)) == lag, shown
    assert r[lag] > minimum, shown
    # Persistence 0.3 leaves about 0.3 r at the neighbouring lags; two away it is gone.
    far = [k for k in range(LAGS) if abs(k - lag) >= 2]
    assert all(abs(r[k]) < 0.3 for k in far), shown


def test_revenue_follows_checkout_success_at_its_lag(drifting: Series) -> None:
    assert REVENUE_LAG_WINDOWS == 3
    r = lagged_r(drifting.checkout_success_rate, drifting.revenue)
    assert_peak(r, REVENUE_LAG_WINDOWS, 0.6)


def test_nps_follows_on_time_delivery_at_its_lag(drifting: Series) -> None:
    assert NPS_LAG_WINDOWS == 2
    r = lagged_r(drifting.delivered_on_time_rate, drifting.nps)
    assert_peak(r, NPS_LAG_WINDOWS, 0.5)


@pytest.mark.parametrize(
    ("cpi", "kpi"),
    [
        ("support_first_contact_resolution", "revenue"),
        ("support_first_contact_resolution", "conversion_rate"),
        ("support_first_contact_resolution", "average_order_value"),
        ("delivered_on_time_rate", "revenue"),
        ("delivered_on_time_rate", "conversion_rate"),
        ("checkout_success_rate", "nps"),
        ("checkout_success_rate", "marketing_spend"),
        ("delivered_on_time_rate", "marketing_spend"),
    ],
)
def test_documented_independent_pairs_stay_uncorrelated(
    drifting: Series, cpi: str, kpi: str
) -> None:
    r = lagged_r(drifting[cpi], drifting[kpi])
    assert np.all(np.abs(r) < 0.3), " ".join(f"{value:+.2f}" for value in r)


def test_lags_are_configurable() -> None:
    sim = model(
        seed=9,
        cpi_variation=1.0,
        cpi_persistence=0.0,
        revenue_gain=0.5,
        revenue_lag_windows=1,
        nps_gain=1.5,
        nps_lag_windows=4,
    )
    series = per_window(sim, 120)
    assert_peak(lagged_r(series.checkout_success_rate, series.revenue), 1, 0.5)
    assert_peak(lagged_r(series.delivered_on_time_rate, series.nps), 4, 0.5)


def dispersion(series: Series) -> float:
    """Variance of the per-window success rates over the binomial variance alone: about 1
    when every window has the same success probability."""
    rates, n = series.checkout_success_rate, series.payments
    mean = float(np.sum(rates * n) / np.sum(n))
    return float(np.var(rates, ddof=1) / np.mean(mean * (1 - mean) / n))


def test_variation_drifts_success_between_windows(drifting: Series, constant: Series) -> None:
    assert 0.55 <= dispersion(constant) <= 1.6  # chi-square, 59 df: 99.9 % of seeds
    assert dispersion(drifting) > 2.0
    # Skewed towards failures, yet still about the shop's 0.97.
    assert 0.95 <= float(np.nanmean(drifting.checkout_success_rate)) <= 0.97


def test_without_variation_revenue_does_not_follow_success(constant: Series) -> None:
    r = lagged_r(constant.checkout_success_rate, constant.revenue)
    assert np.all(np.abs(r) < 0.45), r  # 60 windows: the null's sd is about 0.13


def test_model_off_is_exactly_the_constant_stream() -> None:
    """Gains, lags and persistence do nothing without variation or noise."""
    inert = JourneySimulator(
        seed=11,
        start_time=START,
        window=5.0,
        cpi_persistence=0.9,
        revenue_lag_windows=1,
        revenue_gain=2.0,
        nps_lag_windows=0,
        nps_gain=3.0,
    )
    assert not inert.dependence
    plain = JourneySimulator(seed=11, start_time=START)
    assert list(inert.events(30_000, rate=50)) == list(plain.events(30_000, rate=50))


def test_model_is_deterministic_and_seeded() -> None:
    a = list(model(seed=2, cpi_variation=1.0, revenue_noise=0.1).events(30_000, rate=50))
    b = list(model(seed=2, cpi_variation=1.0, revenue_noise=0.1).events(30_000, rate=50))
    c = list(model(seed=3, cpi_variation=1.0, revenue_noise=0.1).events(30_000, rate=50))
    assert a == b
    assert a != c


def test_revenue_noise_alone_changes_only_the_amounts() -> None:
    def split(noise: float) -> tuple[list[Event], list[float]]:
        events = list(model(seed=5, revenue_noise=noise).events(20_000, rate=25))
        amounts = []
        for event in events:
            props = event["properties"]
            for key in ("amount", "revenue"):
                if key in props:
                    amounts.append(props.pop(key))
        return events, amounts

    plain, plain_amounts = split(0.0)
    noisy, noisy_amounts = split(0.3)
    # The model draws from its own generator: the same journeys, other baskets.
    assert plain == noisy
    ratios = [b / a for a, b in zip(plain_amounts, noisy_amounts, strict=True)]
    assert min(ratios) >= 0.1 - 0.01
    assert len({round(x, 2) for x in ratios}) > 5


def test_payment_amount_carries_the_revenue_factor() -> None:
    events = list(model(seed=6, cpi_variation=1.0, revenue_gain=0.8).events(30_000, rate=25))
    paid = {
        e["properties"]["order_id"]: e["properties"]["amount"]
        for e in of(events, "Payment Attempted")
        if e["properties"]["success"]
    }
    for event in of(events, "Order Completed"):
        assert event["properties"]["revenue"] == paid[event["properties"]["order_id"]]
        assert event["properties"]["revenue"] > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 0.0}, "window must be a positive"),
        ({"window": math.inf}, "window must be a positive"),
        ({"cpi_variation": -0.1}, "cpi_variation must be >= 0"),
        ({"cpi_variation": math.nan}, "cpi_variation must be >= 0"),
        ({"cpi_persistence": 1.0}, "cpi_persistence must be in"),
        ({"cpi_persistence": -0.2}, "cpi_persistence must be in"),
        ({"revenue_lag_windows": -1}, "revenue_lag_windows must be a whole number"),
        ({"nps_lag_windows": 1.5}, "nps_lag_windows must be a whole number"),
        ({"nps_lag_windows": True}, "nps_lag_windows must be a whole number"),
        ({"revenue_gain": math.inf}, "revenue_gain must be a finite"),
        ({"revenue_noise": -1.0}, "revenue_noise must be >= 0"),
    ],
)
def test_model_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JourneySimulator(**options)


# -- KPI samples ------------------------------------------------------------------------


def test_kpi_samples_decode_and_belong_to_their_window() -> None:
    sim = JourneySimulator(seed=8, window=WINDOW)
    for k in range(5):
        start = START + k * WINDOW
        sample = sim.kpi_sample(start + 59.999)
        assert sample == sim.kpi_sample(start)
        raw = orjson.dumps(sample)
        name, when, value, dims = decode_kpi_sample(raw, now=start)
        assert (name, when, dims) == (KPI_SAMPLE_NAME, start, {})
        assert 100.0 < value < 2500.0
    values = [sim.kpi_sample(START + k * WINDOW)["value"] for k in range(50)]
    assert len(set(values)) == 50
    assert 400 < statistics.median(values) < 625  # lognormal around 500 EUR
    other = JourneySimulator(seed=9, window=WINDOW)
    assert other.kpi_sample(START)["value"] != values[0]


def test_kpi_samples_follow_the_window_option() -> None:
    sim = JourneySimulator(seed=8, window=10.0)
    assert sim.kpi_sample(START + 15.0)["timestamp"] == iso_timestamp(START + 10.0)


# -- configuration and encoding ---------------------------------------------------------


def test_custom_channels_and_regions() -> None:
    sim = JourneySimulator(seed=1, start_time=START, channels=["kiosk"], regions={"latam": 1})
    events = list(sim.events(3000))
    assert {e["context"].get("channel", "kiosk") for e in events} == {"kiosk"}
    assert {e["context"]["region"] for e in events} == {"latam"}


@pytest.mark.parametrize("bad", [[], "web", {"web": -1.0}, {"web": 0.0}, {"web": math.nan}])
def test_channels_need_positive_weights(bad: Any) -> None:
    with pytest.raises(ValueError, match="channels"):
        JourneySimulator(channels=bad)


def test_encoded_matches_events() -> None:
    sim = JourneySimulator(seed=5, start_time=START)
    pairs = list(sim.encoded(5000))
    events = list(sim.events(5000))
    assert [orjson.loads(value) for _, value in pairs] == events
    assert [key for key, _ in pairs] == [e["userId"].encode() for e in events]


def test_generation_is_fast() -> None:
    """A floor far below the measured ~200k/s, to catch accidental per-event slow paths."""
    sim = JourneySimulator(seed=5, start_time=START)
    started = time.perf_counter()
    n = sum(1 for _ in sim.encoded(50_000))
    assert n / (time.perf_counter() - started) > 30_000


# -- producing to Kafka (embedded Tansu broker) -----------------------------------------


async def consume_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        records: list[Any] = []
        deadline = time.monotonic() + 60
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


@pytest.mark.broker
def test_produce_as_fast_as_possible_keeps_each_users_events_in_order(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    broker.create_topics({topic_name: 4})
    sim = JourneySimulator(seed=2, start_time=START)
    reports: list[int] = []
    sent = asyncio.run(
        produce(
            broker.bootstrap,
            topic_name,
            rate=None,
            duration=None,
            count=20_000,
            simulator=sim,
            live_time=False,
            progress=reports.append,
        )
    )
    assert sent == 20_000 and reports[-1] == sent
    records = asyncio.run(consume_all(broker.bootstrap, topic_name, 4, sent))
    assert len(records) == sent
    events = [orjson.loads(r.value) for r in records]
    assert sorted(e["messageId"] for e in events) == sorted(
        e["messageId"] for e in sim.events(sent)
    )
    partition_of: dict[str, int] = {}
    last_seen: dict[str, str] = {}
    for record, event in zip(records, events, strict=True):
        user = event["userId"]
        assert record.key == user.encode()
        assert partition_of.setdefault(user, record.partition) == record.partition
        # live_time=False keeps simulated times; ISO strings of one format sort as times.
        assert last_seen.get(user, "") <= event["timestamp"]
        last_seen[user] = event["timestamp"]
    assert len(set(partition_of.values())) == 4


@pytest.mark.broker
def test_produce_paced_stops_after_duration_with_live_timestamps(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    broker.create_topics({topic_name: 2})
    started = time.time()
    sent = asyncio.run(
        produce(
            broker.bootstrap,
            topic_name,
            rate=500.0,
            duration=2.0,
            count=None,
            simulator=JourneySimulator(seed=3, start_time=START),
        )
    )
    elapsed = time.time() - started
    assert 900 <= sent <= 1000  # 500/s for 2 s, minus a start-up tick at most
    assert elapsed < 5.0
    records = asyncio.run(consume_all(broker.bootstrap, topic_name, 2, sent))
    assert len(records) == sent
    times = [epoch(orjson.loads(r.value)) for r in records]
    assert started - 1 <= min(times) and max(times) <= time.time()


@pytest.mark.broker
def test_produce_stops_at_count_when_it_comes_before_duration(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    broker.create_topics({topic_name: 1})
    sim = JourneySimulator(seed=4, start_time=START)
    kwargs: dict[str, Any] = {"rate": 1000.0, "duration": 30.0, "simulator": sim}
    assert asyncio.run(produce(broker.bootstrap, topic_name, count=300, **kwargs)) == 300
    assert len(asyncio.run(consume_all(broker.bootstrap, topic_name, 1, 300))) == 300


def test_produce_to_an_unreachable_broker_is_a_broker_error() -> None:
    sim = JourneySimulator(seed=1, start_time=START)
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(BrokerError, match=f"on {bootstrap} failed"):
        asyncio.run(produce(bootstrap, "t", rate=None, duration=None, count=10, simulator=sim))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0.0}, "rate must be a positive"),
        ({"count": -1}, "count must be >= 0"),
        ({"duration": -1.0}, "duration must be >= 0"),
    ],
)
def test_produce_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"rate": None, "duration": None, "count": 10, **kwargs}
    sim = JourneySimulator(seed=1, start_time=START)
    with pytest.raises(ValueError, match=message):
        asyncio.run(produce("127.0.0.1:9", "t", simulator=sim, **args))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 100.0, "duration": 1.0, "speed": 0.0}, "speed must be a positive"),
        ({"rate": 100.0, "duration": 1.0, "speed": math.nan}, "speed must be a positive"),
        ({"rate": None, "speed": 2.0}, "speed needs a rate"),
        ({"rate": 100.0, "count": None, "speed": 2.0}, "needs a duration or a count"),
    ],
)
def test_produce_rejects_speed_it_cannot_honour(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"duration": None, "count": 10, **kwargs}
    sim = JourneySimulator(seed=1, start_time=START)
    with pytest.raises(ValueError, match=message):
        asyncio.run(produce("127.0.0.1:9", "t", simulator=sim, **args))


# -- speed and KPI samples on a fake clock ----------------------------------------------


class FakeClock:
    """Wall and monotonic time that move only when produce() sleeps."""

    def __init__(self, now: float) -> None:
        self.now = now

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - 1e9  # another origin, the same pace

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object:
        self.records.append((key, value))
        return object()  # never full


class FakeProducer:
    """Enough of AIOKafkaProducer for produce(): records what it sends, and when."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[str, float, bytes, bytes]] = []  # topic, wall time, key, value

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(
        self, batch: FakeBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        self.sent.extend((topic, self.clock.now, key, value) for key, value in batch.records)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> FakeProducer:
    import aiokafka

    clock = FakeClock(START + 7200.25)
    producer = FakeProducer(clock)
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", lambda **options: producer)
    monkeypatch.setattr(simulator_module, "_wall", clock.wall)
    monkeypatch.setattr(simulator_module, "_monotonic", clock.monotonic)
    monkeypatch.setattr(simulator_module, "_sleep", clock.sleep)
    return producer


def sent_events(producer: FakeProducer) -> tuple[np.ndarray, np.ndarray]:
    """(wall time each event was sent at, its event time) in sending order."""
    events = [(at, orjson.loads(value)) for topic, at, _, value in producer.sent if topic == "ev"]
    return np.array([at for at, _ in events]), np.array([epoch(e) for _, e in events])


@pytest.mark.parametrize("speed", [60.0, 1.0, 0.5])
def test_live_time_runs_event_time_speed_times_faster_and_never_ahead(
    fake_kafka: FakeProducer, speed: float
) -> None:
    started = fake_kafka.clock.now
    sim = JourneySimulator(seed=3, start_time=START, cpi_variation=1.0)
    kwargs: dict[str, Any] = {"rate": 100.0, "duration": 12.0, "count": None, "speed": speed}
    sent = asyncio.run(produce("fake:9092", "ev", simulator=sim, **kwargs))
    assert sent == 1200
    wall, stamped = sent_events(fake_kafka)
    assert len(stamped) == sent
    # Event time advances speed x as fast as the wall clock...
    slope = np.polyfit(wall - started, stamped - started, 1)[0]
    assert slope == pytest.approx(speed, rel=0.01)
    # ...is never ahead of it (but for the millisecond rounding of the timestamps)...
    assert np.all(stamped <= wall + 0.0005)
    # ...and, faster, catches up with it at the end, having started (speed - 1) x 12 s
    # back; slower, it starts now and falls behind.
    behind = max(1.0 - speed, 0.0) * 11.99 + max(speed - 1.0, 0.0) / 100.0
    assert wall[-1] - stamped[-1] == pytest.approx(behind, abs=0.001)
    assert stamped[0] == pytest.approx(started - max(speed - 1.0, 0.0) * 12.0, abs=0.001)
    for _, _, _, value in fake_kafka.sent[:50]:
        decode_event(value, now=started)  # the worker's limit on future stamps


def test_without_live_time_speed_spreads_the_simulators_own_times(
    fake_kafka: FakeProducer,
) -> None:
    sim = JourneySimulator(seed=3, start_time=START)
    kwargs: dict[str, Any] = {"rate": 100.0, "duration": None, "count": 500, "speed": 30.0}
    asyncio.run(produce("fake:9092", "ev", simulator=sim, live_time=False, **kwargs))
    _, stamped = sent_events(fake_kafka)
    assert np.allclose(stamped, START + 0.3 * np.arange(500), atol=0.0006)
    assert [orjson.loads(v) for _, _, _, v in fake_kafka.sent] == list(
        sim.events(500, rate=100.0 / 30.0)
    )


def test_kpi_samples_go_to_their_topic_once_per_window(fake_kafka: FakeProducer) -> None:
    sim = JourneySimulator(seed=3, window=WINDOW)
    kwargs: dict[str, Any] = {"rate": 200.0, "duration": 6.0, "count": None, "speed": 60.0}
    asyncio.run(produce("fake:9092", "ev", simulator=sim, kpi_topic="kpi", **kwargs))
    _, stamped = sent_events(fake_kafka)
    windows = sorted({int(t // WINDOW) for t in stamped})
    assert len(windows) >= 6  # 360 s of event time
    samples = [(at, key, value) for topic, at, key, value in fake_kafka.sent if topic == "kpi"]
    decoded = [decode_kpi_sample(value, now=at) for at, _, value in samples]
    assert {key for _, key, _ in samples} == {KPI_SAMPLE_NAME.encode()}
    assert [when for _, when, _, _ in decoded] == [k * WINDOW for k in windows]
    assert [value for _, _, value, _ in decoded] == [
        sim.kpi_sample(k * WINDOW)["value"] for k in windows
    ]
    # Each window's sample leaves with, or before, the first event of that window.
    first_sent: dict[int, float] = {}
    for topic, at, _, value in fake_kafka.sent:
        if topic == "ev":
            first_sent.setdefault(int(epoch(orjson.loads(value)) // WINDOW), at)
    for (at, _, _), k in zip(samples, windows, strict=True):
        assert at <= first_sent[k]


# -- the simulate command -----------------------------------------------------------------


def test_simulate_option_defaults_match_the_simulator() -> None:
    args = build_parser().parse_args(["simulate"])
    sim = JourneySimulator()
    assert args.revenue_lag == sim.revenue_lag_windows == REVENUE_LAG_WINDOWS
    assert args.nps_lag == sim.nps_lag_windows == NPS_LAG_WINDOWS
    assert args.window == sim.window
    assert args.cpi_variation == sim.cpi_variation == 0.0
    assert args.speed == 1.0 and args.kpi_topic is None
    args = build_parser().parse_args(["simulate", "--kpi-topic"])
    assert args.kpi_topic == ""  # the settings' KPI topic
    args = build_parser().parse_args(
        ["simulate", "--cpi-variation", "1.5", "--revenue-lag", "2", "--nps-lag", "4"]
    )
    assert (args.cpi_variation, args.revenue_lag, args.nps_lag) == (1.5, 2, 4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--speed", "60"], "--speed above 1 needs --duration or --count"),
        (["--speed", "60", "--rate", "0", "--count", "9"], "--speed needs a --rate"),
        (["--speed", "-1", "--count", "9"], "--speed must be above 0"),
        (["--cpi-variation", "-1"], "cpi_variation must be >= 0"),
        (["--revenue-lag", "-2"], "revenue_lag_windows must be a whole number"),
        (["--incident", "meteor@1m+1m"], "unknown incident kind"),
    ],
)
def test_simulate_refuses_bad_options_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No broker listens on this port: a refusal that came after connecting would hang
    # on retries or raise BrokerError instead.
    broker = f"kafka://127.0.0.1:{free_port()}"
    assert main(["simulate", "--broker", broker, *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.broker
def test_produce_with_speed_and_kpi_topic_on_a_broker(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    kpi_topic = f"{topic_name}-kpi"
    broker.create_topics({topic_name: 2, kpi_topic: 1})
    sim = JourneySimulator(seed=6, cpi_variation=1.0)
    sent = asyncio.run(
        produce(
            broker.bootstrap,
            topic_name,
            rate=400.0,
            duration=1.5,
            count=None,
            simulator=sim,
            speed=40.0,
            kpi_topic=kpi_topic,
        )
    )
    finished = time.time()
    records = asyncio.run(consume_all(broker.bootstrap, topic_name, 2, sent))
    times = sorted(epoch(orjson.loads(r.value)) for r in records)
    assert len(times) == sent > 300
    # Stamps come from the plan, not from when the events happened to leave: 0.1 s of
    # event time apart at 400/s and x40, however the producer was scheduled.
    assert times[-1] - times[0] == pytest.approx((sent - 1) * 0.1, abs=0.002)
    assert finished - 40 * 1.5 - 1 <= times[0] and times[-1] <= finished
    windows = sorted({int(t // 60) for t in times})
    samples = asyncio.run(consume_all(broker.bootstrap, kpi_topic, 1, len(windows)))
    decoded = [decode_kpi_sample(r.value, now=finished) for r in samples]
    assert [when for _, when, _, _ in decoded] == [k * 60.0 for k in windows]
    assert {name for name, _, _, _ in decoded} == {KPI_SAMPLE_NAME}
