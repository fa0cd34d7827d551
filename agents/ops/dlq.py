"""``cpimon dlq``: list, export and re-submit dead-lettered messages.

Dead letters carry the original key and bytes and, in headers
(:mod:`streams.deadletter`), why and where they were rejected.  Listing reads
the dead-letter topic from its start to its high watermark.  Export writes
one JSON object per message (see :meth:`Letter.to_json`); keys, values and
header values that are not UTF-8 are written as base64 and flagged.
Re-submitting produces the original key and value to another topic, with a
``cpimon-resubmitted-from: TOPIC:PARTITION:OFFSET`` header for tracing.

A dead letter is named by its own position in the dead-letter topic,
``PARTITION:OFFSET``, as the listing shows it (not by its source offset).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from agents.ops import OpsError
from agents.ops.common import bytes_field, console, format_recent, settings_from
from agents.ops.kafka import read_range, require_topic, start_consumer, start_producer
from streams import deadletter
from streams.codec import REASONS
from streams.settings import Settings

__all__ = ["RESUBMITTED_FROM", "Letter", "main", "parse_offsets", "read_letters", "select"]

RESUBMITTED_FROM = "cpimon-resubmitted-from"
PREVIEW = 200


@dataclass(frozen=True)
class Letter:
    """One dead-letter record."""

    topic: str
    partition: int
    offset: int
    timestamp: float | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def text_headers(self) -> dict[str, str]:
        return dict(deadletter.read_headers(self.headers))

    @property
    def reason(self) -> str:
        return self.text_headers.get(deadletter.REASON, "?")

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    def source(self) -> dict[str, Any]:
        headers = self.text_headers
        return {
            "topic": headers.get(deadletter.SOURCE_TOPIC),
            "partition": _int(headers.get(deadletter.SOURCE_PARTITION)),
            "offset": _int(headers.get(deadletter.SOURCE_OFFSET)),
        }

    def rejected_at(self) -> float | None:
        try:
            return float(self.text_headers[deadletter.REJECTED_AT])
        except (KeyError, ValueError):
            return None

    def to_json(self) -> dict[str, Any]:
        """The export line: ``*_base64`` flags say which texts are base64 of raw bytes."""
        key, key_b64 = bytes_field(self.key)
        value, value_b64 = bytes_field(self.value)
        headers = []
        for name, raw in self.headers:
            text, is_b64 = bytes_field(raw)
            headers.append({"name": name, "value": text, "base64": is_b64})
        text_headers = self.text_headers
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": key,
            "key_base64": key_b64,
            "value": value,
            "value_base64": value_b64,
            "headers": headers,
            "reason": text_headers.get(deadletter.REASON),
            "detail": text_headers.get(deadletter.DETAIL),
            "source": self.source(),
            "rejected_at": self.rejected_at(),
        }


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def parse_offsets(text: str) -> list[tuple[int | None, int]]:
    """``--offsets``: ``P:O`` or ``O`` items, comma-separated; partition None when not given.

    >>> parse_offsets("0:12, 3:7,15")
    [(0, 12), (3, 7), (None, 15)]
    """
    chosen: list[tuple[int | None, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        partition, sep, offset = item.rpartition(":")
        try:
            chosen.append((int(partition) if sep else None, int(offset)))
        except ValueError:
            raise OpsError(
                f"--offsets item {item!r} is not OFFSET or PARTITION:OFFSET, e.g. 0:12,3:7"
            ) from None
    if not chosen:
        raise OpsError("--offsets is empty; list dead letters as PARTITION:OFFSET, e.g. 0:12")
    return chosen


def select(
    letters: Sequence[Letter],
    reasons: Iterable[str] | None = None,
    offsets: Sequence[tuple[int | None, int]] | None = None,
) -> list[Letter]:
    """The letters with one of ``reasons`` and at one of ``offsets`` (each when given).

    Every offset must name exactly one letter: a missing one, or a bare offset
    found in several partitions, is an error, so that nothing unintended is re-sent.
    """
    wanted = set(reasons or ())
    chosen = [letter for letter in letters if not wanted or letter.reason in wanted]
    if offsets is None:
        return chosen
    picked: dict[tuple[int, int], Letter] = {}
    for partition, offset in offsets:
        found = [
            letter
            for letter in chosen
            if letter.offset == offset and (partition is None or letter.partition == partition)
        ]
        label = f"{partition}:{offset}" if partition is not None else str(offset)
        if not found:
            raise OpsError(
                f"no dead letter at {label}"
                + (" with the given --reason" if wanted else "")
                + "; run `cpimon dlq` to see their PARTITION:OFFSET"
            )
        if len(found) > 1:
            where = ", ".join(letter.position for letter in found)
            raise OpsError(f"offset {offset} is in several partitions ({where}); write P:O")
        picked[(found[0].partition, found[0].offset)] = found[0]
    return [picked[key] for key in sorted(picked)]


async def read_letters(settings: Settings, topic: str) -> list[Letter]:
    """Every record of the dead-letter topic, up to its high watermark."""
    consumer = await start_consumer(settings, fetch_max_wait_ms=100)
    try:
        partitions = await require_topic(consumer, topic, settings)
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        letters = []
        async for record in read_range(consumer, starts):
            timestamp = record.timestamp
            letters.append(
                Letter(
                    record.topic,
                    record.partition,
                    record.offset,
                    timestamp / 1000 if isinstance(timestamp, int) and timestamp >= 0 else None,
                    record.key,
                    record.value,
                    tuple((name, value or b"") for name, value in record.headers or ()),
                )
            )
    finally:
        await consumer.stop()
    letters.sort(key=lambda letter: (letter.partition, letter.offset))
    return letters


async def resubmit(
    settings: Settings, letters: Sequence[Letter], topic: str
) -> tuple[int, list[str]]:
    """Produce each letter's original key and value to ``topic``: (sent, errors)."""
    consumer = await start_consumer(settings)
    try:
        await require_topic(consumer, topic, settings)
    finally:
        await consumer.stop()
    producer = await start_producer(settings, acks="all", request_timeout_ms=15_000)
    sent, errors = 0, []
    try:
        futures = []
        for letter in letters:
            origin = f"{letter.topic}:{letter.partition}:{letter.offset}".encode()
            try:
                future = await producer.send(
                    topic, letter.value, key=letter.key, headers=[(RESUBMITTED_FROM, origin)]
                )
            except Exception as exc:  # refused before sending, e.g. larger than the broker allows
                errors.append(f"{letter.position}: {type(exc).__name__}: {exc}")
                continue
            futures.append((letter, future))
        for letter, future in futures:
            try:
                await future
                sent += 1
            except Exception as exc:  # this record's delivery failed
                errors.append(f"{letter.position}: {type(exc).__name__}: {exc}")
    finally:
        await producer.stop()
    return sent, errors


