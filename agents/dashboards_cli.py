"""``cpimon dashboards``: write the Grafana dashboards of a catalog."""

from __future__ import annotations

import argparse

EXAMPLE = (
    "example:\n  cpimon dashboards --catalog catalog.example.yaml --out deploy/grafana/dashboards"
)


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``dashboards`` command to ``subparsers``."""
    parser = subparsers.add_parser(
        "dashboards",
        help="generate the Grafana dashboards of a catalog",
        description="Generate Grafana dashboard JSON (overview, CPI drill-down, CPI->KPI "
        "links, accountability board per owner, pipeline health) from a catalog, built with "
        "the Grafana Foundation SDK. Grafana loads them through "
        "deploy/grafana/provisioning/dashboards/cpimon.yml.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--catalog", required=True, help="catalog YAML file")
    parser.add_argument("--out", required=True, help="directory to write the JSON files into")
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the files; 0 on success (catalog errors propagate as ``CatalogError``)."""
    from agents.dashboards import write_dashboards
    from models.catalog import load_catalog

    for path in write_dashboards(load_catalog(args.catalog), args.out):
        print(f"cpimon dashboards: wrote {path}")
    return 0
