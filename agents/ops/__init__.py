"""Operator tools for live topics: ``cpimon watch``, ``tail``, ``replay``, ``lag``, ``dlq``.

This module only declares the sub-commands and dispatches to them, so that
``cpimon --help`` and ``cpimon worker`` do not pay for importing Kafka clients
and rich; each command's module is imported when that command runs.

Exit codes shared by every command: 0 done, 1 done but something was skipped
or failed (the output says what), 2 could not run (unknown topic, broker or
worker unreachable, missing file, bad option): one line on stderr says what to
do, never a traceback.  130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from models.errors import CpimonError

__all__ = ["COMMANDS", "OpsError", "add_parsers", "run"]

#: The sub-commands this package adds to ``cpimon``.
COMMANDS = ("watch", "tail", "replay", "lag", "dlq")

DEFAULT_WORKER = "http://127.0.0.1:6066"


class OpsError(CpimonError):
    """An ops command cannot run; the message says what to do about it."""


def _broker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        help="kafka://HOST:PORT[,kafka://HOST:PORT...] (default: $CPIMON_BROKER); "
        "SASL/SSL come from the CPIMON_SECURITY_PROTOCOL, CPIMON_SASL_* and CPIMON_SSL_* variables",
    )


def _json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON, for scripts")


def _command(
    commands: Any, name: str, help: str, description: str, examples: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def add_parsers(commands: Any) -> None:
    """Add the ops sub-commands to ``cpimon``'s sub-parsers (``add_subparsers()`` result)."""
    watch = _command(
        commands,
        "watch",
        "live CPI board read from running workers",
        "A live board of every CPI (and KPI) from the HTTP API of running workers "
        "(GET /api/v1/state).\nEach worker serves only the series it owns: give every "
        "worker with --worker and the board merges them.\nRefreshes in place; works over "
        "a plain SSH terminal. Exit code 2 when no worker answers.",
        "  cpimon watch                                   the worker on http://127.0.0.1:6066\n"
        "  cpimon watch --worker http://w1:6066 --worker http://w2:6066 --owner payments\n"
        "  cpimon watch --cpi checkout_success_rate --once     one frame, then exit\n"
        "  cpimon watch --once --json | jq '.indicators[].name'",
    )
    watch.add_argument(
        "--worker",
        action="append",
        metavar="URL",
        help=f"a worker's web address (repeatable; default {DEFAULT_WORKER})",
    )
    watch.add_argument("--owner", action="append", metavar="TEAM", help="only this team's CPIs")
    watch.add_argument(
        "--cpi", action="append", metavar="NAME", help="only this CPI or KPI (repeatable)"
    )
    watch.add_argument("--once", action="store_true", help="print one frame and exit")
    watch.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (default 2)"
    )
    watch.add_argument(
        "--history",
        type=int,
        default=20,
        metavar="N",
        help="windows shown in each sparkline (default 20)",
    )
    _json(watch, "the merged state (one document per refresh)")

    tail = _command(
        commands,
        "tail",
        "decode and print events of a topic as they arrive",
        "Prints the events of a topic as they arrive, decoded as the worker decodes them.\n"
        "Messages the worker would dead-letter are marked with the reason. Reads every\n"
        "partition without joining a consumer group (nothing is committed).",
        "  cpimon tail journey-events                       new events from now on\n"
        '  cpimon tail journey-events --event "Payment Attempted" --where context.channel=web\n'
        "  cpimon tail journey-events --since 10m --no-follow --json | jq .reason\n"
        "  cpimon tail journey-events --show-cpis --catalog catalog.yaml --max 20",
    )
    tail.add_argument("topic", metavar="TOPIC")
    _broker(tail)
    tail.add_argument(
        "--event", action="append", metavar="NAME", help="only events with this name (repeatable)"
    )
    tail.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="only events whose dotted PATH equals VALUE (JSON or text; repeatable, all must hold)",
    )
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest retained message"
    )
    start.add_argument(
        "--since",
        metavar="DURATION",
        help="start with messages written in the last DURATION (e.g. 90s, 10m, 2h, 1d)",
    )
    tail.add_argument("--catalog", help="catalog for --show-cpis (default: $CPIMON_CATALOG)")
    tail.add_argument(
        "--show-cpis", action="store_true", help="show which CPIs/KPIs each event feeds"
    )
    tail.add_argument("--max", type=int, metavar="N", help="stop after printing N messages")
    tail.add_argument(
        "--no-follow",
        action="store_true",
        help="stop at the end of the topic instead of waiting for new messages",
    )
    _json(tail, "one JSON object per message")

    replay = _command(
        commands,
        "replay",
        "produce recorded events from a JSON-lines file",
        "Produces recorded events (one JSON object per line, .jsonl or .jsonl.gz) to a topic,\n"
        "keyed by userId (or anonymousId). Malformed lines are reported as FILE:LINE and\n"
        "skipped; the other lines are still sent.\n"
        "Exit code: 0 every line sent, 1 some lines malformed or some sends failed,\n"
        "2 nothing sent (missing file, unknown topic, unreachable broker).",
        "  cpimon replay incident.jsonl.gz --topic journey-events --retime\n"
        "  cpimon replay day.jsonl --topic test-events --rate 200\n"
        "  cpimon replay day.jsonl --topic test-events --as-fast-as-possible --json",
    )
    replay.add_argument("file", metavar="FILE", help="events, one JSON object per line (.gz ok)")
    replay.add_argument("--topic", required=True, help="topic to produce to (must exist)")
    _broker(replay)
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=1000.0, help="events per second (default 1000)")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing")
    replay.add_argument(
        "--retime",
        action="store_true",
        help="shift every timestamp so that the first event happens now, keeping the gaps",
    )
    _json(replay, "the summary")

    lag = _command(
        commands,
        "lag",
        "committed offset, high watermark, lag and newest event per partition",
        "Per partition of the group's topics: the committed offset, the high watermark\n"
        "(read from a fetch response), the lag between them and the time of the newest\n"
        "event (its timestamp field, else the Kafka record time).",
        "  cpimon lag                                       the worker group ($CPIMON_APP_ID)\n"
        "  cpimon lag --group cpi-monitor --topic journey-events\n"
        "  cpimon lag --json | jq '.total_lag'",
    )
    _broker(lag)
    lag.add_argument("--group", help="consumer group (default: $CPIMON_APP_ID, cpi-monitor)")
    lag.add_argument(
        "--topic",
        action="append",
        metavar="T",
        help="only this topic (repeatable; default: every topic the group committed)",
    )
    _json(lag, "the table")

    dlq = _command(
        commands,
        "dlq",
        "list, export and re-submit dead-lettered messages",
        "Lists the messages the worker dead-lettered, with the reason and origin from their\n"
        "headers. --export writes them as JSON lines (value and headers; bytes that are not\n"
        "UTF-8 as base64, flagged). --resubmit produces the original bytes and key of the\n"
        "selected ones to --to TOPIC, once the cause has been fixed.\n"
        "--offsets names dead-letter records as PARTITION:OFFSET (as listed), or OFFSET alone\n"
        "when that offset exists in one partition only.",
        "  cpimon dlq                                        every dead letter\n"
        "  cpimon dlq --reason future_timestamp --export late.jsonl\n"
        "  cpimon dlq --reason too_large --resubmit --to journey-events\n"
        "  cpimon dlq --resubmit --to journey-events --offsets 0:12,3:7",
    )
    _broker(dlq)
    dlq.add_argument("--topic", help="dead-letter topic (default: $CPIMON_DEAD_LETTER_TOPIC)")
    dlq.add_argument("--reason", action="append", metavar="R", help="only this reason (repeatable)")
    dlq.add_argument("--export", metavar="FILE.jsonl", help="write the messages as JSON lines")
    dlq.add_argument(
        "--resubmit", action="store_true", help="produce the messages again (needs --to)"
    )
    dlq.add_argument("--to", metavar="TOPIC", help="topic for --resubmit")
    dlq.add_argument(
        "--offsets",
        metavar="LIST",
        help="only these dead letters: P:O or O, comma-separated (e.g. 0:12,3:7)",
    )
    _json(dlq, "the messages")


def run(args: argparse.Namespace) -> int | None:
    """Run an ops command; ``None`` when ``args.command`` is not one of :data:`COMMANDS`."""
    command = getattr(args, "command", None)
    if command not in COMMANDS:
        return None
    try:
        module = importlib.import_module(f"agents.ops.{command}")
        code: int = module.main(args)
        return code
    except CpimonError as error:
        return _fail(command, str(error))
    except FileNotFoundError as error:
        return _fail(command, f"no such file: {error.filename}; check the path")
    except BrokenPipeError:
        # `cpimon tail … | head` closed our stdout: that is how the reader says "enough".
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        return _fail(command, f"cannot use{where}: {error.strerror or error}")
    except Exception as error:
        # Kafka client errors reaching this far are about the broker (timeouts, refusals):
        # say so in one line; anything else is a bug and keeps its traceback.
        if type(error).__module__.split(".")[0] in ("kafka", "aiokafka"):
            return _fail(
                command,
                f"the Kafka broker failed the request ({type(error).__name__}: {error}); "
                "check --broker / CPIMON_BROKER and that the broker is healthy",
            )
        raise


def _fail(command: str, message: str) -> int:
    print(f"cpimon {command}: {message}", file=sys.stderr)
    return 2