def table(topic: str, letters: Sequence[Letter], total: int, now: float) -> Table:
    result = Table(
        title=f"{topic}: {len(letters)} of {total} dead letters",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # Position, time and reason are what an operator acts on: they are never cut.
    result.add_column("P:O", justify="right", no_wrap=True)
    result.add_column("rejected at", no_wrap=True)
    result.add_column("reason", style="red", no_wrap=True)
    result.add_column("source", overflow="fold", min_width=8)
    result.add_column("detail / value", min_width=16)
    for letter in letters:
        source = letter.source()
        value = "(no value)" if letter.value is None else repr(letter.value)[2:-1]
        result.add_row(
            letter.position,
            format_recent(letter.rejected_at(), now),
            letter.reason,
            f"{source['topic']}[{source['partition']}]@{source['offset']}",
            Group(
                Text(letter.text_headers.get(deadletter.DETAIL, "")),
                Text(value[:PREVIEW], style="dim", no_wrap=True, overflow="ellipsis"),
            ),
        )
    counts: dict[str, int] = {}
    for letter in letters:
        counts[letter.reason] = counts.get(letter.reason, 0) + 1
    result.caption = "  ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
    result.caption_justify = "left"
    return result


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    topic = args.topic or settings.dead_letter_topic
    for reason in args.reason or ():
        if reason not in REASONS:
            raise OpsError(f"--reason {reason!r} is not a reason; use one of {', '.join(REASONS)}")
    if args.resubmit and not args.to:
        raise OpsError("--resubmit needs --to TOPIC, the topic to produce the messages to")
    if args.to and not args.resubmit:
        raise OpsError("--to is the target of --resubmit; add --resubmit")
    offsets = parse_offsets(args.offsets) if args.offsets else None
    letters = asyncio.run(read_letters(settings, topic))
    chosen = select(letters, args.reason, offsets)
    out = console()
    if args.json:
        by_reason: dict[str, int] = {}
        for letter in chosen:
            by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
        document = {
            "topic": topic,
            "total": len(letters),
            "count": len(chosen),
            "by_reason": by_reason,
            "messages": [letter.to_json() for letter in chosen],
        }
        print(orjson.dumps(document).decode())
    else:
        out.print(table(topic, chosen, len(letters), time.time()))
    if args.export:
        path = Path(args.export)
        with open(path, "wb") as export:
            for letter in chosen:
                export.write(orjson.dumps(letter.to_json()) + b"\n")
        print(f"exported {len(chosen)} dead letters to {path}", file=sys.stderr)
    if args.resubmit:
        if not chosen:
            print("nothing to resubmit: no dead letter matches", file=sys.stderr)
            return 0
        sent, errors = asyncio.run(resubmit(settings, chosen, args.to))
        for error in errors:
            print(f"not resubmitted: {error}", file=sys.stderr)
        print(f"resubmitted {sent} of {len(chosen)} dead letters to {args.to}", file=sys.stderr)
        return 0 if not errors else 1
    return 0
