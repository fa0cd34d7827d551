"""Decode Kafka message values into journey events and KPI samples.

Journey events are Segment-style JSON objects, one per message, UTF-8::

    {"type": "track", "event": "Payment Attempted", "messageId": "…", "userId": "…",
     "timestamp": "2026-11-23T10:00:00.123Z", "properties": {…}, "context": {…}}

KPI samples are ``{"kpi": "revenue", "timestamp": …, "value": 123.4, "dims": {…}}``.

Every message that cannot be used raises :class:`~models.errors.EventRejected` with one
of the stable reason codes in :data:`REASONS` (they become Prometheus label values and
dead-letter headers, so never rename one).

This is the hot path: one :func:`orjson.loads`, then type checks on exact types. Work
that only helps explain a rejection (UTF-8 diagnosis, naming JSON types) happens after
the decision to reject has been made.

Nesting: orjson rejects documents nested deeper than 1024 levels (``invalid_json``).
No tighter limit is checked here, because every way of measuring depth costs time in
proportion to the message on every event. Note that :func:`orjson.dumps` refuses more
than 254 levels: code that re-encodes a decoded event must handle
``orjson.JSONEncodeError`` (dead letters should carry the original bytes anyway).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from models.errors import EventRejected

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FUTURE_SECONDS",
    "REASONS",
    "decode_event",
    "decode_kpi_sample",
]

REASONS: Final = (
    "empty",
    "too_large",
    "not_utf8",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unsupported_type",
    "bad_timestamp",
    "future_timestamp",
)

DEFAULT_MAX_BYTES: Final = 64 * 1024
DEFAULT_MAX_FUTURE_SECONDS: Final = 300.0

# Event times outside UTC years 2000..2100 are producer bugs (zeroed clocks, epoch
# milliseconds sent as seconds, sentinel dates like 9999-12-31), not real events.
_MIN_TIME: Final = 946_684_800.0  # 2000-01-01T00:00:00Z
_END_TIME: Final = 4_133_980_800.0  # 2101-01-01T00:00:00Z

# Stands in for an absent optional object so that one exact-type test covers both
# "absent" and "present and an object"; never handed to callers (it is shared).
_ABSENT: Final[dict[str, Any]] = {}

_fromisoformat = datetime.fromisoformat
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

# Timestamps of one stream share their seconds: "2026-11-23T10:00:00" of
# "2026-11-23T10:00:00.123Z" is parsed once, remembered as epoch microseconds, and
# the suffix (".123Z", "Z", ".123+00:00", "+00:00") is read from a table. The result is
# computed as datetime.timestamp() computes it (integer microseconds / 10**6), so it
# is the same float. Only canonical prefixes that fromisoformat accepted are stored
# (see _remember_seconds); everything else takes the full parse.
_SECONDS_CACHE_LIMIT: Final = 4096
_seconds: dict[str, int] = {}
_CANONICAL_SECONDS: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}")
_UTC_SUFFIXES: Final[dict[str, int]] = {
    f"{fraction}{zone}": micros
    for zone in ("Z", "+00:00")
    for fraction, micros in (("", 0), *((f".{ms:03d}", ms * 1000) for ms in range(1000)))
}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def decode_event(
    raw: bytes | None,
    now: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_future_seconds: float = DEFAULT_MAX_FUTURE_SECONDS,
) -> tuple[str, float, dict[str, Any]]:
    """Return (event name, event time as epoch seconds, the whole decoded object).

    (Positional arguments allowed: a call with keywords costs the ingest loop ~1 %.)

    ``type`` defaults to ``track`` whose name is ``event``; ``page`` and ``screen``
    events are named by ``name``. ``userId`` or ``anonymousId`` must be a non-empty
    string (the other may be absent or null, as Segment sends it). ``properties`` and
    ``context``, when present, must be objects (null is not an object).

    Raises :class:`EventRejected` with a reason from :data:`REASONS`.

    >>> decode_event(b'{"event":"Signed Up","messageId":"m1","anonymousId":"a1",'
    ...              b'"timestamp":1795428000.5}', now=1795428000.0)[:2]
    ('Signed Up', 1795428000.5)
    """
    # _load inlined: this runs for every event.
    if not raw:
        raise EventRejected(
            "empty", "message has no value" if raw is None else "message value is empty"
        )
    if len(raw) > max_bytes:
        raise EventRejected("too_large", f"message is {len(raw):,} bytes, limit is {max_bytes:,}")
    try:
        obj = _loads(raw)
    except _JSONDecodeError as exc:
        raise _diagnose(raw, exc) from None
    if type(obj) is not dict:
        raise EventRejected("not_an_object", f"expected a JSON object, got {_json_type(obj)}")

    kind = obj.get("type", "track")
    if kind == "track":
        name_field = "event"
    elif kind == "page" or kind == "screen":
        name_field = "name"
    elif type(kind) is str:
        raise EventRejected(
            "unsupported_type", f"type {_show(kind)} is not handled (only track, page, screen)"
        )
    else:
        raise _wrong_type("type", "string", kind)

    name = obj.get(name_field)
    if type(name) is not str or not name:
        raise _bad_string(name_field, name, f"{kind} event")
    message_id = obj.get("messageId")
    if type(message_id) is not str or not message_id:
        raise _bad_string("messageId", message_id, "event")

    user_id = obj.get("userId")
    if user_id is not None and type(user_id) is not str:
        raise _wrong_type("userId", "string", user_id)
    anonymous_id = obj.get("anonymousId")
    if anonymous_id is not None and type(anonymous_id) is not str:
        raise _wrong_type("anonymousId", "string", anonymous_id)
    if not user_id and not anonymous_id:
        raise EventRejected("missing_field", "needs a non-empty 'userId' or 'anonymousId'")

    properties = obj.get("properties", _ABSENT)
    if type(properties) is not dict:
        raise _wrong_type("properties", "object", properties)
    context = obj.get("context", _ABSENT)
    if type(context) is not dict:
        raise _wrong_type("context", "object", context)

    stamp = obj.get("timestamp")
    if type(stamp) is str:
        # The fast path of _event_time for timestamps whose second was seen before.
        base = _seconds.get(stamp[:19])
        if base is not None:
            micros = _UTC_SUFFIXES.get(stamp[19:])
            if micros is not None:
                when = (base + micros) / 1_000_000
                if not _MIN_TIME <= when < _END_TIME:
                    raise _out_of_range(stamp, when)
                if when > now + max_future_seconds:
                    raise _future(stamp, when, now, max_future_seconds)
                return name, when, obj
    return name, _event_time(stamp, now, max_future_seconds), obj


def decode_kpi_sample(
    raw: bytes | None,
    *,
    now: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_future_seconds: float = DEFAULT_MAX_FUTURE_SECONDS,
) -> tuple[str, float, float, dict[str, str]]:
    """Return (KPI name, event time as epoch seconds, value, dims).

    ``value`` must be a finite JSON number (booleans are not numbers); ``dims`` is an
    optional object whose values must all be strings (they become label values, and
    silently turning ``1``/``1.0``/``"1"`` into one string would merge or split series).

    Raises :class:`EventRejected` with a reason from :data:`REASONS`.

    >>> decode_kpi_sample(b'{"kpi":"revenue","timestamp":"2026-11-23T10:00:00Z",'
    ...                   b'"value":12,"dims":{"region":"eu"}}', now=1795428000.0)
    ('revenue', 1795428000.0, 12.0, {'region': 'eu'})
    """
    obj = _load(raw, max_bytes)
    if type(obj) is not dict:
        raise EventRejected("not_an_object", f"expected a JSON object, got {_json_type(obj)}")

    kpi = obj.get("kpi")
    if type(kpi) is not str or not kpi:
        raise _bad_string("kpi", kpi, "KPI sample")

    value = obj.get("value")
    if type(value) is float or type(value) is int:
        number = float(value)
    elif value is None:
        raise EventRejected("missing_field", "KPI sample has no 'value'")
    else:
        raise _wrong_type("value", "number", value)
    if not math.isfinite(number):  # orjson never yields inf/nan; guard the contract anyway
        raise EventRejected("wrong_type", f"value: expected finite number, got {number}")

    dims = obj.get("dims", _ABSENT)
    if type(dims) is not dict:
        raise _wrong_type("dims", "object", dims)
    for key, dim in dims.items():
        if type(dim) is not str:
            raise _wrong_type(f"dims.{_show(key, 40, quote=False)}", "string", dim)

    when = _event_time(obj.get("timestamp"), now, max_future_seconds)
    return kpi, when, number, dims if dims is not _ABSENT else {}


# --- shared steps ----------------------------------------------------------------------


def _load(raw: bytes | None, max_bytes: int) -> Any:
    if not raw:
        raise EventRejected(
            "empty", "message has no value" if raw is None else "message value is empty"
        )
    size = len(raw)
    if size > max_bytes:
        raise EventRejected("too_large", f"message is {size:,} bytes, limit is {max_bytes:,}")
    try:
        return _loads(raw)
    except _JSONDecodeError as exc:
        raise _diagnose(raw, exc) from None


def _event_time(value: object, now: float, max_future_seconds: float) -> float:
    if type(value) is str:
        try:
            parsed = _fromisoformat(value)
        except ValueError:
            parsed = _parse_lenient(value)
        if parsed.tzinfo is None:
            raise EventRejected(
                "bad_timestamp", f"timestamp {_show(value)} has no UTC offset (add Z)"
            )
        try:
            when = parsed.timestamp()
        except (OverflowError, ValueError):  # offsets pushing year 1/9999 off the calendar
            when = math.nan
        else:
            _remember_seconds(value, parsed)
    elif type(value) is float or type(value) is int:
        when = float(value)
    elif value is None:
        raise EventRejected("missing_field", "no 'timestamp'")
    else:
        raise _wrong_type("timestamp", "RFC 3339 string or epoch seconds", value)

    if not _MIN_TIME <= when < _END_TIME:  # also rejects NaN
        raise _out_of_range(value, when)
    if when > now + max_future_seconds:
        raise _future(value, when, now, max_future_seconds)
    return when


def _remember_seconds(text: str, parsed: datetime) -> None:
    """Store the epoch microseconds of ``text``'s seconds for the fast path of decode_event."""
    micros = _UTC_SUFFIXES.get(text[19:])
    if micros is None or parsed.utcoffset() or not _CANONICAL_SECONDS.fullmatch(text, 0, 19):
        return
    delta = parsed - _EPOCH
    if len(_seconds) >= _SECONDS_CACHE_LIMIT:
        _seconds.clear()
    _seconds[text[:19]] = (delta.days * 86_400 + delta.seconds) * 1_000_000 + (
        delta.microseconds - micros
    )


