"""VllmClient against a recording loopback aiohttp server, and against a real mock_vllm."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gpumux.backends.vllm_client import BackendControlError, VllmClient
from gpumux.gpu import fake_ledger
from gpumux.gpu.probe import FakeLedgerProbe, GpuMemory
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    body: object


@dataclass
class FakeBackend:
    """A stand-in for vLLM's dev routes; `replies` overrides (status, body) per path."""

    calls: list[Call] = field(default_factory=list)
    replies: dict[str, tuple[int, str]] = field(default_factory=dict)
    slow_paths: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    sleeping: bool = False

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.calls.append(Call(request.method, request.path, tuple(request.query.items()), body))
        self.arrived.set()
        if request.path in self.slow_paths:
            await asyncio.wait_for(self.release.wait(), timeout=10)
        if request.path in self.replies:
            status, text = self.replies[request.path]
            return web.Response(status=status, text=text, content_type="application/json")
        return self.default(request)

    def default(self, request: web.Request) -> web.Response:
        match request.path:
            case "/health":
                return web.Response()
            case "/is_sleeping":
                return web.json_response({"is_sleeping": self.sleeping})
            case "/sleep":
                self.sleeping = True
                return web.json_response(
                    {"status": "sleeping", "level": int(request.query["level"])}
                )
            case "/wake_up":
                self.sleeping = False
                tags = request.query.getall("tags", None)
                return web.json_response({"status": "awake", "tags": tags})
            case "/collective_rpc":
                return web.json_response({"results": [None]})
            case "/reset_prefix_cache":
                return web.json_response({"success": True})
            case "/v1/completions":
                return web.json_response({"choices": [{"text": "!"}]})
        return web.Response(status=404)


@pytest.fixture
async def backend() -> AsyncIterator[tuple[FakeBackend, int]]:
    fake = FakeBackend()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield fake, port
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=4)) as s:
        yield s


@pytest.fixture
def client(backend: tuple[FakeBackend, int], session: aiohttp.ClientSession) -> VllmClient:
    return VllmClient.for_port(session, backend[1])


