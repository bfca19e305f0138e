"""GPU probe selection, the fake-ledger probe, NVML absence, host memory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from gpumux.core.config import GpuConfig
from gpumux.gpu.probe import (
    FakeLedgerProbe,
    GpuMemory,
    GpuProbe,
    HostMemory,
    NoProbe,
    NvmlProbe,
    ProbeUnavailable,
    make_probe,
    open_probe,
    read_host_memory,
)

pytestmark = pytest.mark.unit

GIB = 1024**3


def nvml_works() -> bool:
    """Ask NVML directly, independently of the code under test."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return int(pynvml.nvmlDeviceGetCount()) > 0
    finally:
        pynvml.nvmlShutdown()


def write_ledger(path: Path, capacity: dict[str, int], gpus: dict[str, int]) -> None:
    path.write_text(
        json.dumps(
            {
                "capacity_bytes": capacity,
                "allocations": {
                    str(os.getpid()): {
                        "gpus": gpus,
                        "host_bytes": 0,
                        "model": "m",
                        "state": "awake",
                    }
                },
            }
        )
    )


async def test_none_probe_reads_nothing() -> None:
    probe = make_probe(GpuConfig(probe="none"), ledger_path=None)
    assert isinstance(probe, NoProbe)
    assert probe.name == "none"
    assert probe.reason is None
    assert await probe.read() == ()
    probe.close()
    probe.close()


async def test_auto_uses_nvml_only_when_it_initialises() -> None:
    probe = await open_probe(GpuConfig(probe="auto"), ledger_path=None)
    try:
        if nvml_works():
            assert isinstance(probe, NvmlProbe)
            gpus = await probe.read()
            assert gpus
            assert [g.index for g in gpus] == list(range(len(gpus)))
            assert all(0 <= g.used_bytes <= g.total_bytes and g.total_bytes > 0 for g in gpus)
        else:
            assert isinstance(probe, NoProbe)
            assert probe.reason is not None
            assert "NVML" in probe.reason
            assert await probe.read() == ()
    finally:
        probe.close()


async def test_explicit_nvml_raises_without_gpu() -> None:
    if nvml_works():
        probe = make_probe(GpuConfig(probe="nvml"), ledger_path=None)
        assert probe.name == "nvml"
        assert await probe.read()
        probe.close()
        probe.close()
        with pytest.raises(ProbeUnavailable, match="closed"):
            await probe.read()
    else:
        with pytest.raises(ProbeUnavailable, match="NVML"):
            make_probe(GpuConfig(probe="nvml"), ledger_path=None)


def test_fake_needs_a_ledger_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ledger path"):
        make_probe(GpuConfig(probe="fake"), ledger_path=None)
    from_config = make_probe(
        GpuConfig(probe="fake", fake_ledger_path=str(tmp_path / "cfg.json")), ledger_path=None
    )
    assert isinstance(from_config, FakeLedgerProbe)
    assert from_config.ledger_path == tmp_path / "cfg.json"
    explicit = make_probe(
        GpuConfig(probe="fake", fake_ledger_path=str(tmp_path / "cfg.json")),
        ledger_path=tmp_path / "arg.json",
    )
    assert isinstance(explicit, FakeLedgerProbe)
    assert explicit.ledger_path == tmp_path / "arg.json"


