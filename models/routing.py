"""From a decoded journey event to the observations it feeds.

The catalog is compiled once into per-event-name routes, so the per-event
work is a dict lookup plus a few dotted-path reads.  An observation is the
triple ``(series key, event time, value)``; the series key names the
indicator and its segment (``"checkout_success_rate\\x1fweb\\x1feu"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from models.spec import Catalog, Indicator, Measure, Scalar, Segment

KEY_SEPARATOR = "\x1f"
OTHER = "other"
UNKNOWN = "unknown"
MAX_LABEL_VALUE_LENGTH = 64

_UNSAFE_LABEL_CHARS = re.compile(r"[^\w.:/@+-]")

#: Reads a value out of an event: a dict walk along a dotted path.
Getter = Callable[[dict[str, Any]], Any]
#: Turns the selected value into the float an estimator takes; None = not measurable.
Extractor = Callable[[str, dict[str, Any]], float | None]

_MISSING = object()


def series_key(indicator: str, segment: Iterable[str]) -> str:
    """The key naming one indicator in one segment.

    >>> series_key("nps", ["eu"])
    'nps\\x1feu'
    >>> split_series_key(series_key("nps", ["eu", "web"]))
    ('nps', ('eu', 'web'))
    """
    return KEY_SEPARATOR.join((indicator, *segment))


def split_series_key(key: str) -> tuple[str, tuple[str, ...]]:
    """Inverse of :func:`series_key`."""
    name, *segment = key.split(KEY_SEPARATOR)
    return name, tuple(segment)


def sanitize_label_value(value: Any) -> str:
    """A segment value made safe and bounded for a Prometheus label.

    >>> sanitize_label_value("EU West\\n")
    'EU_West_'
    >>> sanitize_label_value(None)
    'unknown'
    >>> len(sanitize_label_value("x" * 500))
    64
    """
    if value is None or value is _MISSING or isinstance(value, dict | list):
        return UNKNOWN
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)[:MAX_LABEL_VALUE_LENGTH]
    return _UNSAFE_LABEL_CHARS.sub("_", text) or UNKNOWN


def path_getter(path: str) -> Getter:
    """A function reading ``path`` (dotted) from an event; missing parts give a sentinel."""
    parts = tuple(path.split("."))
    if len(parts) == 1:
        (only,) = parts

        def get_top(event: dict[str, Any]) -> Any:
            return event.get(only, _MISSING)

        return get_top

    def get_nested(event: dict[str, Any]) -> Any:
        node: Any = event
        for part in parts:
            if type(node) is not dict:
                return _MISSING
            node = node.get(part, _MISSING)
            if node is _MISSING:
                return _MISSING
        return node

    return get_nested


def _as_number(value: Any) -> float | None:
    # bool is an int subclass; a boolean is never a measurement here.
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        return float(value) if abs(value) < 2**63 else None
    return None


def _as_flag(value: Any) -> float | None:
    if value is True:
        return 1.0
    if value is False:
        return 0.0
    if type(value) is int and value in (0, 1):
        return float(value)
    return None


def value_extractor(measure: Measure) -> Extractor:
    """How one event becomes the float the indicator's estimator takes."""
    kind = measure.kind
    if kind == "count":
        return lambda name, event: 1.0
    if kind == "ratio":
        numerator = frozenset(measure.numerator_events)
        return lambda name, event: 1.0 if name in numerator else 0.0
    if measure.path is None:
        raise ValueError(f"measure {kind!r} needs a path")
    get = path_getter(measure.path)
    if kind == "rate" and measure.equals is not None:
        expected = measure.equals

        def equals_flag(name: str, event: dict[str, Any]) -> float | None:
            value = get(event)
            if value is _MISSING:
                return None
            return 1.0 if value == expected else 0.0

        return equals_flag
    if kind == "rate":
        return lambda name, event: _as_flag(get(event))
    if kind == "nps":

        def score(name: str, event: dict[str, Any]) -> float | None:
            number = _as_number(get(event))
            return number if number is not None and 0.0 <= number <= 10.0 else None

        return score
    return lambda name, event: _as_number(get(event))


