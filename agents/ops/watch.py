"""``cpimon watch``: a live CPI board merged from the state API of running workers.

Each worker serves ``GET /api/v1/state`` (see :mod:`agents.api`) with the
series of the observation partitions it owns; the board merges every worker
given with ``--worker``.  Sparklines show the recent closed windows the
workers report, plus those this board has seen while it was running.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from rich import box
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agents.ops import DEFAULT_WORKER, OpsError
from agents.ops.common import console as make_console
from agents.ops.common import format_time

__all__ = ["History", "fetch_state", "main", "merge", "render", "sparkline", "worker_url"]

API_PATH = "/api/v1/state"
SUPPORTED_VERSION = 1
BARS = "▁▂▃▄▅▆▇█"
FETCH_TIMEOUT = 3.0

SegmentKey = tuple[tuple[str, str], ...]


def sparkline(values: Sequence[float | None]) -> str:
    """One bar per value, scaled from the lowest to the highest; a gap where undefined.

    >>> sparkline([1, 2, 3, 4, 5, 6, 7, 8])
    '▁▂▃▄▅▆▇█'
    >>> sparkline([0.97, None, 0.80, 0.97])
    '█ ▁█'
    >>> sparkline([5.0, 5.0]), sparkline([])
    ('▄▄', '')
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return " " * len(values)
    low, high = min(finite), max(finite)
    bars = []
    for value in values:
        if value is None or not math.isfinite(value):
            bars.append(" ")
        elif high == low:
            bars.append(BARS[3])  # flat: a middle bar, not a floor that reads as "bad"
        else:
            bars.append(BARS[round((value - low) / (high - low) * (len(BARS) - 1))])
    return "".join(bars)


def worker_url(text: str) -> str:
    """The state URL of a worker given as a base URL, ``host:port`` or its ``/metrics`` URL.

    >>> worker_url("127.0.0.1:6066"), worker_url("http://w1:6066/metrics")
    ('http://127.0.0.1:6066/api/v1/state', 'http://w1:6066/api/v1/state')
    """
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    for suffix in (API_PATH, "/metrics"):
        url = url.removesuffix(suffix)
    return url + API_PATH


