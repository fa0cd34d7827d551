"""Dashboards as code: the generated Grafana JSON, checked without a Grafana server.

What Grafana itself would check is checked through the Grafana Foundation SDK's own
model (every file decodes into it and encodes back unchanged) and promtool (every query
parses); the queries against real data are tests/integration/test_dashboards_e2e.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from agents.cli import main
from agents.dashboards import (
    DASHBOARD_FILES,
    DATASOURCE_UID,
    build_dashboards,
    grafana_unit,
    panel_targets,
    render_dashboard,
    template_variables,
    write_dashboards,
)
from bench.dashboard_queries import Window, substitute
from models.catalog import load_catalog, parse_catalog
from models.spec import Catalog

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "catalog.example.yaml"
COMMITTED = ROOT / "deploy" / "grafana" / "dashboards"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
REGENERATE = "run: cpimon dashboards --catalog catalog.example.yaml --out deploy/grafana/dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
BUILTINS = {"__rate_interval", "__interval", "__range", "datasource"}

# A catalog unlike the example: a CPI segmented by two labels of its own, another with
# a different band, a lower-is-better CPI without a target, odd units, no KPIs.
ODD_CATALOG = """\
cpis:
  - name: refund_delay
    description: Hours between a refund request and the refund
    owner: billing
    journey_step: after_sales
    event: Refund Paid
    measure: {mean: properties.hours}
    segment_by: [context.locale, {label: device_kind, path: context.device.type}]
    unit: "% of a day"
    alerting: {better: lower, band_k: 2, baseline_alpha: 0.5}
  - name: search_ok
    description: Share of searches with a result
    owner: search
    journey_step: browse
    event: Products Searched
    measure: {rate: properties.found}
    window: 5m
    target: {min: 0.9}
    unit: ratio
