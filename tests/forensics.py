"""Evidence for a failed count: what the observations and checkpoint topics held.

When a crash-recovery test counts short, the question is which stage lost the
observations.  :func:`observation_history` replays every observation partition
from its first record into fresh state (what a worker that never crashed would
have counted) and writes every record and checkpoint, with their offsets, to a
file beside the workers' logs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from agents.pipeline import Aggregator
from models import state
from models.aggregation import PartitionSeries
from models.spec import Catalog
from streams.checkpoints import ID_HEADER
from streams.observations import decode_observation_records
from tests.support import topic_records


def _checkpoints(records: list[Any]) -> list[dict[str, Any]]:
    chunks: dict[str, list[Any]] = defaultdict(list)
    for record in records:
        headers = dict(record.headers or ())
        if ID_HEADER in headers:
            chunks[headers[ID_HEADER].decode()].append(record)
    found = []
    for pieces in chunks.values():
        first = pieces[0]
        data = b"".join(piece.value or b"" for piece in pieces)
        entry: dict[str, Any] = {"partition": first.partition, "offset": first.offset}
        try:
            restored = state.loads(data)
        except Exception as error:  # a partial checkpoint: say so, keep going
            entry["unreadable"] = repr(error)
        else:
            if isinstance(restored, PartitionSeries):
                entry["next_offset"] = restored.next_offset
                entry["applied_upto"] = {
                    f"{topic}[{partition}]": offset
                    for (topic, partition), offset in sorted(restored.applied_upto.items())
                }
                entry["events_total"] = {
                    key.replace("\x1f", "/"): series.events_total
                    for key, series in sorted(restored.series.items())
                }
        found.append(entry)
    return sorted(found, key=lambda entry: (entry["partition"], entry["offset"]))


def observation_history(
    bootstrap: str, catalog: Catalog, observations_topic: str, checkpoint_topic: str, path: Path
) -> str:
    """Write the records of both topics to ``path``; return, for a failure message, how
    many distinct observations stage 1 wrote and what replaying them from scratch counts."""
    records = topic_records(bootstrap, observations_topic)
    aggregator = Aggregator(catalog)
    lines = []
    # (input topic, input partition, input offset, series): whether stage 1 wrote them all.
    distinct: set[tuple[str, int, int, str]] = set()
    for record in records:
        aggregator.process(record.partition, [record], time.time())
        for decoded in decode_observation_records(record.value):
            for group in decoded.groups:
                distinct.update(
                    (decoded.topic, decoded.partition, offset, group.key)
                    for offset in group.offsets
                )
            lines.append(
                {
                    "partition": record.partition,
                    "offset": record.offset,
                    "source": f"{decoded.topic}[{decoded.partition}]",
                    "last_offset": decoded.last_offset,
                    "groups": {
                        group.key.replace("\x1f", "/"): list(group.offsets)
                        for group in decoded.groups
                    },
                }
            )
    checkpoints = _checkpoints(topic_records(bootstrap, checkpoint_topic))
    with path.open("wb") as out:
        for line in lines:
            out.write(orjson.dumps({"observation": line}) + b"\n")
        for entry in checkpoints:
            out.write(orjson.dumps({"checkpoint": entry}) + b"\n")
    every_series = [
        series for owned in aggregator.partitions.values() for series in owned.series.values()
    ]
    counted = sum(series.events_total for series in every_series)
    late = sum(series.late_total for series in every_series)
    return (
        f"the observations topic holds {len(distinct)} distinct observations; replayed from "
        f"scratch, it counts {counted} ({late} late); "
        f"its {len(records)} records and {len(checkpoints)} checkpoints are in {path}"
    )
