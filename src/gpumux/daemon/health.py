"""Active health checks of live backends: a hung backend is found even without traffic.

Owns: the probe loop (every `health_interval_secs`, `/health` with `health_timeout_secs`)
and the count of consecutive failures per process; and the confirmation of passive
suspicions (a streak of backend 5xx, see `passive_health`): `/health`, then a 1-token
canary completion that no client shaped, at most one in flight and one per
`health_interval_secs` per model, only while the model is ready.
Does not: kill anything. After `health_failures_before_restart` failures in a row, or a
confirmed 5xx streak, it tells the scheduler, which checks the report against its own
state and decides.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import structlog

from gpumux.backends.vllm_client import BackendControlError, VllmClient
from gpumux.core.config import SupervisionConfig
from gpumux.core.states import ModelState
from gpumux.http.passive_health import BackendStreaks
from gpumux.scheduler.runner import Scheduler

log = structlog.get_logger(__name__)

#: States whose process should answer /health (vLLM answers it while asleep too).
PROBED_STATES = frozenset({ModelState.READY, ModelState.SLEEPING})
#: Verdicts of a 5xx-streak confirmation (the `verdict` label of its metric).
UNHEALTHY = "unhealthy"
HEALTHY = "healthy"
#: The canary: a request no client shaped, so a poisoned prompt cannot fail it.
CANARY_PROMPT = "ping"


class HealthMonitor:
    def __init__(
        self,
        scheduler: Scheduler,
        clients: Callable[[str], VllmClient],
        supervision: SupervisionConfig,
        streaks: BackendStreaks,
        on_verdict: Callable[[str, str], None] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._clients = clients
        self._sup = supervision
        self._failures: dict[tuple[str, int], int] = {}
        self._streaks = streaks
        self._on_verdict = on_verdict
        self._suspects: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._confirming: set[str] = set()  # models with a confirmation queued or running
        self._last_confirmation: dict[str, float] = {}
        streaks.watch(self._suspect)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._confirmations(tasks), name="health-confirmations")
            while True:
                await asyncio.sleep(self._sup.health_interval_secs)
                await self.probe_once()

    async def probe_once(self) -> None:
        # A snapshot for choosing whom to probe; the scheduler re-checks any report. A
        # ready model is probed for one stay in READY: its pid and `ready_since`.
        targets = [
            (model.alias, model.pid, model.ready_since if model.state is ModelState.READY else None)
            for model in self._scheduler.view.models.values()
            if model.state in PROBED_STATES and model.operation is None and model.pid is not None
        ]
        results = await asyncio.gather(
            *(self._probe(alias, pid, since) for alias, pid, since in targets)
        )
        live = set()
        for (alias, pid, since), (healthy, asleep) in zip(targets, results, strict=True):
            key = (alias, pid)
            live.add(key)
            # The gather waited for every probe: a switch may have moved this model away
            # and back meanwhile, and the answer was about the stay that ended.
            if asleep and since is not None and self._still_ready(alias, pid, since):
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

    async def _probe(self, alias: str, pid: int, ready_since: float | None) -> tuple[bool, bool]:
        """(healthy, asleep). vLLM answers /health while asleep, so ready models (those
        with a `ready_since`) are also asked whether they sleep."""
        client = self._clients(alias)
        healthy = await client.health(timeout=self._sup.health_timeout_secs)
        if not healthy or ready_since is None:
            return healthy, False
        if not self._still_ready(alias, pid, ready_since):
            # A switch began during /health: asking now would put our call among its
            # /sleep and /wake_up calls, and the answer would describe the switch.
            return True, False
        try:
            return True, await client.is_sleeping(timeout=self._sup.health_timeout_secs)
        except BackendControlError:
            return True, False  # an old vLLM without the dev route: nothing to reconcile

    # ---- passive suspicions: a streak of backend 5xx --------------------------------------

    def _suspect(self, model: str, pid: int) -> None:
        # Called from a proxy request task for every 5xx past the threshold: only enqueue.
        if model in self._confirming:
            return
        self._confirming.add(model)
        self._suspects.put_nowait((model, pid))

    async def _confirmations(self, tasks: asyncio.TaskGroup) -> None:
        while True:
            model, pid = await self._suspects.get()
            tasks.create_task(self._confirm(model, pid), name=f"confirm-5xx-{model}")

    async def _confirm(self, model: str, pid: int) -> None:
        try:
            loop = asyncio.get_running_loop()
            # One probe per interval per model: a flood of poisoned requests stays cheap.
            last = self._last_confirmation.get(model, -math.inf)
            delay = last + self._sup.health_interval_secs - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._last_confirmation[model] = loop.time()
            if not self._ready(model, pid):
                return  # evicted, sleeping or restarted meanwhile: nothing to confirm now
            healthy = await self._canary(model)
            if not self._ready(model, pid):
                return  # the answer may be about a switch in progress, not a broken engine
            streak = self._streaks.count(model, pid)
            self._streaks.reset(model, pid)
            if self._on_verdict is not None:
                self._on_verdict(model, HEALTHY if healthy else UNHEALTHY)
            if healthy:
                log.info("backend_5xx_streak_client_specific", model=model, pid=pid, streak=streak)
                return
            log.warning("backend_5xx_streak_confirmed", model=model, pid=pid, streak=streak)
            self._scheduler.report_unhealthy(model, pid)
        finally:
            self._confirming.discard(model)

    def _still_ready(self, model: str, pid: int, ready_since: float) -> bool:
        """Still the same stay in READY the probe was chosen in, with no operation."""
        status = self._scheduler.view.models.get(model)
        return self._ready(model, pid) and status is not None and status.ready_since == ready_since

    def _ready(self, model: str, pid: int) -> bool:
        status = self._scheduler.view.models.get(model)
        return (
            status is not None
            and status.pid == pid
            and status.operation is None
            and status.state is ModelState.READY
        )

    async def _canary(self, model: str) -> bool:
        """True unless `/health` fails or a 1-token completion gets a 5xx, times out or
        cannot connect. A 4xx is healthy: an embedding-only model refuses completions."""
        client = self._clients(model)
        try:
            if not await client.health(timeout=self._sup.health_timeout_secs):
                return False
            # The warm-up deadline: a loaded engine may take a while for one token, and a
            # false "unhealthy" restarts a model other users rely on.
            await client.completion(
                model, CANARY_PROMPT, max_tokens=1, timeout=self._sup.warmup_timeout_secs
            )
        except BackendControlError as exc:
            return exc.status is not None and exc.status < 500
        except RuntimeError:
            # "Session is closed": a CRIU dump dropped the pool under us. The caller's
            # state re-check discards this answer; it must not end the monitor.
            return False
        return True