# --- slow paths: only run once a message is known to be rejected -----------------------


def _diagnose(raw: bytes, exc: orjson.JSONDecodeError) -> EventRejected:
    # orjson reports invalid UTF-8 as "str is not valid UTF-8: surrogates not allowed"
    # at char 0, which misleads whoever reads the dead letter; find the real byte.
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return EventRejected("not_utf8", f"invalid UTF-8 at byte {bad.start}")
    return EventRejected("invalid_json", _clip(str(exc), 120))


def _parse_lenient(text: str) -> datetime:
    # RFC 3339 allows lower-case "t" and "z"; fromisoformat does not. Rare, so it is
    # tried only after the fast parse failed.
    try:
        return _fromisoformat(text.upper())
    except ValueError:
        raise EventRejected(
            "bad_timestamp", f"timestamp {_show(text)} is not an RFC 3339 date-time"
        ) from None


def _future(value: object, when: float, now: float, max_future_seconds: float) -> EventRejected:
    return EventRejected(
        "future_timestamp",
        f"timestamp {_show(value)} is {when - now:.0f} s after now "
        f"(limit {max_future_seconds:g} s)",
    )


def _out_of_range(value: object, when: float) -> EventRejected:
    hint = ""
    if type(value) is not str and _MIN_TIME * 1000 <= when < _END_TIME * 1000:
        hint = " (epoch milliseconds? expected seconds)"
    return EventRejected(
        "bad_timestamp", f"timestamp {_show(value)} is outside years 2000..2100{hint}"
    )


def _bad_string(field: str, value: object, what: str) -> EventRejected:
    if value is None:
        return EventRejected("missing_field", f"{what} has no '{field}'")
    if type(value) is str:
        return EventRejected("missing_field", f"'{field}' is empty")
    return _wrong_type(field, "string", value)


def _wrong_type(field: str, expected: str, value: object) -> EventRejected:
    return EventRejected("wrong_type", f"{field}: expected {expected}, got {_json_type(value)}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: object, limit: int = 40, *, quote: bool = True) -> str:
    # Details end up in logs and Kafka headers: never copy an attacker-sized value.
    text = repr(value) if quote or type(value) is not str else str(value)
    return _clip(text, limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
