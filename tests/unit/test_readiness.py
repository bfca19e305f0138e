"""backends/readiness: `/health` polled until 200, the process's exit, the deadline;
a restore's probes counted on its timeline. A real VllmClient against a real local
server whose `/health` answers 503 a given number of times first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gpumux.backends.readiness import wait_healthy
from gpumux.backends.vllm_client import VllmClient
from gpumux.checkpoint.timeline import RestoreTimeline
from gpumux.core.errors import StepFailed
from gpumux.core.eviction import Step
from gpumux.procs import BackendProcess

pytestmark = pytest.mark.unit


class Health:
    """A `/health` that answers 503 `misses` times, then 200 (never, with None)."""

    def __init__(self, misses: int | None) -> None:
        self.misses = misses
        self.probes = 0

    async def handle(self, _request: web.Request) -> web.Response:
        self.probes += 1
        ready = self.misses is not None and self.probes > self.misses
        return web.Response(status=200 if ready else 503)


@asynccontextmanager
async def serve(health: Health) -> AsyncIterator[VllmClient]:
    app = web.Application()
    app.router.add_get("/health", health.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            yield VllmClient(session, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def process(tmp_path: Path) -> BackendProcess:
    exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    return BackendProcess("a", 1, 1, 0.0, tmp_path / "a.log", exited)


async def test_a_restore_is_ready_at_the_first_200_and_its_probes_are_counted(
    tmp_path: Path,
) -> None:
    health = Health(misses=2)
    timeline = RestoreTimeline()
    async with serve(health) as client:
        await wait_healthy(
            client,
            process(tmp_path),
            60.0,
            model="a",
            step=Step.CRIU_RESTORE,
            probe_timeout=5.0,
            recent_output=list,
            timeline=timeline,
        )
    assert health.probes == 3
    assert timeline.counts == {"health_probes": 3}
    assert "health" in timeline.phases


async def test_a_process_that_exits_fails_the_step_with_its_last_output(
    tmp_path: Path,
) -> None:
    proc = process(tmp_path)
    proc.exited.set_result(3)
    async with serve(Health(misses=None)) as client:
        with pytest.raises(StepFailed, match=r"exited with code 3 during start: boom"):
            await wait_healthy(
                client,
                proc,
                60.0,
                model="a",
                step=Step.COLD_START,
                probe_timeout=5.0,
                recent_output=lambda: ["boom"],
            )


async def test_never_healthy_fails_at_the_deadline_naming_its_setting(tmp_path: Path) -> None:
    async with serve(Health(misses=None)) as client:
        with pytest.raises(StepFailed, match=r"not healthy within restore_timeout_secs=0.2"):
            await wait_healthy(
                client,
                process(tmp_path),
                0.2,
                model="a",
                step=Step.CRIU_RESTORE,
                probe_timeout=5.0,
                recent_output=list,
            )