"""


@pytest.fixture(scope="module")
def example() -> Catalog:
    return load_catalog(EXAMPLE)


@pytest.fixture(scope="module")
def boards(example: Catalog) -> dict[str, dict[str, Any]]:
    return {name: json.loads(render_dashboard(b)) for name, b in build_dashboards(example).items()}


def all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def value_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (panel for panel in all_panels(board) if panel["type"] != "row")


# --- committed files ----------------------------------------------------------------------


def test_committed_dashboards_are_up_to_date(example: Catalog, tmp_path: Path) -> None:
    written = write_dashboards(example, tmp_path)
    assert sorted(path.name for path in written) == sorted(DASHBOARD_FILES.values())
    committed = sorted(path.name for path in COMMITTED.glob("*.json"))
    assert committed == sorted(DASHBOARD_FILES.values()), f"unexpected files; {REGENERATE}"
    for path in written:
        assert (COMMITTED / path.name).read_text(encoding="utf-8") == path.read_text(
            encoding="utf-8"
        ), f"deploy/grafana/dashboards/{path.name} is out of date; {REGENERATE}"


def test_the_cli_writes_every_dashboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboards", "--catalog", str(EXAMPLE), "--out", str(tmp_path / "d")]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(DASHBOARD_FILES.values())
    assert capsys.readouterr().out.count("cpimon dashboards: wrote ") == len(DASHBOARD_FILES)


def test_a_bad_catalog_is_reported_by_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cpis: [{name: Bad Name}]\n", encoding="utf-8")
    assert main(["dashboards", "--catalog", str(bad), "--out", str(tmp_path / "d")]) == 2
    assert "cpis[0].name" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("name", sorted(DASHBOARD_FILES.values()))
def test_committed_json_round_trips_through_the_sdk_model(name: str) -> None:
    register_default_plugins()
    original = json.loads((COMMITTED / name).read_text(encoding="utf-8"))
    decoded = Dashboard.from_json(original)
    assert decoded.uid == original["uid"]
    assert json.loads(json.dumps(decoded, cls=JSONEncoder)) == original


# --- structure ----------------------------------------------------------------------------


def test_five_dashboards_with_their_uids(boards: dict[str, dict[str, Any]]) -> None:
    assert {board["uid"]: name for name, board in boards.items()} == {
        uid: name for uid, name in DASHBOARD_FILES.items()
    }
    for board in boards.values():
        assert "cpimon" in board["tags"]
        assert "Generated by `cpimon dashboards` from catalog.example.yaml" in board["description"]


@pytest.mark.parametrize("name", sorted(DASHBOARD_FILES.values()))
def test_panel_ids_are_unique_and_panels_fit_the_grid(
    boards: dict[str, dict[str, Any]], name: str
) -> None:
    panels = list(all_panels(boards[name]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}: {ids}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        taken = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not taken & cells, f"{panel['title']!r} overlaps another panel in {name}"
        cells |= taken


@pytest.mark.parametrize("name", sorted(DASHBOARD_FILES.values()))
def test_every_target_panel_and_variable_has_a_datasource(
    boards: dict[str, dict[str, Any]], name: str
) -> None:
    board = boards[name]
    for panel in value_panels(board):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])
            assert target["refId"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    variables = board["templating"]["list"]
    assert variables[0]["type"] == "datasource"
    assert variables[0]["query"] == "prometheus"
    assert variables[0]["current"]["value"] == DATASOURCE_UID
    for variable in variables[1:]:
        assert variable["datasource"] == DATASOURCE, variable["name"]
    for annotation in board["annotations"].get("list", []):
        assert annotation["datasource"] == DATASOURCE, annotation["name"]


@pytest.mark.parametrize("name", sorted(DASHBOARD_FILES.values()))
def test_every_value_panel_has_a_unit(boards: dict[str, dict[str, Any]], name: str) -> None:
    for panel in value_panels(boards[name]):
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert isinstance(unit, str) and unit, f"{panel['title']!r} in {name} has no unit"


def test_panels_mixing_indicators_set_each_indicators_unit(
    example: Catalog, boards: dict[str, dict[str, Any]]
) -> None:
    """A panel over several CPIs (default unit "none") overrides the unit per CPI series."""
    checked = 0
    for board in boards.values():
        for panel in value_panels(board):
            legends = [target.get("legendFormat", "") for target in panel["targets"]]
            kind = next((k for k in ("cpi", "kpi") if legends[0].startswith("{{" + k + "}}")), None)
            unit = panel["fieldConfig"]["defaults"]["unit"]
            pinned = re.search(r'cpi=~"([\w|]+)"', panel["targets"][0]["expr"])
            if pinned is not None:  # a panel for a few CPIs of one unit
                units = {grafana_unit(example.indicator(n).unit) for n in pinned[1].split("|")}
                assert units == {unit}, panel["title"]
                continue
            if kind is None or unit != "none":
                continue
            if panel["type"] == "state-timeline":
                continue  # states, not values
            indicators = example.cpis if kind == "cpi" else example.kpis
            overrides = panel["fieldConfig"]["overrides"]
            for indicator in indicators:
                # What Grafana shows as the series name: the legend with the labels filled in.
                shown = f"{indicator.name} web eu"
                units = [
                    prop["value"]
                    for override in overrides
                    if override["matcher"]["id"] == "byRegexp"
                    and re.fullmatch(override["matcher"]["options"], shown)
                    for prop in override["properties"]
                    if prop["id"] == "unit"
                ]
                assert units == [grafana_unit(indicator.unit)], (panel["title"], indicator.name)
            checked += 1
    assert checked >= 6


def test_units_follow_the_catalog() -> None:
    assert grafana_unit("ratio") == "percentunit"
    assert grafana_unit("ms") == "ms"
    assert grafana_unit("EUR") == "currencyEUR"
    assert grafana_unit("score") == "none"
    assert grafana_unit("% of a day") == "suffix: % of a day"


# --- contents from the catalog ------------------------------------------------------------


def test_the_overview_shows_every_cpi_against_its_target_with_its_owner(
    example: Catalog, boards: dict[str, dict[str, Any]]
) -> None:
    stats = {
        panel["title"]: panel
        for panel in value_panels(boards["cpimon-overview.json"])
        if panel["type"] == "stat"
    }
    for cpi in example.cpis:
        panel = stats[f"{cpi.name} · {cpi.owner}"]
        assert panel["targets"][0]["expr"] == f'cpimon:cpi_value:worst_segment{{cpi="{cpi.name}"}}'
        assert panel["fieldConfig"]["defaults"]["unit"] == grafana_unit(cpi.unit)
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert cpi.target is not None
        good, bad = ("green", "red") if cpi.target.bound == "min" else ("red", "green")
        assert steps == [{"color": bad, "value": None}, {"color": good, "value": cpi.target.value}]
        assert f"owner {cpi.owner}" in panel["description"]
    [state] = [
        p for p in value_panels(boards["cpimon-overview.json"]) if p["type"] == "state-timeline"
    ]
    mapped = state["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {key: value["text"] for key, value in mapped.items()} == {
        "0": "ok",
        "1": "target breached",
        "2": "drop",
        "3": "breached + drop",
    }
    assert state["targets"][0]["legendFormat"] == "{{cpi}} · {{owner}}"


def test_the_drilldown_has_a_variable_per_segment_label(
    boards: dict[str, dict[str, Any]],
) -> None:
    board = boards["cpimon-cpi.json"]
    variables = {v.name: v for v in template_variables(board)}
    assert list(variables) == ["cpi", "channel", "region", "support_channel"]
    assert variables["cpi"].all_value is None
    for label in ("channel", "region", "support_channel"):
        assert variables[label].all_value == ".*"
        assert variables[label].selector == 'cpimon_cpi_events_total{job="cpimon",cpi="$cpi"}'
    titles = {panel["title"] for panel in value_panels(board)}
    assert {
        "Value, live value and target",
        "Value against its normal band",
        "Deviation from normal",
        "Events counted per second",
    } <= titles
    exprs = " ".join(t.expr for t in panel_targets(board))
    for metric in ("cpimon_cpi_live_value", "cpimon_cpi_target", "cpimon_cpi_baseline"):
        assert metric in exprs
    assert [a["name"] for a in board["annotations"].get("list", [])] == ["Drops", "Target breaches"]
    assert "cpimon_cpi_drop_active" in board["annotations"].get("list", [])[0]["expr"]


def test_the_band_uses_each_cpis_band_and_memory() -> None:
    odd = parse_catalog(ODD_CATALOG, "odd.yaml")
    board = json.loads(render_dashboard(build_dashboards(odd)["cpimon-cpi.json"]))
    [band] = [p for p in value_panels(board) if p["title"] == "Value against its normal band"]
    low = band["targets"][2]["expr"]
    # refund_delay: alpha 0.5 -> 3 windows of 1m; band_k 2. search_ok: 19 windows of 5m.
    assert 'cpi=~"refund_delay"} - 2 * stddev_over_time(' in low
    assert "[3m])" in low
    assert 'cpi=~"search_ok"} - 3 * stddev_over_time(' in low
    assert "[1h35m])" in low
    assert [v.name for v in template_variables(board)] == ["cpi", "locale", "device_kind"]
    units = {
        o["matcher"]["options"]: o["properties"][0]["value"]
        for o in band["fieldConfig"]["overrides"]
    }
    assert units == {
        "^refund_delay( .*)?$": "suffix: % of a day",
        "^search_ok( .*)?$": "percentunit",
    }


def test_the_owner_board_lists_open_alerts_and_linked_kpis(
    boards: dict[str, dict[str, Any]],
) -> None:
    board = boards["cpimon-owner.json"]
    [owner] = template_variables(board)
    assert owner.name == "owner" and owner.label == "owner"
    exprs = [t.expr for t in panel_targets(board)]
    assert 'ALERTS{owner="$owner"}' in exprs
    assert any('cpimon_link_confirmed{job="cpimon",cpi_owner="$owner"}' in e for e in exprs)
    assert any(e == 'cpimon:cpi_value:worst_segment{owner="$owner"}' for e in exprs)


def test_the_pipeline_dashboard_covers_the_workers(boards: dict[str, dict[str, Any]]) -> None:
    exprs = " ".join(t.expr for t in panel_targets(boards["cpimon-pipeline.json"]))
    for metric in (
        'up{job="cpimon"',
        "cpimon_broker_up",
        "cpimon_events_consumed_total",
        "cpimon_events_rejected_total",
        "cpimon_events_late_total",
        "cpimon_events_duplicate_total",
        "cpimon_event_delay_seconds_bucket",
        "faust_topic_partition_end_offset",
        "faust_topic_partition_offset_commited",  # sic: Faust's spelling
        "faust_consumer_commit_latency_bucket",
        "cpimon_checkpoints_saved_total",
        "cpimon_checkpoints_restored_total",
    ):
        assert metric in exprs, metric


@pytest.mark.parametrize("name", sorted(DASHBOARD_FILES.values()))
def test_queries_only_use_variables_the_dashboard_defines(
    boards: dict[str, dict[str, Any]], name: str
) -> None:
    board = boards[name]
    defined = {variable["name"] for variable in board["templating"]["list"]} | BUILTINS
    texts = [t.expr for t in panel_targets(board)]
    texts += [a["expr"] for a in board["annotations"].get("list", [])]
    texts += [str(v["query"]) for v in board["templating"]["list"][1:]]
    for text in texts:
        used = set(re.findall(r"\$\{?(\w+)", text))
        assert used <= defined, f"{name}: {text} uses {used - defined}"


@pytest.mark.prometheus
def test_promtool_parses_every_query(boards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """Each query, variables substituted, as a recording rule: promtool parses them all."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed: install Debian's prometheus package")
    window = Window(start=0, end=3600, step=15, scrape_interval=15)
    rules = []
    for board in boards.values():
        values = {v["name"]: "x" for v in board["templating"]["list"]}
        exprs = [t.expr for t in panel_targets(board)]
        exprs += [a["expr"] for a in board["annotations"].get("list", [])]
        exprs += [v.selector for v in template_variables(board)]
        rules += [
            {
                "record": f"check:{board['uid'].replace('-', '_')}:{i}",
                "expr": substitute(e, values, window),
            }
            for i, e in enumerate(exprs)
        ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}), encoding="utf-8")
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found" in checked.stdout
    assert len(rules) >= 80


# --- provisioning -------------------------------------------------------------------------


def test_provisioning_points_grafana_at_the_dashboards_and_prometheus() -> None:
    datasources = yaml.safe_load(
        (PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    [prometheus] = [d for d in datasources["datasources"] if d["type"] == "prometheus"]
    assert prometheus["uid"] == DATASOURCE_UID
    assert prometheus["isDefault"] is True
    providers = yaml.safe_load(
        (PROVISIONING / "dashboards" / "cpimon.yml").read_text(encoding="utf-8")
    )
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        host, container = volume.split(":")[:2]
        mounts[container] = host
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
