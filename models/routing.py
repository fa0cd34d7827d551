"""From a decoded journey event to the observations it feeds.

The catalog is compiled once into per-event-name routes.  An observation is
the triple ``(series key, event time, value)``; the series key names the
indicator and its segment (``"checkout_success_rate\\x1fweb\\x1feu"``).

:class:`Route` is the plain definition of what one indicator takes from an
event (and :meth:`Route.observe` its reference implementation).  For the hot
path, :class:`Router` turns the routes of each event name into one generated
Python function, a *plan* (see :func:`_write_plan`), with the same behaviour:

- each dotted path is read once per event, and a shared prefix once
  (``context.channel`` and ``context.region`` read ``context`` once);
- ``"*"`` routes are indexed by an equality filter on a top-level field
  (``where: {type: page}``): events whose value cannot match never run them;
- a route's segment values become its series key through a bounded cache of
  raw values → key, consulted before the :class:`SegmentFolder` objects, and
  filled only with values the folders would map to the same labels again
  without counting anything (nothing folded, strings or absent values only),
  so the cap, the sanitizing and the ``folded`` counts are exactly the folders'.
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

#: Series keys remembered per route (raw segment values → key) before starting over.
_KEY_CACHE_LIMIT = 4096

#: Series key → its (event time, value, input offset) observations, in input order.
Groups = dict[str, list[tuple[float, float, int]]]
#: A compiled plan: ``plan(name, event, groups, event_time, offset)`` appends every
#: observation one event feeds to its series' group (created when missing).
Plan = Callable[[str, dict[str, Any], Groups, float, int], None]


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

    __slots__ = ("_get", "_known", "_labels", "cap", "folded", "label", "path")

    def __init__(self, segment: Segment) -> None:
        self.label = segment.label
        self.cap = segment.cap
        self.path = segment.path
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


class _SeriesKeys:
    """One route's series keys by raw segment values: a bounded cache in front of its folders.

    The cache key is the raw value (one segment) or the tuple of raw values.  A
    key is remembered only when every raw value is a string or absent (no
    cross-type equality such as ``1 == 1.0 == True`` can then confuse two values)
    and no folder folded it: for such values the folders would return the same
    labels again and count nothing, so skipping them changes nothing.
    """

    __slots__ = ("cache", "folders", "name")

    def __init__(self, name: str, folders: tuple[SegmentFolder, ...]) -> None:
        self.name = name
        self.folders = folders
        self.cache: dict[Any, str] = {}

    def make(self, raw: Any) -> str:
        """The key of ``raw`` (a value, or a tuple of one value per segment) via the folders."""
        raws = (raw,) if len(self.folders) == 1 else raw
        labels = []
        cacheable = True
        for folder, value in zip(self.folders, raws, strict=True):
            folded = folder.folded
            labels.append(folder.label_value(value))
            if folder.folded != folded or not (
                type(value) is str or value is None or value is _MISSING
            ):
                cacheable = False
        key = KEY_SEPARATOR.join((self.name, *labels))
        if cacheable:
            if len(self.cache) >= _KEY_CACHE_LIMIT:
                self.cache.clear()
            self.cache[raw] = key
        return key


#: Value lines of measures that never make an event unmeasurable (count, ratio).
_CONSTANT_VALUES = frozenset({"value = 1.0", "value = 0.0"})

#: Lines adding ``(when, value, offset)`` to the group of ``key``: appending in the plan
#: itself saves building, returning and walking a list of pairs per event (the ingest
#: stage went from 4.4-4.6 to 4.0-4.2 µs per event in ``bench.stages``).
_APPEND = (
    "group = groups.get(key)",
    "if group is None:",
    "    groups[key] = [(when, value, offset)]",
    "else:",
    "    group.append((when, value, offset))",
)


class _PlanWriter:
    """Writes the source of one plan: the routes one event name (and index value) feeds."""

    def __init__(self, known_name: str | None) -> None:
        #: The event name the plan is for; None for names no route names.
        self.known_name = known_name
        self.env: dict[str, Any] = {"MISSING": _MISSING, "isfinite": math.isfinite}
        self.reads: list[str] = []
        self.body: list[str] = []
        self._read: dict[tuple[str, ...], str] = {}

    def ref(self, value: Any, prefix: str) -> str:
        """A global name of the plan bound to ``value``."""
        name = f"{prefix}{len(self.env)}"
        self.env[name] = value
        return name

    def read(self, path: str) -> str:
        """A local holding ``path`` read from the event, as :func:`path_getter` reads it.

        Every path and prefix is read once, at the top of the plan.
        """
        parts = tuple(path.split("."))
        for depth in range(1, len(parts) + 1):
            prefix = parts[:depth]
            if prefix in self._read:
                continue
            local = self._read[prefix] = f"v{len(self._read)}"
            part = repr(prefix[-1])
            if depth == 1:
                self.reads.append(f"{local} = event.get({part}, MISSING)")
            else:
                parent = self._read[prefix[:-1]]
                dict_or_missing = f"{parent}.get({part}, MISSING) if type({parent}) is dict"
                self.reads.append(f"{local} = {dict_or_missing} else MISSING")
        return self._read[parts]

    def add(self, route: Route, filters: tuple[tuple[str, Scalar], ...]) -> None:
        """The block of one route: filters, value, key, output (as :meth:`Route.observe`)."""
        lines = [f"# route {route.indicator.name!r}"]
        indent = ""
        if filters:
            differs = [
                f"{self.read(path)} != {self.ref(value, 'equal')}" for path, value in filters
            ]
            lines.append(f"if not ({' or '.join(differs)}):")
            indent = "    "
        value = self._value(route.indicator.measure)
        lines += [indent + line for line in value]
        if value[0] in _CONSTANT_VALUES:
            lines += [indent + line for line in self._key(route)]
        else:
            lines += [
                indent + "if value is None:",
                indent + f"    {self.ref(route, 'route')}.unmeasurable += 1",
                indent + "else:",
            ]
            lines += [indent + "    " + line for line in self._key(route)]
        self.body += lines

    def _value(self, measure: Measure) -> list[str]:
        """Lines setting ``value`` to the float taken, or None: as :func:`value_extractor`."""
        kind = measure.kind
        if kind == "count":
            return ["value = 1.0"]
        if kind == "ratio":
            numerator = frozenset(measure.numerator_events)
            if self.known_name is not None:
                return [f"value = {1.0 if self.known_name in numerator else 0.0!r}"]
            return [f"value = 1.0 if name in {self.ref(numerator, 'numerator')} else 0.0"]
        if measure.path is None:
            raise ValueError(f"measure {kind!r} needs a path")
        x = self.read(measure.path)
        if kind == "rate" and measure.equals is not None:
            expected = self.ref(measure.equals, "equals")
            return [f"value = None if {x} is MISSING else 1.0 if {x} == {expected} else 0.0"]
        if kind == "rate":  # _as_flag
            return [
                f"if {x} is True:",
                "    value = 1.0",
                f"elif {x} is False:",
                "    value = 0.0",
                f"elif type({x}) is int and {x} in (0, 1):",
                f"    value = float({x})",
                "else:",
                "    value = None",
            ]
        number = [  # _as_number
            f"if type({x}) is float:",
            f"    value = {x} if isfinite({x}) else None",
            f"elif type({x}) is int:",
            f"    value = float({x}) if abs({x}) < {2**63} else None",
            "else:",
            "    value = None",
        ]
        if kind == "nps":
            number += ["if value is not None and not 0.0 <= value <= 10.0:", "    value = None"]
        return number

    def _key(self, route: Route) -> list[str]:
        """Lines appending the observation to its series' group in ``groups``, the key
        taken from the route's cache."""
        if not route.segments:
            return [f"key = {route.indicator.name!r}", *_APPEND]
        keys = _SeriesKeys(route.indicator.name, route.segments)
        raws = [self.read(folder.path) for folder in route.segments]
        raw = raws[0] if len(raws) == 1 else f"({', '.join(raws)})"
        return [
            "try:",
            f"    key = {self.ref(keys.cache, 'keys')}.get({raw})",
            "except TypeError:  # an unhashable value (object, array): never cached",
            "    key = None",
            "if key is None:",
            f"    key = {self.ref(keys, 'series')}.make({raw})",
            *_APPEND,
        ]

    def source(self) -> str:
        lines = ["def plan(name, event, groups, when, offset):"]
        lines += ["    " + line for line in self.reads]
        lines += ["    " + line for line in self.body] or ["    pass"]
        return "\n".join(lines) + "\n"


