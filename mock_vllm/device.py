"""The seam for real device memory: what the engine asks of a ``--mock-gpu torch`` backend.

Owns: the `Device` the engine drives (apply a footprint, reload weights, checksum) as an
asyncio facade that runs every CUDA call on one dedicated thread (CUDA calls block, and
block for as long as cuda-checkpoint keeps the process locked, so they never run on the
event loop), and `open_device`, which turns every reason torch mode cannot run — no
torch, no CUDA device, sizes that do not fit, a card that is already full — into one
clear message. There is no fallback: torch mode either holds real memory or exits.
Does not: import torch unless asked for torch mode (``torch_gpu`` does), book the fake
ledger (``gpu_memory`` still does when ``MOCK_VLLM_LEDGER`` is set), or decide when to
sleep (the engine does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol, TypeVar

from mock_vllm.errors import ApiError
from mock_vllm.gpu_memory import Footprint, GpuMemoryError
from mock_vllm.options import GIB, ServeOptions
from mock_vllm.torch_layout import LayoutError, plan

if TYPE_CHECKING:
    from mock_vllm.torch_gpu import TorchMemory

T = TypeVar("T")


class DeviceUnavailable(Exception):
    """Torch mode cannot run here; ``str()`` says why and what to do."""


def require_torch_cuda() -> None:
    """Import torch and see a CUDA device, or raise DeviceUnavailable saying which failed."""
    try:
        from mock_vllm import torch_gpu
    except ImportError as exc:
        raise DeviceUnavailable(
            f"--mock-gpu torch needs PyTorch with CUDA, but importing torch failed ({exc}). "
            "Install torch, or leave out --mock-gpu torch to use the fake GPU ledger."
        ) from None
    torch = torch_gpu.torch
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"--mock-gpu torch needs a CUDA GPU, but torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}) sees none "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})."
        )


class DeviceMemory(Protocol):
    """What the engine needs from real device memory (a test may pass its own)."""

    async def apply(self, fp: Footprint) -> None: ...

    async def reload_weights(self) -> None: ...

    async def checksum(self) -> str: ...

    def info(self) -> dict[str, object]: ...


class Device:
    """A `TorchMemory` driven from the event loop; one CUDA thread, calls in order."""

    def __init__(self, memory: TorchMemory) -> None:
        self.memory = memory
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mock-cuda")

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def apply(self, fp: Footprint) -> None:
        await self._call(lambda: self.memory.apply(fp))

    async def reload_weights(self) -> None:
        try:
            await self._call(self.memory.reload)
        except (GpuMemoryError, OSError) as exc:
            raise ApiError(500, f"reload_weights failed: {exc}") from None

    async def checksum(self) -> str:
        return await self._call(self.memory.checksum)

    def info(self) -> dict[str, object]:
        memory = self.memory
        return {
            "mode": "torch",
            "weights_bytes": memory.layout.weights_bytes,
            "kv_bytes": memory.layout.kv_bytes,
            "seed": memory.layout.seed,
            "weights_path": str(memory.layout.weights_path),
            "weights_resident": memory.weights is not None,
            "kv_resident": memory.kv is not None,
            "host_backup": memory.backup is not None,
            "ops": list(memory.records),
        }

    async def close(self) -> None:
        # A suspended process cannot free; exiting frees everything anyway.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._call(self.memory.close), timeout=5)
        self._thread.shutdown(wait=False)


async def open_device(opts: ServeOptions) -> Device | None:
    """None for the ledger mode; for torch mode, the device with its weights loaded."""
    if opts.gpu != "torch":
        return None
    require_torch_cuda()
    from mock_vllm.torch_gpu import TorchMemory, torch

    free, total = torch.cuda.mem_get_info()
    try:
        layout = plan(opts, int(total))
    except LayoutError as exc:
        raise GpuMemoryError(str(exc)) from None
    want = layout.device_bytes
    if free < want:
        raise GpuMemoryError(
            f"ValueError: Free memory on device cuda:0 ({free / GIB:.2f} GiB) is less than "
            f"desired GPU memory utilization ({opts.gpu_memory_utilization}, "
            f"{want / GIB:.2f} GiB). Decrease GPU memory utilization or reduce GPU memory "
            "used by other processes."
        )
    device = Device(TorchMemory(layout))
    try:
        await device._call(device.memory.load)
    except BaseException:
        await device.close()
        raise
    return device
