"""``cpimon replay``: produce recorded events from a JSON-lines file (optionally gzipped).

One JSON object per line.  A line that is not one is reported as
``FILE:LINE: problem`` on stderr and skipped; every other line is still sent.
Without ``--retime`` the line's bytes are sent unchanged.  With it, each
event's ``timestamp`` is shifted by the same amount so that the first event
happens now and the gaps between events stay as recorded (RFC 3339 strings
stay strings, epoch numbers stay numbers); only ``timestamp`` is changed.

Messages are keyed by ``userId`` (else ``anonymousId``) so that each user's
events stay in order in one partition, as the event contract asks.

Exit code: 0 every line sent; 1 some lines malformed or some sends failed;
2 nothing could be sent (missing file, unknown topic, unreachable broker).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from agents.ops import OpsError
from agents.ops.common import console, event_time, iso_time, settings_from
from agents.ops.kafka import require_topic, start_consumer, start_producer
from streams.settings import Settings

__all__ = ["BadLine", "Line", "Retimer", "Summary", "main", "parse_line", "replay"]

#: Sends awaited together; bounds memory on large files while keeping the producer busy.
IN_FLIGHT = 1000
#: Malformed lines printed on stderr; the rest are counted.
SHOWN_BAD_LINES = 20


@dataclass(frozen=True, slots=True)
class Line:
    """A line ready to send."""

    number: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that cannot be sent, and why."""

    number: int
    problem: str


class Retimer:
    """Shifts event timestamps so that the first event happens at ``now``.

    >>> retimer = Retimer(now=1795428000.0)
    >>> first = {"timestamp": "2026-01-01T00:00:00Z"}
    >>> later = {"timestamp": 1767225630.5}  # 30.5 s later, as epoch seconds
    >>> retimer.apply(first), retimer.apply(later)
    (None, None)
    >>> first["timestamp"], later["timestamp"]
    ('2026-11-23T10:00:00.000Z', 1795428030.5)
    >>> retimer.apply({"timestamp": "noon"})
    "timestamp 'noon' cannot be retimed: use RFC 3339 with an offset (…Z) or epoch seconds"
    """

    def __init__(self, now: float) -> None:
        self.now = now
        self.shift: float | None = None

    def apply(self, event: dict[str, Any]) -> str | None:
        """Shift ``event['timestamp']`` in place; the problem if it cannot be."""
        original = event.get("timestamp")
        when = event_time(original)
        if when is None:
            shown = repr(original) if len(repr(original)) <= 40 else repr(original)[:39] + "…"
            return (
                f"timestamp {shown} cannot be retimed: use RFC 3339 with an offset (…Z) "
                "or epoch seconds"
            )
        if self.shift is None:
            self.shift = self.now - when
        shifted = when + self.shift
        event["timestamp"] = iso_time(shifted) if isinstance(original, str) else round(shifted, 3)
        return None


def parse_line(number: int, raw: bytes, retimer: Retimer | None = None) -> Line | BadLine | None:
    """A file line as a message to send, a :class:`BadLine`, or None when blank.

    >>> parse_line(1, b'{"event":"A","userId":"u-1"}\\n')
    Line(number=1, key=b'u-1', value=b'{"event":"A","userId":"u-1"}')
    >>> parse_line(2, b'[1, 2]')
    BadLine(number=2, problem='a JSON array, not an event object')
    >>> parse_line(3, b'{"event": "A", ')
    BadLine(number=3, problem='not JSON: unexpected end of data: line 1 column 15 (char 14)')
    >>> parse_line(4, b'  \\n') is None
    True
    """
    value = raw.strip()
    if not value:
        return None
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return BadLine(number, f"not JSON: {exc}")
    if not isinstance(event, dict):
        kind = {list: "array", str: "string", bool: "boolean"}.get(type(event), "number")
        if event is None:
            kind = "null"
        return BadLine(number, f"a JSON {kind}, not an event object")
    if retimer is not None:
        problem = retimer.apply(event)
        if problem is not None:
            return BadLine(number, problem)
        try:
            value = orjson.dumps(event)
        except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes
            return BadLine(number, f"cannot be re-encoded after retiming: {exc}")
    return Line(number, _key(event), value)


def _key(event: dict[str, Any]) -> bytes | None:
    for name in ("userId", "anonymousId"):
        value = event.get(name)
        if isinstance(value, str) and value:
            return value.encode()
    return None


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) of a plain or gzipped file."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    # By content, not by name: a .jsonl that is really gzipped still replays.
    if gzipped:
        with gzip.open(path, "rb") as stream:
            yield from enumerate(stream, start=1)
    else:
        with open(path, "rb") as plain:
            yield from enumerate(plain, start=1)


