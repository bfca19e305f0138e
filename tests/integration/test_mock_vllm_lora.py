"""mock_vllm's runtime LoRA routes on their own, in vLLM's shapes: absent without
`VLLM_ALLOW_RUNTIME_LORA_UPDATING`, failing without `--enable-lora`, and with both: load
(twice is 400 unless in place), a missing adapter 404, an unloaded adapter's request
404, the adapter's answer and its `/v1/models` card with `parent`, and unload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.backend import wait_backend_healthy
from tests.support.lora import adapter_dir
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

Start = Callable[..., Awaitable[str]]
LOAD = "/v1/load_lora_adapter"


def launch(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Start `mock_vllm serve tiny` with `flags` and `env`; its base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    async def run(*flags: str, env: dict[str, str] | None = None) -> str:
        port = free_port()
        log = tmp_path / f"mock-{port}.log"
        argv = [sys.executable, "-m", "mock_vllm", "serve", "tiny", "--port", str(port), *flags]
        proc = launch(argv, log, {**os.environ, "MOCK_VLLM_STARTUP_SECS": "0", **(env or {})})
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def gone() -> str | None:
            return None if proc.poll() is None else log.read_text()

        async with aiohttp.ClientSession() as session:
            await wait_backend_healthy(session, url, gone=gone)
        return url

    yield run
    for proc in procs:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


async def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        text = await resp.text()
        return resp.status, (await resp.json() if resp.content_type == "application/json" else text)


async def get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json()


async def test_the_routes_follow_vllms_switches(start: Start, tmp_path: Path) -> None:
    path = str(adapter_dir(tmp_path, "sql"))
    without_env = await start("--enable-lora")
    status, body = await post(without_env + LOAD, {"lora_name": "sql", "lora_path": path})
    assert (status, body) == (404, {"detail": "Not Found"})

    without_flag = await start(env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})
    status, body = await post(without_flag + LOAD, {"lora_name": "sql", "lora_path": path})
    assert status == 500
    assert body["error"]["message"] == "LoRA is not enabled. Use --enable-lora to enable LoRA."


async def test_load_serve_list_and_unload(start: Start, tmp_path: Path) -> None:
    path = str(adapter_dir(tmp_path, "sql"))
    url = await start("--enable-lora", env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
    completion = {"model": "sql", "prompt": "hi", "max_tokens": 3}
    status, body = await post(url + "/v1/completions", completion)
    assert status == 404
    assert body["error"]["message"] == "The model `sql` does not exist."

    status, body = await post(url + LOAD, {"lora_name": "sql", "lora_path": path})
    assert (status, body) == (200, "Success: LoRA adapter 'sql' added successfully.")
    status, body = await post(url + LOAD, {"lora_name": "sql", "lora_path": path})
    assert status == 400
    assert "has already been loaded" in body["error"]["message"]
    inplace = {"lora_name": "sql", "lora_path": path, "load_inplace": True}
    assert (await post(url + LOAD, inplace))[0] == 200
    missing = {"lora_name": "gone", "lora_path": str(tmp_path / "gone")}
    status, body = await post(url + LOAD, missing)
    assert status == 404
    assert (
        body["error"]["message"]
        == f"Loading lora gone failed: No adapter found for {missing['lora_path']}"
    )

    status, body = await post(url + "/v1/completions", completion)
    assert status == 200
    assert body["model"] == "sql"
    assert body["choices"][0]["text"].startswith("[lora sql]")
    cards = {m["id"]: m for m in (await get(url + "/v1/models"))["data"]}
    assert (cards["sql"]["parent"], cards["sql"]["root"]) == ("tiny", path)
    assert (await get(url + "/mock/lora"))["loads"] == {"sql": 2}

    assert (await post(url + "/v1/unload_lora_adapter", {"lora_name": "sql"}))[0] == 200
    assert (await post(url + "/v1/completions", completion))[0] == 404
    assert (await post(url + "/v1/unload_lora_adapter", {"lora_name": "sql"}))[0] == 404
    assert (await get(url + "/mock/lora"))["unloads"] == {"sql": 1}
