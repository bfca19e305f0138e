"""The engine's seam to real device memory, driven with a recording stand-in for torch.

What the torch mode does to its tensors is tested on a GPU (`tests/gpu`); here: which
footprints the engine hands the device for each step of vLLM's sleep protocol, that
`reload_weights` reaches it, and that the first token of every answer is the device's
checksum.
"""

from __future__ import annotations

import pytest

from mock_vllm.engine import Engine
from mock_vllm.gpu_memory import AWAKE, Footprint, GpuMemory
from mock_vllm.options import parse_serve_args

pytestmark = pytest.mark.unit

L1 = Footprint(weights=False, kv_cache=False, host_weights=True)
L2 = Footprint(weights=False, kv_cache=False, host_weights=False)
WEIGHTS_ONLY = Footprint(weights=True, kv_cache=False, host_weights=False)


class RecordingDevice:
    def __init__(self) -> None:
        self.calls: list[object] = []

    async def apply(self, fp: Footprint) -> None:
        self.calls.append(fp)

    async def reload_weights(self) -> None:
        self.calls.append("reload")

    async def checksum(self) -> str:
        return "00c0ffee00c0ffee"

    def info(self) -> dict[str, object]:
        return {"mode": "recording"}


def make_engine(monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, RecordingDevice]:
    monkeypatch.delenv("MOCK_VLLM_LEDGER", raising=False)
    opts = parse_serve_args(["m", "--enable-sleep-mode", "--mock-gpu", "torch"])
    gpu = GpuMemory(model="m", pids=[1], gpus=[0], utilization=0.5, model_bytes=1, residual_bytes=0)
    device = RecordingDevice()
    return Engine(opts, gpu, crash=lambda: None, device=device), device


async def test_level_one_offloads_and_a_full_wake_restores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, device = make_engine(monkeypatch)
    await engine.sleep(1, "wait")
    assert await engine.wake(None) == "awake"
    assert device.calls == [L1, AWAKE]


async def test_level_two_wakes_by_tags_around_a_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, device = make_engine(monkeypatch)
    await engine.sleep(2, "wait")
    assert await engine.wake(["weights"]) == "sleeping"
    await engine.collective_rpc("reload_weights")
    assert await engine.wake(["kv_cache"]) == "awake"
    assert device.calls == [L2, WEIGHTS_ONLY, "reload", AWAKE]
    assert engine.weights_valid


async def test_the_first_token_is_the_device_checksum(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _device = make_engine(monkeypatch)
    pieces: list[str] = []

    async def collect(piece: str) -> None:
        pieces.append(piece)

    req = engine.new_request("r1", "/v1/completions", stream=False)
    assert await engine.admit(req)
    assert await engine.generate(req, "hello", 3, collect)
    assert pieces[0] == "[weights 00c0ffee00c0ffee]"
    assert len(pieces) == 3
