"""streams.codec: every rejection reason with a real message, and properties over bytes."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.errors import EventRejected
from streams.codec import REASONS, decode_event, decode_kpi_sample

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC).timestamp()
TS = "2026-11-23T10:00:00.123Z"


def event(**fields: Any) -> dict[str, Any]:
    """A valid track event; keyword arguments override fields, ``None`` removes one."""
    base: dict[str, Any] = {
        "type": "track",
        "event": "Payment Attempted",
        "messageId": "0b1c6a2e-5f4d-4c1e-9a77-2d3f4e5a6b7c",
        "userId": "u-1842",
        "timestamp": TS,
        "properties": {"amount": 42.5, "currency": "EUR"},
        "context": {"app": {"version": "4.2.1"}},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def encode(obj: object) -> bytes:
    return orjson.dumps(obj)


def rejected(raw: bytes | None, **kwargs: Any) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        decode_event(raw, now=NOW, **kwargs)
    assert info.value.reason in REASONS
    return info.value


def kpi_rejected(raw: bytes | None, **kwargs: Any) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        decode_kpi_sample(raw, now=NOW, **kwargs)
    assert info.value.reason in REASONS
    return info.value


# --- accepted events -------------------------------------------------------------------


def test_typical_track_event() -> None:
    obj = event()
    name, when, decoded = decode_event(encode(obj), now=NOW)
    assert name == "Payment Attempted"
    assert when == pytest.approx(NOW + 0.123, abs=1e-6)
    assert decoded == obj


def test_type_defaults_to_track() -> None:
    name, _, decoded = decode_event(encode(event(type=None)), now=NOW)
    assert name == "Payment Attempted"
    assert "type" not in decoded


@pytest.mark.parametrize("kind", ["page", "screen"])
def test_page_and_screen_are_named_by_name(kind: str) -> None:
    raw = encode(event(type=kind, event=None, name="Checkout"))
    name, _, decoded = decode_event(raw, now=NOW)
    assert name == "Checkout"
    assert decoded["type"] == kind


def test_page_event_field_is_ignored_for_page_names() -> None:
    err = rejected(encode(event(type="page")))  # has "event" but no "name"
    assert err.reason == "missing_field"
    assert "'name'" in err.detail


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        (1795428000, 1795428000.0),
        (1795428000.25, 1795428000.25),
        ("2026-11-23T11:00:00.5+01:00", NOW + 0.5),
        ("2026-11-23T10:00:00Z", NOW),
        ("2026-11-23t10:00:00z", NOW),  # RFC 3339 allows lower case
        ("2026-11-23 10:00:00Z", NOW),  # and a space as separator
        ("2000-01-01T00:00:00Z", 946684800.0),
    ],
)
def test_accepted_timestamps(stamp: object, expected: float) -> None:
    _, when, _ = decode_event(encode(event(timestamp=stamp)), now=NOW)
    assert type(when) is float
    assert when == pytest.approx(expected, abs=1e-6)


def test_anonymous_event_with_null_user_id() -> None:
    raw = encode(event(userId=None) | {"userId": None, "anonymousId": "anon-7"})
    assert decode_event(raw, now=NOW)[0] == "Payment Attempted"


def test_duplicate_keys_last_wins() -> None:
    raw = (
        b'{"event":"First","event":"Second","messageId":"m","userId":"u",'
        b'"timestamp":1795428000,"properties":{"amount":1,"amount":2}}'
    )
    name, _, decoded = decode_event(raw, now=NOW)
    assert name == "Second"
    assert decoded["properties"] == {"amount": 2}


def test_huge_ints_in_properties_become_floats() -> None:
    # orjson keeps integers up to 2**64-1 exact and turns larger ones into floats.
    raw = encode(event(properties={})).replace(
        b'"properties":{}', b'"properties":{"big":' + b"9" * 40 + b',"u64":18446744073709551615}'
    )
    _, _, decoded = decode_event(raw, now=NOW)
    assert decoded["properties"]["u64"] == 2**64 - 1
    assert decoded["properties"]["big"] == pytest.approx(1e40)


def test_limit_is_inclusive() -> None:
    raw = encode(event())
    assert decode_event(raw, now=NOW, max_bytes=len(raw))[0] == "Payment Attempted"
    assert rejected(raw, max_bytes=len(raw) - 1).reason == "too_large"


# --- rejections ------------------------------------------------------------------------


def test_empty() -> None:
    assert rejected(None).reason == "empty"
    assert rejected(b"").reason == "empty"


def test_too_large_string_value() -> None:
    raw = encode(event(properties={"blob": "x" * 100_000}))
    err = rejected(raw)
    assert err.reason == "too_large"
    assert "65,536" in err.detail


@pytest.mark.parametrize(
    ("raw", "byte"),
    [
        (b'{"event":"caf\xe9"}', 13),  # Latin-1 e-acute
        (b'{"event":"\xc3"}', 10),  # truncated 2-byte sequence
        (b'{"event":"\xed\xa0\x80"}', 10),  # UTF-8-encoded surrogate
        (b"\xff\xfe{\x00}\x00", 0),  # UTF-16 with BOM
    ],
)
def test_not_utf8(raw: bytes, byte: int) -> None:
    err = rejected(raw)
    assert err.reason == "not_utf8"
    assert err.detail == f"invalid UTF-8 at byte {byte}"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event":"e","timestamp":NaN}',
        b'{"value":Infinity}',
        b'{"value":-Infinity}',
        b'{"value":1e400}',  # overflows a double
        b'{"event":"Payment Att',  # truncated
        b"{'event':'single quotes'}",
        b'{"a":1}{"b":2}',  # two documents
        b"\xef\xbb\xbf{}",  # UTF-8 byte order mark
        b'{"a":"\\ud800"}',  # escaped lone surrogate
        b"[" * 2000 + b"]" * 2000,  # deeper than orjson's 1024 levels
        b'{"a":' * 1100 + b"1" + b"}" * 1100,
        b"\x00",
        b" ",
    ],
)
def test_invalid_json(raw: bytes) -> None:
    err = rejected(raw)
    assert err.reason == "invalid_json"
    assert 0 < len(err.detail) <= 120


@pytest.mark.parametrize(
    ("raw", "got"),
    [(b"[]", "array"), (b'"text"', "string"), (b"42", "number"), (b"null", "null")],
)
def test_not_an_object(raw: bytes, got: str) -> None:
    err = rejected(raw)
    assert err.reason == "not_an_object"
    assert got in err.detail


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"event": None}, "'event'"),
        ({"event": ""}, "'event'"),
        ({"messageId": None}, "'messageId'"),
        ({"timestamp": None}, "'timestamp'"),
        ({"userId": None}, "'userId' or 'anonymousId'"),
        ({"userId": "", "anonymousId": ""}, "'userId' or 'anonymousId'"),
        ({"type": "page", "event": None}, "'name'"),
    ],
)
def test_missing_field(overrides: dict[str, Any], field: str) -> None:
    err = rejected(encode(event(**overrides)))  # None removes the field
    assert err.reason == "missing_field"
    assert field in err.detail


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"event": 7}, "event: expected string, got number"),
        ({"event": True}, "event: expected string, got boolean"),
        ({"messageId": ["m"]}, "messageId: expected string, got array"),
        ({"userId": 1842}, "userId: expected string, got number"),
        ({"anonymousId": {"id": 1}}, "anonymousId: expected string, got object"),
        ({"properties": [1]}, "properties: expected object, got array"),
        ({"properties": None}, "properties: expected object, got null"),
        ({"context": "web"}, "context: expected object, got string"),
        ({"type": 3}, "type: expected string, got number"),
        ({"timestamp": True}, "timestamp: expected RFC 3339 string or epoch seconds, got boolean"),
        (
            {"timestamp": {"s": 1}},
            "timestamp: expected RFC 3339 string or epoch seconds, got object",
        ),
    ],
)
def test_wrong_type(overrides: dict[str, Any], detail: str) -> None:
    obj = event()
    obj.update(overrides)  # event() would drop explicit None values
    err = rejected(encode(obj))
    assert err.reason == "wrong_type"
    assert err.detail == detail


@pytest.mark.parametrize("kind", ["identify", "group", "alias", "Track", ""])
def test_unsupported_type(kind: str) -> None:
    err = rejected(encode(event(type=kind)))
    assert err.reason == "unsupported_type"
    assert repr(kind) in err.detail


@pytest.mark.parametrize(
    "stamp",
    [
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-23:59",  # past the end of datetime's calendar in UTC
        "1999-12-31T23:59:59Z",
        "2101-01-01T00:00:00Z",
        "2026-11-23",  # a date is not a date-time
        "2026-11-23T10:00:00",  # no offset: whose local time?
        "23/11/2026 10:00",
        "1795428000",  # epoch seconds as a string
        "2026-11-31T10:00:00Z",  # no such day
        "",
        "x" * 1000,
        0,
        -1.5,
        1795428000123,  # epoch milliseconds
    ],
)
def test_bad_timestamp(stamp: object) -> None:
    err = rejected(encode(event(timestamp=stamp)))
    assert err.reason == "bad_timestamp"
    assert len(err.detail) < 120


def test_huge_integer_timestamp() -> None:
    # Larger than 64 bits: orjson hands it over as a float, which is far out of range.
    raw = encode(event(timestamp=0)).replace(b'"timestamp":0', b'"timestamp":' + b"9" * 30)
    assert rejected(raw).reason == "bad_timestamp"


def test_bad_timestamp_hints_at_milliseconds() -> None:
    assert "milliseconds" in rejected(encode(event(timestamp=1795428000123))).detail


def test_future_timestamp() -> None:
    late = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=301)
    err = rejected(encode(event(timestamp=late.isoformat())))
    assert err.reason == "future_timestamp"
    assert "301 s" in err.detail
    # Exactly at the limit is still fine, and the limit is configurable.
    assert decode_event(encode(event(timestamp=NOW + 300)), now=NOW)[1] == NOW + 300
    assert rejected(encode(event(timestamp=NOW + 11)), max_future_seconds=10).reason == (
        "future_timestamp"
    )


def test_details_do_not_copy_huge_values() -> None:
    err = rejected(encode(event(type="x" * 10_000)))
    assert err.reason == "unsupported_type"
    assert len(err.detail) < 120


# --- KPI samples -----------------------------------------------------------------------


def kpi(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"kpi": "revenue", "timestamp": TS, "value": 123.4, "dims": {}}
    base.update(fields)
    return base


def test_kpi_sample() -> None:
    raw = encode(kpi(value=12, dims={"region": "eu", "channel": "web"}))
    name, when, value, dims = decode_kpi_sample(raw, now=NOW)
    assert (name, value, dims) == ("revenue", 12.0, {"region": "eu", "channel": "web"})
    assert type(value) is float
    assert when == pytest.approx(NOW + 0.123, abs=1e-6)


def test_kpi_dims_are_optional_and_not_shared() -> None:
    obj = kpi()
    del obj["dims"]
    first = decode_kpi_sample(encode(obj), now=NOW)[3]
    first["mutated"] = "yes"
    assert decode_kpi_sample(encode(obj), now=NOW)[3] == {}


@pytest.mark.parametrize(
    ("overrides", "reason", "detail"),
    [
        ({"value": True}, "wrong_type", "value: expected number, got boolean"),
        ({"value": "1.5"}, "wrong_type", "value: expected number, got string"),
        ({"value": None}, "missing_field", "KPI sample has no 'value'"),  # null is no value
        ({"kpi": 5}, "wrong_type", "kpi: expected string, got number"),
        ({"dims": {"store": 42}}, "wrong_type", "dims.store: expected string, got number"),
        ({"dims": ["eu"]}, "wrong_type", "dims: expected object, got array"),
        ({"kpi": ""}, "missing_field", "'kpi' is empty"),
        ({"timestamp": "0001-01-01T00:00:00Z"}, "bad_timestamp", None),
        ({"timestamp": NOW + 3600}, "future_timestamp", None),
    ],
)
def test_kpi_rejections(overrides: dict[str, Any], reason: str, detail: str | None) -> None:
    err = kpi_rejected(encode(kpi(**overrides)))
    assert err.reason == reason
    if detail is not None:
        assert err.detail == detail


@pytest.mark.parametrize("field", ["kpi", "value", "timestamp"])
def test_kpi_missing_field(field: str) -> None:
    obj = kpi()
    del obj[field]
    err = kpi_rejected(encode(obj))
    assert err.reason == "missing_field"
    assert repr(field) in err.detail


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        (b'{"kpi":"r","value":NaN,"timestamp":1795428000}', "invalid_json"),
        (b'{"kpi":"r","value":1e999,"timestamp":1795428000}', "invalid_json"),
        (b'{"kpi":"\xff"}', "not_utf8"),
        (b"[1, 2]", "not_an_object"),
    ],
)
def test_kpi_shares_the_event_reasons(raw: bytes | None, reason: str) -> None:
    assert kpi_rejected(raw).reason == reason


def test_kpi_too_large() -> None:
    raw = encode(kpi(dims={"note": "x" * 100}))
    assert kpi_rejected(raw, max_bytes=64).reason == "too_large"


# --- properties ------------------------------------------------------------------------


@given(st.binary(max_size=512))
@settings(max_examples=500)
def test_arbitrary_bytes_only_raise_event_rejected(raw: bytes) -> None:
    for decode in (decode_event, decode_kpi_sample):
        try:
            decode(raw, now=NOW)
        except EventRejected as err:
            assert err.reason in REASONS


# The first st.text() draw in a fresh checkout builds Hypothesis' Unicode tables (about
# 3 s), which trips the too_slow health check in whichever text test happens to run first.
text_settings = settings(suppress_health_check=[HealthCheck.too_slow])

# st.text() leaves out lone surrogates, which orjson cannot encode.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@text_settings
@given(st.dictionaries(st.sampled_from(["type", "event", "timestamp", "dims"]), json_values))
def test_arbitrary_json_objects_only_raise_event_rejected(obj: dict[str, Any]) -> None:
    raw = encode(obj)
    for decode in (decode_event, decode_kpi_sample):
        try:
            decode(raw, now=NOW)
        except EventRejected as err:
            assert err.reason in REASONS


names = st.text(min_size=1, max_size=30)
event_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2026, 11, 23, 10, 5)
).map(lambda dt: dt.replace(microsecond=dt.microsecond // 1000 * 1000, tzinfo=UTC))


@text_settings
@given(
    kind=st.sampled_from(["track", "page", "screen", None]),
    name=names,
    message_id=names,
    user=st.tuples(st.sampled_from(["userId", "anonymousId"]), names),
    when=event_times,
    as_number=st.booleans(),
    properties=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    context=st.none() | st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)
def test_valid_events_round_trip(
    kind: str | None,
    name: str,
    message_id: str,
    user: tuple[str, str],
    when: datetime,
    as_number: bool,
    properties: dict[str, Any],
    context: dict[str, Any] | None,
) -> None:
    obj: dict[str, Any] = {
        "messageId": message_id,
        user[0]: user[1],
        "timestamp": when.timestamp() if as_number else when.isoformat().replace("+00:00", "Z"),
        "properties": properties,
        "event" if kind in (None, "track") else "name": name,
    }
    if kind is not None:
        obj["type"] = kind
    if context is not None:
        obj["context"] = context

    got_name, got_when, decoded = decode_event(encode(obj), now=NOW)

    assert got_name == name
    assert math.isclose(got_when, when.timestamp(), rel_tol=0, abs_tol=1e-6)
    assert decoded == obj


@text_settings
@given(
    name=names,
    when=event_times,
    value=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
    dims=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5),
)
def test_valid_kpi_samples_round_trip(
    name: str, when: datetime, value: float, dims: dict[str, str]
) -> None:
    raw = encode({"kpi": name, "timestamp": when.isoformat(), "value": value, "dims": dims})
    assert decode_kpi_sample(raw, now=NOW) == (name, when.timestamp(), float(value), dims)
