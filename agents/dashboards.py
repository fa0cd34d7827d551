"""Dashboards as code: Grafana dashboards generated from the catalog.

``cpimon dashboards`` builds them with the Grafana Foundation SDK's builders and writes one
JSON file per dashboard; ``deploy/grafana/dashboards/`` holds them generated from
``catalog.example.yaml`` (a test keeps them up to date), and
``deploy/grafana/provisioning/`` tells Grafana to load them.

The dashboards (uid, file):

``cpimon-overview``
    Every CPI against its target (worst segment, coloured by the target), with its owner;
    the state of every CPI over time (ok, target breached, drop); the KPIs and metrics.
``cpimon-cpi``
    One CPI (template variable ``cpi``) per segment (one variable per segment label):
    value, live value and target; value against its normal band; deviation; state;
    events per second; late and unmeasurable events; drops and target breaches as
    annotations.
``cpimon-links``
    CPI→KPI links: every link (confirmed, best lag, impact), and for one pair (variables
    ``cpi`` and ``kpi``) the correlation by lag with its 95 % interval and pairs.
``cpimon-owner``
    The accountability board of one owner (variable ``owner``): their CPIs and their state,
    their open alerts (``ALERTS{owner="$owner"}``) and the KPIs their CPIs are linked to.
``cpimon-pipeline``
    The workers: events consumed, rejected, late, duplicate and unmeasurable; event
    delay; consumer lag; Faust's sensor metrics; worker and broker up; checkpoints.

Queries of the workers' metrics select ``job="cpimon"`` like the alert rules
(agents.rules; the recorded series carry no job label, their rules select it), and every
query uses the ``${datasource}`` variable (the provisioned data source has the fixed uid
``prometheus``).  Every panel that shows values has a unit; panels mixing indicators
(several CPIs in one panel) set each CPI's unit by a field override on its series name,
which starts with the indicator's name.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import (
    bargauge,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import (
    common as common_builders,
)
from grafana_foundation_sdk.builders import (
    dashboard as builders,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from agents.rules import JOB, prometheus_duration
from models.spec import Catalog, Indicator

__all__ = [
    "DASHBOARD_FILES",
    "DATASOURCE_UID",
    "Target",
    "Variable",
    "build_dashboards",
    "grafana_unit",
    "panel_targets",
    "render_dashboard",
    "template_variables",
    "write_dashboards",
]

#: The uid of the provisioned Prometheus data source (deploy/grafana/provisioning).
DATASOURCE_UID = "prometheus"
#: File name of each dashboard, by uid.
DASHBOARD_FILES = {
    "cpimon-overview": "cpimon-overview.json",
    "cpimon-cpi": "cpimon-cpi.json",
    "cpimon-links": "cpimon-links.json",
    "cpimon-owner": "cpimon-owner.json",
    "cpimon-pipeline": "cpimon-pipeline.json",
}
TAGS = ["cpimon"]

_DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
_ALL = model.VariableOption(selected=True, text="All", value="$__all")
#: Catalog units Grafana knows under another name; anything else becomes a suffix.
_UNITS = {
    "": "none",
    "ratio": "percentunit",
    "percent": "percent",
    "%": "percent",
    "ms": "ms",
    "s": "s",
    "seconds": "s",
    "bytes": "bytes",
    "EUR": "currencyEUR",
    "USD": "currencyUSD",
    "GBP": "currencyGBP",
    "score": "none",
}
# State of a CPI series in state panels: below_target + 2 * drop_active.
_STATES = {
    "0": model.ValueMappingResult(text="ok", color="green", index=0),
    "1": model.ValueMappingResult(text="target breached", color="orange", index=1),
    "2": model.ValueMappingResult(text="drop", color="red", index=2),
    "3": model.ValueMappingResult(text="breached + drop", color="dark-red", index=3),
}
_UP = {
    "0": model.ValueMappingResult(text="down", color="red", index=0),
    "1": model.ValueMappingResult(text="up", color="green", index=1),
}
_CONFIRMED = {
    "0": model.ValueMappingResult(text="not confirmed", color="text", index=0),
    "1": model.ValueMappingResult(text="confirmed", color="green", index=1),
}


def grafana_unit(unit: str) -> str:
    """The Grafana unit id of a catalog unit (``ratio`` shows as a percentage).

    >>> grafana_unit("ratio"), grafana_unit("EUR"), grafana_unit("tickets")
    ('percentunit', 'currencyEUR', 'suffix: tickets')
    """
    return _UNITS.get(unit, f"suffix: {unit}")


# --- queries ------------------------------------------------------------------------------


_CPI = 'cpi="$cpi"'
_INDICATOR = 'indicator="$cpi"'


def _is(label: str, value: str) -> str:
    """A PromQL equality matcher."""
    return f'{label}="{value}"'


_JOB = _is("job", JOB)


def _selector(metric: str, *matchers: str) -> str:
    return metric + "{" + ",".join((_JOB, *matchers)) + "}"


@dataclass(frozen=True)
class _Query:
    expr: str
    legend: str = "__auto"
    instant: bool = False
    table: bool = False


def _legend(*labels: str) -> str:
    return " ".join("{{" + label + "}}" for label in labels)


def _worst(indicator: Indicator) -> str:
    return "min" if indicator.higher_is_better else "max"


def _segment_labels(indicators: Sequence[Indicator]) -> list[str]:
    """Every segment label of ``indicators``, in catalog order, each once."""
    return list(dict.fromkeys(s.label for i in indicators for s in i.segment_by))


def _thresholds(indicator: Indicator) -> model.ThresholdsConfig:
    """Green on the good side of the target, red on the bad side; blue without one."""
    target = indicator.target
    if target is None:
        steps = [model.Threshold(value=None, color="blue")]
    elif target.bound == "min":
        steps = [
            model.Threshold(value=None, color="red"),
            model.Threshold(value=target.value, color="green"),
        ]
    else:
        steps = [
            model.Threshold(value=None, color="green"),
            model.Threshold(value=target.value, color="red"),
        ]
    return model.ThresholdsConfig(mode=model.ThresholdsMode.ABSOLUTE, steps=steps)


def _thresholds_builder(config: model.ThresholdsConfig) -> builders.ThresholdsConfig:
    return builders.ThresholdsConfig().mode(config.mode).steps(config.steps)


def _steps(*steps: tuple[float | None, str]) -> builders.ThresholdsConfig:
    """Absolute thresholds: the first step's value is None (from minus infinity)."""
    return (
        builders.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def _mapping(values: Mapping[str, model.ValueMappingResult]) -> list[model.ValueMapping]:
    return [model.ValueMap(options=dict(values))]


def _name_pattern(indicator: Indicator) -> str:
    """Series whose display name starts with the indicator's name (see the legends)."""
    return f"^{re.escape(indicator.name)}( .*)?$"


# --- panels -------------------------------------------------------------------------------

_PanelBuilder = timeseries.Panel | stat.Panel | table.Panel | bargauge.Panel | statetimeline.Panel


class _Board:
    """One dashboard under construction: ids, rows and the common settings of panels."""

    def __init__(self, uid: str, title: str, description: str, catalog: Catalog) -> None:
        source = Path(catalog.source).name
        self.builder = (
            builders.Dashboard(title)
            .uid(uid)
            .description(
                f"{description} Generated by `cpimon dashboards` from {source}; do not edit "
                "here: change the catalog or agents/dashboards.py and regenerate."
            )
            .tags(TAGS)
            .editable()
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .time("now-1h", "now")
            .refresh("30s")
            .timezone("browser")
            .link(
                builders.DashboardLink("cpi-monitor")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags(TAGS)
                .as_dropdown(True)
                .include_vars(False)
                .keep_time(True)
            )
            .with_variable(
                builders.DatasourceVariable("datasource")
                .label("Data source")
                .type("prometheus")
                .current(
                    model.VariableOption(selected=True, text="Prometheus", value=DATASOURCE_UID)
                )
            )
        )
        self._ids = itertools.count(1)

    def row(self, title: str) -> None:
        self.builder.with_row(builders.Row(title).id(next(self._ids)))

    def add(self, panel: _PanelBuilder, width: int, height: int, *queries: _Query) -> None:
        for ref, query in zip("ABCDEFGHIJ", queries, strict=False):
            target = (
                prometheus.Dataquery()
                .expr(query.expr)
                .legend_format(query.legend)
                .ref_id(ref)
                .datasource(_DATASOURCE)
            )
            target = target.instant() if query.instant else target.range()
            if query.table:
                target = target.format(PromQueryFormat.TABLE)
            panel.with_target(target)
        panel.id(next(self._ids)).datasource(_DATASOURCE).span(width).height(height)
        self.builder.with_panel(panel)

    def variable(self, variable: builders.QueryVariable) -> None:
        self.builder.with_variable(variable)

    def build(self) -> model.Dashboard:
        return self.builder.build()


def _query_variable(name: str, label: str, query: str, *, all_values: bool = False) -> Any:
    variable = (
        builders.QueryVariable(name)
        .label(label)
        .datasource(_DATASOURCE)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    if all_values:
        # ".*" also matches series without the label, so "All" keeps the CPIs that are
        # not segmented by it.
        variable = variable.multi(True).include_all(True).all_value(".*").current(_ALL)
    return variable


def _series(title: str, unit: str, description: str = "") -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .unit(unit)
        .line_width(1)
        .fill_opacity(8)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(True)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    return panel.description(description) if description else panel


def _stat(title: str, unit: str, description: str = "") -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .unit(unit)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return panel.description(description) if description else panel


def _state_timeline(title: str, states: Mapping[str, model.ValueMappingResult]) -> Any:
    return (
        statetimeline.Panel()
        .title(title)
        .unit("none")
        .mappings(_mapping(states))
        .thresholds(_steps((None, "text")))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .fill_opacity(80)
        .line_width(0)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE))
    )


