"""The mock's "GPU memory": bookings in gpumux's fake ledger, one per worker pid.

Owns: which GPU each rank uses (``CUDA_VISIBLE_DEVICES``), how many bytes a rank holds
in each sleep state, and the vLLM-shaped messages for memory that does not fit.
Does not: decide when to sleep or wake (the engine does). Without ``MOCK_VLLM_LEDGER``
every method is a no-op, so the mock runs anywhere.

Per rank: awake = ``gpu_memory_utilization x capacity`` (vLLM reserves exactly that);
asleep = the residual CUDA context, plus the weights and/or KV cache still awake
during a partial wake. Level-1 sleep books the offloaded weights as host memory.

A rank that ``mock-cuda-checkpoint`` locked or checkpointed cannot be rebooked (its CUDA
calls would block): ``apply`` then raises ``CudaSuspended`` and ``cuda_running`` says
whether every rank may use its GPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from gpumux.gpu.fake_ledger import (
    Allocation,
    AllocationState,
    CudaBusy,
    LedgerFull,
    allocations,
    book,
    release,
    usage,
)

GIB = float(1 << 30)
LEDGER_ENV = "MOCK_VLLM_LEDGER"


class GpuMemoryError(Exception):
    """Memory did not fit; ``str()`` is the message vLLM/PyTorch would print."""


class CudaSuspended(Exception):
    """A rank's CUDA state is locked or checkpointed; retry once it runs again."""


def visible_gpus(tp: int) -> list[int]:
    """Physical GPU index per rank, from ``CUDA_VISIBLE_DEVICES`` (default ``0..tp-1``)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None or not raw.strip():
        return list(range(tp))
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    if len(entries) < tp:
        raise GpuMemoryError(
            f"RuntimeError: tensor parallel size {tp} needs {tp} GPUs, "
            f"CUDA_VISIBLE_DEVICES={raw!r} has {len(entries)}"
        )
    try:
        return [int(e) for e in entries[:tp]]
    except ValueError:
        raise GpuMemoryError(f"RuntimeError: bad CUDA_VISIBLE_DEVICES={raw!r}") from None


@dataclass(frozen=True)
class Footprint:
    """What is resident on each rank's GPU right now."""

    weights: bool
    kv_cache: bool
    host_weights: bool  # level-1 sleep: weights parked in host RAM


AWAKE = Footprint(weights=True, kv_cache=True, host_weights=False)


class GpuMemory:
    """Bookings for one model's ranks, or nothing when no ledger is configured."""

    def __init__(
        self,
        *,
        model: str,
        pids: list[int],
        gpus: list[int],
        utilization: float,
        model_bytes: int,
        residual_bytes: int,
    ) -> None:
        self.path = os.environ.get(LEDGER_ENV) or None
        self.model = model
        self.ranks = list(zip(pids, gpus, strict=True))
        self.utilization = utilization
        self.weight_bytes = model_bytes // max(len(pids), 1)  # weights are sharded by TP
        self.residual_bytes = residual_bytes

    def _full(self, gpu: int) -> int:
        assert self.path is not None
        return int(self.utilization * usage(self.path)[gpu][1])

    def _bytes(self, gpu: int, fp: Footprint) -> int:
        full = self._full(gpu)
        if fp.weights and fp.kv_cache:
            return full
        kv = max(full - self.residual_bytes - self.weight_bytes, 0)
        held = self.residual_bytes + (self.weight_bytes if fp.weights else 0)
        return min(held + (kv if fp.kv_cache else 0), full)

    def book_startup(self) -> None:
        """Reserve the full share on every rank, or raise vLLM's startup error."""
        if self.path is None:
            return
        try:
            capacity = usage(self.path)
        except (OSError, ValueError) as exc:
            raise GpuMemoryError(f"RuntimeError: fake GPU ledger {self.path}: {exc}") from None
        for rank, (pid, gpu) in enumerate(self.ranks):
            if gpu not in capacity:
                self.release()
                raise GpuMemoryError(
                    f"RuntimeError: CUDA error: invalid device ordinal "
                    f"(GPU {gpu} is not in the fake ledger {self.path})"
                )
            want = int(self.utilization * capacity[gpu][1])
            try:
                book(self.path, pid, {gpu: want}, model=self.model, state="awake")
            except LedgerFull as exc:
                self.release()
                raise GpuMemoryError(
                    f"ValueError: Free memory on device cuda:{rank} ({exc.free / GIB:.2f} GiB) "
                    f"is less than desired GPU memory utilization ({self.utilization}, "
                    f"{want / GIB:.2f} GiB). Decrease GPU memory utilization or reduce GPU "
                    "memory used by other processes."
                ) from None

    def apply(self, fp: Footprint) -> None:
        """Rebook every rank to ``fp``, all ranks or none; raise a CUDA OOM message."""
        if self.path is None:
            return
        state: AllocationState = "awake" if fp.weights and fp.kv_cache else "sleeping"
        host = self.weight_bytes if fp.host_weights else 0
        before = allocations(self.path)
        done: list[int] = []
        for pid, gpu in self.ranks:
            want = self._bytes(gpu, fp)
            try:
                book(self.path, pid, {gpu: want}, model=self.model, state=state, host_bytes=host)
            except CudaBusy as exc:
                for done_pid in done:
                    self._restore(done_pid, before.get(done_pid))
                raise CudaSuspended(str(exc)) from None
            except LedgerFull as exc:
                # Put back the ranks already rebooked so a failed wake leaves no half state.
                for done_pid in done:
                    self._restore(done_pid, before.get(done_pid))
                prev = before[pid].gpus.get(gpu, 0) if pid in before else 0
                raise GpuMemoryError(
                    f"CUDA out of memory. Tried to allocate {(want - prev) / GIB:.2f} GiB. "
                    f"GPU {gpu} has a total capacity of {usage(self.path)[gpu][1] / GIB:.2f} GiB "
                    f"of which {exc.free / GIB:.2f} GiB is free."
                ) from None
            done.append(pid)

    def _restore(self, pid: int, prev: Allocation | None) -> None:
        assert self.path is not None
        if prev is None:
            release(self.path, pid)
            return
        # A rank suspended meanwhile keeps what cuda-checkpoint made of it.
        with contextlib.suppress(CudaBusy):
            book(
                self.path,
                pid,
                prev.gpus,
                model=prev.model,
                state=prev.state,
                host_bytes=prev.host_bytes,
            )

    def cuda_running(self) -> bool:
        """Whether no rank is locked or checkpointed (always true without a ledger)."""
        if self.path is None:
            return True
        try:
            booked = allocations(self.path)
        except (OSError, ValueError):
            return True  # an unreadable ledger is no reason to stall
        return all(booked[pid].cuda_state == "running" for pid, _gpu in self.ranks if pid in booked)

    def ledger_stamp(self) -> tuple[int, int] | None:
        """Changes whenever the ledger is rewritten (it is replaced, never edited in place)."""
        if self.path is None:
            return None
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns)

    def release(self) -> None:
        if self.path is None:
            return
        for pid, _gpu in self.ranks:
            release(self.path, pid)
