"""The fake GPU ledger (`gpumux.gpu.fake_ledger`) as tests read it while a daemon runs.

Owns: the bytes booked per GPU right now, the host bytes live sleepers hold, and
`LedgerWatch`, a sampler in a thread that remembers the highest booking per GPU and the
most host RAM ever held at once (a limit is broken by a peak, not by the final state).
Does not: book or release anything (the mock backends and `fake_ledger` do).
"""

from __future__ import annotations

import json
import threading
from contextlib import suppress
from typing import Any

from gpumux.gpu.fake_ledger import allocations
from tests.support.daemon import RunningDaemon


def ledger_used(daemon: RunningDaemon) -> dict[str, int]:
    """Bytes booked per GPU index (as a string, the ledger's keys) right now."""
    data: dict[str, Any] = json.loads(daemon.ledger_path.read_text())
    used: dict[str, int] = {}
    for booking in data["allocations"].values():
        for gpu, amount in booking["gpus"].items():
            used[gpu] = used.get(gpu, 0) + int(amount)
    return used


def gpu_used(daemon: RunningDaemon, gpu: int = 0) -> int:
    """Bytes booked on one GPU right now."""
    return ledger_used(daemon).get(str(gpu), 0)


def ledger_host_bytes(daemon: RunningDaemon) -> int:
    """Host bytes live pids hold according to the fake ledger (dead pids pruned)."""
    return sum(a.host_bytes for a in allocations(daemon.ledger_path).values())


class LedgerWatch:
    """Samples the ledger every few ms in a thread: the highest use per GPU, and the most
    host RAM live sleepers held at once (level-1 weights, cuda-checkpoint images)."""

    def __init__(self, daemon: RunningDaemon, interval_secs: float = 0.005) -> None:
        self._daemon = daemon
        self._interval = interval_secs
        self._stop = threading.Event()
        self.peak: dict[str, int] = {}
        self.peak_host = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with suppress(OSError, ValueError, KeyError):  # a write in progress
                for gpu, used in ledger_used(self._daemon).items():
                    self.peak[gpu] = max(self.peak.get(gpu, 0), used)
                self.peak_host = max(self.peak_host, ledger_host_bytes(self._daemon))
                self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> LedgerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