@dataclass(frozen=True)
class _Column:
    """A value column of a table: its header, unit and value mappings."""

    name: str
    unit: str = "none"
    mappings: Mapping[str, model.ValueMappingResult] | None = None


def _table(
    title: str,
    description: str,
    *,
    columns: Mapping[str, _Column],
    hide: Sequence[str] = (),
    sort_by: str | None = None,
) -> Any:
    """Instant queries merged on their labels; value columns (``Value #A``...) renamed."""
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .unit("none")
        .show_header(True)
        .cell_height(common.TableCellHeight.SM)
        .footer(common_builders.TableFooterOptions().show(False).reducer(["sum"]))
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": dict.fromkeys(["Time", *hide], True),
                    "renameByName": {key: column.name for key, column in columns.items()},
                },
            )
        )
    )
    if sort_by is not None:
        panel = panel.sort_by(
            [common_builders.TableSortByFieldState().display_name(sort_by).desc(True)]
        )
    for column in columns.values():
        properties = [model.DynamicConfigValue(id_val="unit", value=column.unit)]
        if column.mappings is not None:
            properties.append(
                model.DynamicConfigValue(id_val="mappings", value=_mapping(column.mappings))
            )
        # Field overrides apply after the transformations: they see the new names.
        panel = panel.override_by_name(column.name, properties)
    return panel


