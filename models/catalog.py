"""Read the CPI/KPI catalog (YAML) into :class:`models.spec.Catalog`.

Every mistake in the file is collected, then reported at once as one
:class:`~models.errors.CatalogError` whose locations point into the YAML,
e.g. ``cpis[checkout_success_rate].measure.q (line 23)``.

Schema (``catalog.example.yaml`` is the commented reference)::

    version: 1                               # optional, only 1 exists
    defaults: {window: 1m, allowed_lateness: 10s, segment_cap: 50, alerting: {...}}  # optional
    cpis:                                    # at least one
      - name: checkout_success_rate          # [a-z_][a-z0-9_]*, unique in the file
        description: Share of payment attempts that succeed
        owner: payments                      # [a-z0-9_-]+, the alert routing label
        journey_step: checkout               # CPIs only, required
        event: Payment Attempted             # name or list; "*" (quoted) = any event
        where: {context.channel: web}        # optional equality filters
        measure: {rate: properties.success}
        segment_by: [context.channel, {label: region, path: context.region, cap: 20}]
        window: 1m                           # must divide one day
        allowed_lateness: 10s
        target: {min: 0.95, for: 5m}         # or {max: 800}
        unit: ratio
        runbook_url: https://runbooks.example.com/checkout
        alerting:                            # optional; every key has a default
          min_events: 30                     # windows with fewer events are not judged
          detector: adwin                    # adwin | page_hinkley | none
          detector_options: {delta: 0.002}   # passed to the River detector
          baseline_alpha: 0.1                # weight of the newest window in the baseline
          band_k: 3                          # band half-width, in standard deviations
          warmup_windows: 20                 # windows learned before the band is trusted
          confirm_after: 3                   # windows outside the band that start a drop
          clear_after: 2                     # windows back inside that end it
          better: higher                     # only without a target (the target says it)
          stale_windows: 3                   # windows without events: CpiStale
          severity: page                     # page | ticket | info
    kpis: [...]      # same fields minus journey_step; `source: topic` reads the KPI topic
    metrics: [...]   # same fields minus journey_step, never a target
    links:           # optional; omitted = every CPI x every KPI
      - {cpi: checkout_success_rate, kpi: revenue, max_lag: 5, history: 30, min_windows: 90}
    settings: {}     # optional single values, passed through untouched

Measures: ``{rate: PATH, equals: V}``, ``{mean: PATH}``, ``{sum: PATH}``,
``{quantile: PATH, q: 0.95}``, ``count`` (or ``{count: true}``), ``{nps: PATH}``,
``{csat: PATH, threshold: 4}``, ``{ratio: {numerator: EVENTS}}`` (denominator:
the indicator's ``event``).  Paths start with ``properties.``, ``context.`` or
``traits.``, or are a top-level field such as ``type`` or ``userId``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeGuard, cast

import yaml

from models.errors import CatalogError, CpimonError
from models.spec import (
    DETECTOR_DEFAULTS,
    LINK_MAX_WINDOWS_PER_HISTORY,
    LINK_MIN_WINDOWS_PER_HISTORY,
    RESERVED_LABELS,
    Alerting,
    Bound,
    Catalog,
    DetectorKind,
    Indicator,
    IndicatorKind,
    Link,
    Measure,
    MeasureKind,
    Scalar,
    Segment,
    Target,
)

__all__ = ["DurationError", "load_catalog", "parse_catalog", "parse_duration"]

#: A location in the YAML document, e.g. ("cpis", 2, "measure", "q").
Keys = tuple[str | int, ...]

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*")
_UNITS: dict[str | None, Decimal] = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60)}
_UNITS |= {"h": Decimal(3600), "d": Decimal(86400), None: Decimal(1)}
_DAY_MS = 86_400_000
_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_OWNER = re.compile(r"[a-z0-9_-]+")
_LABEL = re.compile(r"(?!__)[a-zA-Z_][a-zA-Z0-9_]*")
_PATH_ROOTS = ("properties", "context", "traits")
_TOP_FIELDS: tuple[str, ...] = (
    "anonymousId",
    "category",
    "channel",
    "event",
    "groupId",
    "messageId",
    "name",
)
_TOP_FIELDS += ("previousId", "type", "userId")

_TOP_KEYS = ("version", "defaults", "cpis", "kpis", "metrics", "links", "settings")
_DEFAULT_KEYS = ("window", "allowed_lateness", "segment_cap", "alerting")
_COMMON_KEYS: tuple[str, ...] = (
    "name",
    "description",
    "owner",
    "event",
    "where",
    "measure",
    "segment_by",
)
_COMMON_KEYS += ("window", "allowed_lateness", "target", "unit", "runbook_url", "alerting")
_ALERTING_WHOLE = ("min_events", "warmup_windows", "confirm_after", "clear_after", "stale_windows")
_ALERTING_KEYS: tuple[str, ...] = (*_ALERTING_WHOLE, "detector", "detector_options")
_ALERTING_KEYS += ("baseline_alpha", "band_k", "better", "severity")
_SEVERITIES = ("page", "ticket", "info")
_DEFAULT_ALERTING = Alerting()
_SECTIONS: dict[str, IndicatorKind] = {"cpis": "cpi", "kpis": "kpi", "metrics": "metric"}
_EXTRA_KEYS = {"cpi": ("journey_step",), "kpi": ("source",), "metric": ()}
_MEASURE_KINDS = ("rate", "mean", "sum", "quantile", "count", "nps", "csat", "ratio")
_MEASURE_OPTIONS = {"equals": "rate", "q": "quantile", "threshold": "csat"}
_LINK_KEYS = ("cpi", "kpi", "max_lag", "history", "min_windows")
_DEFAULT_LINK = Link(cpi="", kpi="")
# Targets outside these ranges can never be met or never be missed: almost always a typo.
_TARGET_RANGES = {"rate": (0.0, 1.0), "csat": (0.0, 1.0), "nps": (-100.0, 100.0)}
#: Whole-number fields: the least value allowed and what the number means.
_WHOLE = {
    "segment_cap": (1, "distinct values tracked per segment label"),
    "cap": (1, "distinct values tracked for this label"),
    "max_lag": (0, "windows the KPI may trail the CPI"),
    # LinkTracker needs 4 pairs for a confidence interval: with fewer nothing could confirm.
    "history": (4, "windows kept to correlate"),
    "min_windows": (1, "windows in a row with a significant lag that confirm a link"),
    "min_events": (1, "events a window needs before it is judged"),
    # The EW variance of a single window is 0: the band needs two windows at least.
    "warmup_windows": (2, "windows learned before the baseline band is trusted"),
    "confirm_after": (1, "consecutive windows outside the band that start a drop"),
    "clear_after": (1, "consecutive windows back inside the band that end a drop"),
    "stale_windows": (1, "windows without any event before the CPI counts as stale"),
}
_HINTS = {
    "name": "a unique snake_case name, e.g. checkout_success_rate",
    "description": "one sentence saying what it measures",
    "owner": "the accountable team, e.g. payments",
    "journey_step": "the customer journey step it measures, e.g. checkout",
    "event": 'the event(s) that feed it, e.g. Payment Attempted, or "*" for any event',
    "measure": "what to compute, e.g. {rate: properties.success}",
}
_MISPLACED = {
    "journey_step": "journey_step only applies to CPIs; remove it, or move the indicator to cpis",
    "source": "source only applies to KPIs (source: topic reads the KPI topic); remove it",
    "target": "a metric cannot have a target: an indicator with a target is a KPI or a CPI; "
    "move it to kpis or cpis, or remove the target",
}
_SAY = {
    "empty": "the catalog is empty; start from catalog.example.yaml",
    "version": "only catalog version 1 exists; write version: 1",
    "no_cpi": "a catalog needs at least one CPI; add a cpis: list",
    "not_list": "{key} must be a list; start each item with '- '",
    "bad_name": "'{value}' is not a valid name; use lower-case letters, digits and _, starting "
    "with a letter or _, e.g. checkout_success_rate",
    "taken": "'{value}' is already used by {other}; names must be unique across cpis, kpis "
    "and metrics",
    "bad_owner": "'{value}' is not a valid owner (it becomes the alert routing label); use "
    "lower-case letters, digits, _ and -, e.g. web-platform",
    "source": "source must be events (the default: computed from journey events) or topic "
    "(read from the KPI topic)",
    "topic_only": "{key} is not used with source: topic; remove it",
    "runbook": "runbook_url must be a link starting with https://",
    "events": "event must be an event name or a list of names, e.g. [Order Completed, Order "
    'Refunded], or "*" (quoted) for any event',
    "star": '"*" already matches every event; list it alone',
    "scalar": "use one text, number or true/false here, not {value}",
    "kinds": "a measure needs exactly one kind ({kinds}); found {value}, "
    "e.g. {{rate: properties.success}}",
    "option": "{key} only applies to {value} measures; remove it",
    "count": "write count: true, or simply measure: count",
    "numerator": "numerator must name the event(s) counted on top, e.g. Order Completed "
    "(event is the denominator)",
    "threshold": "threshold must be the lowest satisfied rating, a number such as 4",
    "q": "q must be between 0 and 1 exclusive, e.g. 0.95 ({value}){hint}",
    "segments": "segment_by must be a list of paths or {{label, path, cap}} mappings, "
    "e.g. [context.channel, context.region]",
    "seg_path": "path is required, e.g. {{label: region, path: context.region}}",
    "twice": "label '{value}' is used twice in segment_by; rename one with "
    "{{label: ..., path: ...}}",
    "label": "{value!r} is not a valid Prometheus label; use letters, digits and _, not "
    "starting with a digit or __, e.g. {{label: region, path: context.region}}",
    "reserved": "label '{value}' is reserved (cpi-monitor sets it itself); choose another, "
    "e.g. {{label: {value}_segment, path: {path}}}",
    "bounds": "a target needs exactly one of min or max, e.g. {{min: 0.95}} (alert when below) "
    "or {{max: 800}} (alert when above)",
    "bound_type": "{key} must be a number, not {value}",
    "range": "a {kind} lies between {low:g} and {high:g}, so {key}: {value} can never be met "
    "or never be missed{hint}",
    "links": "links must be a list (links: [] for none); remove the key to link every CPI to "
    "every KPI",
    "end_missing": "{key} is required: the name of a {role}",
    "end_kind": "'{value}' is a {kind}, not a {role}; links go from a CPI (cpi:) to a KPI (kpi:)",
    "end_unknown": "no {role} is named '{value}'; {hint}",
    "min_windows": "min_windows ({value}) is more than {most} x history ({limit} windows): the "
    "link could only be confirmed after {value} windows in a row; lower it (the default is "
    "{default} x history) or raise history",
    "linked_twice": "{value} is linked twice; remove one",
    "whole": "{key} must be a whole number >= {low} ({kind}), got {value!r}",
    "detector": "detector must be adwin (the default), page_hinkley, or none (baseline band "
    "only), got {value!r}",
    "other_option": "{key} is an option of {value}, not of this detector; set detector: "
    "{value}, or remove {key}",
    "no_options": "detector: none takes no detector_options; remove them, or choose adwin "
    "or page_hinkley",
    "detector_option": "{key} must be {rule} ({meaning}), got {value!r}",
    "alpha": "baseline_alpha must be a number above 0 and at most 1 (the weight of the newest "
    "window: 0.1 remembers roughly the last 20 windows), got {value!r}",
    "band_k": "band_k must be a number above 0 (the band's half-width in standard deviations, "
    "e.g. 3), got {value!r}",
    "better": "better must be higher or lower (which way the indicator is good), got {value!r}",
    "better_target": "better: {value} contradicts the target ({bound} means {implied} is "
    "better); remove better, the target already says which way is good",
    "better_default": "better depends on each indicator, so it cannot be a default; set it on "
    "the indicators that have no target",
    "severity": "severity must be page, ticket or info, got {value!r}",
}

#: Each detector option: (rule for the message, what it means, the check).
_OPTION_RULES: dict[tuple[str, str], tuple[str, str, Any]] = {
    ("adwin", "delta"): (
        "a number between 0 and 1 exclusive",
        "confidence: smaller means fewer false alarms and later detections, e.g. 0.002",
        lambda v: 0 < v < 1,
    ),
    ("page_hinkley", "delta"): (
        "a number >= 0",
        "the change ignored, in standard deviations, e.g. 0.5",
        lambda v: v >= 0,
    ),
    ("page_hinkley", "threshold"): (
        "a number above 0",
        "evidence needed to flag a change, in standard deviations, e.g. 20",
        lambda v: v > 0,
    ),
    ("page_hinkley", "alpha"): (
        "a number above 0 and at most 1",
        "forgetting factor, e.g. 0.9999",
        lambda v: 0 < v <= 1,
    ),
}
_WHOLE_OPTION = ("a whole number >= 1", "counted in windows", lambda v: v >= 1)


class DurationError(CpimonError, ValueError):
    """A duration such as ``window`` is not a number of seconds or ``<n>ms|s|m|h|d``."""


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``"500ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` or a plain number.

    >>> parse_duration("500ms"), parse_duration("1.5m"), parse_duration(90)
    (0.5, 90.0, 90.0)
    """
    # bool is an int subclass: `window: yes` must not silently mean one second.
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise DurationError(f"{text!r} is not a duration; write e.g. 500ms, 30s, 5m, 2h, 1d")
    if isinstance(text, str):
        if text.strip().startswith("-"):
            raise DurationError(f"{text!r} is negative; a duration must be 0 or more, e.g. 10s")
        match = _DURATION.fullmatch(text)
        if match is None:
            raise DurationError(
                f"{text!r} is not a duration; write a number followed by ms, s, m, h or d "
                "(e.g. 500ms, 30s, 5m, 2h, 1d), or a plain number of seconds"
            )
        # Decimal keeps "1.1m" at exactly 66 s instead of 66.00000000000001.
        return float(Decimal(match[1]) * _UNITS[match[2]])
    if not math.isfinite(text) or text < 0:
        raise DurationError(f"{text!r} is not a duration; it must be a finite number >= 0")
    return float(text)


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate the catalog file at ``path``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        message = "no such file; check the path, or copy catalog.example.yaml and adapt it"
        raise CatalogError(source, [("file", message)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        message = f"cannot read it ({exc}); pass a readable UTF-8 YAML file"
        raise CatalogError(source, [("file", message)]) from None
    return parse_catalog(text, source)


def parse_catalog(text: str, source: str = "<string>") -> Catalog:
    """Validate the YAML catalog ``text``; ``source`` names it in error messages."""
    data, lines, duplicates = _load_yaml(text, source)
    reader = _Reader(lines)
    for keys in duplicates:
        reader.report(keys, "this key appears twice and YAML keeps only the last; remove one")
    catalog = reader.read(data, source)
    if reader.problems or catalog is None:
        raise CatalogError(source, reader.located_problems())
    return catalog


def _load_yaml(text: str, source: str) -> tuple[Any, dict[Keys, int], list[Keys]]:
    """The document, the line of every key and item, and the keys given twice."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Keys, int] = {}
        duplicates: list[Keys] = []
        # Lines are recorded before construction, which rewrites merge keys (<<) in place.
        if node is not None:
            _record_lines(node, (), lines, duplicates, set())
        data = loader.construct_document(node) if node is not None else None
        return data, lines, duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        what = ": ".join(part for part in (exc.context, exc.problem) if part)
        message = (
            f"invalid YAML ({what}); check indentation and colons there, and quote values "
            'that start with * & { [ or contain ": " (e.g. event: "*")'
        )
        raise CatalogError(source, [(where, message)]) from None
    except yaml.YAMLError as exc:
        raise CatalogError(source, [("document", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()


def _record_lines(
    node: yaml.Node, keys: Keys, lines: dict[Keys, int], duplicates: list[Keys], seen: set[int]
) -> None:
    # Aliases can make the node graph cyclic or exponential: visit each node once.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = (*keys, key_node.value)
                if child in lines:
                    duplicates.append(child)
                lines[child] = key_node.start_mark.line + 1
                _record_lines(value_node, child, lines, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*keys, index)] = item.start_mark.line + 1
            _record_lines(item, (*keys, index), lines, duplicates, seen)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    kinds = {bool: "true/false", dict: "a mapping", list: "a list", str: "text"}
    return kinds.get(type(value), "a number" if _is_number(value) else type(value).__name__)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _unknown_key(key: Any, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    if close:
        return f"unknown key '{key}'; did you mean '{close[0]}'?"
    return f"unknown key '{key}'; allowed keys here: {', '.join(allowed)}"


def _path_problem(path: Any) -> str | None:
    """Why ``path`` cannot address a field of a journey event, or None if it can."""
    if not isinstance(path, str):
        return f"a path must be text such as properties.amount, not {_describe(path)}"
    parts = path.split(".")
    if not all(parts):
        return f"'{path}' has an empty segment; write dotted paths like properties.amount"
    if parts[0] in _PATH_ROOTS:
        if len(parts) > 1:
            return None
        return f"'{path}' is the whole {path} object; name a field in it, e.g. {path}.amount"
    if len(parts) == 1 and path in _TOP_FIELDS:
        return None
    close = difflib.get_close_matches(parts[0], _PATH_ROOTS + _TOP_FIELDS, n=1)
    guess = ".".join([close[0], *parts[1:]]) if close and len(parts) > 1 else f"properties.{path}"
    return (
        f"'{path}' is not an event path; start it with properties., context. or traits. "
        f"or use a top-level field ({', '.join(_TOP_FIELDS)}); did you mean {guess}?"
    )


def _event_names(raw: Any) -> tuple[str, ...] | None:
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names:
        return None
    if not all(isinstance(name, str) and name.strip() for name in names):
        return None
    return tuple(dict.fromkeys(names))


def _segment_label(path: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", path.rsplit(".", 1)[-1].lower())


def _window_problem(seconds: float) -> str | None:
    millis = round(seconds * 1000)
    if millis <= 0:
        return "a window must be at least 1ms, e.g. 1m"
    if abs(millis - seconds * 1000) > 1e-6 or _DAY_MS % millis:
        return (
            "it does not divide one day evenly: windows align to the epoch (00:00 UTC), "
            "so use a divisor of 24h such as 1s, 5s, 10s, 15s, 30s, 1m, 5m, 15m or 1h"
        )
    return None


class _Reader:
    """Turns the loaded YAML into spec objects, collecting every problem on the way.

    Readers always return a usable value (a fallback after a problem) so that
    one mistake never hides the next one.
    """

    def __init__(self, lines: dict[Keys, int]) -> None:
        self.lines = lines
        self.problems: list[tuple[Keys, str]] = []
        self.names: dict[Keys, str] = {}  # (section, index) -> indicator name, for locations
        self.claimed: dict[str, Keys] = {}
        self.default_window, self.lateness, self.segment_cap = 60.0, 10.0, 50
        # Alerting fields from defaults.alerting, already checked, as Alerting's keywords.
        self.alerting_defaults: dict[str, Any] = {}

    def report(self, keys: Keys, message: str) -> None:
        self.problems.append((keys, message))

    def say(self, keys: Keys, code: str, **fields: Any) -> None:
        self.report(keys, _SAY[code].format(**fields))

    def located_problems(self) -> list[tuple[str, str]]:
        """Problems in document order, each with its rendered location."""
        ordered = sorted(self.problems, key=lambda problem: self.line_of(problem[0]) or 0)
        return [(self.locate(keys), message) for keys, message in ordered]

    def line_of(self, keys: Keys) -> int | None:
        # A missing key has no line of its own: use the nearest enclosing one.
        known = (self.lines[keys[:n]] for n in range(len(keys), 0, -1) if keys[:n] in self.lines)
        return next(known, None)

    def locate(self, keys: Keys) -> str:
        text = ""
        for depth, key in enumerate(keys):
            if isinstance(key, int):
                text += f"[{self.names.get(keys[: depth + 1], key)}]"
            else:
                text += f".{key}" if text else key
        line = self.line_of(keys)
        text = text or "catalog"
        return f"{text} (line {line})" if line else text

    def mapping(self, value: Any, keys: Keys, expected: str) -> dict[Any, Any]:
        if isinstance(value, dict):
            return value
        self.report(keys, f"expected {expected}, got {_describe(value)}")
        return {}

    def check_keys(
        self, given: Mapping[Any, Any], keys: Keys, allowed: Iterable[str], special: bool = False
    ) -> None:
        allowed = tuple(allowed)
        for key in given:
            if key not in allowed:
                misplaced = _MISPLACED.get(key) if special else None
                self.report((*keys, str(key)), misplaced or _unknown_key(key, allowed))

    def text(self, given: Mapping[Any, Any], key: str, keys: Keys, required: bool = True) -> str:
        value = given.get(key)
        hint = _HINTS.get(key, "some text")
        if value is None and required:
            self.report((*keys, key), f"{key} is required: add {hint}")
        elif value is not None and (not isinstance(value, str) or not value.strip()):
            self.report((*keys, key), f"{key} must be non-empty text ({hint})")
        return value if isinstance(value, str) else ""

    def duration(self, given: Mapping[Any, Any], key: str, keys: Keys, fallback: float) -> float:
        if key not in given:
            return fallback
        try:
            return parse_duration(given[key])
        except DurationError as exc:
            self.report((*keys, key), f"{key}: {exc}")
            return fallback

    def read_window(self, given: Mapping[Any, Any], keys: Keys, fallback: float) -> float:
        seconds = self.duration(given, "window", keys, fallback)
        problem = _window_problem(seconds) if "window" in given else None
        if problem:
            self.report((*keys, "window"), f"window {given['window']!r}: {problem}")
            return fallback
        return seconds

    def whole(self, given: Mapping[Any, Any], key: str, keys: Keys, default: int) -> int:
        value, (low, meaning) = given.get(key, default), _WHOLE[key]
        if isinstance(value, int) and not isinstance(value, bool) and value >= low:
            return value
        self.say((*keys, key), "whole", key=key, low=low, kind=meaning, value=value)
        return default

    def read(self, data: Any, source: str) -> Catalog | None:
        if data is None:
            self.say((), "empty")
            return None
        root = self.mapping(data, (), "a mapping with version, cpis, kpis, ... at the top")
        self.check_keys(root, (), _TOP_KEYS)
        if root.get("version", 1) != 1 or isinstance(root.get("version"), bool):
            self.say(("version",), "version")
        self.read_defaults(root)
        cpis, kpis, metrics = (self.read_section(root, section) for section in _SECTIONS)
        if not cpis and isinstance(data, dict):
            self.say(("cpis",), "no_cpi")
        links = self.read_links(root, cpis, kpis, metrics)
        settings = self.read_settings(root)
        return Catalog(source, cpis, kpis, metrics, links, settings)

    def read_defaults(self, root: Mapping[Any, Any]) -> None:
        if "defaults" not in root:
            return
        at: Keys = ("defaults",)
        defaults = self.mapping(root["defaults"], at, "a mapping, e.g. {window: 1m}")
        self.check_keys(defaults, at, _DEFAULT_KEYS)
        self.default_window = self.read_window(defaults, at, self.default_window)
        self.lateness = self.duration(defaults, "allowed_lateness", at, self.lateness)
        self.segment_cap = self.whole(defaults, "segment_cap", at, self.segment_cap)
        if "alerting" in defaults:
            self.alerting_defaults = self.read_alerting_fields(defaults["alerting"], at, {})

    def read_section(self, root: Mapping[Any, Any], section: str) -> tuple[Indicator, ...]:
        raw = root.get(section)
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.say((section,), "not_list", key=section)
            return ()
        kind = _SECTIONS[section]
        return tuple(self.read_indicator(item, (section, i), kind) for i, item in enumerate(raw))

    def read_indicator(self, raw: Any, keys: Keys, kind: IndicatorKind) -> Indicator:
        item = self.mapping(raw, keys, "an indicator mapping starting with name:")
        name = self.read_name(item, keys)
        allowed = [key for key in _COMMON_KEYS if kind != "metric" or key != "target"]
        self.check_keys(item, keys, [*allowed, *_EXTRA_KEYS[kind]], special=True)
        source = item.get("source", "events") if kind == "kpi" else "events"
        if source not in ("events", "topic"):
            self.say((*keys, "source"), "source")
        from_topic = source == "topic"
        for key in ("event", "where"):
            if from_topic and key in item:
                self.say((*keys, key), "topic_only", key=key)
        measure = self.read_measure(item, keys, required=not from_topic)
        target = self.read_target(item, keys, measure) if kind != "metric" else None
        return Indicator(
            name=name,
            kind=kind,
            description=self.text(item, "description", keys),
            owner=self.read_owner(item, keys),
            measure=measure,
            events=() if from_topic else self.read_events(item, keys),
            where=() if from_topic else self.read_where(item, keys),
            journey_step=self.text(item, "journey_step", keys, required=kind == "cpi"),
            segment_by=self.read_segments(item, keys),
            window=self.read_window(item, keys, self.default_window),
            allowed_lateness=self.duration(item, "allowed_lateness", keys, self.lateness),
            target=target,
            unit=self.text(item, "unit", keys, required=False),
            runbook_url=self.read_runbook(item, keys),
            source="topic" if from_topic else "events",
            alerting=self.read_alerting(item, keys, target),
        )

    def read_name(self, item: Mapping[Any, Any], keys: Keys) -> str:
        name = self.text(item, "name", keys)
        if name and not _NAME.fullmatch(name):
            self.say((*keys, "name"), "bad_name", value=name)
        elif name in self.claimed:
            self.say((*keys, "name"), "taken", value=name, other=self.locate(self.claimed[name]))
        elif name:
            self.names[keys], self.claimed[name] = name, keys
        return name

    def read_owner(self, item: Mapping[Any, Any], keys: Keys) -> str:
        owner = self.text(item, "owner", keys)
        if owner and not _OWNER.fullmatch(owner):
            self.say((*keys, "owner"), "bad_owner", value=owner)
        return owner

    def read_runbook(self, item: Mapping[Any, Any], keys: Keys) -> str:
        url = self.text(item, "runbook_url", keys, required=False)
        if url and not url.startswith(("https://", "http://")):
            self.say((*keys, "runbook_url"), "runbook")
        return url

    def read_events(self, item: Mapping[Any, Any], keys: Keys) -> tuple[str, ...]:
        if item.get("event") is None:
            self.text(item, "event", keys)  # reports the missing key
            return ()
        names = _event_names(item["event"])
        if names is None:
            self.say((*keys, "event"), "events")
        elif "*" in names and len(names) > 1:
            self.say((*keys, "event"), "star")
        return names or ()

    def read_where(self, item: Mapping[Any, Any], keys: Keys) -> tuple[tuple[str, Scalar], ...]:
        if "where" not in item:
            return ()
        where = self.mapping(item["where"], (*keys, "where"), "a mapping like {type: page}")
        filters: list[tuple[str, Scalar]] = []
        for path, value in where.items():
            problem = _path_problem(path)
            if problem is None and not _is_scalar(value):
                problem = _SAY["scalar"].format(value=_describe(value))
            if problem:
                self.report((*keys, "where", str(path)), problem)
            else:
                filters.append((path, value))
        return tuple(filters)

    def read_measure(self, item: Mapping[Any, Any], keys: Keys, required: bool) -> Measure:
        raw, here = item.get("measure"), (*keys, "measure")
        if raw is None:
            if required:
                self.text(item, "measure", keys)  # reports the missing key
            return Measure(kind="mean")  # topic KPIs: the mean of the samples in a window
        if raw == "count":
            return Measure(kind="count")
        measure = self.mapping(raw, here, "a measure such as {rate: properties.success} or count")
        self.check_keys(measure, here, (*_MEASURE_KINDS, *_MEASURE_OPTIONS))
        kinds = [key for key in measure if key in _MEASURE_KINDS]
        if len(kinds) != 1:
            if isinstance(raw, dict):
                found = ", ".join(kinds) or "none"
                self.say(here, "kinds", kinds=", ".join(_MEASURE_KINDS), value=found)
            return Measure(kind="count")
        kind = cast(MeasureKind, kinds[0])
        for option, owner in _MEASURE_OPTIONS.items():
            if option in measure and owner != kind:
                self.say((*here, option), "option", key=option, value=owner)
        return self.measure_of(kind, measure, here)

    def measure_of(self, kind: MeasureKind, measure: Mapping[Any, Any], here: Keys) -> Measure:
        value = measure[kind]
        if kind == "count":
            if value is not True:
                self.say((*here, "count"), "count")
            return Measure(kind="count")
        if kind == "ratio":
            ratio = self.mapping(value, (*here, "ratio"), "{numerator: EVENT_OR_LIST}")
            self.check_keys(ratio, (*here, "ratio"), ("numerator",))
            numerator = _event_names(ratio.get("numerator"))
            if isinstance(value, dict) and numerator is None:
                self.say((*here, "ratio", "numerator"), "numerator")
            return Measure(kind="ratio", numerator_events=numerator or ())
        problem = _path_problem(value)
        if problem:
            self.report((*here, kind), problem)
        path = value if isinstance(value, str) else None
        if kind == "quantile":
            return Measure(kind=kind, path=path, q=self.read_q(measure, here))
        if kind == "csat":
            threshold = measure.get("threshold", 4)
            if not _is_number(threshold):
                self.say((*here, "threshold"), "threshold")
                threshold = 4
            return Measure(kind=kind, path=path, threshold=float(threshold))
        equals = measure.get("equals")
        if "equals" in measure and not _is_scalar(equals):
            self.say((*here, "equals"), "scalar", value=_describe(equals))
        return Measure(kind=kind, path=path, equals=equals if _is_scalar(equals) else None)

    def read_q(self, measure: Mapping[Any, Any], here: Keys) -> float:
        q = measure.get("q")
        if _is_number(q) and 0 < q < 1:
            return float(q)
        hint = f"; did you mean {q / 100:g}?" if _is_number(q) and 1 < q < 100 else ""
        got = "it is missing" if q is None else f"got {q!r}"
        self.say((*here, "q"), "q", value=got, hint=hint)
        return 0.5

    def read_alerting(self, item: Mapping[Any, Any], keys: Keys, target: Target | None) -> Alerting:
        fields = dict(self.alerting_defaults)
        if "alerting" in item:
            fields = self.read_alerting_fields(item["alerting"], keys, fields)
        better = fields.get("better")
        if target is not None and better is not None:
            implied = "higher" if target.bound == "min" else "lower"
            if better != implied:
                at = (*keys, "alerting", "better")
                self.say(at, "better_target", value=better, bound=target.bound, implied=implied)
        return Alerting(**fields)

    def read_alerting_fields(
        self, raw: Any, keys: Keys, inherited: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The fields of the ``alerting`` mapping under ``keys``, over ``inherited`` ones."""
        here = (*keys, "alerting")
        given = self.mapping(raw, here, "a mapping such as {min_events: 50, severity: ticket}")
        self.check_keys(given, here, _ALERTING_KEYS)
        if keys == ("defaults",) and "better" in given:
            self.say((*here, "better"), "better_default")
            given = {key: value for key, value in given.items() if key != "better"}
        fields = dict(inherited)
        for key in _ALERTING_WHOLE:
            if key in given:
                fields[key] = self.whole(given, key, here, getattr(_DEFAULT_ALERTING, key))
        detector = given.get("detector", fields.get("detector", _DEFAULT_ALERTING.detector))
        if detector not in DETECTOR_DEFAULTS:
            self.say((*here, "detector"), "detector", value=detector)
        elif "detector" in given:
            # Options of the inherited detector mean nothing to another one.
            if detector != fields.get("detector", _DEFAULT_ALERTING.detector):
                fields.pop("detector_options", None)
            fields["detector"] = detector
        # Options cannot be checked against an unknown detector: its error comes first.
        if "detector_options" in given and detector in DETECTOR_DEFAULTS:
            # Per option, as every other field: the defaults' options of the same detector stay.
            options = dict(fields.get("detector_options", ()))
            options.update(self.read_detector_options(given["detector_options"], here, detector))
            fields["detector_options"] = tuple(sorted(options.items()))
        for key, code, low, high in (
            ("baseline_alpha", "alpha", 0, 1),
            ("band_k", "band_k", 0, None),
        ):
            if key in given:
                value = given[key]
                if _is_number(value) and low < value and (high is None or value <= high):
                    fields[key] = float(value)
                else:
                    self.say((*here, key), code, value=value)
        for key, code, choices in (
            ("better", "better", ("higher", "lower")),
            ("severity", "severity", _SEVERITIES),
        ):
            if key in given:
                if given[key] in choices:
                    fields[key] = given[key]
                else:
                    self.say((*here, key), code, value=given[key])
        return fields

    def read_detector_options(
        self, raw: Any, here: Keys, detector: DetectorKind
    ) -> tuple[tuple[str, float], ...]:
        at = (*here, "detector_options")
        defaults = DETECTOR_DEFAULTS[detector]
        example = ", ".join(f"{name}: {value}" for name, value in defaults.items())
        options = self.mapping(raw, at, f"a mapping of {detector} options, e.g. {{{example}}}")
        if detector == "none" and options:
            self.say(at, "no_options")
            return ()
        checked: dict[str, float] = {}
        for name, value in options.items():
            if name not in defaults:
                owners = [kind for kind, known in DETECTOR_DEFAULTS.items() if name in known]
                if owners:
                    self.say((*at, str(name)), "other_option", key=name, value=owners[0])
                else:
                    self.report((*at, str(name)), _unknown_key(name, tuple(defaults)))
                continue
            whole = isinstance(defaults[name], int)
            rule, meaning, check = _WHOLE_OPTION if whole else _OPTION_RULES[(detector, name)]
            fits = isinstance(value, int) if whole else _is_number(value)
            if fits and not isinstance(value, bool) and check(value):
                checked[name] = value
            else:
                self.say(
                    (*at, name),
                    "detector_option",
                    key=name,
                    rule=rule,
                    meaning=meaning,
                    value=value,
                )
        return tuple(checked.items())

    def read_segments(self, item: Mapping[Any, Any], keys: Keys) -> tuple[Segment, ...]:
        raw, here = item.get("segment_by"), (*keys, "segment_by")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.say(here, "segments")
            return ()
        segments: dict[str, Segment] = {}
        for index, entry in enumerate(raw):
            segment = self.read_segment(entry, (*here, index))
            if segment and segment.label in segments:
                self.say((*here, index), "twice", value=segment.label)
            elif segment:
                segments[segment.label] = segment
        return tuple(segments.values())

    def read_segment(self, entry: Any, keys: Keys) -> Segment | None:
        written_as_path = isinstance(entry, str)
        given = self.mapping({"path": entry} if written_as_path else entry, keys, "a path")
        self.check_keys(given, keys, ("label", "path", "cap"))
        path = given.get("path")
        problem = _SAY["seg_path"] if path is None else _path_problem(path)
        if problem or not isinstance(path, str):
            self.report(keys if written_as_path else (*keys, "path"), problem or "")
            return None
        label = given.get("label", _segment_label(path))
        at = (*keys, "label") if "label" in given else keys
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            self.say(at, "label", value=label)
            return None
        if label in RESERVED_LABELS:
            self.say(at, "reserved", value=label, path=path)
            return None
        return Segment(label, path, cap=self.whole(given, "cap", keys, self.segment_cap))

    def read_target(self, item: Mapping[Any, Any], keys: Keys, measure: Measure) -> Target | None:
        if item.get("target") is None:
            return None
        here = (*keys, "target")
        target = self.mapping(item["target"], here, "{min: NUMBER} or {max: NUMBER}")
        self.check_keys(target, here, ("min", "max", "for"))
        for_seconds = self.duration(target, "for", here, 0.0)
        bounds = [bound for bound in ("min", "max") if bound in target]
        if len(bounds) != 1:
            if isinstance(item["target"], dict):  # otherwise mapping() already said why
                self.say(here, "bounds")
            return None
        bound: Bound = "min" if bounds == ["min"] else "max"
        value = target[bound]
        if not _is_number(value):
            self.say((*here, bound), "bound_type", key=bound, value=_describe(value))
            return None
        low, high = _TARGET_RANGES.get(measure.kind, (-math.inf, math.inf))
        if not low <= value <= high:
            hint = f"; did you mean {value / 100:g}?" if high == 1 and 1 < value <= 100 else ""
            fields = {"kind": measure.kind, "low": low, "high": high, "hint": hint}
            self.say((*here, bound), "range", key=bound, value=value, **fields)
        return Target(bound, float(value), for_seconds)

    def read_links(
        self, root: Mapping[Any, Any], *sections: tuple[Indicator, ...]
    ) -> tuple[Link, ...]:
        cpis, kpis, _ = sections
        if "links" not in root:
            return tuple(Link(cpi=cpi.name, kpi=kpi.name) for cpi in cpis for kpi in kpis)
        if not isinstance(root["links"], list):
            self.say(("links",), "links")
            return ()
        known = {"cpi": [i.name for i in cpis], "kpi": [i.name for i in kpis]}
        kinds = {i.name: i.kind.upper() for section in sections for i in section}
        links: dict[tuple[str, str], Link] = {}
        for index, raw in enumerate(root["links"]):
            keys: Keys = ("links", index)
            entry = self.mapping(raw, keys, "a mapping like {cpi: ..., kpi: ...}")
            self.check_keys(entry, keys, _LINK_KEYS)
            for role in ("cpi", "kpi"):
                self.check_link_end(entry.get(role), role, known[role], kinds, (*keys, role))
            link = self.read_link(entry, keys)
            if (link.cpi, link.kpi) in links:
                self.say(keys, "linked_twice", value=f"{link.cpi} -> {link.kpi}")
            links[(link.cpi, link.kpi)] = link
        return tuple(links.values())

    def read_link(self, entry: Mapping[Any, Any], keys: Keys) -> Link:
        history = self.whole(entry, "history", keys, _DEFAULT_LINK.history_windows)
        # Consecutive evaluations share all but one pair, so a chance correlation of two
        # unrelated series lasts about a history long: the default asks for three of them
        # in a row (models.correlation.LinkTracker), and follows the history it is given.
        default = LINK_MIN_WINDOWS_PER_HISTORY * history
        min_windows = self.whole(entry, "min_windows", keys, default)
        # Ten histories (300 one-minute windows, 5 hours, at history 30) delay every true
        # confirmation by hours: asking for more is more likely a slip than a choice.
        limit = LINK_MAX_WINDOWS_PER_HISTORY * history
        # An invalid history was already reported; comparing with its fallback would mislead.
        if min_windows > limit and entry.get("history", history) == history:
            most, least = LINK_MAX_WINDOWS_PER_HISTORY, LINK_MIN_WINDOWS_PER_HISTORY
            fields = {"value": min_windows, "most": most, "limit": limit, "default": least}
            self.say((*keys, "min_windows"), "min_windows", **fields)
        max_lag = self.whole(entry, "max_lag", keys, _DEFAULT_LINK.max_lag_windows)
        return Link(str(entry.get("cpi")), str(entry.get("kpi")), max_lag, history, min_windows)

    def check_link_end(
        self, name: Any, role: str, known: list[str], kinds: Mapping[str, str], keys: Keys
    ) -> None:
        if name in known:
            return
        if name is None:
            self.say(keys, "end_missing", key=role, role=role.upper())
        elif isinstance(name, str) and name in kinds:
            self.say(keys, "end_kind", value=name, kind=kinds[name], role=role.upper())
        else:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
            self.say(keys, "end_unknown", value=name, role=role.upper(), hint=hint)

    def read_settings(self, root: Mapping[Any, Any]) -> dict[str, Scalar]:
        if "settings" not in root:
            return {}
        settings = self.mapping(root["settings"], ("settings",), "a mapping of single values")
        for key, value in settings.items():
            if not isinstance(key, str) or not _is_scalar(value):
                self.say(("settings", str(key)), "scalar", value=_describe(value))
        return dict(settings)
