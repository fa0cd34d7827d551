"""Alerting as code: Prometheus rules and an Alertmanager config, generated from the catalog.

``cpimon rules`` writes both; ``deploy/`` holds them generated from
``catalog.example.yaml`` (a test keeps them up to date).

Alerts per CPI (``cpi``, ``owner`` and ``severity`` labels; ``summary``,
``description`` and ``runbook_url`` annotations):

``CpiTargetBreached`` (CPIs with a target)
    ``cpimon_cpi_below_target == 1`` for the target's ``for`` (default: two windows).
    The name reads the same for ``min`` and ``max`` targets.
``CpiDropDetected``
    ``cpimon_cpi_drop_active == 1``: the worker's drop detector (models.drops) has
    already confirmed the drop over several windows, so no ``for`` is added.
``CpiStale``
    No event counted into the CPI for ``stale_windows`` windows, across all its
    segments and workers; a CPI whose series are gone altogether (never seen,
    or every worker restarted without it) is stale too.  Only once Prometheus
    has been scraping cpimon for that long: a Prometheus that just started has
    no history, and "no samples yet" is not "no events".

Both CPI alerts are evaluated per series but without the ``instance`` label:
when a partition moves to another worker the alert stays the same alert.
Their descriptions look up the current value, baseline and deviation, and the
KPIs the CPI is confirmed to move (``cpimon_link_confirmed == 1``), with
Prometheus template queries.

Pipeline alerts (owner ``platform`` unless told otherwise): ``CpimonWorkerDown``,
``CpimonEventsRejected``, ``CpimonEventDelayHigh``, ``CpimonOffsetsSkipped``.  The
Alertmanager config routes each ``owner`` to its own webhook receiver and mutes the
CPI alerts while a worker is down (their values are then frozen or missing, not wrong).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from models.spec import Catalog, Indicator
from streams.transport import HOLE_PATIENCE

__all__ = [
    "ALERTMANAGER_FILE",
    "DEFAULT_WEBHOOK_BASE",
    "GROUP_INTERVAL_SECONDS",
    "GROUP_WAIT_SECONDS",
    "PLATFORM_OWNER",
    "REPEAT_INTERVAL_SECONDS",
    "RULES_FILE",
    "prometheus_duration",
    "render_alertmanager",
    "render_rules",
    "target_for_seconds",
    "write_alertmanager",
    "write_rules",
]

RULES_FILE = "cpimon-rules.yml"
ALERTMANAGER_FILE = "alertmanager.yml"
JOB = "cpimon"
#: Owner label of the pipeline alerts, and the Alertmanager receiver of unrouted alerts.
PLATFORM_OWNER = "platform"
#: Placeholder receivers: one URL per owner, ``<base>/<owner>``.
DEFAULT_WEBHOOK_BASE = "http://127.0.0.1:9095/alerts"
#: Share of consumed messages sent to the dead-letter topic that is worth a ticket.
REJECTED_RATIO = 0.01
#: Seconds between an event happening and a worker processing it (p99) worth a ticket.
DELAY_P99_SECONDS = 60.0
#: Windows a target breach must last when the target has no ``for``.
DEFAULT_FOR_WINDOWS = 2
CPI_ALERTS = ("CpiTargetBreached", "CpiDropDetected", "CpiStale")
#: Alertmanager: wait for more alerts of a new group before its first notification...
GROUP_WAIT_SECONDS = 30.0
#: ...then send what changed in the group (new alerts, resolved ones) at most this often...
GROUP_INTERVAL_SECONDS = 300.0
#: ...and repeat a notification of alerts still firing this often.
REPEAT_INTERVAL_SECONDS = 4 * 3600.0

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


def prometheus_duration(seconds: float) -> str:
    """A Prometheus duration: whole milliseconds in d, h, m, s and ms.

    >>> prometheus_duration(180), prometheus_duration(90), prometheus_duration(0.5)
    ('3m', '1m30s', '500ms')
    """
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    parts = []
    for unit, size in _UNITS:
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _selector(metric: str, **matchers: str) -> str:
    pairs = [f'job="{JOB}"', *(f'{name}="{value}"' for name, value in matchers.items())]
    return f"{metric}{{{','.join(pairs)}}}"


def _per_series(metric: str, cpi: Indicator) -> str:
    # Without instance: a series that moves to another worker stays one alert.
    return f"max without (instance) ({_selector(metric, cpi=cpi.name)})"


def _go(action: str) -> str:
    """A Go template action: ``{{ action }}``."""
    return "{{ " + action + " }}"


def _value_template(metric: str, cpi: Indicator, fmt: str, suffix: str = "") -> str:
    """Go template printing ``metric`` for the alert's own series (same segment labels)."""
    labels = [f'job="{JOB}"', f'cpi="{cpi.name}"']
    labels += [f"{segment.label}=%q" for segment in cpi.segment_by]
    query = f"max without (instance) ({metric}{{{','.join(labels)}}})"
    args = "".join(f" $labels.{segment.label}" for segment in cpi.segment_by)
    source = f"printf `{query}`{args} | query" if args else f"query `{query}`"
    shown = _go(f"with {source}") + _go(f". | first | value | {fmt}")
    return f"{shown}{suffix}{_go('else')}unknown{_go('end')}"