def _per_indicator(panel: Any, indicators: Sequence[Indicator], thresholds: bool = False) -> Any:
    """Each indicator's unit (and target colours) on the series named after it."""
    for indicator in indicators:
        properties = [model.DynamicConfigValue(id_val="unit", value=grafana_unit(indicator.unit))]
        if thresholds:
            properties.append(
                model.DynamicConfigValue(id_val="thresholds", value=_thresholds(indicator))
            )
        panel = panel.override_by_regexp(_name_pattern(indicator), properties)
    return panel


# --- the dashboards -----------------------------------------------------------------------


def _overview(catalog: Catalog) -> model.Dashboard:
    board = _Board(
        "cpimon-overview",
        "CPI overview",
        "Every Customer Performance Indicator against its target, with the team that owns "
        "it. A CPI shows its worst segment: green when it meets its target, red when not.",
        catalog,
    )
    board.builder.time("now-3h", "now")
    board.row("Customer Performance Indicators (worst segment)")
    for cpi in catalog.cpis:
        target = cpi.target
        goal = "no target" if target is None else f"target {target.bound} {target.value:g}"
        panel = (
            _stat(
                f"{cpi.name} · {cpi.owner}",
                grafana_unit(cpi.unit),
                f"{cpi.description} ({goal}; journey step {cpi.journey_step}; owner "
                f"{cpi.owner}). Worst segment of the last closed window.",
            )
            .thresholds(_thresholds_builder(_thresholds(cpi)))
            .links(
                [
                    builders.DashboardLink("Drill down")
                    .url(f"/d/cpimon-cpi/cpi-drill-down?var-cpi={cpi.name}")
                    .keep_time(True)
                ]
            )
        )
        # The recorded series has no job label: the rule selects the job.
        query = f'cpimon:cpi_value:worst_segment{{cpi="{cpi.name}"}}'
        board.add(panel, 6, 5, _Query(query, _legend("owner")))
    board.row("State of every CPI")
    state = (
        f"max by (cpi, owner) ({_selector('cpimon_cpi_below_target')})\n"
        f"+ on (cpi, owner) 2 * max by (cpi, owner) ({_selector('cpimon_cpi_drop_active')})"
    )
    board.add(
        _state_timeline("CPI state (worst of its segments) · owner", _STATES).description(
            "ok; target breached (last judged window on the wrong side of the target); drop "
            "(the CPI left its normal band); both."
        ),
        24,
        9,
        _Query(state, "{{cpi}} · {{owner}}"),
    )
    # One panel per unit: a latency in ms and a rate in % on one axis would flatten both.
    by_unit: dict[str, list[Indicator]] = {}
    for cpi in catalog.cpis:
        by_unit.setdefault(grafana_unit(cpi.unit), []).append(cpi)
    for unit, cpis in by_unit.items():
        names = "|".join(cpi.name for cpi in cpis)
        units = " / ".join(dict.fromkeys(cpi.unit or "no unit" for cpi in cpis))
        board.add(
            _series(
                f"Worst segment over time ({units})",
                unit,
                f"The worst segment of {', '.join(cpi.name for cpi in cpis)} (the lowest when "
                "higher is better).",
            ),
            max(6, 24 // len(by_unit)),
            8,
            _Query(f'cpimon:cpi_value:worst_segment{{cpi=~"{names}"}}', "{{cpi}}"),
        )
    board.add(
        _series("Events counted per second, by CPI", "eps"),
        24,
        8,
        _Query(
            f"sum by (cpi) (rate({_selector('cpimon_cpi_events_total')}[$__rate_interval]))",
            "{{cpi}}",
        ),
    )
    if catalog.kpis:
        board.row("Key Performance Indicators")
        width = max(4, 24 // len(catalog.kpis))
        for kpi in catalog.kpis:
            target = kpi.target
            goal = "no target" if target is None else f"target {target.bound} {target.value:g}"
            values = _selector("cpimon_kpi_value", _is("kpi", kpi.name))
            expr = f"{_worst(kpi)} by (kpi, owner) ({values})"
            board.add(
                _stat(
                    f"{kpi.name} · {kpi.owner}",
                    grafana_unit(kpi.unit),
                    f"{kpi.description} ({goal}; owner {kpi.owner}).",
                ).thresholds(_thresholds_builder(_thresholds(kpi))),
                width,
                5,
                _Query(expr, _legend("owner")),
            )
    if catalog.metrics:
        board.row("Metrics")
        width = max(6, 24 // len(catalog.metrics))
        for metric in catalog.metrics:
            labels = ", ".join(["metric", *(s.label for s in metric.segment_by)])
            values = _selector("cpimon_metric_value", _is("metric", metric.name))
            expr = f"sum by ({labels}) ({values})"
            legend = _legend("metric", *(s.label for s in metric.segment_by))
            board.add(
                _series(
                    f"{metric.name} · {metric.owner}", grafana_unit(metric.unit), metric.description
                ),
                width,
                7,
                _Query(expr, legend),
            )
    return board.build()


def _band_expr(cpis: Sequence[Indicator], matchers: str, sign: str) -> str:
    """Baseline +/- band_k times the spread of recent values, per group of CPIs with equal settings.

    The worker keeps its standard deviation to itself; Prometheus estimates it from the
    recorded values over the baseline's memory (an EW mean of weight a remembers about
    2/a - 1 windows).  The deviation panel shows the worker's own verdict.
    """
    groups: dict[tuple[float, float], list[str]] = {}
    for cpi in cpis:
        memory = (2 / cpi.alerting.baseline_alpha - 1) * cpi.window
        groups.setdefault((cpi.alerting.band_k, memory), []).append(cpi.name)
    parts = []
    for (band_k, memory), names in sorted(groups.items()):
        # With one group the CPI variable alone selects; more need the group's names too.
        names_matcher = "" if len(groups) == 1 else f',cpi=~"{"|".join(names)}"'
        only = "{" + matchers + names_matcher + "}"
        spread = f"stddev_over_time(cpimon_cpi_value{only}[{prometheus_duration(memory)}])"
        parts.append(f"cpimon_cpi_baseline{only} {sign} {band_k:g} * {spread}")
    return "\nor\n".join(parts)


def _cpi_drilldown(catalog: Catalog) -> model.Dashboard:
    board = _Board(
        "cpimon-cpi",
        "CPI drill-down",
        "One CPI per segment: its value against its target and its normal band, its "
        "state, the events behind it. Drops and target breaches are annotations.",
        catalog,
    )
    labels = _segment_labels(catalog.cpis)
    board.variable(
        _query_variable("cpi", "CPI", f"label_values({_selector('cpimon_cpi_events_total')}, cpi)")
    )
    for label in labels:
        query = f"label_values({_selector('cpimon_cpi_events_total', _CPI)}, {label})"
        board.variable(_query_variable(label, label, query, all_values=True))
    matchers = ",".join(
        [f'job="{JOB}"', 'cpi="$cpi"', *(f'{label}=~"${label}"' for label in labels)]
    )
    sel = f"{{{matchers}}}"
    segments = ", ".join(["cpi", *labels])
    legend = _legend("cpi", *labels)
    for name, metric, color in (
        ("Drops", "cpimon_cpi_drop_active", "red"),
        ("Target breaches", "cpimon_cpi_below_target", "orange"),
    ):
        board.builder.annotation(
            builders.AnnotationQuery()
            .name(name)
            .datasource(_DATASOURCE)
            .enable(True)
            .icon_color(color)
            .expr(f"max by (cpi) ({metric}{sel}) == 1")
        )

    board.row("Value")
    board.add(
        _per_indicator(
            _stat(
                "Last closed window, per segment",
                "none",
                "Value of the last closed window of each segment, coloured by the target.",
            ),
            catalog.cpis,
            thresholds=True,
        ),
        24,
        5,
        _Query(f"cpimon_cpi_value{sel}", legend),
    )
    board.add(
        _per_indicator(
            _series(
                "Value, live value and target",
                "none",
                "Solid: last closed window. Live: the open window so far. Target: the "
                "catalog target.",
            ),
            catalog.cpis,
        ),
        12,
        9,
        _Query(f"cpimon_cpi_value{sel}", legend),
        _Query(f"cpimon_cpi_live_value{sel}", "{{cpi}} live " + _legend(*labels)),
        _Query(f"max by (cpi) ({_selector('cpimon_cpi_target', _CPI)})", "{{cpi}} target"),
    )
    band_k = sorted({cpi.alerting.band_k for cpi in catalog.cpis})
    board.add(
        _per_indicator(
            _series(
                "Value against its normal band",
                "none",
                "Baseline: the worker's exponentially weighted mean of past windows. Band: "
                f"baseline ± band_k ({', '.join(f'{k:g}' for k in band_k)}) standard "
                "deviations, the spread estimated by Prometheus from the recorded values over "
                "the baseline's memory; the deviation panel shows the worker's own verdict.",
            ),
            catalog.cpis,
        ),
        12,
        9,
        _Query(f"cpimon_cpi_value{sel}", legend),
        _Query(f"cpimon_cpi_baseline{sel}", "{{cpi}} baseline " + _legend(*labels)),
        _Query(_band_expr(catalog.cpis, matchers, "-"), "{{cpi}} band low " + _legend(*labels)),
        _Query(_band_expr(catalog.cpis, matchers, "+"), "{{cpi}} band high " + _legend(*labels)),
    )

    board.row("Judgement")
    board.add(
        _series(
            "Deviation from normal",
            "suffix: sd",
            "(value - baseline) / standard deviation, as the worker computes it: beyond "
            "band_k on the bad side for confirm_after windows starts a drop.",
        )
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED)
        )
        .thresholds(_steps((None, "red"), (-band_k[0], "green"), (band_k[0], "red"))),
        12,
        8,
        _Query(f"cpimon_cpi_deviation{sel}", legend),
    )
    board.add(
        _state_timeline("State per segment", _STATES),
        12,
        8,
        _Query(f"cpimon_cpi_below_target{sel} + 2 * cpimon_cpi_drop_active{sel}", legend),
    )

    board.row("Events")
    board.add(
        _series("Events counted per second", "eps"),
        12,
        8,
        _Query(
            f"sum by ({segments}) (rate(cpimon_cpi_events_total{sel}[$__rate_interval]))", legend
        ),
    )
    board.add(
        _series(
            "Late and unmeasurable events per second",
            "eps",
            "Late: arrived after their window closed (dropped). Unmeasurable: matched the CPI "
            "but the measured field was missing or of the wrong type.",
        ),
        12,
        8,
        _Query(
            f"sum by (cpi) (rate({_selector('cpimon_events_late_total', _CPI)}[$__rate_interval]))",
            "{{cpi}} late",
        ),
        _Query(
            "sum by (indicator) (rate("
            f"{_selector('cpimon_events_unmeasurable_total', _INDICATOR)}"
            "[$__rate_interval]))",
            "{{indicator}} unmeasurable",
        ),
    )
    board.add(
        _stat("Drops detected in the time range", "short")
        .decimals(0)
        .thresholds(_steps((None, "green"), (1, "red"))),
        12,
        5,
        _Query(
            f"sum by (cpi) (increase(cpimon_cpi_drops_total{sel}[$__range]))",
            "{{cpi}}",
            instant=True,
        ),
    )
    board.add(
        _series(
            'Segment values folded into "other" per second',
            "eps",
            "Events whose segment value came after the label's cap was reached.",
        ),
        12,
        5,
        _Query(
            f"sum by (cpi, label) (rate({_selector('cpimon_segment_values_folded_total', _CPI)}"
            "[$__rate_interval]))",
            "{{cpi}} {{label}}",
        ),
    )
    return board.build()


def _links(catalog: Catalog) -> model.Dashboard:
    board = _Board(
        "cpimon-links",
        "CPI → KPI links",
        "Which customer experiences move the business: the correlation of each CPI with "
        "each KPI it is linked to, window by window, across lags.",
        catalog,
    )
    board.variable(
        _query_variable("cpi", "CPI", f"label_values({_selector('cpimon_link_correlation')}, cpi)")
    )
    board.variable(
        _query_variable(
            "kpi",
            "KPI",
            f"label_values({_selector('cpimon_link_correlation', _CPI)}, kpi)",
        )
    )
    pair = ('cpi="$cpi"', 'kpi="$kpi"')
    board.row("All links")
    board.add(
        _table(
            "Links now",
            "Every CPI → KPI link: confirmed or not, the lag at which the KPI follows the "
            "CPI best, and the impact at that lag (KPI units per CPI unit).",
            columns={
                "Value #A": _Column("confirmed", mappings=_CONFIRMED),
                "Value #B": _Column("best lag", "s"),
                "Value #C": _Column("impact", "short"),
            },
            sort_by="confirmed",
        ),
        12,
        10,
        _Query(
            f"max by (cpi, kpi, cpi_owner, kpi_owner) ({_selector('cpimon_link_confirmed')})",
            instant=True,
            table=True,
        ),
        _Query(
            f"max by (cpi, kpi) ({_selector('cpimon_link_best_lag_seconds')})",
            instant=True,
            table=True,
        ),
        _Query(f"max by (cpi, kpi) ({_selector('cpimon_link_impact')})", instant=True, table=True),
    )
    board.add(
        _state_timeline("Confirmed links over time", _CONFIRMED),
        12,
        10,
        _Query(f"max by (cpi, kpi) ({_selector('cpimon_link_confirmed')})", "{{cpi}} → {{kpi}}"),
    )
    board.row("One link: $cpi → $kpi")
    by_lag = "max by (lag_seconds)"
    board.add(
        bargauge.Panel()
        .title("Correlation by lag (now)")
        .description("Pearson correlation of the CPI with the KPI that many seconds later.")
        .unit("none")
        .decimals(2)
        .min(-1)
        .max(1)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_steps((None, "blue"), (-0.3, "text"), (0.3, "green"))),
        8,
        8,
        _Query(
            f"{by_lag} ({_selector('cpimon_link_correlation', *pair)})",
            "lag {{lag_seconds}} s",
            instant=True,
        ),
    )
    board.add(
        _table(
            "Correlation by lag, with its 95 % interval",
            "Per lag: the correlation, its Fisher 95 % confidence interval and the number of "
            "window pairs it is computed from.",
            columns={
                "Value #A": _Column("r"),
                "Value #B": _Column("low"),
                "Value #C": _Column("high"),
                "Value #D": _Column("pairs", "short"),
            },
        ),
        6,
        8,
        *(
            _Query(f"{by_lag} ({_selector(metric, *pair)})", instant=True, table=True)
            for metric in (
                "cpimon_link_correlation",
                "cpimon_link_correlation_lower",
                "cpimon_link_correlation_upper",
                "cpimon_link_samples",
            )
        ),
    )
    board.add(
        _series("Correlation by lag over time", "none").min(-1).max(1),
        10,
        8,
        _Query(
            f"{by_lag} ({_selector('cpimon_link_correlation', *pair)})",
            "lag {{lag_seconds}} s",
        ),
    )
    board.add(
        _stat("Best lag", "s", "The lag at which the KPI follows the CPI best.").thresholds(
            _steps((None, "blue"))
        ),
        6,
        6,
        _Query(f"max({_selector('cpimon_link_best_lag_seconds', *pair)})", "best lag"),
    )
    board.add(
        _stat(
            "Confirmed",
            "none",
            "Confirmed after enough evaluations in a row with a significant best lag.",
        )
        .mappings(_mapping(_CONFIRMED))
        .thresholds(_steps((None, "text"), (1, "green"))),
        6,
        6,
        _Query(f"max({_selector('cpimon_link_confirmed', *pair)})", "confirmed"),
    )
    impact = _series(
        "Impact at the best lag",
        "short",
        "How much the KPI moves per unit of the CPI (per 1.0 of a ratio, per ms of a "
        "latency), in the KPI's unit.",
    )
    kpis = {kpi.name: kpi for kpi in catalog.kpis}
    for link in catalog.links:
        kpi = kpis.get(link.kpi)
        if kpi is not None and kpi.unit:
            impact = impact.override_by_name(
                f"{link.cpi} → {link.kpi}",
                [model.DynamicConfigValue(id_val="unit", value=grafana_unit(kpi.unit))],
            )
    board.add(
        impact,
        12,
        6,
        _Query(
            f"max by (cpi, kpi) ({_selector('cpimon_link_impact', *pair)})",
            "{{cpi}} → {{kpi}}",
        ),
    )
    return board.build()


