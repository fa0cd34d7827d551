"""Small helpers shared by the ops commands: settings, times, bytes as JSON, consoles."""

from __future__ import annotations

import argparse
import base64
import math
import os
import sys
import time
from datetime import datetime

from rich.console import Console

from streams.settings import Settings


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from ``CPIMON_*`` variables, with ``--broker`` winning when given."""
    return Settings.from_env(broker=getattr(args, "broker", None))


def event_time(value: object) -> float | None:
    """Epoch seconds of an event's ``timestamp`` (RFC 3339 with offset, or epoch seconds).

    None when it is neither; unlike the worker's decoder this accepts any year,
    as tools only display or shift it.

    >>> event_time("2026-11-23T10:00:00.5Z"), event_time(1795428000), event_time("noon")
    (1795428000.5, 1795428000.0, None)
    >>> event_time("2026-11-23T10:00:00"), event_time(True)  # no offset; not a number
    (None, None)
    """
    if type(value) is int or type(value) is float:
        return float(value) if math.isfinite(value) else None
    if type(value) is not str:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError:
            return None
    if parsed.tzinfo is None:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError):
        return None


def iso_time(epoch: float) -> str:
    """Epoch seconds as an RFC 3339 UTC timestamp with milliseconds, as events carry them.

    >>> iso_time(1795428000.1234)
    '2026-11-23T10:00:00.123Z'
    """
    whole, millis = divmod(round(epoch * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def format_time(epoch: float | None) -> str:
    """UTC time with milliseconds, as in the events; ``-`` when unknown.

    >>> format_time(1795428000.1234), format_time(None)
    ('2026-11-23 10:00:00.123Z', '-')
    """
    if epoch is None:
        return "-"
    whole, millis = divmod(round(epoch * 1000), 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def format_recent(epoch: float | None, now: float) -> str:
    """Like :func:`format_time`, without the date when it is the same UTC day as ``now``.

    >>> format_recent(1795428000.5, now=1795430000.0), format_recent(1795428000.5, now=1795600000.0)
    ('10:00:00.500Z', '2026-11-23 10:00:00.500Z')
    """
    text = format_time(epoch)
    if epoch is not None and time.gmtime(epoch)[:3] == time.gmtime(now)[:3]:
        return text[11:]
    return text


def format_age(seconds: float | None) -> str:
    """A short age such as ``4s``, ``12m 5s``, ``3h 20m``, ``2d 4h``.

    >>> [format_age(s) for s in (4.2, 725, 12000, 180000, None)]
    ['4s', '12m 5s', '3h 20m', '2d 2h', '-']
    """
    if seconds is None:
        return "-"
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def bytes_field(data: bytes | None) -> tuple[str | None, bool]:
    """Bytes for a JSON document: (UTF-8 text, False), or (base64, True) when not UTF-8.

    >>> bytes_field(b"caf\\xc3\\xa9"), bytes_field(b"\\xff\\xfe"), bytes_field(None)
    (('café', False), ('//4=', True), (None, False))
    """
    if data is None:
        return None, False
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def bytes_from_field(text: str | None, is_base64: bool) -> bytes | None:
    """Inverse of :func:`bytes_field`."""
    if text is None:
        return None
    return base64.b64decode(text) if is_base64 else text.encode("utf-8")


def console(stderr: bool = False) -> Console:
    """A rich console; 120 columns wide when the output is not a terminal (logs, pipes).

    ``COLUMNS`` still wins: ``COLUMNS=200 cpimon lag | less`` is wider.
    """
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS", "").isdigit() else 120
    return Console(stderr=stderr, width=width)
