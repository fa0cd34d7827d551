"""Every CPI→KPI link of a catalog, fed with the closed windows of the global series."""

from __future__ import annotations

from models.correlation import LinkTracker
from models.spec import Catalog, Link


class LinkSet:
    """One :class:`LinkTracker` per catalog link, keyed by (cpi, kpi).

    >>> from models.spec import Indicator, Measure
    >>> rate, total = Measure("rate", "p"), Measure("sum", "r")
    >>> cpi = Indicator(name="ok", kind="cpi", description="", owner="a", measure=rate)
    >>> kpi = Indicator(name="rev", kind="kpi", description="", owner="b", measure=total)
    >>> links = LinkSet(Catalog(source="doc", cpis=(cpi,), kpis=(kpi,), links=(Link("ok", "rev"),)))
    >>> links.add("cpi", "ok", 0.0, 0.9)
    >>> links.add("kpi", "rev", 0.0, 120.0)
    >>> links.trackers[("ok", "rev")].evaluations
    1
    """

    __slots__ = ("links", "trackers")

    def __init__(self, catalog: Catalog) -> None:
        self.links: dict[tuple[str, str], Link] = {}
        self.trackers: dict[tuple[str, str], LinkTracker] = {}
        self.rebind(catalog)

    def rebind(self, catalog: Catalog) -> None:
        """Follow the running catalog: new links start empty, changed ones restart."""
        links = {(link.cpi, link.kpi): link for link in catalog.links}
        for key in list(self.trackers):
            if self.links.get(key) != links.get(key):
                del self.trackers[key]
        for key, link in links.items():
            if key not in self.trackers:
                self.trackers[key] = LinkTracker(
                    window=catalog.indicator(link.cpi).window,
                    max_lag=link.max_lag_windows,
                    history=link.history_windows,
                    min_windows=link.min_windows,
                )
        self.links = links

    def add(self, kind: str, name: str, window_start: float, value: float | None) -> None:
        """Take one closed window of an indicator's global series."""
        for (cpi, kpi), tracker in self.trackers.items():
            if kind == "cpi" and cpi == name:
                tracker.add_cpi(window_start, value)
            elif kind == "kpi" and kpi == name:
                tracker.add_kpi(window_start, value)

    def linked(self) -> set[str]:
        """Names of the indicators taking part in a link."""
        return {name for pair in self.links for name in pair}