def _owner_board(catalog: Catalog) -> model.Dashboard:
    board = _Board(
        "cpimon-owner",
        "Accountability board",
        "What one team answers for: its CPIs and KPIs, its open alerts and the KPIs its CPIs move.",
        catalog,
    )
    board.variable(
        _query_variable(
            "owner",
            "Owner",
            'label_values({__name__=~"cpimon_(cpi|kpi|metric)_events_total",' + _JOB + "}, owner)",
        )
    )
    owner = 'owner="$owner"'
    board.row("Their CPIs")
    board.add(
        _per_indicator(
            _stat("Their CPIs now (worst segment)", "none", "Coloured by each CPI's target."),
            catalog.cpis,
            thresholds=True,
        ),
        24,
        5,
        _Query(f"cpimon:cpi_value:worst_segment{{{owner}}}", "{{cpi}}"),
    )
    board.add(
        _state_timeline("State of their CPIs", _STATES),
        12,
        8,
        _Query(
            f"max by (cpi) ({_selector('cpimon_cpi_below_target', owner)})\n"
            f"+ on (cpi) 2 * max by (cpi) ({_selector('cpimon_cpi_drop_active', owner)})",
            "{{cpi}}",
        ),
    )
    board.add(
        _per_indicator(_series("Their CPIs over time (worst segment)", "none"), catalog.cpis),
        12,
        8,
        _Query(f"cpimon:cpi_value:worst_segment{{{owner}}}", "{{cpi}}"),
    )
    board.row("Their alerts")
    board.add(
        _stat("Alerts firing", "short").thresholds(_steps((None, "green"), (1, "red"))),
        6,
        8,
        # No alert is no series: count() of nothing is nothing, and the team wants a 0.
        _Query(
            f'count(ALERTS{{{owner},alertstate="firing"}}) or vector(0)', "firing", instant=True
        ),
    )
    board.add(
        _table(
            "Open alerts",
            "Alerts of this owner, pending or firing, from Prometheus (the same alerts "
            "Alertmanager routes to the team).",
            columns={},
            hide=["Value", "__name__", "instance", "job"],
            sort_by="alertstate",
        ),
        18,
        8,
        _Query(f"ALERTS{{{owner}}}", instant=True, table=True),
    )
    board.row("Linked KPIs")
    mine = f"on (cpi, kpi) {_selector('cpimon_link_confirmed', f'cpi_{owner}')}"
    board.add(
        _table(
            "KPIs their CPIs are linked to",
            "Confirmed: the KPI follows the CPI at the best lag, significantly, for several "
            "evaluations in a row. Impact: KPI units per CPI unit, at the best lag.",
            columns={
                "Value #A": _Column("confirmed", mappings=_CONFIRMED),
                "Value #B": _Column("best lag", "s"),
                "Value #C": _Column("impact", "short"),
            },
            sort_by="confirmed",
        ),
        12,
        8,
        _Query(
            f"max by (cpi, kpi, kpi_owner) ({_selector('cpimon_link_confirmed', f'cpi_{owner}')})",
            instant=True,
            table=True,
        ),
        _Query(
            f"max by (cpi, kpi) ({_selector('cpimon_link_best_lag_seconds')}) and {mine}",
            instant=True,
            table=True,
        ),
        _Query(
            f"max by (cpi, kpi) ({_selector('cpimon_link_impact')}) and {mine}",
            instant=True,
            table=True,
        ),
    )
    linked = f"max by (kpi) ({_selector('cpimon_link_confirmed', f'cpi_{owner}')})"
    board.add(
        _per_indicator(
            _series(
                "The KPIs their CPIs are linked to, over time",
                "none",
                "What the business sees move when these CPIs move.",
            ),
            catalog.kpis,
        ),
        12,
        8,
        _Query(f"max by (kpi) ({_selector('cpimon_kpi_value')}) and on (kpi) {linked}", "{{kpi}}"),
    )
    return board.build()


