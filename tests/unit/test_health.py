"""agents.health: the broker probe and the outages it reports."""

from __future__ import annotations

import asyncio

import pytest

from agents.health import BrokerProbe, Outage
from streams.broker import free_port


class ScriptedProbe(BrokerProbe):
    """A probe whose broker answers or not as the test says, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0
        super().__init__([], {}, timeout=1.0, clock=lambda: self.now)
        self.reachable = True

    async def _ask(self) -> None:
        self.now += 0.25  # an answer takes a little time
        if not self.reachable:
            raise ConnectionRefusedError("broker away")


def probe_at(probe: ScriptedProbe, now: float) -> Outage | None:
    probe.now = now
    return asyncio.run(probe.probe())


def test_an_outage_spans_from_the_last_answer_to_the_next() -> None:
    probe = ScriptedProbe()
    assert probe_at(probe, 1_000.0) is None and probe.up is True
    probe.reachable = False
    for now in (1_005.0, 1_010.0, 1_015.0):
        assert probe_at(probe, now) is None and probe.up is False
    probe.reachable = True
    outage = probe_at(probe, 1_020.0)
    assert outage == Outage(start=1_000.25, end=1_020.25)
    assert outage.seconds == pytest.approx(20.0)
    assert probe.up is True
    assert probe_at(probe, 1_025.0) is None  # reported once


def test_an_outage_from_the_start_counts_from_the_first_ask() -> None:
    probe = ScriptedProbe()
    probe.reachable = False
    assert probe_at(probe, 500.0) is None and probe.up is False
    assert probe_at(probe, 505.0) is None
    probe.reachable = True
    assert probe_at(probe, 510.0) == Outage(start=500.0, end=510.25)


def test_recheck_probes_only_while_down_and_not_too_often() -> None:
    probe = ScriptedProbe()
    assert probe_at(probe, 100.0) is None
    asked = probe.now
    probe.now = 200.0
    assert asyncio.run(probe.recheck(min_interval=1.0)) is None
    assert probe.now == 200.0  # up: not asked again
    probe.reachable = False
    assert probe_at(probe, 201.0) is None and probe.up is False
    probe.reachable = True
    probe.now = 201.5  # asked at 201 (answer at 201.25): too soon
    assert asyncio.run(probe.recheck(min_interval=1.0)) is None
    assert probe.up is False
    probe.now = 202.0
    assert asyncio.run(probe.recheck(min_interval=1.0)) == Outage(start=asked, end=202.25)
    assert probe.up is True


def test_a_closed_port_is_down() -> None:
    probe = BrokerProbe([f"127.0.0.1:{free_port()}"], {}, timeout=5.0)

    async def probe_and_close() -> Outage | None:
        try:
            return await probe.probe()
        finally:
            await probe.close()

    assert asyncio.run(probe_and_close()) is None
    assert probe.up is False
