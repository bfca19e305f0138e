"""Where GPU and host memory facts come from: NVML, the fake ledger, or nothing.

Owns: `GpuMemory` (one device's total/used bytes), the `GpuProbe` protocol and its three
implementations — `NvmlProbe` (nvidia-ml-py's `pynvml`, imported lazily), the
`FakeLedgerProbe` that reads the ledger mock backends book "GPU memory" into, and
`NoProbe` — plus `make_probe`/`open_probe` that pick one from `GpuConfig.probe`, and
`read_host_memory()` (psutil, or the fake probe's fake host size minus what the ledger
says sleepers hold in host RAM). Every blocking call (NVML, file reads, psutil) runs in a
worker thread.

Does not: decide placement or fit (`placement` does, from these numbers), cache or
poll (the caller reads on its own schedule and keeps last-known values when a read
raises `ProbeUnavailable`), export metrics, or write the ledger (`fake_ledger` does).

Indices are NVML's (PCI bus order). Backends see the same numbering only when they run
with `CUDA_DEVICE_ORDER=PCI_BUS_ID`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, cast

import psutil

from gpumux.core.config import GpuConfig
from gpumux.gpu import fake_ledger

_GIB = 1024**3


@dataclass(frozen=True)
class GpuMemory:
    index: int
    total_bytes: int
    used_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


@dataclass(frozen=True)
class HostMemory:
    available_bytes: int
    total_bytes: int


class ProbeUnavailable(Exception):
    """The memory source cannot be read (no driver, NVML error, unreadable ledger)."""


class GpuProbe(Protocol):
    name: str

    async def read(self) -> tuple[GpuMemory, ...]:
        """Every device the probe sees, by index; raises ProbeUnavailable on failure."""
        ...

    def close(self) -> None:
        """Release the source; idempotent."""
        ...


class NoProbe:
    """No GPU information: placement falls back to configured capacities."""

    name = "none"

    def __init__(self, reason: str | None = None) -> None:
        #: Why no real probe was chosen (for the daemon's startup log), if not asked for.
        self.reason = reason

    async def read(self) -> tuple[GpuMemory, ...]:
        return ()

    def close(self) -> None:
        return None


class NvmlProbe:
    """NVML via nvidia-ml-py. Build with `NvmlProbe.open()` (blocking: call it in a thread)."""

    name = "nvml"

    def __init__(self, nvml: ModuleType, device_count: int) -> None:
        self._nvml: Any = nvml
        self._device_count = device_count
        self._closed = False

    @classmethod
    def open(cls) -> NvmlProbe:
        """`nvmlInit()` and count devices; ProbeUnavailable when NVML or a GPU is missing."""
        try:
            nvml: Any = importlib.import_module("pynvml")
        except ImportError as exc:
            raise ProbeUnavailable(f"nvidia-ml-py is not installed: {exc}") from exc
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise ProbeUnavailable(f"NVML init failed: {exc}") from exc
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            nvml.nvmlShutdown()
            raise ProbeUnavailable(f"NVML device count failed: {exc}") from exc
        if count == 0:
            nvml.nvmlShutdown()
            raise ProbeUnavailable("NVML sees no GPU")
        return cls(cast(ModuleType, nvml), count)

    async def read(self) -> tuple[GpuMemory, ...]:
        return await asyncio.to_thread(self._read_blocking)

    def _read_blocking(self) -> tuple[GpuMemory, ...]:
        if self._closed:
            raise ProbeUnavailable("NVML probe is closed")
        nvml = self._nvml
        out: list[GpuMemory] = []
        try:
            for index in range(self._device_count):
                info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index))
                out.append(GpuMemory(index, int(info.total), int(info.used)))
        except nvml.NVMLError as exc:
            raise ProbeUnavailable(f"NVML read failed: {exc}") from exc
        return tuple(out)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


class FakeLedgerProbe:
    """Reads the fake ledger mock backends write; `capacities[i]` is GPU i's size in bytes.

    The ledger's own capacity wins for a GPU it lists; dead pids count as freed. A
    missing ledger file (no backend booked yet) reads as the capacities, nothing used.
    """

    name = "fake"

    def __init__(
        self, ledger_path: Path, capacities: Sequence[int], host_capacity: int | None = None
    ) -> None:
        self.ledger_path = Path(ledger_path)
        self.capacities = tuple(int(c) for c in capacities)
        #: A fake host RAM size, so host pressure from level-1 sleepers is testable.
        self.host_capacity = host_capacity

    async def read(self) -> tuple[GpuMemory, ...]:
        return await asyncio.to_thread(self._read_blocking)

    def _read_blocking(self) -> tuple[GpuMemory, ...]:
        usage: dict[int, tuple[int, int]] = {}
        if self.ledger_path.exists():
            try:
                usage = fake_ledger.usage(self.ledger_path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ProbeUnavailable(f"fake ledger {self.ledger_path}: {exc}") from exc
        configured = dict(enumerate(self.capacities))
        out = []
        for index in sorted(configured.keys() | usage.keys()):
            used, capacity = usage.get(index, (0, configured.get(index, 0)))
            out.append(GpuMemory(index, int(capacity), int(used)))
        return tuple(out)

    def read_host_blocking(self) -> HostMemory:
        """The fake host size minus the host bytes the ledger's live allocations hold."""
        assert self.host_capacity is not None
        held = 0
        if self.ledger_path.exists():
            try:
                held = sum(a.host_bytes for a in fake_ledger.allocations(self.ledger_path).values())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ProbeUnavailable(f"fake ledger {self.ledger_path}: {exc}") from exc
        return HostMemory(max(0, self.host_capacity - held), self.host_capacity)

    def close(self) -> None:
        return None


def make_probe(gpu: GpuConfig, *, ledger_path: Path | None) -> GpuProbe:
    """The probe `gpu.probe` names. Blocking (NVML init): from a loop, use `open_probe`.

    `auto` is NVML when it initialises and sees a GPU, else `NoProbe` with the reason.
    `nvml` raises ProbeUnavailable instead. `fake` reads `ledger_path`, falling back to
    `gpu.fake_ledger_path`; ValueError when neither is set.
    """
    match gpu.probe:
        case "none":
            return NoProbe()
        case "nvml":
            return NvmlProbe.open()
        case "auto":
            try:
                return NvmlProbe.open()
            except ProbeUnavailable as exc:
                return NoProbe(reason=str(exc))
        case "fake":
            path = ledger_path if ledger_path is not None else gpu.fake_ledger_path
            if path is None:
                raise ValueError("gpu.probe 'fake' needs a ledger path")
            capacities = [round(gib * _GIB) for gib in gpu.fake_capacity_gib]
            host = gpu.fake_host_memory_gib
            return FakeLedgerProbe(
                Path(path), capacities, round(host * _GIB) if host is not None else None
            )


async def open_probe(gpu: GpuConfig, *, ledger_path: Path | None) -> GpuProbe:
    """`make_probe` in a worker thread, so NVML init never blocks the event loop."""
    return await asyncio.to_thread(make_probe, gpu, ledger_path=ledger_path)


async def read_host_memory(probe: GpuProbe) -> HostMemory:
    """Host RAM as `probe` sees it: psutil's, or a fake probe's fake host size."""
    if isinstance(probe, FakeLedgerProbe) and probe.host_capacity is not None:
        return await asyncio.to_thread(probe.read_host_blocking)
    vm = await asyncio.to_thread(psutil.virtual_memory)
    return HostMemory(int(vm.available), int(vm.total))
