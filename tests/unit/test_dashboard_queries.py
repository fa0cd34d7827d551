"""bench/dashboard_queries.py without a Prometheus: what a dashboard check reports
before any data exists (the end-to-end test polls it until everything has data)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agents.dashboards import build_dashboards, render_dashboard, template_variables
from bench.dashboard_queries import PrometheusClient, Window, check_dashboard
from models.catalog import load_catalog
from tests.support import EXAMPLE_CATALOG


class EmptyPrometheus(PrometheusClient):
    """A Prometheus that has scraped nothing yet: no label values, no series."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9")
        self.queries: list[str] = []

    def api(self, path: str, params: Mapping[str, str | Sequence[str]]) -> Any:
        if path.startswith("label/"):
            return []
        self.queries.append(str(params["query"]))
        return {"resultType": "vector" if path == "query" else "matrix", "result": []}


def test_a_dashboard_whose_variables_have_no_values_yet_reports_empty_panels() -> None:
    boards = [
        json.loads(render_dashboard(board))
        for board in build_dashboards(load_catalog(EXAMPLE_CATALOG)).values()
    ]
    chained = [board for board in boards if template_variables(board)]
    assert chained, "no dashboard with variables to check"
    for board in chained:
        prometheus = EmptyPrometheus()
        check = check_dashboard(board, prometheus, Window(0.0, 600.0, 15.0, 15.0))
        assert not check.errors
        assert len(check.empty) == check.targets > 0
        assert check.empty_variables
        # Every query ran, with the variables that have no value left empty.
        assert len(prometheus.queries) >= check.targets
        assert not any("$" in query for query in prometheus.queries), prometheus.queries
