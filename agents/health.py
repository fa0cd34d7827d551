"""Is the broker reachable?  Probed from the worker, exported as ``cpimon_broker_up``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaClient

log = logging.getLogger(__name__)


class BrokerProbe:
    """Asks the cluster for its metadata; ``up`` tells whether the last ask succeeded."""

    def __init__(
        self, bootstrap_servers: list[str], client_options: dict[str, Any], timeout: float = 5.0
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_options = client_options
        self._timeout = timeout
        self._client: AIOKafkaClient | None = None
        #: None until the first probe.
        self.up: bool | None = None

    async def probe(self) -> bool:
        try:
            await asyncio.wait_for(self._ask(), self._timeout)
        except Exception as error:  # any failure means: not reachable now
            if self.up is not False:
                log.warning("broker unreachable (%s); metrics keep being served", error)
            self.up = False
            await self._reset()
        else:
            if self.up is False:
                log.warning("broker reachable again")
            self.up = True
        return self.up

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