def _pipeline(catalog: Catalog) -> model.Dashboard:
    board = _Board(
        "cpimon-pipeline",
        "cpi-monitor pipeline health",
        "The workers themselves: are they up and reaching Kafka, how many events they "
        "take in, reject or drop, how late they are, and Faust's own sensor metrics.",
        catalog,
    )
    board.variable(
        _query_variable(
            "instance", "Worker", f"label_values({_selector('up')}, instance)", all_values=True
        )
    )
    inst = 'instance=~"$instance"'

    def per_second(metric: str, by: str, *matchers: str) -> str:
        return f"sum by ({by}) (rate({_selector(metric, inst, *matchers)}[$__rate_interval]))"

    def quantile(q: float, histogram: str) -> str:
        return f"histogram_quantile({q:g}, {per_second(histogram + '_bucket', 'instance, le')})"

    def p99(histogram: str) -> str:
        return quantile(0.99, histogram)

    board.row("Workers")
    for title, expr, mapping in (
        ("Worker up (scraped)", _selector("up", inst), _UP),
        ("Broker reachable", _selector("cpimon_broker_up", inst), _UP),
    ):
        board.add(
            _stat(title, "none")
            .mappings(_mapping(mapping))
            .thresholds(_steps((None, "red"), (1, "green"))),
            6,
            5,
            _Query(expr, "{{instance}}"),
        )
    for title, metric in (
        ("Observation partitions owned", "cpimon_owned_partitions"),
        ("Open windows", "cpimon_open_windows"),
    ):
        board.add(
            _stat(title, "short").color_mode(common.BigValueColorMode.NONE),
            6,
            5,
            _Query(_selector(metric, inst), "{{instance}}"),
        )

    board.row("Events")
    board.add(
        _series("Events consumed per second", "eps", "Messages read from the input topics."),
        12,
        8,
        _Query(
            per_second("cpimon_events_consumed_total", "instance, topic"), "{{instance}} {{topic}}"
        ),
        _Query(f"cpimon:events_consumed:rate5m{{{inst}}}", "{{instance}} {{topic}} (5m)"),
    )
    board.add(
        _series("Rejected (dead-lettered) per second, by reason", "eps"),
        12,
        8,
        _Query(per_second("cpimon_events_rejected_total", "reason"), "{{reason}}"),
    )
    board.add(
        _series(
            "Rejected share (5m)",
            "percentunit",
            "Share of consumed messages sent to the dead-letter topic; the "
            "CpimonEventsRejected alert fires above 1 % for 5 minutes.",
        ),
        8,
        8,
        _Query("cpimon:events_rejected:ratio_rate5m", "{{topic}}"),
    )
    board.add(
        _series(
            "Late events per second, by indicator",
            "eps",
            "Arrived after their window had closed; dropped.",
        ),
        8,
        8,
        _Query(
            per_second("cpimon_events_late_total", "cpi, kpi, metric"),
            "{{cpi}}{{kpi}}{{metric}}",
        ),
    )
    board.add(
        _series(
            "Duplicate and unmeasurable events per second",
            "eps",
            "Duplicates: a messageId seen again on the same partition (dropped). "
            "Unmeasurable, all indicators together: the CPI drill-down shows them per CPI.",
        ),
        8,
        8,
        _Query(per_second("cpimon_events_duplicate_total", "topic"), "duplicates {{topic}}"),
        _Query(per_second("cpimon_events_unmeasurable_total", "job"), "unmeasurable"),
    )
    board.add(
        _series(
            "Observations per second",
            "suffix: obs/s",
            "Routed: sent by the ingest stage. Applied: folded into windows by the aggregate "
            "stage. Replayed: skipped because a checkpoint already held them.",
        ),
        12,
        8,
        _Query(per_second("cpimon_observations_routed_total", "instance"), "{{instance}} routed"),
        _Query(per_second("cpimon_observations_applied_total", "instance"), "{{instance}} applied"),
        _Query(
            per_second("cpimon_observations_replayed_total", "instance"), "{{instance}} replayed"
        ),
    )
    board.add(
        _series('Segment values folded into "other" per second', "eps"),
        12,
        8,
        _Query(per_second("cpimon_segment_values_folded_total", "cpi, label"), "{{cpi}} {{label}}"),
    )

    board.row("Delay and lag")
    board.add(
        _series(
            "Event delay (processing time - event time)",
            "s",
            "The CpimonEventDelayHigh alert fires when the 5-minute p99 stays above 1 minute.",
        ),
        12,
        8,
        _Query(
            quantile(0.5, "cpimon_event_delay_seconds"),
            "{{instance}} p50",
        ),
        _Query(p99("cpimon_event_delay_seconds"), "{{instance}} p99"),
        _Query(f"cpimon:event_delay_seconds:p99_5m{{{inst}}}", "{{instance}} p99 (5m)"),
    )
    end = _selector("faust_topic_partition_end_offset", inst)
    board.add(
        _series(
            "Consumer lag by topic",
            "short",
            "Messages behind the end of each topic: end offset minus the last offset received "
            "(Faust's faust_messages_received_per_topics_partition) and minus the last "
            "committed offset. Against Tansu (tests, demo) end offsets are understated.",
        ),
        12,
        8,
        _Query(
            f"sum by (topic) (clamp_min({end} - on (instance, topic, partition) "
            f"({_selector('faust_messages_received_per_topics_partition', inst)} + 1), 0))",
            "{{topic}} not yet received",
        ),
        _Query(
            f"sum by (topic) (clamp_min({end} - on (instance, topic, partition) "
            f"{_selector('faust_topic_partition_offset_commited', inst)}, 0))",
            "{{topic}} not yet committed",
        ),
    )

    board.row("Faust")
    board.add(
        _series(
            "Messages received per second, by topic",
            "mps",
            "Faust's count of messages handed to the agents. The workers produce through the "
            "transport's producer directly, so Faust's send counters and latencies stay at "
            "zero and are not shown.",
        ),
        8,
        8,
        _Query(per_second("faust_messages_received_per_topic_total", "topic"), "{{topic}}"),
    )
    board.add(
        _series(
            "Faust latencies (p99)",
            "ms",
            "Offset commit latency, and the time an agent spends on one batch of events.",
        ),
        8,
        8,
        _Query(p99("faust_consumer_commit_latency"), "{{instance}} commit"),
        _Query(p99("faust_events_runtime_ms"), "{{instance}} event runtime"),
    )
    board.add(
        _series("Rebalances and in-flight work", "short"),
        8,
        8,
        _Query(_selector("faust_total_rebalances", inst), "{{instance}} rebalances"),
        _Query(_selector("faust_active_messages", inst), "{{instance}} active messages"),
        _Query(_selector("faust_total_active_events", inst), "{{instance}} active events"),
    )

    board.row("Checkpoints")
    board.add(
        _series(
            "Checkpoints saved per second",
            "suffix: /s",
            "Each observation partition's state is checkpointed every CPIMON_CHECKPOINT_INTERVAL.",
        ),
        12,
        6,
        _Query(per_second("cpimon_checkpoints_saved_total", "instance"), "{{instance}} saved"),
    )
    board.add(
        _stat("Checkpoints restored (since start)", "short").color_mode(
            common.BigValueColorMode.NONE
        ),
        12,
        6,
        _Query(_selector("cpimon_checkpoints_restored_total", inst), "{{instance}}"),
    )
    return board.build()


