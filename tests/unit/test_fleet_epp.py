"""`/metrics/epp`: the series llm-d's endpoint picker reads, rendered and served."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gpumux.telemetry.epp import (
    EPP_PATH,
    KV_MAX_AGE_SECS,
    EppMetrics,
    EppSnapshot,
    kv_usage_in,
    render_epp,
)

pytestmark = pytest.mark.unit

SNAPSHOT = EppSnapshot(
    waiting=3, running=2, running_models=("a", "b"), waiting_models=("c",), max_models=4
)


def samples(body: bytes) -> dict[str, tuple[dict[str, str], float]]:
    return {
        s.name: (s.labels, s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_the_pickers_series_with_models_as_lora_adapters() -> None:
    body = render_epp(SNAPSHOT, 0.25, 1700000000.0)
    found = samples(body)
    assert found["vllm:num_requests_waiting"] == ({}, 3)
    assert found["vllm:num_requests_running"] == ({}, 2)
    assert found["vllm:kv_cache_usage_perc"] == ({}, 0.25)
    assert found["vllm:lora_requests_info"] == (
        {"max_lora": "4", "running_lora_adapters": "a,b", "waiting_lora_adapters": "c"},
        1700000000.0,
    )
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, check=False
        )
        # vLLM's own names hold ':' (the picker needs them): promtool's only lint (exit 3).
        complaints = (result.stdout + result.stderr).decode().splitlines()
        assert result.returncode in (0, 3), complaints
        assert all("should not contain ':'" in line for line in complaints), complaints


def test_kv_usage_is_read_from_either_vllm_name() -> None:
    assert kv_usage_in('vllm:kv_cache_usage_perc{model_name="x"} 0.4\n') == 0.4
    assert (
        kv_usage_in('vllm:gpu_cache_usage_perc 0.7\nvllm:gpu_cache_usage_perc{e="1"} 0.2\n') == 0.7
    )
    assert kv_usage_in("other 1\n") is None
    assert kv_usage_in("not { prometheus") is None


class Backend:
    """A backend's `/metrics` on loopback, counting scrapes."""

    def __init__(self, usage: float) -> None:
        self.usage = usage
        self.scrapes = 0

    async def metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(text=f"vllm:kv_cache_usage_perc {self.usage}\n")


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, dict[str, Backend], list[float]]]:
    backends = {"a": Backend(0.3), "b": Backend(0.6)}
    runners, ports = [], {}
    for model, backend in backends.items():
        app = web.Application()
        app.router.add_get("/metrics", backend.metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports[model] = runner.addresses[0][1]
        runners.append(runner)
    clock = [0.0]
    session = aiohttp.ClientSession()
    epp = EppMetrics(lambda: SNAPSHOT, session, lambda: ports, clock=lambda: clock[0])
    app = web.Application()
    app.router.add_get(EPP_PATH, epp.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    runners.append(runner)
    yield f"http://127.0.0.1:{runner.addresses[0][1]}{EPP_PATH}", backends, clock
    await session.close()
    for r in runners:
        await r.cleanup()


async def test_served_with_the_fullest_awake_backend_scraped_at_most_once_a_second(
    served: tuple[str, dict[str, Backend], list[float]],
) -> None:
    url, backends, clock = served
    async with aiohttp.ClientSession() as client:
        for _ in range(5):  # the picker polls every 50 ms by default
            async with client.get(url) as response:
                assert response.status == 200
                body = await response.read()
        assert samples(body)["vllm:kv_cache_usage_perc"] == ({}, 0.6)
        assert [b.scrapes for b in backends.values()] == [1, 1]
        backends["b"].usage = 0.1
        clock[0] += KV_MAX_AGE_SECS
        async with client.get(url) as response:
            assert samples(await response.read())["vllm:kv_cache_usage_perc"] == ({}, 0.3)
        assert [b.scrapes for b in backends.values()] == [2, 2]
