"""``cpimon tail``: print a topic's events as they arrive, decoded as the worker decodes them.

Every message goes through :func:`streams.codec.decode_event` with the
worker's limits (``CPIMON_MAX_EVENT_BYTES``, ``CPIMON_MAX_FUTURE_SECONDS``),
so a message the worker would dead-letter is shown with the same reason.
With ``--show-cpis`` each event also lists the series it feeds, from the
catalog's compiled routes (:class:`models.routing.Router`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from rich.text import Text

from agents.ops import OpsError
from agents.ops.common import bytes_field, format_time, settings_from
from agents.ops.common import console as make_console
from agents.ops.kafka import partition_ends, require_topic, start_consumer
from models.errors import EventRejected
from models.routing import Router, split_series_key
from models.spec import Catalog
from streams.codec import decode_event
from streams.settings import Settings

__all__ = ["Filter", "Inspector", "Tailed", "main", "parse_where"]

#: Characters of a rejected message's raw bytes shown in the terminal.
RAW_PREVIEW = 160


@dataclass(frozen=True)
class Where:
    """One ``--where PATH=VALUE`` condition."""

    path: str
    text: str
    value: Any

    def holds(self, event: dict[str, Any]) -> bool:
        actual: Any = event
        for part in self.path.split("."):
            if not isinstance(actual, dict) or part not in actual:
                return False
            actual = actual[part]
        # bool is an int: `true` must not match 1, nor `1` match true.
        if type(actual) is bool or type(self.value) is bool:
            return actual is self.value
        return bool(actual == self.value) or (isinstance(actual, str) and actual == self.text)


def parse_where(text: str) -> Where:
    """``PATH=VALUE``; VALUE is JSON when it parses (``true``, ``42``, ``"x"``), else text.

    >>> parse_where("context.channel=web")
    Where(path='context.channel', text='web', value='web')
    >>> parse_where("properties.success=true").value, parse_where("properties.n=3").value
    (True, 3)
    >>> parse_where("properties.order_id=007").holds({"properties": {"order_id": "007"}})
    True
    """
    path, sep, raw = text.partition("=")
    if not sep or not path.strip():
        raise OpsError(f"--where {text!r} is not PATH=VALUE, e.g. --where context.channel=web")
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    return Where(path.strip(), raw, value)


@dataclass(frozen=True)
class Filter:
    """Which messages to show: event names and ``--where`` conditions, all of which must hold."""

    events: frozenset[str] = frozenset()
    where: tuple[Where, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.events or self.where)

    def matches(self, name: str | None, event: dict[str, Any] | None) -> bool:
        if not self.active:
            return True
        if event is None:
            return False  # nothing to test the conditions on
        if self.events and name not in self.events:
            return False
        return all(condition.holds(event) for condition in self.where)


@dataclass
class Tailed:
    """One message as tail shows it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    record_time: float | None
    name: str | None = None
    event_time: float | None = None
    event: dict[str, Any] | None = None
    reason: str | None = None
    detail: str | None = None
    #: (indicator, segment labels, value) for every series the event feeds.
    feeds: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict[str, Any]:
        key, key_b64 = bytes_field(self.key)
        document: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": key,
            "key_base64": key_b64,
            "record_time": self.record_time,
            "valid": self.valid,
            "event": self.name,
            "event_time": self.event_time,
            "reason": self.reason,
            "detail": self.detail,
        }
        if self.event is not None:
            document["value"] = self.event
            document["value_base64"] = False
        else:
            document["value"], document["value_base64"] = bytes_field(self.value)
        document["feeds"] = [
            {"indicator": name, "segment": segment, "value": value}
            for name, segment, value in self.feeds
        ]
        return document