def _in_unit(metric: str, cpi: Indicator) -> str:
    """Go template printing ``metric`` of the alert's series the way targets are written."""
    # Ratios read best as percentages, as their targets do; other units follow the number.
    if cpi.unit == "ratio":
        return _value_template(metric, cpi, "humanizePercentage")
    return _value_template(metric, cpi, 'printf "%.4g"', f" {cpi.unit}".rstrip())


def _number(value: float, cpi: Indicator) -> str:
    if cpi.unit == "ratio":
        return f"{value * 100:g}%"
    return f"{value:g} {cpi.unit}".rstrip()


def _segments(cpi: Indicator) -> str:
    if not cpi.segment_by:
        return ""
    labels = ", ".join(f"{s.label}={_go('$labels.' + s.label)}" for s in cpi.segment_by)
    return f" ({labels})"


def _linked_kpis(cpi: Indicator) -> str:
    query = f"max by (kpi, kpi_owner) ({_selector('cpimon_link_confirmed', cpi=cpi.name)}) == 1"
    kpis = (
        '{{ range $i, $link := sortByLabel "kpi" . }}{{ if $i }}, {{ end }}'
        "{{ $link.Labels.kpi }} (owner {{ $link.Labels.kpi_owner }}){{ end }}"
    )
    return f"{_go(f'with query `{query}`')} It is confirmed to move these KPIs: {kpis}.{_go('end')}"


def _labels(cpi: Indicator) -> dict[str, str]:
    return {"cpi": cpi.name, "owner": cpi.owner, "severity": cpi.severity}


def _annotations(cpi: Indicator, summary: str, description: str) -> dict[str, str]:
    annotations = {"description": description, "summary": summary}
    if cpi.runbook_url:
        annotations["runbook_url"] = cpi.runbook_url
    return annotations


def _step(cpi: Indicator) -> str:
    return f"Journey step {cpi.journey_step}, owned by {cpi.owner}."


def target_for_seconds(cpi: Indicator) -> float:
    """How long a breach must last before CpiTargetBreached fires: the target's ``for``,
    else :data:`DEFAULT_FOR_WINDOWS` windows."""
    if cpi.target is None:
        raise ValueError(f"{cpi.name} has no target, so no CpiTargetBreached alert")
    return cpi.target.for_seconds or DEFAULT_FOR_WINDOWS * cpi.window


