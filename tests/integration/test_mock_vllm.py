"""mock_vllm as a real subprocess: the vLLM surface gpumux relies on, and its fault knobs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from gpumux.gpu.fake_ledger import allocations, book, create_ledger, release, usage
from mock_vllm.options import parse_serve_args
from tests.support.backend import mock_chat, wait_backend_healthy
from tests.support.ports import free_port
from tests.support.procs import alive
from tests.support.waits import wait_until_async

pytestmark = pytest.mark.integration

GIB = 1 << 30
READY_DEADLINE_SECS = 15.0
CHAT = "/v1/chat/completions"


@dataclass
class Mock:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def exit_report(self) -> str | None:
        """Why it cannot answer any more (its exit and log), or None while it runs."""
        if self.proc.poll() is None:
            return None
        return f"mock exited with {self.proc.returncode}:\n{self.log()}"


Spawn = Callable[..., Awaitable[Mock]]


def launch(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``python -m mock_vllm ARGS`` in its own session, output to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "mock_vllm", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


async def wait_healthy(session: aiohttp.ClientSession, mock: Mock) -> None:
    await wait_backend_healthy(
        session, mock.base, gone=mock.exit_report, timeout=READY_DEADLINE_SECS
    )


async def wait_exit(proc: subprocess.Popen[bytes], deadline_secs: float = 10.0) -> int:
    await wait_until_async(lambda: proc.poll() is not None, "the exit", timeout=deadline_secs)
    return proc.returncode


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def spawn(tmp_path: Path, session: aiohttp.ClientSession) -> AsyncIterator[Spawn]:
    started: list[Mock] = []

    async def start(
        *args: str,
        env: dict[str, str] | None = None,
        dev: bool = True,
        wait: bool = True,
        model: str = "tiny",
    ) -> Mock:
        port = free_port()
        log_path = tmp_path / f"mock-{port}.log"
        full_env = {**os.environ, **(env or {})}
        full_env.pop("VLLM_SERVER_DEV_MODE", None)
        if dev:
            full_env["VLLM_SERVER_DEV_MODE"] = "1"
        # --dtype: an unknown vLLM flag, which the mock must tolerate.
        cmd = ["serve", model, "--port", str(port), "--dtype", "float16", *args]
        proc = launch(cmd, log_path, full_env)
        mock = Mock(proc, port, log_path)
        started.append(mock)
        if wait:
            await wait_healthy(session, mock)
        return mock

    yield start
    for mock in started:
        if mock.proc.poll() is None:
            # Our own children, each in its own session: kill that group only.
            os.killpg(mock.proc.pid, signal.SIGKILL)
        mock.proc.wait()


async def chat(
    session: aiohttp.ClientSession, mock: Mock, content: str = "hello there", **extra: Any
) -> tuple[int, dict[str, Any]]:
    return await mock_chat(session, mock.base, content, **extra)


async def stream_chat(
    session: aiohttp.ClientSession,
    mock: Mock,
    *,
    on_first: asyncio.Event | None = None,
    **extra: Any,
) -> list[str]:
    """The ``data:`` payloads of a streamed chat, in order."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        **extra,
    }
    frames: list[str] = []
    async with session.post(mock.base + CHAT, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                frames.append(line[len("data: ") :])
                if on_first is not None:
                    on_first.set()
    return frames


async def read_frames(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], frames: list[str]
) -> None:
    """Append each raw ``data:`` line to ``frames`` as it arrives (kept on errors)."""
    async with session.post(url, json=body) as resp:
        async for raw in resp.content:
            if raw.startswith(b"data: "):
                frames.append(raw.decode())  # noqa: PERF401 - partial results must survive


def finish_reasons(frames: list[str]) -> list[str]:
    return [
        choice["finish_reason"]
        for frame in frames
        if frame != "[DONE]"
        for choice in json.loads(frame)["choices"]
        if choice["finish_reason"]
    ]