@dataclass
class Summary:
    """What a replay did."""

    file: str
    topic: str
    lines: int = 0
    sent: int = 0
    failed: int = 0
    bad: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.bad and not self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "topic": self.topic,
            "lines": self.lines,
            "sent": self.sent,
            "failed": self.failed,
            "malformed": self.bad,
            "malformed_lines": [{"line": b.number, "problem": b.problem} for b in self.bad_lines],
            "failures": [{"line": n, "error": error} for n, error in self.failures],
            "seconds": round(self.seconds, 3),
        }

    def table(self) -> Table:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("lines", justify="right")
        table.add_column("sent", justify="right", style="green")
        table.add_column("failed", justify="right", style="red" if self.failed else "")
        table.add_column("malformed", justify="right", style="yellow" if self.bad else "")
        table.add_column("seconds", justify="right")
        table.add_column("events/s", justify="right")
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        table.add_row(
            f"{self.lines:,}",
            f"{self.sent:,}",
            f"{self.failed:,}",
            f"{self.bad:,}",
            f"{self.seconds:.1f}",
            f"{rate:,.0f}",
        )
        return table


async def replay(
    settings: Settings,
    path: Path,
    topic: str,
    *,
    rate: float | None,
    retime: bool,
    report_bad: Any = None,
    progress: Any = None,
) -> Summary:
    """Send every good line of ``path`` to ``topic``; ``rate`` events/s or None for no pacing."""
    summary = Summary(str(path), topic)
    consumer = await start_consumer(settings)
    try:
        await require_topic(consumer, topic, settings)
    finally:
        await consumer.stop()
    producer = await start_producer(settings, acks="all", linger_ms=5, request_timeout_ms=15_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    retimer = Retimer(time.time()) if retime else None
    pending: list[tuple[int, asyncio.Future[Any]]] = []
    try:
        for number, raw in read_lines(path):
            summary.lines = number
            if progress is not None:
                progress(number)
            line = parse_line(number, raw, retimer)
            if line is None:
                continue
            if isinstance(line, BadLine):
                summary.bad += 1
                if len(summary.bad_lines) < 1000:
                    summary.bad_lines.append(line)
                if report_bad is not None:
                    report_bad(line, summary.bad)
                continue
            if rate is not None:
                due = started + (summary.sent + summary.failed + len(pending)) / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            try:
                future = await producer.send(topic, line.value, key=line.key)
            except Exception as exc:  # refused before sending (too large, closed producer)
                _failed(summary, line.number, exc)
                continue
            pending.append((line.number, future))
            if len(pending) >= IN_FLIGHT:
                await _settle(summary, pending)
        await _settle(summary, pending)
    finally:
        await producer.stop()
    summary.seconds = loop.time() - started
    return summary


async def _settle(summary: Summary, pending: list[tuple[int, asyncio.Future[Any]]]) -> None:
    for number, future in pending:
        try:
            await future
        except Exception as exc:  # a delivery error of this record only
            _failed(summary, number, exc)
        else:
            summary.sent += 1
    pending.clear()


def _failed(summary: Summary, number: int, exc: BaseException) -> None:
    summary.failed += 1
    if len(summary.failures) < 100:
        summary.failures.append((number, f"{type(exc).__name__}: {exc}"))


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    path = Path(args.file)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise OpsError(f"{path} {what}; give a .jsonl or .jsonl.gz file of recorded events")
    rate = None if args.as_fast_as_possible else args.rate
    if rate is not None and not rate > 0:
        raise OpsError("--rate must be a positive number of events per second")
    total = sum(1 for _ in read_lines(path))  # also fails now, not midway, on a broken .gz
    err = console(stderr=True)

    def report_bad(line: BadLine, count: int) -> None:
        if count <= SHOWN_BAD_LINES:
            print(f"{path}:{line.number}: {line.problem}", file=sys.stderr)
        elif count == SHOWN_BAD_LINES + 1:
            print(f"{path}: more malformed lines, counted in the summary", file=sys.stderr)

    with Progress(
        TextColumn("[bold]replay[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=args.json or not err.is_terminal,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{path.name} → {args.topic}", total=total)
        summary = asyncio.run(
            replay(
                settings,
                path,
                args.topic,
                rate=rate,
                retime=args.retime,
                report_bad=report_bad,
                progress=lambda number: bar.update(task, completed=number),
            )
        )
    for number, error in summary.failures[:SHOWN_BAD_LINES]:
        print(f"{path}:{number}: not sent: {error}", file=sys.stderr)
    if args.json:
        print(orjson.dumps(summary.to_json()).decode())
    else:
        out = console()
        # A plain line, not the table's title: a long path would wrap inside the table width.
        out.print(f"replay of {path} to {args.topic}", highlight=False, soft_wrap=True)
        out.print(summary.table())
        if summary.bad:
            out.print(
                f"{summary.bad} malformed line(s) skipped (listed on stderr as FILE:LINE); "
                "fix or drop them and replay those lines if they matter",
                style="yellow",
            )
        if summary.failed:
            out.print(f"{summary.failed} event(s) not sent; see the errors on stderr", style="red")
    return 0 if summary.ok else 1
