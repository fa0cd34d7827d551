"""Memory per active series: what one (indicator, segment) costs a worker, by measure.

    python -m bench.series_memory [--series 2000] [--windows 40]

Builds one PartitionSeries per CPI/KPI of the catalog with ``--series`` segments each,
feeds every segment a few observations per window for ``--windows`` windows (so the
window history is full and the drop detector warmed up), and measures with tracemalloc
the bytes the partition holds per series: the open window's River estimator, the
closed-window history (PartitionSeries.HISTORY windows), the drop detector and the keys.
docs/deploying.md ("Sizing") quotes the result.
"""

from __future__ import annotations

import argparse
import gc
import random
import tracemalloc
from pathlib import Path

from models.aggregation import PartitionSeries
from models.catalog import load_catalog
from models.dedupe import RecentIds
from models.routing import series_key
from models.spec import Indicator

ROOT = Path(__file__).resolve().parent.parent
EVENTS_PER_WINDOW = 5


def _value(indicator: Indicator, rng: random.Random) -> float:
    kind = indicator.measure.kind
    if kind in ("rate", "ratio"):
        return float(rng.random() < 0.9)
    if kind == "nps":
        return float(rng.randint(0, 10))
    if kind == "csat":
        return float(rng.randint(1, 5))
    return rng.lognormvariate(5, 0.5)


def bytes_per_series(indicator: Indicator, series: int, windows: int) -> float:
    """Bytes a PartitionSeries holds per active series of ``indicator``."""
    rng = random.Random(0)
    keys = [series_key(indicator.name, [f"segment-{i}"]) for i in range(series)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    partition = PartitionSeries({indicator.name: indicator}, idle_timeout=3600.0)
    step = indicator.window / EVENTS_PER_WINDOW
    offset = 0
    for window in range(windows):
        for tick in range(EVENTS_PER_WINDOW):
            t = window * indicator.window + tick * step
            batch = []
            for key in keys:
                batch.append([key, t, _value(indicator, rng), offset])
                offset += 1
            partition.apply(("events", 0, 1), t, offset - 1, batch, now=t)
        partition.close_due(now=(window + 1) * indicator.window)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(partition.series) == series and partition.open_windows() >= series
    # The keys were built before measuring; count them too, as a worker holds them.
    return (after - before) / series + sum(len(k) + 49 for k in keys) / series


def bytes_per_dedupe_id(horizon: int) -> float:
    """Traced bytes per remembered id of a RecentIds filled five times over with uuid4-like
    ids (the id strings themselves are not kept)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    recent = RecentIds(horizon)
    for n in range(5 * horizon):
        recent.seen(f"{n:08x}-7f6e-4d3c-8b2a-{n:012x}")
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(recent) == horizon
    return (after - before) / horizon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(ROOT / "catalog.example.yaml"))
    parser.add_argument("--series", type=int, default=2000, help="segments per indicator")
    parser.add_argument("--windows", type=int, default=40, help="windows fed to each series")
    parser.add_argument(
        "--dedupe-horizon", type=int, default=100_000, help="ids per input partition"
    )
    args = parser.parse_args()
    catalog = load_catalog(args.catalog)
    print(f"{'indicator':34} {'measure':9} {'detector':13} bytes/series")
    results = []
    for indicator in catalog.cpis + catalog.kpis:
        # Windows start at the epoch: allowed lateness 0 closes each one as the next begins.
        size = bytes_per_series(indicator, args.series, args.windows)
        results.append(size)
        print(
            f"{indicator.name:34} {indicator.measure.kind:9} "
            f"{indicator.alerting.detector:13} {size:10,.0f}"
        )
    print(f"{'mean':58} {sum(results) / len(results):10,.0f}")
    print(f"{'max':58} {max(results):10,.0f}")
    per_id = bytes_per_dedupe_id(args.dedupe_horizon)
    print(
        f"dedupe: {per_id:.1f} bytes per remembered id, "
        f"{per_id * args.dedupe_horizon / 1e6:.1f} MB per input partition "
        f"at a horizon of {args.dedupe_horizon:,d}"
    )


if __name__ == "__main__":
    main()
