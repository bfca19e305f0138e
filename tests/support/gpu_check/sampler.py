"""GPU memory as the driver sees it, sampled in a thread for the whole daemon run.

Owns: the NVML reads (device total/used, and used memory per process), a background
thread that samples used memory every few milliseconds and keeps the peak and a thinned
series, and the fake-GPU equivalent (the ledger the mocks book into) for the dry run.
Does not: judge anything (the caller compares the peak with the card) or import NVML
before it is asked to (the dry run has none).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Reading = tuple[int, int]  # (used bytes, total bytes)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Nvml:
    """Device 0 through nvidia-ml-py; `close()` when done."""

    def __init__(self) -> None:
        import pynvml

        self._nvml: Any = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.name = _text(pynvml.nvmlDeviceGetName(self._handle))
        self.driver = _text(pynvml.nvmlSystemGetDriverVersion())

    def read(self) -> Reading:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return int(info.used), int(info.total)

    def processes(self) -> dict[int, int]:
        """pid -> used GPU bytes, for every compute process on device 0."""
        procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        return {int(p.pid): int(p.usedGpuMemory or 0) for p in procs}

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class Ledger:
    """The fake GPU (dry run): the mocks' bookings in gpumux's fake ledger."""

    name = "fake ledger"
    driver = "-"

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> Reading:
        from gpumux.gpu.fake_ledger import usage

        used, total = usage(self.path)[0]
        return used, total

    def processes(self) -> dict[int, int]:
        from gpumux.gpu.fake_ledger import allocations

        return {pid: a.gpus.get(0, 0) for pid, a in allocations(self.path).items()}

    def close(self) -> None:
        return None


@dataclass
class Sampler:
    read: Callable[[], Reading]
    interval_secs: float = 0.02
    peak_used: int = 0
    total: int = 0
    samples: int = 0
    errors: int = 0
    series: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        last_kept = -1.0
        while not self._stop.is_set():
            try:
                used, total = self.read()
            except Exception:  # a missing ledger file before the daemon writes it, say
                self.errors += 1
            else:
                self.samples += 1
                self.total = total
                now = time.monotonic() - started
                if used > self.peak_used or now - last_kept >= 0.5:
                    self.series.append((round(now, 3), used))
                    last_kept = now
                self.peak_used = max(self.peak_used, used)
            self._stop.wait(self.interval_secs)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
