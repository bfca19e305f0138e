"""`mock-vllm --mock-gpu torch` on a real GPU: the sleep protocol moves real memory.

GPU machine only (marker `gpu`). Prerequisites, failures when missing: torch with CUDA
and nvidia-ml-py. What it checks, against NVML and the weights checksum the mock
computes on the GPU: level 1 frees the device memory and a wake restores the weights bit
for bit; the second level-1 sleep reuses torch's cached pinned block; level 2 frees them
too, a wake of the weights alone yields different (zeroed) weights until
`reload_weights` reads the weights file; `tags=kv_cache` then finishes the wake; every
answer starts with the checksum; a card without room refuses a second backend at start.
Sized for a card of 40 GB or more.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

GIB = 1 << 30
READY_SECS = 120.0
UTILIZATION = 0.06  # 8.6 GB on an H200: 1 GiB of weights, the rest KV cache


def nvml_total() -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).total)
    finally:
        pynvml.nvmlShutdown()


def nvml_used_by(pid: int) -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        return sum(int(p.usedGpuMemory or 0) for p in procs if p.pid == pid)
    finally:
        pynvml.nvmlShutdown()


def call(base: str, path: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


def launch(tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp / f"mock-{port}.log"
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mock_vllm", "serve", "gpu-mock", "--port", str(port)]
    cmd += ["--enable-sleep-mode", "--mock-gpu", "torch", "--mock-weights-dir", str(tmp), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}", log


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, base, log = launch(
        tmp_path, "--gpu-memory-utilization", str(UTILIZATION), "--mock-model-gib", "1"
    )
    try:
        deadline = time.monotonic() + READY_SECS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the mock exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                call(base, "/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the mock was not ready in {READY_SECS} s")
                time.sleep(0.2)
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def ops(base: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = call(base, "/mock/state")["device"]["ops"]
    return result


def test_sleep_levels_move_real_memory(mock: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, base = mock
    checksum = call(base, "/mock/checksum")["checksum"]
    answer = call(base, "/v1/completions", "POST", {"model": "gpu-mock", "prompt": "hi"})
    assert answer["choices"][0]["text"].startswith(f"[weights {checksum}]")
    awake = nvml_used_by(proc.pid)
    assert awake >= 0.8 * UTILIZATION * nvml_total(), "the mock does not hold its share"

    for round_ in (1, 2):  # the second sleep finds the pinned block in torch's cache
        call(base, "/sleep?level=1&mode=wait", "POST")
        assert call(base, "/is_sleeping")["is_sleeping"] is True
        assert nvml_used_by(proc.pid) < awake / 3, f"level 1 (round {round_}) kept the memory"
        call(base, "/wake_up", "POST")
        assert call(base, "/mock/checksum")["checksum"] == checksum
    pins = [o["secs"] for o in ops(base) if o["op"] == "pin_host"]
    print(json.dumps({"pin_host_secs": pins, "ops": ops(base)[-6:]}, indent=1))

    call(base, "/sleep?level=2&mode=wait", "POST")
    assert nvml_used_by(proc.pid) < awake / 3, "level 2 kept the memory"
    call(base, "/wake_up?tags=weights", "POST")
    assert call(base, "/is_sleeping")["is_sleeping"] is True
    assert call(base, "/mock/checksum")["checksum"] != checksum, "discarded weights came back"
    call(base, "/collective_rpc", "POST", {"method": "reload_weights"})
    assert call(base, "/mock/checksum")["checksum"] == checksum
    call(base, "/wake_up?tags=kv_cache", "POST")
    assert call(base, "/is_sleeping")["is_sleeping"] is False
    call(base, "/reset_prefix_cache", "POST")
    assert nvml_used_by(proc.pid) >= 0.9 * awake
    answer = call(base, "/v1/completions", "POST", {"model": "gpu-mock", "prompt": "hi"})
    assert answer["choices"][0]["text"].startswith(f"[weights {checksum}]")


def test_a_full_card_refuses_a_second_backend(
    mock: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    proc, _log_base, log = launch(tmp_path, "--gpu-memory-utilization", "0.99")
    assert proc.wait(timeout=120) == 1
    assert "less than desired GPU memory utilization" in log.read_text()
