"""Active health checks of live backends: a hung backend is found even without traffic.

Owns: the probe loop (every `health_interval_secs`, `/health` with `health_timeout_secs`)
and the count of consecutive failures per process.
Does not: kill anything. After `health_failures_before_restart` failures in a row it
tells the scheduler, which checks the report against its own state and decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gpumux.config import SupervisionConfig
from gpumux.scheduler import Scheduler
from gpumux.states import ModelState
from gpumux.vllm_client import BackendControlError, VllmClient

log = structlog.get_logger(__name__)

#: States whose process should answer /health (vLLM answers it while asleep too).
PROBED_STATES = frozenset({ModelState.READY, ModelState.SLEEPING})


class HealthMonitor:
    def __init__(
        self,
        scheduler: Scheduler,
        clients: Callable[[str], VllmClient],
        supervision: SupervisionConfig,
    ) -> None:
        self._scheduler = scheduler
        self._clients = clients
        self._sup = supervision
        self._failures: dict[tuple[str, int], int] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._sup.health_interval_secs)
            await self.probe_once()

    async def probe_once(self) -> None:
        # A snapshot for choosing whom to probe; the scheduler re-checks any report.
        targets = [
            (slot.alias, slot.pid, slot.state is ModelState.READY)
            for slot in self._scheduler.core.slots.values()
            if slot.state in PROBED_STATES and slot.op is None and slot.pid is not None
        ]
        results = await asyncio.gather(*(self._probe(alias, ready) for alias, _, ready in targets))
        live = set()
        for (alias, pid, _), (healthy, asleep) in zip(targets, results, strict=True):
            key = (alias, pid)
            live.add(key)
            if asleep:
                # Healthy but asleep while we route to it: requests would wait inside vLLM.
                log.warning("backend_found_asleep", model=alias, pid=pid)
                self._scheduler.report_asleep(alias, pid)
            if healthy:
                self._failures.pop(key, None)
                continue
            count = self._failures.get(key, 0) + 1
            self._failures[key] = count
            log.warning("health_check_failed", model=alias, pid=pid, consecutive=count)
            if count >= self._sup.health_failures_before_restart:
                self._failures.pop(key, None)
                self._scheduler.report_unhealthy(alias, pid)
        for key in set(self._failures) - live:
            del self._failures[key]

    async def _probe(self, alias: str, ready: bool) -> tuple[bool, bool]:
        """(healthy, asleep). vLLM answers /health while asleep, so ready models are also
        asked whether they sleep."""
        client = self._clients(alias)
        healthy = await client.health(timeout=self._sup.health_timeout_secs)
        if not healthy or not ready:
            return healthy, False
        try:
            return True, await client.is_sleeping(timeout=self._sup.health_timeout_secs)
        except BackendControlError:
            return True, False  # an old vLLM without the dev route: nothing to reconcile