async def test_fake_probe_without_ledger_file_reports_capacities_unused(tmp_path: Path) -> None:
    probe = make_probe(
        GpuConfig(probe="fake", fake_capacity_gib=[80.0, 0.5]),
        ledger_path=tmp_path / "missing.json",
    )
    assert probe.name == "fake"
    assert await probe.read() == (GpuMemory(0, 80 * GIB, 0), GpuMemory(1, GIB // 2, 0))


async def test_fake_probe_reads_a_hand_written_ledger(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    write_ledger(ledger, {"0": 10 * GIB, "1": 20 * GIB}, {"0": 3 * GIB})
    probe = FakeLedgerProbe(ledger, [8 * GIB, 8 * GIB, 8 * GIB])
    gpus = await probe.read()
    assert gpus[0] == GpuMemory(0, 10 * GIB, 3 * GIB)
    assert gpus[1].total_bytes == 20 * GIB
    assert gpus[1].used_bytes == 0
    assert gpus[2] == GpuMemory(2, 8 * GIB, 0)


async def test_fake_probe_ignores_dead_pids_and_reports_corrupt_ledgers(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    data = {
        "capacity_bytes": {"0": 10 * GIB},
        "allocations": {
            str(os.getpid()): {"gpus": {"0": GIB}, "host_bytes": 0, "model": "a", "state": "awake"},
            "999999999": {"gpus": {"0": 5 * GIB}, "host_bytes": 0, "model": "b", "state": "awake"},
        },
    }
    ledger.write_text(json.dumps(data))
    probe = FakeLedgerProbe(ledger, [GIB])
    assert await probe.read() == (GpuMemory(0, 10 * GIB, GIB),)
    ledger.write_text("{not json")
    with pytest.raises(ProbeUnavailable, match="fake ledger"):
        await probe.read()


def test_probes_satisfy_the_protocol(tmp_path: Path) -> None:
    probes: list[GpuProbe] = [NoProbe(), FakeLedgerProbe(tmp_path / "l.json", [GIB])]
    assert [p.name for p in probes] == ["none", "fake"]


def test_free_bytes_never_negative() -> None:
    assert GpuMemory(0, 10, 4).free_bytes == 6
    assert GpuMemory(0, 10, 12).free_bytes == 0


async def test_host_memory_comes_from_psutil_unless_the_fake_probe_has_a_host_size(
    tmp_path: Path,
) -> None:
    real = await read_host_memory(NoProbe())
    assert 0 < real.available_bytes <= real.total_bytes
    ledger = tmp_path / "ledger.json"
    alive = {"gpus": {"0": GIB}, "host_bytes": 3 * GIB, "model": "a", "state": "sleeping"}
    dead = {"gpus": {"0": GIB}, "host_bytes": 2 * GIB, "model": "b", "state": "sleeping"}
    data = {
        "capacity_bytes": {"0": 10 * GIB},
        "allocations": {str(os.getpid()): alive, "999999999": dead},
    }
    ledger.write_text(json.dumps(data))
    probe = make_probe(
        GpuConfig(probe="fake", fake_capacity_gib=[10.0], fake_host_memory_gib=8.0),
        ledger_path=ledger,
    )
    # Only the live pid's host bytes count, like its GPU bytes.
    assert await read_host_memory(probe) == HostMemory(5 * GIB, 8 * GIB)
    # Without a fake host size the fake probe reports the real host.
    plain = FakeLedgerProbe(ledger, [GIB])
    assert (await read_host_memory(plain)).total_bytes == real.total_bytes


class FakeNvmlError(Exception):
    pass


def fake_pynvml(*, devices: list[tuple[int, int]], init_error: bool = False) -> ModuleType:
    """A stand-in for nvidia-ml-py's `pynvml` with `devices` as (total, used) bytes."""
    module = ModuleType("pynvml")
    state = {"initialised": 0, "shutdown": 0, "broken": False}

    def init() -> None:
        if init_error:
            raise FakeNvmlError("NVML Shared Library Not Found")
        state["initialised"] += 1

    def shutdown() -> None:
        state["shutdown"] += 1

    def handle(index: int) -> int:
        if state["broken"]:
            raise FakeNvmlError("GPU is lost")
        return index

    def memory(index: int) -> SimpleNamespace:
        total, used = devices[index]
        return SimpleNamespace(total=total, used=used, free=total - used)

    vars(module).update(
        NVMLError=FakeNvmlError,
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetMemoryInfo=memory,
        state=state,
    )
    return module


async def test_nvml_probe_maps_devices_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_pynvml(devices=[(80 * GIB, GIB), (80 * GIB, 70 * GIB)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    probe = make_probe(GpuConfig(probe="auto"), ledger_path=None)
    assert isinstance(probe, NvmlProbe)
    assert await probe.read() == (GpuMemory(0, 80 * GIB, GIB), GpuMemory(1, 80 * GIB, 70 * GIB))
    nvml.state["broken"] = True
    with pytest.raises(ProbeUnavailable, match="GPU is lost"):
        await probe.read()
    probe.close()
    probe.close()
    assert nvml.state["shutdown"] == 1


@pytest.mark.parametrize(
    ("nvml", "reason"),
    [
        (fake_pynvml(devices=[], init_error=True), "NVML init failed"),
        (fake_pynvml(devices=[]), "no GPU"),
    ],
)
def test_auto_falls_back_when_nvml_cannot_serve(
    monkeypatch: pytest.MonkeyPatch, nvml: ModuleType, reason: str
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    probe = make_probe(GpuConfig(probe="auto"), ledger_path=None)
    assert isinstance(probe, NoProbe)
    assert probe.reason is not None
    assert reason in probe.reason
    with pytest.raises(ProbeUnavailable, match=reason):
        make_probe(GpuConfig(probe="nvml"), ledger_path=None)


def test_missing_nvidia_ml_py_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    probe = make_probe(GpuConfig(probe="auto"), ledger_path=None)
    assert isinstance(probe, NoProbe)
    assert probe.reason is not None
    assert "nvidia-ml-py" in probe.reason