def _target_rule(cpi: Indicator) -> dict[str, Any]:
    target = cpi.target
    assert target is not None
    duration = target_for_seconds(cpi)
    side, bound = ("below", "at least") if target.bound == "min" else ("above", "at most")
    value = _in_unit("cpimon_cpi_value", cpi)
    goal = _number(target.value, cpi)
    description = (
        f"{cpi.description}: {value} in the last closed window, against a target of "
        f"{bound} {goal}, for {prometheus_duration(duration)} or more. {_step(cpi)}"
        f"{_linked_kpis(cpi)}"
    )
    return {
        "alert": "CpiTargetBreached",
        "expr": f"{_per_series('cpimon_cpi_below_target', cpi)} == 1",
        "for": prometheus_duration(duration),
        "labels": _labels(cpi),
        "annotations": _annotations(
            cpi, f"{cpi.name} is {side} its target of {goal}{_segments(cpi)}", description
        ),
    }


def _drop_rule(cpi: Indicator) -> dict[str, Any]:
    moved = "dropped" if cpi.higher_is_better else "risen"
    value = _in_unit("cpimon_cpi_value", cpi)
    baseline = _in_unit("cpimon_cpi_baseline", cpi)
    deviation = _value_template("cpimon_cpi_deviation", cpi, 'printf "%+.1f"')
    description = (
        f"{cpi.description}: {value} in the last closed window, against a normal of "
        f"{baseline} ({deviation} standard deviations). {_step(cpi)}{_linked_kpis(cpi)}"
    )
    return {
        "alert": "CpiDropDetected",
        "expr": f"{_per_series('cpimon_cpi_drop_active', cpi)} == 1",
        "labels": _labels(cpi),
        "annotations": _annotations(
            cpi, f"{cpi.name} has {moved} away from its normal{_segments(cpi)}", description
        ),
    }


def _stale_rule(cpi: Indicator) -> dict[str, Any]:
    windows = cpi.alerting.stale_windows
    span = prometheus_duration(windows * cpi.window)
    events = _selector("cpimon_cpi_events_total", cpi=cpi.name)
    # increase() == 0: series still exported but not growing; absent_over_time: every
    # series of the CPI has vanished, or never existed (the sum of nothing is nothing).
    # Both hold right after Prometheus starts, before it has a span of samples: the
    # guard waits until it was already scraping cpimon one span ago.
    watched = f'present_over_time(up{{job="{JOB}"}}[{span}] offset {span})'
    expr = (
        f"(\n  sum by (cpi) (increase({events}[{span}])) == 0\n"
        f"  or\n  sum by (cpi) (absent_over_time({events}[{span}]))\n)\n"
        f"and on () {watched}"
    )
    names = "events" if cpi.events in ((), ("*",)) else f"{', '.join(cpi.events)} events"
    if cpi.where:
        names += " with " + ", ".join(f"{path}={value}" for path, value in cpi.where)
    description = (
        f"No {names} were counted into {cpi.name} in the last {span} ({windows} windows of "
        f"{prometheus_duration(cpi.window)}), so its value and its alerts are frozen. Check "
        f"that the producers still send these events, then the cpimon workers' logs and "
        f"the cpimon_events_rejected_total counter. {_step(cpi)}"
    )
    return {
        "alert": "CpiStale",
        "expr": expr,
        "labels": _labels(cpi),
        "annotations": _annotations(
            cpi, f"{cpi.name} has counted no events for {span}", description
        ),
    }


def _worst_rule(cpi: Indicator) -> dict[str, Any]:
    worst = "min" if cpi.higher_is_better else "max"
    values = _selector("cpimon_cpi_value", cpi=cpi.name)
    return {
        "record": "cpimon:cpi_value:worst_segment",
        "expr": f"{worst} by (cpi, owner, journey_step) ({values})",
        # Already in the result; as a rule label it tells promtool the rules differ.
        "labels": {"cpi": cpi.name},
    }