class SegmentFolder:
    """Maps a raw segment value to its label value, folding values beyond the cap into ``other``.

    The first ``cap`` distinct values seen keep their own series; later ones
    share ``other``, so a producer cannot create unbounded Prometheus series.

    >>> folder = SegmentFolder(Segment(label="region", path="context.region", cap=2))
    >>> [folder.label_value(v) for v in ["eu", "us", "apac", "eu"]]
    ['eu', 'us', 'other', 'eu']
    >>> folder.folded
    1
    """

    __slots__ = ("_get", "_known", "_labels", "cap", "folded", "label")

    def __init__(self, segment: Segment) -> None:
        self.label = segment.label
        self.cap = segment.cap
        self._get = path_getter(segment.path)
        self._labels: set[str] = set()
        # Raw string -> label value, bounded: long values sharing a prefix all
        # sanitize to one label, and must not grow this cache without end.
        self._known: dict[str, str] = {}
        self.folded = 0

    def label_value(self, raw: Any) -> str:
        cacheable = type(raw) is str
        if cacheable:
            known = self._known.get(raw)
            if known is not None:
                return known
        value = sanitize_label_value(raw)
        if value not in self._labels:
            if len(self._labels) >= self.cap:
                self.folded += 1
                return OTHER
            self._labels.add(value)
        if cacheable and len(self._known) < 4 * self.cap:
            self._known[raw] = value
        return value

    def of(self, event: dict[str, Any]) -> str:
        return self.label_value(self._get(event))


@dataclass(slots=True)
class Route:
    """One indicator as seen from one event name."""

    indicator: Indicator
    filters: tuple[tuple[Getter, Scalar], ...]
    extract: Extractor
    segments: tuple[SegmentFolder, ...]
    unmeasurable: int = 0

    def observe(self, name: str, event: dict[str, Any]) -> tuple[str, float] | None:
        """(series key, value) for this event, or None when it does not apply."""
        for get, expected in self.filters:
            if get(event) != expected:
                return None
        value = self.extract(name, event)
        if value is None:
            self.unmeasurable += 1
            return None
        if not self.segments:
            return self.indicator.name, value
        key = KEY_SEPARATOR.join([self.indicator.name] + [s.of(event) for s in self.segments])
        return key, value


@dataclass
class Router:
    """Compiled catalog: event name → the routes it feeds.

    >>> from models.spec import Catalog, Indicator, Measure
    >>> pay = Indicator(name="pay_ok", kind="cpi", description="", owner="payments",
    ...                 measure=Measure(kind="rate", path="properties.success"),
    ...                 events=("Payment Attempted",),
    ...                 segment_by=(Segment(label="channel", path="context.channel"),))
    >>> router = Router.compile(Catalog(source="doc", cpis=(pay,)))
    >>> event = {"properties": {"success": True}, "context": {"channel": "web"}}
    >>> router.observe("Payment Attempted", event)
    [('pay_ok\\x1fweb', 1.0)]
    >>> router.observe("Page Viewed", event)
    []
    """

    by_event: dict[str, tuple[Route, ...]]
    any_event: tuple[Route, ...]
    routes: tuple[Route, ...] = field(default=())

    @classmethod
    def compile(cls, catalog: Catalog, indicators: Iterable[Indicator] | None = None) -> Router:
        """Routes for ``indicators`` (default: every event-fed indicator of the catalog)."""
        chosen = catalog.indicators if indicators is None else tuple(indicators)
        by_event: dict[str, list[Route]] = {}
        any_event: list[Route] = []
        routes: list[Route] = []
        for indicator in chosen:
            if indicator.source != "events":
                continue
            route = Route(
                indicator=indicator,
                filters=tuple((path_getter(path), value) for path, value in indicator.where),
                extract=value_extractor(indicator.measure),
                segments=tuple(SegmentFolder(segment) for segment in indicator.segment_by),
            )
            routes.append(route)
            names = set(indicator.events) | set(indicator.measure.numerator_events)
            if "*" in names:
                any_event.append(route)
                continue
            for name in names:
                by_event.setdefault(name, []).append(route)
        return cls(
            by_event={name: tuple(rs) for name, rs in by_event.items()},
            any_event=tuple(any_event),
            routes=tuple(routes),
        )

    def observe(self, name: str, event: dict[str, Any]) -> list[tuple[str, float]]:
        """Every (series key, value) this event feeds."""
        out = []
        for route in self.by_event.get(name, ()):
            observation = route.observe(name, event)
            if observation is not None:
                out.append(observation)
        for route in self.any_event:
            observation = route.observe(name, event)
            if observation is not None:
                out.append(observation)
        return out

    def folded(self) -> dict[tuple[str, str], int]:
        """Segment values folded into ``other`` so far, by (indicator, label)."""
        return {
            (route.indicator.name, folder.label): folder.folded
            for route in self.routes
            for folder in route.segments
            if folder.folded
        }

    def unmeasurable(self) -> dict[str, int]:
        """Matching events whose measured field was missing or of the wrong type, by indicator."""
        return {route.indicator.name: route.unmeasurable for route in self.routes}