def _write_plan(
    routes: Iterable[tuple[Route, tuple[tuple[str, Scalar], ...]]], known_name: str | None
) -> tuple[Plan, str]:
    """One function running ``routes`` (each with the filters it still has to check)."""
    writer = _PlanWriter(known_name)
    for route, filters in routes:
        writer.add(route, filters)
    source = writer.source()
    namespace = writer.env
    exec(compile(source, f"<route plan for {known_name!r}>", "exec"), namespace)
    plan: Plan = namespace["plan"]
    return plan, source


def _indexable(value: Scalar) -> bool:
    """A filter value a dict lookup matches exactly as ``==`` does (hashable, not NaN)."""
    return isinstance(value, str | int | float) and value == value


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
    #: The top-level field "*" routes are indexed by ("" when none is).
    _index_field: str = field(default="", init=False, repr=False, compare=False)
    #: Event name → (index value → plan, plan for any other value).
    _plans: dict[str, tuple[dict[Any, Plan], Plan]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: The same, for event names no route names.
    _unnamed: tuple[dict[Any, Plan], Plan] = field(init=False, repr=False, compare=False)
    #: Generated source of each plan, by (event name, index value), for debugging.
    sources: dict[tuple[str | None, Any], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self._compile_plans()

    def _compile_plans(self) -> None:
        # "*" routes are indexed by the top-level field most of their equality filters use.
        uses: dict[str, int] = {}
        for route in self.any_event:
            for path, value in route.indicator.where:
                if "." not in path and _indexable(value):
                    uses[path] = uses.get(path, 0) + 1
        index = self._index_field = max(uses, key=uses.__getitem__) if uses else ""
        # Each "*" route: the index value it needs (or _MISSING: it runs for any event),
        # and the filters left for its plan to check.
        stars: list[tuple[Route, Any, tuple[tuple[str, Scalar], ...]]] = []
        index_values: dict[Any, None] = {}
        for route in self.any_event:
            where = route.indicator.where
            needs = next((v for p, v in where if p == index and _indexable(v)), _MISSING)
            if needs is not _MISSING:
                index_values[needs] = None
                where = tuple((p, v) for p, v in where if p != index)
            stars.append((route, needs, where))

        def plans(name: str | None) -> tuple[dict[Any, Plan], Plan]:
            named = self.by_event.get(name, ()) if name is not None else ()
            own = [(route, route.indicator.where) for route in named]
            by_value: dict[Any, Plan] = {}
            for value in index_values:
                chosen = own + [
                    (r, w) for r, needs, w in stars if needs is _MISSING or needs == value
                ]
                by_value[value], self.sources[(name, value)] = _write_plan(chosen, name)
            chosen = own + [(r, w) for r, needs, w in stars if needs is _MISSING]
            default, self.sources[(name, None)] = _write_plan(chosen, name)
            return by_value, default

        self._plans = {name: plans(name) for name in self.by_event}
        self._unnamed = plans(None)

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

    def plan(self, name: str, event: dict[str, Any]) -> Plan:
        """The compiled plan for this event: ``plan(name, event, groups, when, offset)``
        adds to ``groups`` what :meth:`observe` returns."""
        by_value, default = self._plans.get(name, self._unnamed)
        if by_value:
            try:
                return by_value.get(event.get(self._index_field, _MISSING), default)
            except TypeError:  # an unhashable value (object, array) equals no filter value
                pass
        return default

    def observe(self, name: str, event: dict[str, Any]) -> list[tuple[str, float]]:
        """Every (series key, value) this event feeds: the routes of its name, then the
        ``"*"`` routes, each in catalog order (as running :meth:`Route.observe` of each)."""
        groups: Groups = {}
        self.plan(name, event)(name, event, groups, 0.0, 0)
        # Each route feeds one series of its own indicator: one observation per key.
        return [(key, value) for key, observed in groups.items() for _, value, _ in observed]

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
