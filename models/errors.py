"""Every error cpi-monitor raises on purpose derives from :class:`CpimonError`.

Messages are written for the operator: they say what is wrong, where, and what
to do about it.
"""

from __future__ import annotations


class CpimonError(Exception):
    """Base of all cpi-monitor errors."""


class ConfigError(CpimonError):
    """A setting (command line or ``CPIMON_*`` environment variable) is unusable."""


class CatalogError(CpimonError):
    """The CPI/KPI catalog is invalid.

    ``problems`` lists every problem found, each as ``(location, message)``
    where location is a path into the YAML document such as ``cpis[2].measure.q``.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {len(self.problems)} problem(s) in the catalog:"]
        lines += [f"  {location}: {message}" for location, message in self.problems]
        lines.append("Fix the catalog, then check it with: cpimon catalog check " + source)
        super().__init__("\n".join(lines))


class EventRejected(CpimonError):
    """A message cannot be used as a journey event or KPI sample.

    ``reason`` is a short stable code (a Prometheus label value and the
    ``cpimon-reason`` header of the dead-letter record); ``detail`` explains.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class BrokerError(CpimonError):
    """The Kafka broker cannot be reached or refused a request."""


class CheckpointError(CpimonError):
    """A checkpoint cannot be read back."""