def build_dashboards(catalog: Catalog) -> dict[str, model.Dashboard]:
    """Every dashboard of ``catalog``, by file name."""
    built = [
        _overview(catalog),
        _cpi_drilldown(catalog),
        _links(catalog),
        _owner_board(catalog),
        _pipeline(catalog),
    ]
    return {DASHBOARD_FILES[str(board.uid)]: board for board in built}


def render_dashboard(board: model.Dashboard) -> str:
    """The dashboard as Grafana JSON, keys sorted: regenerating changes only what changed."""
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dashboards(catalog: Catalog, out_dir: str | Path) -> list[Path]:
    """Write every dashboard into ``out_dir``; the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, board in build_dashboards(catalog).items():
        path = out / name
        path.write_text(render_dashboard(board), encoding="utf-8")
        written.append(path)
    return written


# --- reading dashboards back (tests, the picture renderer) -----------------------------------


@dataclass(frozen=True)
class Target:
    """One query of one panel of a dashboard's JSON."""

    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    expr: str
    legend: str
    instant: bool


@dataclass(frozen=True)
class Variable:
    """A Prometheus query variable: ``label_values(SELECTOR, LABEL)``."""

    name: str
    selector: str
    label: str
    all_value: str | None


_LABEL_VALUES = re.compile(r"label_values\((?P<selector>.*),\s*(?P<label>\w+)\)", re.S)


def panel_targets(board: Mapping[str, Any]) -> Iterator[Target]:
    """Every query of every panel (rows' panels included) of a dashboard's JSON."""
    for panel in board.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield Target(
                    panel_id=inner["id"],
                    panel_title=inner.get("title", ""),
                    panel_type=inner["type"],
                    ref_id=target.get("refId", ""),
                    expr=target["expr"],
                    legend=target.get("legendFormat", ""),
                    instant=bool(target.get("instant")),
                )


def template_variables(board: Mapping[str, Any]) -> list[Variable]:
    """The query variables of a dashboard's JSON, in order (later ones may use earlier ones)."""
    found = []
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        match = _LABEL_VALUES.fullmatch(str(variable["query"]).strip())
        if match is None:
            raise ValueError(f"variable {variable['name']}: not a label_values() query")
        found.append(
            Variable(
                name=variable["name"],
                selector=match["selector"].strip(),
                label=match["label"],
                all_value=variable.get("allValue") if variable.get("includeAll") else None,
            )
        )
    return found