def _pipeline_rules(platform_owner: str) -> list[dict[str, Any]]:
    labels = {"owner": platform_owner}
    consumed = _selector("cpimon_events_consumed_total")
    rejected = _selector("cpimon_events_rejected_total")
    delay = _selector("cpimon_event_delay_seconds_bucket")
    return [
        {
            "record": "cpimon:events_consumed:rate5m",
            "expr": f"sum by (instance, topic) (rate({consumed}[5m]))",
        },
        {
            "record": "cpimon:events_rejected:ratio_rate5m",
            "expr": f"sum by (topic) (rate({rejected}[5m]))\n/\n"
            f"sum by (topic) (rate({consumed}[5m]))",
        },
        {
            "record": "cpimon:event_delay_seconds:p99_5m",
            "expr": f"histogram_quantile(0.99, sum by (instance, le) (rate({delay}[5m])))",
        },
        {
            "alert": "CpimonWorkerDown",
            "expr": f'up{{job="{JOB}"}} == 0',
            "for": "1m",
            "labels": {**labels, "severity": "page"},
            "annotations": {
                "description": "Prometheus cannot scrape the cpimon worker at {{ $labels.instance "
                "}}. The CPIs of the partitions it owns are neither updated nor alerted on "
                "until it is back or its partitions move to another worker. Check the process "
                "and its logs, and that its metrics port is reachable from Prometheus.",
                "summary": "cpimon worker {{ $labels.instance }} is down",
            },
        },
        {
            "alert": "CpimonEventsRejected",
            "expr": f"cpimon:events_rejected:ratio_rate5m > {REJECTED_RATIO:g}",
            "for": "5m",
            "labels": {**labels, "severity": "ticket"},
            "annotations": {
                "description": "{{ $value | humanizePercentage }} of the messages read from "
                "{{ $labels.topic }} over 5m went to the dead-letter topic instead of the "
                f"CPIs (more than {REJECTED_RATIO:.0%}). See cpimon_events_rejected_total by "
                "reason, and the cpimon-reason header of the dead letters, to find the "
                "producer sending them.",
                "summary": "cpimon rejects {{ $value | humanizePercentage }} of "
                "{{ $labels.topic }}",
            },
        },
        {
            "alert": "CpimonEventDelayHigh",
            "expr": f"cpimon:event_delay_seconds:p99_5m > {DELAY_P99_SECONDS:g}",
            "for": "5m",
            "labels": {**labels, "severity": "ticket"},
            "annotations": {
                "description": "99% of the events processed by {{ $labels.instance }} over "
                "5m happened up to {{ $value | humanizeDuration }} earlier (more than "
                f"{prometheus_duration(DELAY_P99_SECONDS)}): the worker lags behind the topic, "
                "or producers send late. Windows close late and late events are dropped. "
                "Check the consumer lag, the worker's CPU, and the producers' clocks.",
                "summary": "cpimon worker {{ $labels.instance }} processes events "
                "{{ $value | humanizeDuration }} late",
            },
        },
        {
            "alert": "CpimonOffsetsSkipped",
            "expr": f"increase({_selector('cpimon_offsets_skipped_total')}[15m]) > 0",
            "labels": {**labels, "severity": "ticket"},
            "annotations": {
                "description": "{{ $labels.instance }} skipped {{ $value | humanize }} offsets "
                "of {{ $labels.topic }} in the last 15m: the broker returned later records but "
                "never those, though the worker fetched them again for "
                f"{prometheus_duration(HOLE_PATIENCE)}. The counts of the "
                "series in those records are short. Check the broker's logs, and that the "
                "topic is neither compacted nor written in transactions.",
                "summary": "cpimon worker {{ $labels.instance }} skipped records of "
                "{{ $labels.topic }}",
            },
        },
    ]


