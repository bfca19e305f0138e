"""The latest GPU and host memory readings, polled once and shared by metrics and status.

Owns: `Resources`, which reads the GPU probe and psutil on the daemon's schedule (in
worker threads), keeps the last good values when a read fails (logging the failure once
per outage), and publishes them to the `gpumux_gpu_memory_*` and host memory gauges.
Does not: decide anything from the numbers (placement and the scheduler's host-RAM
budget do: each host reading is handed to `on_host_reading`) or choose the probe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from gpumux.gpu.probe import GpuMemory, GpuProbe, ProbeUnavailable, read_host_memory
from gpumux.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)


class Resources:
    def __init__(
        self,
        probe: GpuProbe,
        metrics: Metrics,
        on_host_reading: Callable[[int], None] | None = None,
    ) -> None:
        self._probe = probe
        self._metrics = metrics
        self._on_host_reading = on_host_reading
        self.gpus: tuple[GpuMemory, ...] = ()
        self.host_available_bytes: int | None = None
        self.host_total_bytes: int | None = None
        self.updated_at: float | None = None  # wall clock, for the status page
        self._probe_failing = False

    async def refresh(self) -> None:
        try:
            self.gpus = await self._probe.read()
            self._probe_failing = False
        except ProbeUnavailable as exc:
            if not self._probe_failing:
                log.warning("gpu_probe_failed", probe=self._probe.name, error=str(exc))
                self._probe_failing = True
        try:
            host = await read_host_memory(self._probe)
        except ProbeUnavailable as exc:
            log.warning("host_memory_read_failed", probe=self._probe.name, error=str(exc))
            return
        self.host_available_bytes = host.available_bytes
        self.host_total_bytes = host.total_bytes
        self.updated_at = time.time()
        self._metrics.set_gpu_memory(self.gpus)
        self._metrics.host_memory_available.set(self.host_available_bytes)
        if self._on_host_reading is not None:
            self._on_host_reading(host.available_bytes)

    async def poll(self, interval_secs: float) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval_secs)

    def to_dict(self) -> dict[str, object]:
        return {
            "gpus": [
                {"index": g.index, "total_bytes": g.total_bytes, "used_bytes": g.used_bytes}
                for g in self.gpus
            ],
            "probe": self._probe.name,
            "host_memory": {
                "available_bytes": self.host_available_bytes,
                "total_bytes": self.host_total_bytes,
            },
            "updated_at": self.updated_at,
        }