def fetch_state(url: str, timeout: float = FETCH_TIMEOUT) -> dict[str, Any]:
    """One worker's state document; :class:`OpsError` saying what went wrong otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        hint = (
            "the worker predates the state API: upgrade it"
            if exc.code == 404
            else "see the worker's log"
        )
        raise OpsError(f"{url}: HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OpsError(f"{url}: unreachable ({reason})") from None
    try:
        state = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise OpsError(f"{url}: the answer is not JSON; is this a cpimon worker?") from None
    if not isinstance(state, dict) or "indicators" not in state:
        raise OpsError(f"{url}: the answer is not a cpimon state document")
    version = state.get("version")
    if version != SUPPORTED_VERSION:
        raise OpsError(
            f"{url}: state API version {version!r}, this cpimon reads version "
            f"{SUPPORTED_VERSION}; use a cpimon of the same release as the workers"
        )
    return state


def merge(results: Mapping[str, dict[str, Any] | str]) -> dict[str, Any]:
    """Merge state documents (url -> document, or url -> error text) into one.

    Series are concatenated (each worker owns different ones); should two
    workers report one series (during a rebalance), the one with more events wins.
    """
    workers: list[dict[str, Any]] = []
    indicators: dict[str, dict[str, Any]] = {}
    series: dict[str, dict[SegmentKey, dict[str, Any]]] = {}
    links: dict[tuple[str, str], dict[str, Any]] = {}
    for url, result in results.items():
        if isinstance(result, str):
            workers.append({"url": url, "error": result})
            continue
        workers.append({"url": url, **result.get("worker", {})})
        for indicator in result.get("indicators", []):
            name = indicator["name"]
            indicators.setdefault(name, {**indicator, "series": []})
            by_segment = series.setdefault(name, {})
            for entry in indicator.get("series", []):
                key = segment_key(entry.get("segment", {}))
                held = by_segment.get(key)
                if held is None or entry.get("events_total", 0) > held.get("events_total", 0):
                    by_segment[key] = entry
        for link in result.get("links", []):
            pair = (link["cpi"], link["kpi"])
            if pair not in links or link.get("n", 0) > links[pair].get("n", 0):
                links[pair] = link
    for name, indicator in indicators.items():
        indicator["series"] = [series[name][key] for key in sorted(series[name])]
    return {
        "version": SUPPORTED_VERSION,
        "time": time.time(),
        "workers": workers,
        "indicators": list(indicators.values()),
        "links": [links[pair] for pair in sorted(links)],
    }


def segment_key(segment: Mapping[str, Any]) -> SegmentKey:
    return tuple(sorted((str(k), str(v)) for k, v in segment.items()))


@dataclass
class History:
    """Closed windows per series, as reported by the workers and remembered across refreshes."""

    size: int = 20
    windows: dict[tuple[str, SegmentKey], dict[float, float | None]] = field(default_factory=dict)

    def add(self, state: Mapping[str, Any]) -> None:
        for indicator in state.get("indicators", []):
            for entry in indicator.get("series", []):
                key = (indicator["name"], segment_key(entry.get("segment", {})))
                held = self.windows.setdefault(key, {})
                for window in entry.get("history", []):
                    held[float(window["start"])] = window.get("value")
                for start in sorted(held)[: -self.size]:
                    del held[start]

    def values(self, name: str, segment: Mapping[str, Any]) -> list[float | None]:
        held = self.windows.get((name, segment_key(segment)), {})
        return [held[start] for start in sorted(held)]


def select(
    indicators: Iterable[dict[str, Any]], owners: Sequence[str] | None, names: Sequence[str] | None
) -> list[dict[str, Any]]:
    """The indicators to show: CPIs and KPIs (plain metrics only when named), filtered."""
    chosen = []
    for indicator in indicators:
        if names:
            if indicator["name"] not in names:
                continue
        elif indicator.get("kind") == "metric":
            continue
        if owners and indicator.get("owner") not in owners:
            continue
        chosen.append(indicator)
    return chosen


# --- rendering ---------------------------------------------------------------------------


def format_value(value: float | None, unit: str) -> str:
    """A value in its unit: ratios as percentages.

    >>> format_value(0.9612, "ratio"), format_value(734.2, "ms"), format_value(1234.5, "EUR")
    ('96.1%', '734 ms', '1,234 EUR')
    >>> format_value(42.25, "score"), format_value(None, "ms")
    ('42.2', '-')
    """
    if value is None:
        return "-"
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return text if unit in ("", "score") else f"{text} {unit}"


def _target(indicator: Mapping[str, Any]) -> str:
    target = indicator.get("target")
    if not target:
        return "-"
    sign = "≥" if target["bound"] == "min" else "≤"
    return f"{sign} {format_value(target['value'], indicator.get('unit', ''))}"


def _state(indicator: Mapping[str, Any], entry: Mapping[str, Any]) -> Text:
    if entry.get("drop_active"):
        deviation = entry.get("deviation")
        extra = f" {deviation:+.1f}\u03c3" if isinstance(deviation, int | float) else ""
        return Text(f"DROP{extra}", style="bold red")
    if entry.get("value") is None:
        if entry.get("live_value") is not None:
            return Text("first window", style="dim")
        return Text("no data", style="dim")
    below = entry.get("below_target")
    target = indicator.get("target") or {}
    if below:
        return Text("above target" if target.get("bound") == "max" else "below target", style="red")
    value = entry["value"]
    if target and below is False and _breaches(target, value):
        # The worker did not judge this window (too few events): not an alert, but not ok.
        return Text("low volume", style="yellow")
    if below is False or entry.get("drop_active") is False:
        return Text("ok", style="green")
    return Text("-", style="dim")


def _breaches(target: Mapping[str, Any], value: float) -> bool:
    return value < target["value"] if target["bound"] == "min" else value > target["value"]


def _links(name: str, links: Sequence[Mapping[str, Any]], limit: int = 2) -> Text:
    mine = [link for link in links if link.get("cpi") == name]
    mine.sort(key=lambda link: (not link.get("confirmed"), -abs(link.get("r") or 0.0)))
    text = Text()
    for link in mine[:limit]:
        if text:
            text.append(", ")
        r, lag = link.get("r"), link.get("best_lag_seconds")
        detail = f" r={r:+.2f}" if isinstance(r, int | float) else ""
        if isinstance(lag, int | float) and lag:
            detail += f" +{lag / 60:g}m"
        style = "" if link.get("confirmed") else "dim"
        text.append(link["kpi"] + detail + (" ✓" if link.get("confirmed") else ""), style=style)
    if len(mine) > limit:
        text.append(f" +{len(mine) - limit}", style="dim")
    return text


def render(
    state: Mapping[str, Any],
    history: History,
    owners: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
) -> Group:
    """The board: one row per indicator and segment, then a line per unreachable worker."""
    workers = state.get("workers", [])
    answered = [w for w in workers if "error" not in w]
    partitions = sorted({p for w in answered for p in w.get("owned_partitions", [])})
    served = ",".join(str(p) for p in partitions) or "none yet"
    table = Table(
        title=f"cpimon watch · {len(answered)}/{len(workers)} workers · partitions {served} · "
        f"{format_time(state.get('time'))[:-5]}Z",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # Only names, segments, owners and links give way on a narrow terminal; numbers,
    # sparklines and states never get cut.
    table.add_column("CPI", overflow="ellipsis", max_width=30)
    table.add_column("segment", overflow="ellipsis", max_width=20)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("trend", no_wrap=True, min_width=5)
    table.add_column("target", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("owner", overflow="ellipsis", max_width=16)
    links = state.get("links", [])
    if links:  # no column at all until a worker tracks links: narrow terminals need the room
        table.add_column("linked KPIs", overflow="fold", min_width=11)
    chosen = select(state.get("indicators", []), owners, names)
    for kind in ("cpi", "kpi", "metric"):
        rows = [indicator for indicator in chosen if indicator.get("kind") == kind]
        if not rows:
            continue
        if table.row_count:
            table.add_section()
        for indicator in rows:
            name, unit = indicator["name"], indicator.get("unit", "")
            label = Text(name)
            if kind != "cpi":
                label.append(f" {kind}", style="dim")
            for index, entry in enumerate(indicator.get("series") or [{}]):
                segment = entry.get("segment", {})
                value = entry.get("value")
                shown = Text(format_value(value, unit))
                if value is None and entry.get("live_value") is not None:
                    # No window has closed yet: show the open one, marked as provisional.
                    shown = Text("~" + format_value(entry["live_value"], unit), style="dim")
                first = index == 0
                cells: list[Any] = [
                    label if first else "",
                    "/".join(str(v) for v in segment.values()) or ("(all)" if entry else "-"),
                    shown,
                    Text(sparkline(history.values(name, segment)), style="cyan"),
                    _target(indicator) if first else "",
                    _state(indicator, entry) if entry else Text("no data", style="dim"),
                    indicator.get("owner", "") if first else "",
                ]
                if links:
                    cells.append(_links(name, links) if kind == "cpi" and first else "")
                table.add_row(*cells)
    parts: list[Any] = [table]
    for worker in workers:
        if "error" in worker:
            parts.append(Text(f"! {worker['error']}", style="red"))
    if not chosen:
        parts.append(Text("no indicator matches the filters", style="yellow"))
    return Group(*parts)


# --- command -----------------------------------------------------------------------------


def poll(urls: Sequence[str]) -> dict[str, Any]:
    """Fetch every worker at once and merge what answered."""

    def one(url: str) -> dict[str, Any] | str:
        try:
            return fetch_state(url)
        except OpsError as error:
            return str(error)

    with ThreadPoolExecutor(max_workers=max(len(urls), 1)) as pool:
        results = dict(zip(urls, pool.map(one, urls), strict=True))
    return merge(results)


def _check(state: Mapping[str, Any], args: argparse.Namespace) -> None:
    workers = state["workers"]
    if all("error" in worker for worker in workers):
        errors = "; ".join(worker["error"] for worker in workers)
        raise OpsError(
            f"no worker answered ({errors}); start one with `cpimon worker` or give its "
            "address with --worker URL"
        )
    if (args.owner or args.cpi) and not select(state["indicators"], args.owner, args.cpi):
        owners = sorted({i.get("owner", "") for i in state["indicators"]})
        raise OpsError(
            "no indicator matches "
            + " ".join(f"--owner {o}" for o in args.owner or [])
            + " ".join(f"--cpi {n}" for n in args.cpi or [])
            + f"; owners in the catalog: {', '.join(owners)}"
        )


def _filtered(state: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    names = {i["name"] for i in select(state["indicators"], args.owner, args.cpi)}
    return {
        **state,
        "indicators": [i for i in state["indicators"] if i["name"] in names],
        "links": [link for link in state["links"] if link["cpi"] in names],
    }


def main(args: argparse.Namespace) -> int:
    urls = [worker_url(url) for url in (args.worker or [DEFAULT_WORKER])]
    if not args.interval > 0:
        raise OpsError("--interval must be a positive number of seconds")
    console = make_console()
    history = History(size=max(args.history, 1))
    state = poll(urls)
    _check(state, args)
    history.add(state)
    for worker in state["workers"]:
        if "error" in worker and (args.once or args.json):
            print(f"cpimon watch: warning: {worker['error']}", file=sys.stderr)
    if args.json:
        return _json_loop(state, urls, args)
    board = render(state, history, args.owner, args.cpi)
    if args.once:
        console.print(board)
        return 0
    try:
        if not console.is_terminal:
            # Not a terminal (a log, a pipe): one frame per refresh, no cursor movement.
            while True:
                console.print(board)
                time.sleep(args.interval)
                state = poll(urls)
                history.add(state)
                board = render(state, history, args.owner, args.cpi)
        with Live(board, console=console, auto_refresh=False, transient=False) as live:
            while True:
                time.sleep(args.interval)
                state = poll(urls)
                history.add(state)
                live.update(render(state, history, args.owner, args.cpi), refresh=True)
    except KeyboardInterrupt:
        return 0


def _json_loop(state: dict[str, Any], urls: Sequence[str], args: argparse.Namespace) -> int:
    try:
        while True:
            print(orjson.dumps(_filtered(state, args)).decode(), flush=True)
            if args.once:
                return 0
            time.sleep(args.interval)
            state = poll(urls)
    except KeyboardInterrupt:
        return 0
