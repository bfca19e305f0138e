"""Where the time of one CRIU restore goes: a timeline of its phases.

Owns: `RestoreTimeline`, which records named phases of one restore in the order they
end (image checks, checksums, identity, pid and port checks, /dev/shm copy-in, `criu
restore`, adoption, health), the wall-clock time the restore began (so a client can
line the timeline up with its own clock), and the `criu_restore_timeline` log event
(`backends` reports it once per restore, whatever the outcome).
Does not: decide anything; a phase that did not run is simply absent.

Why a wall clock as well: the benchmark measures from its own send to its first token,
and only a shared clock tells the time before the restore began (scheduling) and after
it ended (the proxied request) from the restore itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)


@dataclass
class RestoreTimeline:
    #: `time.time()` when the restore began.
    started_at: float = field(default_factory=time.time)
    _last: float = field(default_factory=time.perf_counter)
    phases: dict[str, float] = field(default_factory=dict)
    #: Counters that explain a phase (e.g. how many health probes it took).
    counts: dict[str, int] = field(default_factory=dict)

    def mark(self, phase: str) -> None:
        """`phase` ended now: it took the time since the previous mark (or the start).

        A phase marked twice accumulates (e.g. a wait interrupted by other work)."""
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + (now - self._last)
        self._last = now

    def skip(self) -> None:
        """Time since the last mark belongs to no phase (e.g. another owner's work)."""
        self._last = time.perf_counter()

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    @property
    def total(self) -> float:
        return sum(self.phases.values())

    def fields(self) -> dict[str, object]:
        """The log event's fields: phases in order, in seconds (4 decimals)."""
        return {
            "started_at": round(self.started_at, 6),
            "phases": {name: round(secs, 4) for name, secs in self.phases.items()},
            "counts": dict(self.counts),
            "total_s": round(self.total, 4),
        }

    def report(self, model: str, outcome: str) -> None:
        """`criu_restore_timeline`: where this restore's time went (`outcome`: ok, failed
        before the tree ran, or unhealthy); bench/real_vllm.py lines it up with its client."""
        log.info("criu_restore_timeline", model=model, outcome=outcome, **self.fields())