class Inspector:
    """Decodes records like the worker does and, given a catalog, routes them."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.max_bytes = settings.max_event_bytes
        self.max_future_seconds = settings.max_future_seconds
        self.catalog = catalog
        self.router = Router.compile(catalog) if catalog is not None else None
        self._labels = (
            {i.name: tuple(s.label for s in i.segment_by) for i in catalog.indicators}
            if catalog is not None
            else {}
        )

    def inspect(self, record: Any, now: float | None = None) -> Tailed:
        timestamp = getattr(record, "timestamp", None)
        tailed = Tailed(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            record_time=timestamp / 1000 if isinstance(timestamp, int) and timestamp >= 0 else None,
        )
        try:
            name, event_time, event = decode_event(
                record.value,
                now=time.time() if now is None else now,
                max_bytes=self.max_bytes,
                max_future_seconds=self.max_future_seconds,
            )
        except EventRejected as rejection:
            tailed.reason, tailed.detail = rejection.reason, rejection.detail
            tailed.event, tailed.name = _best_effort(record.value, self.max_bytes)
            return tailed
        tailed.name, tailed.event_time, tailed.event = name, event_time, event
        if self.router is not None:
            for key, value in self.router.observe(name, event):
                indicator, segment = split_series_key(key)
                labels = dict(zip(self._labels.get(indicator, ()), segment, strict=False))
                tailed.feeds.append((indicator, labels, value))
        return tailed


def _best_effort(raw: bytes | None, max_bytes: int) -> tuple[dict[str, Any] | None, str | None]:
    # A rejected message may still be an object whose name and fields filters can use.
    if not raw or len(raw) > max_bytes:
        return None, None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    name = obj.get("event") if obj.get("type", "track") == "track" else obj.get("name")
    return obj, name if isinstance(name, str) else None


# --- rendering ---------------------------------------------------------------------------


def render(tailed: Tailed) -> Text:
    """A message as a few terminal lines: where and what, then its fields or why it is rejected."""
    text = Text()
    when = tailed.event_time if tailed.event_time is not None else tailed.record_time
    text.append(format_time(when), style="dim")
    text.append(f"  {tailed.partition}:{tailed.offset}  ", style="dim")
    if tailed.valid:
        text.append("✓ ", style="green")
        text.append(tailed.name or "?", style="bold")
        event = tailed.event or {}
        user = event.get("userId") or event.get("anonymousId")
        if user:
            text.append(f"  user={user}", style="dim")
        for part in ("properties", "context"):
            if event.get(part):
                text.append(f"\n    {part} ", style="dim")
                text.append(_compact(event[part]))
        for indicator, segment, value in tailed.feeds:
            labels = ",".join(f"{k}={v}" for k, v in segment.items())
            text.append("\n    → ", style="cyan")
            text.append(indicator, style="cyan")
            if labels:
                text.append(f"{{{labels}}}", style="cyan")
            text.append(f" = {value:g}")
        return text
    text.append("✗ REJECTED ", style="bold red")
    text.append(tailed.reason or "?", style="red")
    if tailed.name:
        text.append(f"  ({tailed.name})", style="dim")
    text.append(f"\n    {tailed.detail}", style="red")
    raw = "(no value)" if tailed.value is None else repr(tailed.value)
    if len(raw) > RAW_PREVIEW:
        raw = raw[: RAW_PREVIEW - 1] + "…"
    text.append(f"\n    {raw}", style="dim")
    return text


def _compact(value: Any, limit: int = 200) -> str:
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- command -----------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.max is not None and args.max < 1:
        raise OpsError("--max must be at least 1")
    since = _since(args.since) if args.since else None
    catalog = None
    if args.show_cpis:
        from models.catalog import load_catalog

        catalog = load_catalog(args.catalog or settings.catalog)
    elif args.catalog:
        raise OpsError("--catalog is only used with --show-cpis; add --show-cpis")
    message_filter = Filter(frozenset(args.event or ()), tuple(parse_where(w) for w in args.where))
    inspector = Inspector(settings, catalog)
    out = make_console()

    def show(tailed: Tailed) -> None:
        if args.json:
            sys.stdout.write(orjson.dumps(tailed.to_json()).decode() + "\n")
            sys.stdout.flush()
        else:
            out.print(render(tailed), highlight=False, soft_wrap=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a tail normally ends
        asyncio.run(tail(settings, args.topic, inspector, message_filter, show, args, since))
    return 0


async def tail(
    settings: Settings,
    topic: str,
    inspector: Inspector,
    message_filter: Filter,
    show: Callable[[Tailed], None],
    args: argparse.Namespace,
    since: float | None,
) -> int:
    """Read ``topic`` and ``show`` every matching message; return how many were shown."""
    consumer = await start_consumer(settings)
    shown = 0
    try:
        partitions = await require_topic(consumer, topic, settings)
        # The end from fetch responses: both the live start and --no-follow need the real one.
        ends = await partition_ends(consumer, partitions)
        consumer.assign(partitions)
        if args.from_beginning or since is not None:
            await consumer.seek_to_beginning(*partitions)
        else:
            for tp in partitions:
                consumer.seek(tp, ends[tp].high_watermark)
        # Offsets for a time need ListOffsets by timestamp, which not every broker serves;
        # skipping older record timestamps works everywhere, at the price of a scan.
        cutoff = None if since is None else (time.time() - since) * 1000
        start = "beginning" if args.from_beginning else "end"
        if since is not None:
            start = f"last {args.since}"
        # On stderr, so that it never mixes with --json; it also tells a script (or a test)
        # that tail is in position and anything produced from now on will be shown.
        print(
            f"tailing {topic} ({len(partitions)} partitions) from the {start}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        stop = {tp: ends[tp].high_watermark for tp in partitions} if args.no_follow else None
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for tp in sorted(batch, key=lambda tp: tp.partition):
                for record in batch[tp]:
                    if stop is not None and record.offset >= stop[tp]:
                        continue
                    if cutoff is not None and record.timestamp < cutoff:
                        continue
                    tailed = inspector.inspect(record)
                    if not message_filter.matches(tailed.name, tailed.event):
                        continue
                    show(tailed)
                    shown += 1
                    if args.max is not None and shown >= args.max:
                        return shown
            if stop is not None and await _reached(consumer, stop):
                return shown
    finally:
        await consumer.stop()


def _since(text: str) -> float:
    from models.catalog import DurationError, parse_duration

    try:
        return parse_duration(text)
    except DurationError as error:
        raise OpsError(f"--since {error}") from None


async def _reached(consumer: Any, stop: dict[Any, int]) -> bool:
    for tp, offset in stop.items():
        if await consumer.position(tp) < offset:
            return False
    return True