def render_rules(catalog: Catalog, platform_owner: str = PLATFORM_OWNER) -> dict[str, Any]:
    """The Prometheus rule file for ``catalog``: CPIs sorted by name, in a fixed order."""
    cpi_rules: list[dict[str, Any]] = []
    for cpi in sorted(catalog.cpis, key=lambda indicator: indicator.name):
        cpi_rules.append(_worst_rule(cpi))
        if cpi.target is not None:
            cpi_rules.append(_target_rule(cpi))
        cpi_rules += [_drop_rule(cpi), _stale_rule(cpi)]
    return {
        "groups": [
            {"name": "cpimon-pipeline", "rules": _pipeline_rules(platform_owner)},
            {"name": "cpimon-cpis", "rules": cpi_rules},
        ]
    }


def render_alertmanager(
    catalog: Catalog,
    webhook_base: str = DEFAULT_WEBHOOK_BASE,
    platform_owner: str = PLATFORM_OWNER,
    *,
    group_wait: float = GROUP_WAIT_SECONDS,
    group_interval: float = GROUP_INTERVAL_SECONDS,
    repeat_interval: float = REPEAT_INTERVAL_SECONDS,
) -> dict[str, Any]:
    """Alertmanager config: one webhook receiver per owner, routed by the owner label.

    The group timings (seconds) bound how late notifications leave (agents/alert_timing.py).
    """
    owners = sorted({indicator.owner for indicator in catalog.indicators} - {platform_owner})
    base = webhook_base.rstrip("/")

    def receiver(owner: str) -> dict[str, Any]:
        return {
            "name": owner,
            "webhook_configs": [{"send_resolved": True, "url": f"{base}/{owner}"}],
        }

    return {
        "route": {
            "receiver": platform_owner,
            "group_by": ["alertname", "cpi"],
            "group_wait": prometheus_duration(group_wait),
            "group_interval": prometheus_duration(group_interval),
            "repeat_interval": prometheus_duration(repeat_interval),
            "routes": [{"matchers": [f'owner="{owner}"'], "receiver": owner} for owner in owners],
        },
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="CpimonWorkerDown"'],
                "target_matchers": [f'alertname=~"{"|".join(CPI_ALERTS)}"'],
            }
        ],
        "receivers": [receiver(platform_owner), *(receiver(owner) for owner in owners)],
    }


class _Dumper(yaml.SafeDumper):
    """Block style everywhere, multi-line strings as literal blocks, no line folding."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(document: dict[str, Any], header: Iterable[str]) -> str:
    body = yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1_000_000,
    )
    return "".join(f"# {line}\n".replace("# \n", "#\n") for line in header) + body


def _header(catalog: Catalog, *notes: str) -> list[str]:
    # The file name only: the output must not depend on where the catalog was read from.
    source = Path(catalog.source).name
    return [f"generated by cpimon rules from {source}; do not edit", *notes]


def write_rules(
    catalog: Catalog, out_dir: str | Path, platform_owner: str = PLATFORM_OWNER
) -> list[Path]:
    """Write ``out_dir/cpimon-rules.yml``; the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RULES_FILE
    text = _dump(render_rules(catalog, platform_owner), _header(catalog))
    path.write_text(text, encoding="utf-8")
    return [path]


def write_alertmanager(
    catalog: Catalog,
    out_dir: str | Path,
    webhook_base: str = DEFAULT_WEBHOOK_BASE,
    platform_owner: str = PLATFORM_OWNER,
) -> Path:
    """Write ``out_dir/alertmanager.yml``; its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ALERTMANAGER_FILE
    notes = (
        "",
        f"Every owner gets a webhook receiver at {webhook_base.rstrip('/')}/<owner>. These are",
        "placeholders: generate with your own --webhook-base, or replace the receivers with",
        "Slack, PagerDuty or e-mail ones (prometheus.io/docs/alerting/latest/configuration)",
        "and keep the routes, which send each alert to the team named in its owner label.",
    )
    document = render_alertmanager(catalog, webhook_base, platform_owner)
    text = _dump(document, _header(catalog, *notes))
    path.write_text(text, encoding="utf-8")
    return path
