"""Real CUDA memory for ``--mock-gpu torch``: weights and KV cache as tensors, and sleep.

Owns: the two device tensors and the pinned host backup, and what each footprint change
does to them — the way vLLM's ``CuMemAllocator`` does it:
- level 1 (weights to host): copy the weights into ``torch.empty(pin_memory=True)`` and
  free the device memory. torch's caching host allocator keeps a freed pinned block for
  the life of the process, so the first level-1 sleep pays for pinning and later ones
  only copy (and the pinned block stays held while awake, as in vLLM);
- level 2 (discard): free both; waking the weights gives zero-filled memory (real vLLM
  gives uninitialised memory; zeros make a skipped ``reload_weights`` always show) until
  ``reload`` reads the weights file;
- every free ends with ``torch.cuda.empty_cache()`` so NVML sees the memory go.
Each operation is timed and kept (``records``) for ``/mock/state``.
Does not: know about HTTP, the engine's state machine or threads (``device`` runs this
on one thread); it is synchronous and imports torch, so only ``device`` imports it, and
only for ``--mock-gpu torch``.
"""

from __future__ import annotations

import importlib
import time
from collections import deque
from typing import Any

from mock_vllm import torch_weights as tw
from mock_vllm.gpu_memory import Footprint, GpuMemoryError
from mock_vllm.torch_layout import Layout

torch: Any = importlib.import_module("torch")
GIB = float(1 << 30)
_OOM = getattr(torch, "OutOfMemoryError", RuntimeError)


class TorchMemory:
    """One backend's device memory; call from a single thread."""

    def __init__(self, layout: Layout, device: str = "cuda") -> None:
        self.layout = layout
        self.device = torch.device(device)
        self.weights: Any = None
        self.kv: Any = None
        self.backup: Any = None
        self.records: deque[dict[str, object]] = deque(maxlen=200)

    # --- helpers ------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _record(self, op: str, nbytes: int, started: float, **extra: object) -> None:
        self._sync()
        secs = time.perf_counter() - started
        self.records.append({"op": op, "bytes": nbytes, "secs": round(secs, 6), **extra})

    def _alloc(self, nbytes: int, dtype: Any) -> Any:
        try:
            return torch.empty(nbytes // dtype.itemsize, dtype=dtype, device=self.device)
        except _OOM as exc:
            free, total = torch.cuda.mem_get_info(self.device)
            raise GpuMemoryError(
                f"CUDA out of memory. Tried to allocate {nbytes / GIB:.2f} GiB. GPU has a "
                f"total capacity of {total / GIB:.2f} GiB of which {free / GIB:.2f} GiB is free."
            ) from exc

    def _release(self) -> None:
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _alloc_kv(self) -> None:
        started = time.perf_counter()
        self.kv = self._alloc(self.layout.kv_bytes, torch.uint8)
        self.kv.fill_(self.layout.seed & 0xFF)
        self._record("alloc_kv", self.layout.kv_bytes, started)

    # --- the operations -----------------------------------------------------------
    def load(self) -> None:
        """Start-up: weights from the file when one exists, else the pattern (then saved)."""
        started = time.perf_counter()
        self.weights = self._alloc(self.layout.weights_bytes, torch.int64)
        path = self.layout.weights_path
        if tw.read_file(torch, self.weights, path):
            self._record("load_file", self.layout.weights_bytes, started, path=str(path))
        else:
            tw.fill_pattern(torch, self.weights, self.layout.seed)
            self._record("fill_pattern", self.layout.weights_bytes, started)
            started = time.perf_counter()
            tw.write_file(torch, self.weights, path)
            self._record("write_file", self.layout.weights_bytes, started, path=str(path))
        self._alloc_kv()

    def apply(self, fp: Footprint) -> None:
        """Free what ``fp`` no longer holds, then allocate what it holds again."""
        freed = False
        if not fp.weights and self.weights is not None:
            if fp.host_weights:
                self._offload()
            self.weights, freed = None, True
        if not fp.weights and not fp.host_weights and self.backup is not None:
            self.backup = None  # a level-2 sleep after a level-1 one drops the backup
        if not fp.kv_cache and self.kv is not None:
            self.kv, freed = None, True
        if freed:
            self._release()
        if fp.weights and self.weights is None:
            self._restore()
        if fp.kv_cache and self.kv is None:
            self._alloc_kv()

    def _offload(self) -> None:
        nbytes = self.layout.weights_bytes
        started = time.perf_counter()
        pin = self.device.type == "cuda"
        self.backup = torch.empty(self.weights.numel(), dtype=torch.int64, pin_memory=pin)
        self._record("pin_host", nbytes, started)
        started = time.perf_counter()
        self.backup.copy_(self.weights, non_blocking=pin)
        self._record("offload", nbytes, started)

    def _restore(self) -> None:
        nbytes = self.layout.weights_bytes
        started = time.perf_counter()
        weights = self._alloc(nbytes, torch.int64)
        if self.backup is not None:
            weights.copy_(self.backup, non_blocking=self.device.type == "cuda")
            self._record("onload", nbytes, started)
            self._sync()
            self.backup = None  # back to torch's host cache: the next level-1 sleep reuses it
        else:
            weights.zero_()
            self._record("alloc_weights", nbytes, started)
        self.weights = weights

    def reload(self) -> None:
        """``reload_weights``: read the weights file into the (awake) weight memory."""
        if self.weights is None:
            raise GpuMemoryError("Cannot reload weights while they are asleep.")
        started = time.perf_counter()
        if not tw.read_file(torch, self.weights, self.layout.weights_path):
            raise GpuMemoryError(f"weights file {self.layout.weights_path} is missing or short")
        self._record("reload_file", self.layout.weights_bytes, started)

    def checksum(self) -> str:
        return "asleep" if self.weights is None else tw.checksum(torch, self.weights)

    def close(self) -> None:
        self.weights = self.kv = self.backup = None
        self._release()
