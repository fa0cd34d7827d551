"""``cpimon rules``: write the Prometheus rules (and the Alertmanager config) of a catalog."""

from __future__ import annotations

import argparse
import re

from agents.rules import DEFAULT_WEBHOOK_BASE, PLATFORM_OWNER
from models.errors import ConfigError

EXAMPLE = (
    "example:\n"
    "  cpimon rules --catalog catalog.example.yaml --out deploy/prometheus/rules \\\n"
    "      --alertmanager-out deploy/alertmanager"
)


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``rules`` command to ``subparsers``."""
    parser = subparsers.add_parser(
        "rules",
        help="generate Prometheus alert rules and an Alertmanager config from a catalog",
        description="Generate the Prometheus rule file (cpimon-rules.yml) of a catalog and, "
        "with --alertmanager-out, an Alertmanager config routing each alert to its owner.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--catalog", required=True, help="catalog YAML file")
    parser.add_argument("--out", required=True, help="directory to write cpimon-rules.yml into")
    parser.add_argument(
        "--alertmanager-out",
        metavar="DIR",
        help="also write alertmanager.yml into DIR (not written without this option)",
    )
    parser.add_argument(
        "--webhook-base",
        default=DEFAULT_WEBHOOK_BASE,
        metavar="URL",
        help="each owner's receiver is the webhook URL/<owner> (default: %(default)s, "
        "a placeholder)",
    )
    parser.add_argument(
        "--platform-owner",
        default=PLATFORM_OWNER,
        metavar="OWNER",
        help="owner label of the pipeline alerts and receiver of unrouted alerts "
        "(default: %(default)s)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the files; 0 on success (catalog errors propagate as ``CatalogError``)."""
    from agents.rules import write_alertmanager, write_rules
    from models.catalog import load_catalog

    if not re.fullmatch(r"[a-z0-9_-]+", args.platform_owner):
        raise ConfigError(
            f"--platform-owner {args.platform_owner!r} is not a valid owner; use lower-case "
            "letters, digits, _ and -, e.g. platform"
        )
    if not args.webhook_base.startswith(("http://", "https://")):
        raise ConfigError(
            f"--webhook-base {args.webhook_base!r} is not a URL; write e.g. "
            "https://alerts.example.com/cpimon"
        )
    catalog = load_catalog(args.catalog)
    written = write_rules(catalog, args.out, args.platform_owner)
    if args.alertmanager_out:
        written.append(
            write_alertmanager(
                catalog, args.alertmanager_out, args.webhook_base, args.platform_owner
            )
        )
    for path in written:
        print(f"cpimon rules: wrote {path}")
    return 0
