"""When a started or restored backend is ready: `/health` answering 200.

Owns: the readiness loop (is the process still alive, probe, pause), its deadline, and
the pause schedules between probes: a cold start's steady 100 ms (a start takes seconds
to minutes, and each probe costs the starting server a request), and a restored tree's
2 ms growing to 100 ms: a restored server listens the moment `criu restore` returns, so
the first probe nearly always answers, and a miss is retried within milliseconds rather
than after a cold start's 100 ms. The probe's connection stays in the model's pool, and
the first proxied request reuses it.
Does not: start, restore or stop processes (`effects` does, and calls this).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from gpumux.backends.vllm_client import VllmClient
from gpumux.checkpoint.timeline import RestoreTimeline
from gpumux.core.errors import StepFailed
from gpumux.core.eviction import Step
from gpumux.procs import BackendProcess

#: Pauses between probes (the last repeats).
COLD_START_PAUSES: Sequence[float] = (0.1,)
RESTORE_PAUSES: Sequence[float] = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


async def wait_healthy(
    client: VllmClient,
    process: BackendProcess,
    deadline_secs: float,
    *,
    model: str,
    step: Step,
    probe_timeout: float,
    recent_output: Callable[[], list[str]],
    timeline: RestoreTimeline | None = None,
) -> None:
    """Return once `/health` answers 200; raise StepFailed if the process exits first or
    `deadline_secs` passes. A restore's `timeline` gets the probes as its `health` phase."""
    pauses = RESTORE_PAUSES if step is Step.CRIU_RESTORE else COLD_START_PAUSES
    probes = 0
    try:
        async with asyncio.timeout(deadline_secs):
            while True:
                if process.exited.done():
                    code = process.exited.result()
                    tail = " | ".join(recent_output()[-3:])
                    raise StepFailed(model, step, f"exited with code {code} during start: {tail}")
                healthy = await client.health(timeout=probe_timeout)
                if timeline is not None:
                    timeline.count("health_probes")
                    timeline.mark("health")
                if healthy:
                    return
                await asyncio.sleep(pauses[min(probes, len(pauses) - 1)])
                probes += 1
    except TimeoutError:
        limit = "startup_timeout_secs" if step is Step.COLD_START else "restore_timeout_secs"
        raise StepFailed(model, step, f"not healthy within {limit}={deadline_secs:g}") from None