def text_of(frames: list[str]) -> str:
    return "".join(
        c["delta"].get("content", "")
        for f in frames if f != "[DONE]" for c in json.loads(f)["choices"]
    )  # fmt: skip


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def post(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.post(url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def events(session: aiohttp.ClientSession, mock: Mock) -> list[dict[str, Any]]:
    return list((await get_json(session, mock.base + "/mock/events"))["events"])


def names(evts: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in evts]


# --- startup --------------------------------------------------------------------------


async def test_binds_late_then_serves_models(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    mock = await spawn(
        "--mock-startup-secs", "1.5", "--served-model-name", "tiny", "alt", wait=False
    )
    await wait_until_async(
        lambda: "non-default args" in mock.log(), "the start-up line", timeout=READY_DEADLINE_SECS
    )
    # The process is up and "loading": the port refuses connections.
    with pytest.raises(aiohttp.ClientConnectorError):
        async with session.get(mock.base + "/health"):
            pass
    await wait_healthy(session, mock)
    log = mock.log()
    for line in (
        "vLLM server version 0.33.0-mock, serving model tiny",
        "Loading weights took",
        "Model loading took",
        f"Starting vLLM server on http://127.0.0.1:{mock.port}",
        "Application startup complete.",
        "'--dtype', 'float16'",
    ):
        assert line in log
    models = await get_json(session, mock.base + "/v1/models")
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny", "alt"]
    assert models["data"][0]["owned_by"] == "vllm"
    assert (await get_json(session, mock.base + "/version"))["version"] == "0.33.0-mock"
    assert (await get_json(session, mock.base + "/load")) == {"server_load": 0}
    status, body = await chat(session, mock, model="alt")
    assert status == 200
    assert body["model"] == "alt"


async def test_exit_at_start_and_never_healthy(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    dead = await spawn(env={"MOCK_VLLM_EXIT_AT_START": "1"}, wait=False)
    assert await wait_exit(dead.proc) == 1
    assert "exit_at_start" in dead.log()
    sick = await spawn("--mock-never-healthy", wait=False)
    deadline = time.monotonic() + READY_DEADLINE_SECS
    while True:
        try:
            async with session.get(sick.base + "/health") as resp:
                assert resp.status == 503
                break
        except aiohttp.ClientConnectionError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    status, _ = await chat(session, sick)
    assert status == 200  # listening and serving, just never "healthy"


# --- OpenAI routes ------------------------------------------------------------------


async def test_chat_non_stream_echoes_request_id(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    mock = await spawn()
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 5,
    }
    async with session.post(
        mock.base + CHAT, json=body, headers={"X-Request-Id": "req-42"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "req-42"
        data = await resp.json()
    assert data["id"] == "chatcmpl-req-42"
    assert data["object"] == "chat.completion"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"].split()) == 5
    assert data["usage"]["completion_tokens"] == 5
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + 5
    # Deterministic: same prompt, same answer; no max_tokens: 16 tokens ending in "stop".
    _, again = await chat(session, mock, max_tokens=5)
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]
    _, default = await chat(session, mock)
    assert default["usage"]["completion_tokens"] == 16
    assert default["choices"][0]["finish_reason"] == "stop"
    async with session.post(mock.base + CHAT, json=body) as resp:
        assert len(resp.headers["X-Request-Id"]) > 0


async def test_chat_stream_with_usage_and_done(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    mock = await spawn()
    frames = await stream_chat(session, mock, max_tokens=4, stream_options={"include_usage": True})
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert finish_reasons(frames) == ["length"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert len(text_of(frames).split()) == 4
    no_usage = await stream_chat(session, mock, max_tokens=2)
    assert all("usage" not in json.loads(f) for f in no_usage[:-1])


async def test_other_openai_routes_and_errors(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    mock = await spawn("--mock-embedding-dim", "4")
    status, cmpl = await post(
        session,
        mock.base + "/v1/completions",
        json={"model": "tiny", "prompt": "say", "max_tokens": 3},
    )
    assert (status, cmpl["object"], cmpl["usage"]["completion_tokens"]) == (
        200, "text_completion", 3)  # fmt: skip
    status, emb = await post(
        session, mock.base + "/v1/embeddings", json={"model": "tiny", "input": ["a", "b"]}
    )
    assert status == 200
    assert [len(d["embedding"]) for d in emb["data"]] == [4, 4]
    status, resp = await post(
        session,
        mock.base + "/v1/responses",
        json={"model": "tiny", "input": "hi", "max_output_tokens": 2},
    )
    assert (status, resp["object"], resp["status"]) == (200, "response", "completed")
    status, tok = await post(
        session, mock.base + "/tokenize", json={"model": "tiny", "prompt": "one two three"}
    )
    assert (status, tok["count"]) == (200, 3)
    status, detok = await post(session, mock.base + "/detokenize", json={"tokens": [1, 2]})
    assert status == 200
    assert isinstance(detok["prompt"], str)
    status, err = await post(
        session, mock.base + CHAT, data=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert status == 400
    assert "Unsupported Media Type" in err["error"]["message"]
    status, err = await post(
        session, mock.base + CHAT, data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert (status, err["error"]["type"], err["error"]["code"]) == (400, "BadRequestError", 400)
    status, err = await chat(session, mock, model="x")
    assert status == 404
    assert err == {
        "error": {
            "message": "The model `x` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    async with session.get(mock.base + "/metrics") as r:
        text = await r.text()
    for name in (
        "vllm:num_requests_running{",
        "vllm:num_requests_waiting{",
        "vllm:kv_cache_usage_perc{",
        'sleep_state="awake"} 1.0',
        "vllm:time_to_first_token_seconds_bucket{",
        "vllm:prompt_tokens_total{",
        "vllm:generation_tokens_total{",
        'model_name="tiny",engine="0"',
    ):
        assert name in text


async def test_runtime_faults_http_error_and_validation(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    mock = await spawn()
    status, faults = await post(
        session, mock.base + "/mock/faults", json={"http_error_status": 503}
    )
    assert (status, faults["http_error_status"]) == (200, 503)
    status, err = await chat(session, mock)
    assert status == 503
    assert err["error"]["code"] == 503
    status, _ = await post(session, mock.base + "/mock/faults", json={"bogus_knob": 1})
    assert status == 400
    status, _ = await post(session, mock.base + "/mock/faults", json={"http_error_status": None})
    assert status == 200
    assert (await chat(session, mock))[0] == 200


async def test_http_error_marker_fails_only_poisoned_requests(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    """`http_error_marker` narrows `http_error_status` to prompts that contain it (from the
    environment at start, and at runtime); clearing it fails every request again."""
    mock = await spawn(
        env={"MOCK_VLLM_HTTP_ERROR_STATUS": "500", "MOCK_VLLM_HTTP_ERROR_MARKER": "X"}
    )
    assert (await chat(session, mock, "a poisoned X prompt"))[0] == 500
    assert (await chat(session, mock, "a clean prompt"))[0] == 200
    completion = {"model": "tiny", "prompt": "ping", "max_tokens": 1}
    assert (await post(session, mock.base + "/v1/completions", json=completion))[0] == 200
    _, faults = await post(
        session, mock.base + "/mock/faults", json={"http_error_marker": "POISON"}
    )
    assert faults["http_error_marker"] == "POISON"
    assert (await chat(session, mock, "X"))[0] == 200
    status, err = await chat(session, mock, "POISON pill", stream=True)
    assert (status, err["error"]["code"]) == (500, 500)  # the status line of a stream too
    bad, _ = await post(session, mock.base + "/mock/faults", json={"http_error_marker": 3})
    assert bad == 400
    await post(session, mock.base + "/mock/faults", json={"http_error_marker": None})
    assert (await chat(session, mock, "a clean prompt"))[0] == 500


# --- dev routes and sleep -----------------------------------------------------------


async def test_dev_routes_need_dev_mode_and_sleep_mode(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    plain = await spawn("--enable-sleep-mode", dev=False)
    for path in ("/sleep", "/wake_up", "/collective_rpc", "/reset_prefix_cache"):
        status, body = await post(session, plain.base + path)
        assert (status, body) == (404, {"detail": "Not Found"})
    no_sleep = await spawn()
    status, body = await post(session, no_sleep.base + "/sleep?level=1")
    assert status == 500
    assert "Sleep mode is not enabled" in body["error"]["message"]
    status, _ = await post(session, no_sleep.base + "/sleep?level=3")
    assert status == 400


async def test_sleep_level1_then_wake(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    mock = await spawn("--enable-sleep-mode")
    _, before = await chat(session, mock, max_tokens=4)
    status, body = await post(session, mock.base + "/sleep?level=1")
    assert (status, body) == (200, {"status": "sleeping", "level": 1})
    assert await get_json(session, mock.base + "/is_sleeping") == {"is_sleeping": True}
    async with session.get(mock.base + "/metrics") as r:
        assert 'sleep_state="weights_offloaded"} 1.0' in await r.text()
    status, body = await post(session, mock.base + "/wake_up")
    assert (status, body) == (200, {"status": "awake", "tags": None})
    _, after = await chat(session, mock, max_tokens=4)
    # Level 1 keeps the weights: same answer as before the sleep.
    assert after["choices"][0]["message"] == before["choices"][0]["message"]
    assert names(await events(session, mock))[-6:] == [
        "sleep", "sleep_done", "wake_up", "wake_up_done", "request", "request_done"]  # fmt: skip


async def test_sleep_level2_needs_reload(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    mock = await spawn("--enable-sleep-mode")
    _, before = await chat(session, mock, max_tokens=4)
    assert (await post(session, mock.base + "/sleep?level=2"))[0] == 200
    status, body = await post(session, mock.base + "/wake_up?tags=weights")
    assert (status, body) == (200, {"status": "sleeping", "tags": ["weights"]})
    status, body = await post(session, mock.base + "/wake_up?tags=kv_cache")
    assert (status, body["status"]) == (200, "awake")
    _, garbage = await chat(session, mock, max_tokens=4)
    assert garbage["choices"][0]["message"]["content"] == "!!!!"
    # The proper level-2 protocol: weights, reload_weights, kv_cache, reset_prefix_cache.
    assert (await post(session, mock.base + "/sleep?level=2"))[0] == 200
    await post(session, mock.base + "/wake_up", params=[("tags", "weights")])
    status, body = await post(
        session, mock.base + "/collective_rpc", json={"method": "reload_weights"}
    )
    assert (status, body) == (200, {"results": [None]})
    await post(session, mock.base + "/wake_up", params=[("tags", "kv_cache")])
    assert await post(session, mock.base + "/reset_prefix_cache") == (200, {"success": True})
    _, after = await chat(session, mock, max_tokens=4)
    assert after["choices"][0]["message"] == before["choices"][0]["message"]
    status, _ = await post(session, mock.base + "/collective_rpc", json={"args": []})
    assert status == 400
    rpc = [e for e in await events(session, mock) if e["event"] == "collective_rpc"]
    assert [e["method"] for e in rpc] == ["reload_weights"]


async def test_request_queued_while_asleep_runs_after_wake(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    mock = await spawn("--enable-sleep-mode")
    await post(session, mock.base + "/sleep?level=1")
    pending = asyncio.create_task(chat(session, mock, max_tokens=3))
    deadline = time.monotonic() + 5
    while (await get_json(session, mock.base + "/mock/state"))["waiting"] != 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert not pending.done()
    await post(session, mock.base + "/wake_up")
    status, body = await asyncio.wait_for(pending, 5)
    assert status == 200
    assert body["choices"][0]["finish_reason"] == "length"


async def test_sleep_modes_wait_abort_keep(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    mock = await spawn("--enable-sleep-mode", "--mock-tokens-per-sec", "40")
    for mode, expected in (("wait", "length"), ("abort", "abort"), ("keep", "length")):
        first = asyncio.Event()
        stream = asyncio.create_task(stream_chat(session, mock, on_first=first, max_tokens=12))
        await asyncio.wait_for(first.wait(), 5)
        status, _ = await post(session, mock.base + f"/sleep?level=1&mode={mode}")
        assert status == 200
        if mode == "keep":
            await asyncio.sleep(0.2)
            assert not stream.done()  # frozen, not finished
        await post(session, mock.base + "/wake_up")
        frames = await asyncio.wait_for(stream, 5)
        assert frames[-1] == "[DONE]"
        assert finish_reasons(frames) == [expected], mode
    evts = await events(session, mock)
    done_at = [i for i, e in enumerate(evts) if e["event"] == "request_done"]
    sleep_done_at = [i for i, e in enumerate(evts) if e["event"] == "sleep_done"]
    # mode=wait: the in-flight stream finished before the engine went to sleep.
    assert done_at[0] < sleep_done_at[0]
    sleeps = [(e["level"], e["mode"]) for e in evts if e["event"] == "sleep"]
    assert sleeps == [(1, "wait"), (1, "abort"), (1, "keep")]


# --- ledger -------------------------------------------------------------------------


async def test_ledger_refuses_start_when_full(spawn: Spawn, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    create_ledger(ledger, [10 * GIB])
    book(ledger, os.getpid(), {0: 5 * GIB}, model="other", state="awake")
    mock = await spawn(env={"MOCK_VLLM_LEDGER": str(ledger)}, wait=False)
    assert await wait_exit(mock.proc) == 1
    assert "ValueError: Free memory on device cuda:0 (5.00 GiB) is less than desired GPU " \
           "memory utilization (0.9, 9.00 GiB)" in mock.log()  # fmt: skip
    assert set(allocations(ledger)) == {os.getpid()}


async def test_ledger_sleep_frees_and_wake_refused_when_full(
    spawn: Spawn, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.json"
    create_ledger(ledger, [10 * GIB])
    mock = await spawn(
        "--enable-sleep-mode", "--mock-model-gib", "2", env={"MOCK_VLLM_LEDGER": str(ledger)}
    )
    assert usage(ledger)[0] == (int(0.9 * 10 * GIB), 10 * GIB)
    await post(session, mock.base + "/sleep?level=1")
    (alloc,) = allocations(ledger).values()
    assert (alloc.gpus, alloc.state, alloc.host_bytes) == ({0: GIB // 2}, "sleeping", 2 * GIB)
    book(ledger, os.getpid(), {0: 5 * GIB}, model="intruder", state="awake")
    try:
        status, body = await post(session, mock.base + "/wake_up")
        assert status == 500
        assert body["error"]["type"] == "InternalServerError"
        assert body["error"]["message"].startswith("CUDA out of memory")
        assert await get_json(session, mock.base + "/is_sleeping") == {"is_sleeping": True}
    finally:
        release(ledger, os.getpid())
    assert await post(session, mock.base + "/wake_up") == (200, {"status": "awake", "tags": None})
    assert usage(ledger)[0][0] == int(0.9 * 10 * GIB)


async def test_tensor_parallel_workers_book_their_gpus(
    spawn: Spawn, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.json"
    create_ledger(ledger, [10 * GIB, 20 * GIB, 30 * GIB])
    mock = await spawn(
        "-tp",
        "2",
        "--gpu-memory-utilization",
        "0.5",
        env={"MOCK_VLLM_LEDGER": str(ledger), "CUDA_VISIBLE_DEVICES": "2,1"},
    )
    state = await get_json(session, mock.base + "/mock/state")
    workers = state["worker_pids"]
    assert len(workers) == 2
    assert sorted(p.pid for p in psutil.Process(mock.proc.pid).children()) == sorted(workers)
    booked = allocations(ledger)
    assert booked[workers[0]].gpus == {2: 15 * GIB}
    assert booked[workers[1]].gpus == {1: 10 * GIB}
    status, body = await post(session, mock.base + "/collective_rpc", json={"method": "ping"})
    assert (status, body) == (200, {"results": [None, None]})


# --- process lifecycle ----------------------------------------------------------------


async def test_sigterm_leaves_no_processes(
    spawn: Spawn, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.json"
    create_ledger(ledger, [10 * GIB, 10 * GIB])
    mock = await spawn("-tp", "2", env={"MOCK_VLLM_LEDGER": str(ledger)})
    tree = [mock.proc.pid, *(p.pid for p in psutil.Process(mock.proc.pid).children(True))]
    assert len(tree) == 3
    first = asyncio.Event()
    stream = asyncio.create_task(stream_chat(session, mock, on_first=first, max_tokens=500))
    await asyncio.wait_for(first.wait(), 5)
    mock.proc.send_signal(signal.SIGTERM)
    frames = await asyncio.wait_for(stream, 10)
    assert finish_reasons(frames) == ["abort"]  # in-flight requests are aborted
    assert await wait_exit(mock.proc) == 0
    assert not any(psutil.pid_exists(pid) for pid in tree[1:])
    assert allocations(ledger) == {}


async def test_crash_after_chunks_kills_the_tree(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    mock = await spawn(env={"MOCK_VLLM_CRASH_AFTER_CHUNKS": "3"})
    workers = [p.pid for p in psutil.Process(mock.proc.pid).children()]
    frames: list[str] = []
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with pytest.raises(aiohttp.ClientError):
        await read_frames(session, mock.base + CHAT, {**body, "max_tokens": 50}, frames)
    assert len(frames) == 3
    assert await wait_exit(mock.proc) == -signal.SIGKILL
    await wait_until_async(
        lambda: not any(psutil.pid_exists(pid) for pid in workers), "the workers to end", timeout=5
    )


async def test_client_abort_is_recorded(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    mock = await spawn("--mock-tokens-per-sec", "20")
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "max_tokens": 100,
    }
    async with session.post(
        mock.base + CHAT, json=body, headers={"X-Request-Id": "gone-1"}
    ) as resp:
        await resp.content.readline()
        resp.close()  # drop the connection mid-stream
    deadline = time.monotonic() + 5
    while True:
        evts = await events(session, mock)
        aborts = [e for e in evts if e["event"] == "client_abort"]
        if aborts:
            break
        assert time.monotonic() < deadline, evts
        await asyncio.sleep(0.05)
    assert aborts[0]["request_id"] == "gone-1"
    done = [e for e in evts if e["event"] == "request_done"]
    assert done[-1]["finish_reason"] == "abort"


# --- more fault knobs ---------------------------------------------------------------


async def test_sleep_and_wake_faults(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    mock = await spawn("--enable-sleep-mode", "--mock-fail-sleep")
    status, body = await post(session, mock.base + "/sleep?level=1")
    assert (status, body["error"]["type"]) == (500, "InternalServerError")
    assert await get_json(session, mock.base + "/is_sleeping") == {"is_sleeping": False}
    await post(
        session,
        mock.base + "/mock/faults",
        json={"fail_sleep": False, "fail_wake": True, "sleep_delay_secs": 0.3},
    )
    started = time.monotonic()
    assert (await post(session, mock.base + "/sleep?level=1"))[0] == 200
    assert time.monotonic() - started >= 0.3
    assert (await post(session, mock.base + "/wake_up"))[0] == 500
    assert await get_json(session, mock.base + "/is_sleeping") == {"is_sleeping": True}
    await post(session, mock.base + "/mock/faults", json={"fail_wake": "false"})
    assert (await post(session, mock.base + "/wake_up"))[1]["status"] == "awake"


async def test_hang_slow_first_byte_and_keepalive_comments(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    mock = await spawn("--enable-sleep-mode", "--mock-slow-first-byte-secs", "0.3")
    started = time.monotonic()
    assert (await chat(session, mock, max_tokens=1))[0] == 200
    assert time.monotonic() - started >= 0.3
    await post(
        session,
        mock.base + "/mock/faults",
        json={"slow_first_byte_secs": 0, "hang_after_chunks": 2},
    )
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "max_tokens": 10,
    }
    async with session.post(mock.base + CHAT, json=body) as resp:
        lines = [await resp.content.readline() for _ in range(4)]  # 2 frames, 2 blank lines
        assert sum(line.startswith(b"data: ") for line in lines) == 2
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.readline(), 0.3)  # hung, connection open
    # While a stream waits for a sleeping engine, SSE comments keep the connection busy.
    await post(
        session,
        mock.base + "/mock/faults",
        json={"hang_after_chunks": None, "sse_keepalive_secs": 0.05},
    )
    await post(session, mock.base + "/sleep?level=1")
    async with session.post(mock.base + CHAT, json=body) as resp:
        assert await resp.content.readline() == b": keep-alive\n"
        await post(session, mock.base + "/wake_up")
        rest = await resp.content.read()
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_worker_death_makes_unhealthy_then_exits(
    spawn: Spawn, session: aiohttp.ClientSession
) -> None:
    mock = await spawn()
    (worker,) = psutil.Process(mock.proc.pid).children()
    worker.kill()
    deadline = time.monotonic() + 5
    while True:
        try:
            async with session.get(mock.base + "/health") as resp:
                if resp.status == 503:
                    break
        except aiohttp.ClientConnectionError:
            break  # already gone is fine too
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert await wait_exit(mock.proc) == 1
    assert "died unexpectedly" in mock.log()


async def test_sigint_and_host_memory(spawn: Spawn) -> None:
    mock = await spawn("--mock-host-memory-gib", "0.25")
    proc = psutil.Process(mock.proc.pid)
    assert proc.memory_info().rss >= GIB // 4
    # Plain asyncio, no helper threads: CRIU-dumpable.
    assert proc.num_threads() == 1
    mock.proc.send_signal(signal.SIGINT)
    assert await wait_exit(mock.proc) == 0


async def test_killing_only_the_api_server_takes_workers_down(spawn: Spawn, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    create_ledger(ledger, [10 * GIB])
    mock = await spawn(env={"MOCK_VLLM_LEDGER": str(ledger)})
    (worker,) = psutil.Process(mock.proc.pid).children()
    assert set(allocations(ledger)) == {worker.pid}
    mock.proc.kill()  # the API server alone, as an OOM killer might
    assert await wait_exit(mock.proc) == -signal.SIGKILL
    # PR_SET_PDEATHSIG takes the worker down; its memory is freed with it.
    await wait_until_async(
        lambda: not alive(worker.pid), "the worker to end with its API server", timeout=5
    )
    assert usage(ledger)[0][0] == 0


def test_flag_forms_env_fallback_and_unknown_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCK_VLLM_MODEL_GIB", "4")
    monkeypatch.setenv("MOCK_VLLM_FAIL_WAKE", "true")
    monkeypatch.setenv("MOCK_VLLM_HANG_AFTER_CHUNKS", "7")
    opts = parse_serve_args(
        ["org/model", "--port=8123", "-tp", "2", "--gpu-memory-utilization=0.45",
         "--served-model-name", "alias", "other", "--enable-sleep-mode", "--dtype", "bf16",
         "--mock-load-secs-per-gib=0.5", "--mock-crash-after-chunks", "3", "--mock-fail-sleep",
         "--max-model-len", "32k"]
    )  # fmt: skip
    assert (opts.model, opts.model_id, opts.port) == ("org/model", "alias", 8123)
    assert (opts.tensor_parallel_size, opts.gpu_memory_utilization) == (2, 0.45)
    assert opts.max_model_len == 32_000
    assert opts.model_gib == 4.0  # from the environment
    assert opts.startup_delay == opts.sleep_delay == opts.wake_delay == 2.0  # 4 GiB x 0.5
    assert opts.faults.crash_after_chunks == 3
    assert opts.faults.hang_after_chunks == 7
    assert opts.faults.fail_sleep
    assert opts.faults.fail_wake
    assert opts.unknown_args == ["--dtype", "bf16"]
    monkeypatch.setenv("MOCK_VLLM_MODEL_GIB", "1")
    assert parse_serve_args(["m", "--mock-model-gib", "3"]).model_gib == 3.0  # flag wins
