"""CPI→KPI links in the worker: closed windows travel to one place, where links are tracked.

Every indicator is also computed over all its segments (the series without
segment labels).  When such a window closes on any worker, the aggregate agent
publishes it to the single-partition windows topic; the worker that owns that
partition feeds every link with it.  Replays after a crash may publish a window
twice; :class:`models.correlation.LinkTracker` ignores a window it already holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.aggregation import ClosedWindow
from models.links import LinkSet
from models.spec import Catalog

#: The windows topic has one partition: all links live on one worker.
LINKS_PARTITION = 0


def encode_windows(closed: Iterable[ClosedWindow], linked: set[str]) -> list[bytes]:
    """Closed windows of linked indicators' global series, as windows-topic records."""
    return [
        orjson.dumps(
            [
                window.indicator.kind,
                window.indicator.name,
                window.window.start,
                window.window.value,
                window.window.events,
            ]
        )
        for window in closed
        if not window.segment and window.indicator.name in linked
    ]


@dataclass
class LinkBoard:
    """The links state of the worker owning the windows partition (checkpointed like series)."""

    catalog: Catalog
    links: dict[int, LinkSet] = field(default_factory=dict)

    def owned(self) -> Mapping[int, LinkSet]:
        return self.links

    def partition(self, number: int) -> LinkSet:
        owned = self.links.get(number)
        if owned is None:
            owned = self.links[number] = LinkSet(self.catalog)
        return owned

    def adopt(self, partition: int, restored: object) -> None:
        if not isinstance(restored, LinkSet):
            raise TypeError(f"checkpoint of links partition {partition} is not link state")
        restored.rebind(self.catalog)
        self.links[partition] = restored

    def keep_only(self, partitions: Iterable[int]) -> list[int]:
        keep = set(partitions)
        gone = [number for number in self.links if number not in keep]
        for number in gone:
            del self.links[number]
        return gone

    def process(self, partition: int, records: Iterable[Any]) -> None:
        links = self.partition(partition)
        for record in records:
            kind, name, start, value, _events = orjson.loads(record.value)
            links.add(kind, name, start, value)

    def current(self) -> LinkSet | None:
        return self.links.get(LINKS_PARTITION)
