"""Is the broker reachable?  Probed from the worker, exported as ``cpimon_broker_up``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaClient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outage:
    """A time the broker did not answer, in wall-clock seconds.

    ``start`` is the last answer before it (the broker may have gone away any time
    after), ``end`` the first answer after it: the widest span it may have lasted.
    """

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


class BrokerProbe:
    """Asks the cluster for its metadata; ``up`` tells whether the last ask succeeded."""

    def __init__(
        self,
        bootstrap_servers: list[str],
        client_options: dict[str, Any],
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_options = client_options
        self._timeout = timeout
        self._clock = clock
        self._client: AIOKafkaClient | None = None
        #: None until the first probe.
        self.up: bool | None = None
        self._last_answer: float | None = None
        self._down_since: float | None = None
        self._last_asked: float | None = None
        # The timer and the aggregate agent both probe; one client, one ask at a time.
        self._lock = asyncio.Lock()

    async def probe(self) -> Outage | None:
        """Ask once; return the outage this answer ended, if it ended one."""
        async with self._lock:
            return await self._probe()

    async def recheck(self, min_interval: float = 1.0) -> Outage | None:
        """While the broker counts as down, probe now, at most once per ``min_interval``
        seconds: data arriving says it may be back, but a probe that keeps failing must
        not hold up every batch."""
        if self.up is not False:
            return None
        if self._last_asked is not None and self._clock() - self._last_asked < min_interval:
            return None
        return await self.probe()

    async def _probe(self) -> Outage | None:
        asked = self._last_asked = self._clock()
        try:
            await asyncio.wait_for(self._ask(), self._timeout)
        except Exception as error:  # any failure means: not reachable now
            if self.up is not False:
                log.warning("broker unreachable (%s); metrics keep being served", error)
                self._down_since = asked if self._last_answer is None else self._last_answer
            self.up = False
            await self._reset()
            return None
        answered = self._clock()
        self._last_answer = answered
        ended = None
        if self.up is False and self._down_since is not None:
            ended = Outage(self._down_since, answered)
            log.warning("broker reachable again after at most %.1f s", ended.seconds)
            self._down_since = None
        self.up = True
        return ended

    async def _ask(self) -> None:
        if self._client is None:
            self._client = AIOKafkaClient(
                bootstrap_servers=self._bootstrap_servers, **self._client_options
            )
            await self._client.bootstrap()
        await self._client.fetch_all_metadata()

    async def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # closing a broken client may fail too; it is gone either way
                log.debug("closing the probe client failed", exc_info=True)

    async def close(self) -> None:
        await self._reset()