async def test_sleep_sends_level_and_mode_not_sleep_level(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    fake, _ = backend
    await client.sleep(2, timeout=5)
    await client.sleep(1, mode="abort", timeout=5)
    assert fake.calls == [
        Call("POST", "/sleep", (("level", "2"), ("mode", "wait")), None),
        Call("POST", "/sleep", (("level", "1"), ("mode", "abort")), None),
    ]


async def test_level2_wake_sequence_in_order(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    fake, _ = backend
    await client.wake_up(["weights"], timeout=5)
    await client.collective_rpc("reload_weights", timeout=5)
    await client.wake_up(["kv_cache"], timeout=5)
    assert await client.reset_prefix_cache(timeout=5) is True
    assert [(c.path, c.query, c.body) for c in fake.calls] == [
        ("/wake_up", (("tags", "weights"),), None),
        ("/collective_rpc", (), {"method": "reload_weights"}),
        ("/wake_up", (("tags", "kv_cache"),), None),
        ("/reset_prefix_cache", (), None),
    ]
    assert all(c.method == "POST" for c in fake.calls)


async def test_wake_up_repeats_tags_and_none_means_all(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    fake, _ = backend
    await client.wake_up(["weights", "kv_cache"], timeout=5)
    await client.wake_up(None, timeout=5)
    assert fake.calls[0].query == (("tags", "weights"), ("tags", "kv_cache"))
    assert fake.calls[1].query == ()


async def test_is_sleeping_follows_backend(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    assert await client.is_sleeping(timeout=5) is False
    await client.sleep(1, timeout=5)
    assert await client.is_sleeping(timeout=5) is True
    await client.wake_up(None, timeout=5)
    assert await client.is_sleeping(timeout=5) is False


async def test_is_sleeping_rejects_a_malformed_reply(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    backend[0].replies["/is_sleeping"] = (200, '{"sleeping": "yes"}')
    with pytest.raises(BackendControlError) as info:
        await client.is_sleeping(timeout=5)
    assert info.value.operation == "is_sleeping"
    assert info.value.status == 200


async def test_warmup_sends_one_token_completion_as_alias(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    await client.warmup("llama", timeout=5)
    assert backend[0].calls == [
        Call("POST", "/v1/completions", (), {"model": "llama", "prompt": "hi", "max_tokens": 1})
    ]


async def test_reset_prefix_cache_reports_failure_flag(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    backend[0].replies["/reset_prefix_cache"] = (200, '{"success": false}')
    assert await client.reset_prefix_cache(timeout=5) is False
    backend[0].replies["/reset_prefix_cache"] = (200, "")
    assert await client.reset_prefix_cache(timeout=5) is True


async def test_health_true_on_200_false_on_503(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    assert await client.health(timeout=5) is True
    backend[0].replies["/health"] = (503, "")
    assert await client.health(timeout=5) is False


async def test_non_2xx_raises_with_status_and_short_detail(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    backend[0].replies["/sleep"] = (400, json.dumps({"detail": "level " * 200}))
    with pytest.raises(BackendControlError) as info:
        await client.sleep(1, timeout=5)
    err = info.value
    assert (err.operation, err.status) == ("sleep", 400)
    assert err.detail.startswith('{"detail": "level level')
    assert len(err.detail) <= 200
    assert "\n" not in err.detail
    assert "HTTP 400" in str(err)


Operation = Callable[[VllmClient], Awaitable[object]]
OPERATIONS: list[tuple[str, str, Operation]] = [
    ("wake_up", "/wake_up", lambda c: c.wake_up(None, timeout=5)),
    (
        "collective_rpc:reload_weights",
        "/collective_rpc",
        lambda c: c.collective_rpc("reload_weights", timeout=5),
    ),
    ("reset_prefix_cache", "/reset_prefix_cache", lambda c: c.reset_prefix_cache(timeout=5)),
    ("warmup", "/v1/completions", lambda c: c.warmup("m", timeout=5)),
    ("is_sleeping", "/is_sleeping", lambda c: c.is_sleeping(timeout=5)),
]


@pytest.mark.parametrize(("operation", "path", "call"), OPERATIONS, ids=[o[0] for o in OPERATIONS])
async def test_every_operation_raises_on_500(
    client: VllmClient,
    backend: tuple[FakeBackend, int],
    operation: str,
    path: str,
    call: Operation,
) -> None:
    backend[0].replies[path] = (500, '{"error": "boom"}')
    with pytest.raises(BackendControlError) as info:
        await call(client)
    assert (info.value.operation, info.value.status) == (operation, 500)


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    client = VllmClient.for_port(session, free_port())
    assert await client.health(timeout=2) is False
    with pytest.raises(BackendControlError) as info:
        await client.sleep(1, timeout=2)
    assert info.value.status is None
    assert info.value.operation == "sleep"
    assert "ClientConnectorError" in info.value.detail


async def test_timeout_is_a_control_error_and_health_false(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    fake, _ = backend
    fake.slow_paths.update({"/wake_up", "/health"})
    with pytest.raises(BackendControlError) as info:
        await client.wake_up(None, timeout=0.2)
    assert info.value.status is None
    assert "timed out after 0.2s" in info.value.detail
    assert await client.health(timeout=0.2) is False


async def test_cancellation_propagates(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    fake, _ = backend
    fake.slow_paths.add("/sleep")
    task = asyncio.create_task(client.sleep(1, timeout=30))
    await asyncio.wait_for(fake.arrived.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_outer_timeout_is_not_swallowed(
    client: VllmClient, backend: tuple[FakeBackend, int]
) -> None:
    backend[0].slow_paths.add("/health")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.health(timeout=30)


async def test_argument_validation(client: VllmClient) -> None:
    with pytest.raises(ValueError, match="sleep level"):
        await client.sleep(3, timeout=1)
    with pytest.raises(ValueError, match="sleep mode"):
        await client.sleep(1, mode="later", timeout=1)
    with pytest.raises(ValueError, match="tags"):
        await client.wake_up("weights", timeout=1)
    with pytest.raises(ValueError, match="tags"):
        await client.wake_up([], timeout=1)
    with pytest.raises(ValueError, match="unknown wake tags"):
        await client.wake_up(["weight"], timeout=1)


# --- against mock_vllm, a real subprocess with vLLM's dev routes and the fake ledger -----

GIB = 1024**3


@dataclass
class MockBackend:
    client: VllmClient
    probe: FakeLedgerProbe
    session: aiohttp.ClientSession
    url: str

    async def state(self) -> dict[str, object]:
        async with self.session.get(self.url + "/mock/state") as resp:
            body: dict[str, object] = await resp.json()
            return body

    async def set_faults(self, **faults: object) -> None:
        async with self.session.post(self.url + "/mock/faults", json=faults) as resp:
            assert resp.status == 200


@pytest.fixture
async def mock_backend(
    tmp_path: Path, session: aiohttp.ClientSession
) -> AsyncIterator[MockBackend]:
    ledger = tmp_path / "ledger.json"
    fake_ledger.create_ledger(ledger, [10 * GIB])
    port = free_port()
    env = {
        **os.environ,
        "VLLM_SERVER_DEV_MODE": "1",
        "MOCK_VLLM_LEDGER": str(ledger),
        "CUDA_VISIBLE_DEVICES": "0",
    }
    argv = [sys.executable, "-m", "mock_vllm", "serve", "m1", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--enable-sleep-mode", "--served-model-name", "alias"]
    argv += ["--gpu-memory-utilization", "0.5", "--disable-uvicorn-access-log"]
    with (tmp_path / "backend.log").open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    backend = MockBackend(
        VllmClient.for_port(session, port),
        FakeLedgerProbe(ledger, [10 * GIB]),
        session,
        f"http://127.0.0.1:{port}",
    )
    try:
        async with asyncio.timeout(20):
            while not await backend.client.health(timeout=1):
                assert proc.returncode is None, (tmp_path / "backend.log").read_text()
                await asyncio.sleep(0.05)
        yield backend
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


async def test_mock_level1_sleep_and_wake(mock_backend: MockBackend) -> None:
    client, probe = mock_backend.client, mock_backend.probe
    assert await probe.read() == (GpuMemory(0, 10 * GIB, 5 * GIB),)
    assert await client.is_sleeping(timeout=5) is False
    await client.sleep(1, timeout=10)
    assert await client.is_sleeping(timeout=5) is True
    assert await client.health(timeout=5) is True  # vLLM stays healthy while asleep
    (gpu,) = await probe.read()
    assert 0 < gpu.used_bytes < GIB
    await client.wake_up(None, timeout=10)
    assert await client.is_sleeping(timeout=5) is False
    await client.warmup("alias", timeout=10)
    assert await probe.read() == (GpuMemory(0, 10 * GIB, 5 * GIB),)


async def test_mock_level2_wake_protocol_leaves_valid_weights(mock_backend: MockBackend) -> None:
    client = mock_backend.client
    await client.sleep(2, timeout=10)
    assert (await mock_backend.state())["weights_valid"] is False
    await client.wake_up(["weights"], timeout=10)
    assert await client.is_sleeping(timeout=5) is True  # kv_cache still asleep
    await client.collective_rpc("reload_weights", timeout=10)
    await client.wake_up(["kv_cache"], timeout=10)
    assert await client.reset_prefix_cache(timeout=5) is True
    state = await mock_backend.state()
    assert state["weights_valid"] is True
    assert state["sleep_state"] == "awake"
    await client.warmup("alias", timeout=10)


async def test_mock_failures_surface_as_control_errors(mock_backend: MockBackend) -> None:
    client = mock_backend.client
    await mock_backend.set_faults(fail_sleep=True)
    with pytest.raises(BackendControlError) as info:
        await client.sleep(1, timeout=10)
    assert info.value.operation == "sleep"
    assert info.value.status is not None
    assert info.value.status >= 400
    with pytest.raises(BackendControlError) as info:
        await client.warmup("no-such-model", timeout=10)
    assert (info.value.operation, info.value.status) == ("warmup", 404)
    await mock_backend.set_faults(fail_sleep=False, never_healthy=True)
    assert await client.health(timeout=5) is False
