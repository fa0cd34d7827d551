"""Pictures of the Grafana dashboards drawn from real Prometheus data, with matplotlib.

No Grafana server runs where this project is built, so README and docs/deploying.md
show what each generated dashboard's panels would show, drawn here: every panel's
queries are run against Prometheus (range queries over the time range for time series,
instant queries for tables and bar gauges, as Grafana would) and laid out on Grafana's
24-column grid, one PNG per dashboard.

    # a stack of its own: Tansu broker, worker, simulator with an incident, Prometheus
    python -m bench.render_dashboards --live 240 --out docs/img
    # or any Prometheus that scrapes cpimon workers (job="cpimon")
    python -m bench.render_dashboards --prometheus http://127.0.0.1:9090 --minutes 60

The pictures use the dashboards generated from ``--catalog`` (the fast test catalog by
default: one-second windows, so a few minutes show baselines, drops and links).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from agents.dashboards import build_dashboards, render_dashboard
from agents.demo import EMBEDDED_BROKER_ENV, child_process
from agents.rules import write_rules
from bench.dashboard_queries import (
    PrometheusClient,
    PrometheusServer,
    Series,
    Window,
    first_selection,
    live_traffic,
    substitute,
)
from models.catalog import load_catalog
from streams.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parent.parent
FAST_CATALOG = ROOT / "tests" / "data" / "catalog.fast.yaml"

# Grafana's dark theme and palette.
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
DIM = "#8e8e9e"
COLORS = {
    "green": "#73bf69",
    "red": "#f2495c",
    "orange": "#ff9830",
    "yellow": "#fade2a",
    "blue": "#5794f2",
    "purple": "#b877d9",
    "dark-red": "#c4162a",
    "text": "#ccccdc",
}
SERIES_COLORS = [
    "#73bf69",
    "#f2cc0c",
    "#8ab8ff",
    "#ff780a",
    "#f2495c",
    "#5794f2",
    "#b877d9",
    "#705da0",
    "#37872d",
    "#fade2a",
    "#447ebc",
    "#c15c17",
]
# Inches per grid unit: 24 columns across, 30 px-ish rows as in Grafana.
COLUMN = 0.8
ROW = 0.36


def color(name: str | None) -> str:
    if name is None:
        return TEXT
    return COLORS.get(name, name)


# --- values and units ---------------------------------------------------------------------


def format_value(value: float, unit: str, decimals: float | None = None) -> str:
    """A value the way Grafana's unit would print it (the common units of the dashboards)."""
    if not math.isfinite(value):
        return "-"
    places = None if decimals is None else int(decimals)

    def num(v: float, default: int = 3) -> str:
        if places is not None:
            return f"{v:.{places}f}"
        return f"{v:.{default}g}" if abs(v) < 1e6 else f"{v:.3e}"

    if unit == "percentunit":
        # Small shares keep their significant digits: 0.31% and 0.34% must differ.
        return f"{value * 100:.1f}%" if abs(value) >= 0.1 else f"{value * 100:.2g}%"
    if unit == "percent":
        return f"{value:.1f}%"
    if unit == "ms":
        return f"{value / 1000:.2f} s" if abs(value) >= 1000 else f"{value:.0f} ms"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if 0 < abs(value) < 1 else f"{num(value)} s"
    if unit == "eps":
        return f"{num(value)} ev/s"
    if unit == "mps":
        return f"{num(value)} msg/s"
    if unit.startswith("currency"):
        symbol = {"currencyEUR": "€", "currencyUSD": "$", "currencyGBP": "£"}.get(unit, "")
        return f"{symbol}{value:,.0f}" if abs(value) >= 100 else f"{symbol}{value:,.2f}"
    if unit == "short":
        for size, suffix in ((1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
            if abs(value) >= size:
                return f"{value / size:.3g}{suffix}"
        return num(value)
    if unit.startswith("suffix:"):
        return f"{num(value)} {unit.removeprefix('suffix:').strip()}"
    return num(value)


@dataclass(frozen=True)
class Field:
    """How one series is shown: unit, thresholds, value mappings (after overrides)."""

    unit: str
    thresholds: list[dict[str, Any]]
    mappings: dict[str, dict[str, Any]]
    decimals: float | None

    def color_of(self, value: float) -> str:
        text = _mapped(self.mappings, value)
        if text is not None and "color" in text:
            return color(text["color"])
        chosen = None
        for step in self.thresholds:
            if step.get("value") is None or value >= step["value"]:
                chosen = step.get("color")
        return color(chosen) if chosen else SERIES_COLORS[0]

    def text_of(self, value: float) -> str:
        mapped = _mapped(self.mappings, value)
        if mapped is not None and "text" in mapped:
            return str(mapped["text"])
        return format_value(value, self.unit, self.decimals)


def _mapped(mappings: Mapping[str, dict[str, Any]], value: float) -> dict[str, Any] | None:
    if not math.isfinite(value) or value != round(value):
        return None
    return mappings.get(str(int(value)))


def field_of(panel: Mapping[str, Any], name: str) -> Field:
    """Defaults of the panel with the overrides matching the series called ``name``."""
    config = panel.get("fieldConfig", {})
    defaults = config.get("defaults", {})
    props: dict[str, Any] = {
        "unit": defaults.get("unit", "none"),
        "thresholds": defaults.get("thresholds", {}).get("steps", []),
        "mappings": defaults.get("mappings", []),
        "decimals": defaults.get("decimals"),
    }
    for override in config.get("overrides", []):
        matcher = override["matcher"]
        options = str(matcher.get("options", ""))
        hit = (matcher["id"] == "byName" and options == name) or (
            matcher["id"] == "byRegexp" and re.fullmatch(options, name) is not None
        )
        if hit:
            for prop in override["properties"]:
                value = prop["value"]
                props[prop["id"]] = value["steps"] if prop["id"] == "thresholds" else value
    mappings: dict[str, dict[str, Any]] = {}
    for mapping in props["mappings"]:
        mappings.update(mapping.get("options", {}))
    return Field(props["unit"], props["thresholds"], mappings, props["decimals"])


def legend(template: str, labels: Mapping[str, str]) -> str:
    if template in ("", "__auto"):
        shown = {k: v for k, v in labels.items() if k not in ("__name__", "job", "instance")}
        return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "value"
    name = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template)
    return re.sub(r"\s+", " ", name).strip()


# --- fetching -------------------------------------------------------------------------------


@dataclass
class Line:
    name: str
    #: Matplotlib date numbers (days).
    times: list[float]
    values: list[float]
    labels: dict[str, str]

    @property
    def last(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        return finite[-1] if finite else math.nan


def fetch(
    prometheus: PrometheusClient,
    target: Mapping[str, Any],
    values: Mapping[str, str],
    window: Window,
) -> list[Line]:
    expr = substitute(target["expr"], values, window)
    result: list[Series]
    if target.get("instant"):
        result = prometheus.query(expr, window.end)
    else:
        result = prometheus.query_range(expr, window.start, window.end, window.step)
    lines = []
    for series in result:
        samples = series.get("values") or [series["value"]]
        lines.append(
            Line(
                legend(target.get("legendFormat", ""), series["metric"]),
                [float(mdates.date2num(datetime.fromtimestamp(float(t)))) for t, _ in samples],
                [float(v) for _, v in samples],
                dict(series["metric"]),
            )
        )
    return sorted(lines, key=lambda line: line.name)


# --- drawing --------------------------------------------------------------------------------


def _frame(ax: Axes, title: str) -> None:
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_color(BORDER)
    ax.set_title(title, loc="left", color=TEXT, fontsize=9, fontweight="bold", pad=4)
    ax.tick_params(colors=DIM, labelsize=7)


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "No data", color=DIM, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_timeseries(
    ax: Axes,
    panel: Mapping[str, Any],
    lines: list[tuple[str, Line]],
    spans: list[tuple[Line, str]],
    time_format: str,
) -> None:
    if not lines:
        _no_data(ax)
        return
    units = set()
    for index, (ref, line) in enumerate(lines):
        field = field_of(panel, line.name)
        units.add(field.unit)
        style = "--" if ref != "A" and (" target" in line.name or " band " in line.name) else "-"
        if " live" in line.name:
            style = ":"
        ax.plot(
            line.times,
            line.values,
            style,
            color=SERIES_COLORS[index % len(SERIES_COLORS)],
            linewidth=1.0,
            label=line.name,
        )
    for span, tint in spans:
        _shade(ax, span, tint)
    unit = next(iter(units)) if len(units) == 1 else "none"
    ax.yaxis.set_major_formatter(lambda v, _pos: format_value(v, unit))
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter(time_format))
    ax.grid(color=BORDER, linewidth=0.5)
    defaults = panel["fieldConfig"]["defaults"]
    if "min" in defaults or "max" in defaults:
        ax.set_ylim(defaults.get("min"), defaults.get("max"))
    shown = min(len(lines), 12)
    handles, labels = ax.get_legend_handles_labels()
    longest = max(len(label) for label in labels[:shown])
    columns = max(1, min(shown, 4, int(ax.get_position().width * 24 * COLUMN * 14 / longest)))
    ax.legend(
        handles[:shown],
        labels[:shown],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=columns,
        fontsize=6,
        frameon=False,
        labelcolor=TEXT,
    )


def _shade(ax: Axes, span: Line, tint: str) -> None:
    """An annotation: the time ranges where its query had data."""
    start = None
    step = None
    for i, t in enumerate(span.times):
        if i and step is None:
            step = t - span.times[i - 1]
        gap = i and step is not None and t - span.times[i - 1] > step * 2
        if start is None:
            start = t
        elif gap:
            ax.axvspan(start, span.times[i - 1], color=tint, alpha=0.13, linewidth=0)
            start = t
    if start is not None:
        ax.axvspan(start, span.times[-1], color=tint, alpha=0.13, linewidth=0)


def draw_stat(ax: Axes, panel: Mapping[str, Any], lines: list[tuple[str, Line]]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if not lines:
        _no_data(ax)
        return
    count = len(lines)
    columns = min(count, 5)
    rows = math.ceil(count / columns)
    for index, (_ref, line) in enumerate(lines):
        field = field_of(panel, line.name)
        value = line.last
        background = field.color_of(value) if math.isfinite(value) else BORDER
        x0, y0 = (index % columns) / columns, 1 - (index // columns + 1) / rows
        w, h = 1 / columns, 1 / rows
        ax.add_patch(
            Rectangle(
                (x0 + 0.005, y0 + 0.02),
                w - 0.01,
                h - 0.04,
                transform=ax.transAxes,
                color=background,
                alpha=0.85,
            )
        )
        finite = [(t, v) for t, v in zip(line.times, line.values, strict=True) if math.isfinite(v)]
        if len(finite) > 1:
            low = min(v for _, v in finite)
            high = max(v for _, v in finite)
            spread = (high - low) or 1.0
            xs = [x0 + w * i / (len(finite) - 1) for i in range(len(finite))]
            ys = [y0 + 0.04 + (h * 0.35) * (v - low) / spread for _, v in finite]
            ax.fill_between(xs, y0 + 0.02, ys, transform=ax.transAxes, color="white", alpha=0.18)
        size = 16 if count == 1 else 11 if count <= 3 else 8
        ax.text(
            x0 + w / 2,
            y0 + h * 0.55,
            field.text_of(value),
            color="white",
            ha="center",
            va="center",
            fontsize=size,
            fontweight="bold",
            transform=ax.transAxes,
        )
        if count > 1 or line.name not in ("", "value"):
            ax.text(
                x0 + w / 2,
                y0 + h * 0.85,
                line.name,
                color="white",
                ha="center",
                va="center",
                fontsize=6 if count > 3 else 7,
                transform=ax.transAxes,
            )


def draw_state_timeline(
    ax: Axes, panel: Mapping[str, Any], lines: list[tuple[str, Line]], time_format: str
) -> None:
    if not lines:
        _no_data(ax)
        return
    names = [line.name for _, line in lines]
    for row, (_ref, line) in enumerate(lines):
        field = field_of(panel, line.name)
        for i, (t, v) in enumerate(zip(line.times, line.values, strict=True)):
            if not math.isfinite(v):
                continue
            end = line.times[i + 1] if i + 1 < len(line.times) else t
            ax.barh(
                row,
                (end - t) or 1e-5,
                left=t,
                height=0.8,
                color=field.color_of(v),
                linewidth=0,
            )
    ax.set_yticks(range(len(names)), names, fontsize=6, color=TEXT)
    ax.invert_yaxis()
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter(time_format))
    mappings = field_of(panel, "").mappings
    handles = [
        Rectangle((0, 0), 1, 1, color=color(m.get("color")))
        for m in sorted(mappings.values(), key=lambda m: int(m.get("index", 0)))
    ]
    ax.legend(
        handles,
        [m["text"] for m in sorted(mappings.values(), key=lambda m: int(m.get("index", 0)))],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncol=len(handles),
        fontsize=6,
        frameon=False,
        labelcolor=TEXT,
    )


def table_rows(
    panel: Mapping[str, Any], lines: list[tuple[str, Line]]
) -> tuple[list[str], list[list[str]]]:
    """Grafana's merge, then organize (hide, rename), then the sort, over instant queries."""
    single = len(panel.get("targets", [])) == 1
    rows: list[dict[str, Any]] = []
    for ref, line in lines:
        column = "Value" if single else f"Value #{ref}"
        labels = {k: v for k, v in line.labels.items() if k != "__name__"}
        for row in rows:
            shared = set(labels) & set(row) - {column}
            if column not in row and shared and all(row[k] == labels[k] for k in shared):
                row.update(labels)
                row[column] = line.last
                break
        else:
            rows.append({**labels, column: line.last})
    hidden: set[str] = {"Time"}
    renames: dict[str, str] = {}
    for transformation in panel.get("transformations", []):
        if transformation["id"] == "organize":
            excluded = transformation["options"].get("excludeByName", {})
            hidden |= {name for name, hide in excluded.items() if hide}
            renames.update(transformation["options"].get("renameByName", {}))
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and c not in hidden]
    labels_first = [c for c in columns if not c.startswith("Value")]
    columns = labels_first + sorted(c for c in columns if c.startswith("Value"))
    ordered = sorted(rows, key=lambda r: [str(r.get(c, "")) for c in labels_first])
    for sort in reversed(panel.get("options", {}).get("sortBy", [])):
        key = next((c for c in columns if renames.get(c, c) == sort["displayName"]), None)
        if key is not None:
            # Missing values last whichever the direction, as Grafana does.
            present = [r for r in ordered if r.get(key) is not None]
            present.sort(key=lambda r: _sortable(r[key]), reverse=bool(sort.get("desc")))
            ordered = present + [r for r in ordered if r.get(key) is None]
    shown = []
    for row in ordered:
        cells = []
        for c in columns:
            cell = row.get(c)
            if isinstance(cell, float):
                cells.append(field_of(panel, renames.get(c, c)).text_of(cell))
            else:
                cells.append("" if cell is None else str(cell))
        shown.append(cells)
    return [renames.get(c, c) for c in columns], shown


def _sortable(cell: object) -> tuple[float, str]:
    """Numbers by value, labels by text (one column holds one or the other)."""
    return (cell, "") if isinstance(cell, float) else (0.0, str(cell))


def draw_table(ax: Axes, panel: Mapping[str, Any], lines: list[tuple[str, Line]]) -> None:
    ax.axis("off")
    columns, rows = table_rows(panel, lines)
    if not rows:
        _no_data(ax)
        return
    rows = rows[:14]
    table = ax.table(cellText=rows, colLabels=columns, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(6.5)
    table.scale(1, 1.15)
    for (r, _c), cell in table.get_celld().items():
        cell.set_edgecolor(BORDER)
        cell.set_facecolor(PANEL if r else "#22252b")
        cell.get_text().set_color(TEXT)


def draw_bargauge(ax: Axes, panel: Mapping[str, Any], lines: list[tuple[str, Line]]) -> None:
    if not lines:
        _no_data(ax)
        return
    defaults = panel["fieldConfig"]["defaults"]
    low, high = defaults.get("min", 0), defaults.get("max", 1)
    names = [line.name for _, line in lines]
    for row, (_ref, line) in enumerate(lines):
        field = field_of(panel, line.name)
        value = line.last
        ax.barh(row, value, color=field.color_of(value), height=0.6)
        ax.text(high, row, " " + field.text_of(value), color=TEXT, va="center", fontsize=7)
    ax.set_xlim(low, high)
    ax.axvline(0, color=DIM, linewidth=0.5)
    ax.set_yticks(range(len(names)), names, fontsize=7, color=TEXT)
    ax.invert_yaxis()


def _text(template: str, values: Mapping[str, str], window: Window) -> str:
    """A title with its variables filled in, safe from matplotlib's $math$ syntax."""
    shown = {k: ("All" if v == ".*" else v) for k, v in values.items()}
    return substitute(template, shown, window).replace("$", r"\$")


def render(
    board: Mapping[str, Any],
    prometheus: PrometheusClient,
    window: Window,
    values: Mapping[str, str],
    note: str,
) -> Figure:
    panels = list(board["panels"])
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    header = 1.0
    height = bottom * ROW + header
    fig = plt.figure(figsize=(24 * COLUMN, height), facecolor=BACKGROUND)
    time_format = "%H:%M:%S" if window.end - window.start < 900 else "%H:%M"
    shown = ", ".join(
        f"{k}={'All' if v == '.*' else v}" for k, v in values.items() if k != "datasource"
    )
    title = board["title"] + (f"   [{shown}]" if shown else "")
    fig.text(
        0.008,
        1 - 0.32 / height,
        _text(title, {}, window),
        color=TEXT,
        fontsize=15,
        fontweight="bold",
        va="center",
    )
    fig.text(0.008, 1 - 0.72 / height, note, color=DIM, fontsize=8, va="center")
    annotations = [item for item in board.get("annotations", {}).get("list", []) if "expr" in item]
    spans = [
        (line, color(item.get("iconColor")))
        for item in annotations
        for line in fetch(prometheus, {"expr": item["expr"], "legendFormat": ""}, values, window)
    ]
    for panel in panels:
        pos = panel["gridPos"]
        left = pos["x"] / 24
        top = 1 - (header + pos["y"] * ROW) / height
        if panel["type"] == "row":
            fig.text(
                left + 0.005,
                top - 0.5 * ROW / height,
                _text(panel["title"], values, window),
                color=TEXT,
                fontsize=11,
                fontweight="bold",
                va="center",
            )
            continue
        # Leave room for titles, axes labels and legends inside the grid cell.
        kind = panel["type"]
        pad_top = 0.42
        pad_bottom = 1.1 if kind in ("timeseries", "state-timeline") else 0.15
        pad_left = {"timeseries": 0.9, "bargauge": 0.9, "state-timeline": 2.4}.get(kind, 0.1)
        ax = fig.add_axes(
            (
                left + pad_left / (24 * COLUMN),
                top - (pos["h"] * ROW - pad_bottom) / height,
                (pos["w"] * COLUMN - pad_left - 0.15) / (24 * COLUMN),
                (pos["h"] * ROW - pad_top - pad_bottom) / height,
            )
        )
        _frame(ax, _text(panel["title"], values, window))
        lines = [
            (target["refId"], line)
            for target in panel.get("targets", [])
            for line in fetch(prometheus, target, values, window)
        ]
        if kind == "timeseries":
            draw_timeseries(ax, panel, lines, spans, time_format)
        elif kind == "stat":
            draw_stat(ax, panel, lines)
        elif kind == "state-timeline":
            draw_state_timeline(ax, panel, lines, time_format)
        elif kind == "table":
            draw_table(ax, panel, lines)
        elif kind == "bargauge":
            draw_bargauge(ax, panel, lines)
        else:
            raise ValueError(f"no drawing for panel type {kind}")
    return fig


# --- a stack of its own -----------------------------------------------------------------


@contextmanager
def live_stack(
    workdir: Path, catalog: Path, seconds: float, rate: float, incidents: Sequence[str]
) -> Iterator[tuple[PrometheusServer, float]]:
    """Broker, worker, traffic and Prometheus; yields after ``seconds`` of traffic."""
    run = uuid.uuid4().hex[:8]
    env = {
        **EMBEDDED_BROKER_ENV,
        "CPIMON_EVENTS_TOPIC": f"events-{run}",
        "CPIMON_APP_ID": f"cpimon-pictures-{run}",
        "CPIMON_CATALOG": str(catalog),
        "CPIMON_IDLE_TIMEOUT": "6",
        "CPIMON_CHECKPOINT_INTERVAL": "1",
        "CPIMON_DATA_DIR": str(workdir / "data"),
    }
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(log_path=workdir / "broker.log"))
        broker.create_topics({env["CPIMON_EVENTS_TOPIC"]: 4})
        port = free_port()
        stack.enter_context(
            child_process(
                [sys.executable, "-m", "agents.cli", "worker"],
                {
                    **os.environ,
                    **env,
                    "CPIMON_BROKER": broker.url,
                    "CPIMON_METRICS_PORT": str(port),
                },
                workdir / "worker.log",
            )
        )
        [rules] = write_rules(load_catalog(catalog), workdir / "rules")
        prometheus = stack.enter_context(
            PrometheusServer(workdir, [f"127.0.0.1:{port}"], [rules], scrape_interval=1.0)
        )
        started = time.time()
        stack.enter_context(
            live_traffic(broker.bootstrap, env["CPIMON_EVENTS_TOPIC"], rate, incidents)
        )
        print(f"live stack in {workdir}: traffic for {seconds:.0f}s", flush=True)
        time.sleep(seconds)
        yield prometheus, started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(FAST_CATALOG))
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--live", type=float, metavar="SECONDS", help="run a stack this long")
    source.add_argument("--prometheus", metavar="URL", help="an existing Prometheus")
    parser.add_argument("--minutes", type=float, default=30, help="time range (--prometheus)")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--incident", action="append", default=[])
    parser.add_argument(
        "--select",
        action="append",
        default=["cpi=checkout_success_rate", "owner=payments", "kpi=revenue"],
        help="VARIABLE=VALUE preferred when it exists (repeatable)",
    )
    args = parser.parse_args()
    matplotlib.use("Agg")  # files only, whatever display there is
    catalog = load_catalog(args.catalog)
    boards = {n: json.loads(render_dashboard(b)) for n, b in build_dashboards(catalog).items()}
    prefer = dict(item.split("=", 1) for item in args.select)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prometheus: PrometheusClient
    with ExitStack() as stack:
        if args.live:
            workdir = Path(tempfile.mkdtemp(prefix="cpimon-pictures-"))
            incidents = args.incident or ["payment-outage@100s+50s"]
            prometheus, started = stack.enter_context(
                live_stack(workdir, Path(args.catalog), args.live, args.rate, incidents)
            )
            window = Window(started, time.time(), 1.0, 1.0)
            note = (
                f"Drawn with matplotlib from real Prometheus data: a cpimon worker on "
                f"{catalog.source.split('/')[-1]} ({len(catalog.cpis)} CPIs, 1 s windows), "
                f"simulator at {args.rate:.0f} events/s with {', '.join(incidents)}, "
                f"{args.live / 60:.0f} min, scraped every 1 s. No Grafana server was involved."
            )
        else:
            prometheus = PrometheusClient(args.prometheus)
            end = time.time()
            window = Window(end - args.minutes * 60, end, max(1.0, args.minutes * 60 / 600), 15.0)
            note = f"Drawn with matplotlib from {args.prometheus}, last {args.minutes:g} min."
        for name, board in boards.items():
            values = first_selection(board, prometheus, window, prefer)
            fig = render(board, prometheus, window, values, note)
            path = out / name.replace(".json", ".png")
            fig.savefig(path, dpi=80, facecolor=BACKGROUND)
            plt.close(fig)
            print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
