"""Where `bench/compare.py` runs each process, and what CPU each process tree uses.

Owns: the CPU placement (the proxy under test on a CPU of its own; the load generator and
the backends on another, or one each with 3+ CPUs), pinning every thread of a process
tree there, and reading user and system CPU seconds of named trees, each less the
subtrees it must not be charged for (a gpumux daemon spawns its backend).
Does not: start or stop anything.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import suppress
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Placement:
    loadgen: frozenset[int]
    backends: frozenset[int]
    proxies: frozenset[int]

    def as_dict(self) -> dict[str, list[int]]:
        return {k: sorted(v) for k, v in dataclasses.asdict(self).items()}


def choose_placement(cpus: list[int]) -> Placement | None:
    if len(cpus) >= 3:
        return Placement(frozenset(cpus[:1]), frozenset(cpus[1:2]), frozenset(cpus[2:3]))
    if len(cpus) == 2:
        return Placement(frozenset(cpus[:1]), frozenset(cpus[:1]), frozenset(cpus[1:]))
    return None


def pin_tree(pid: int, cpus: frozenset[int]) -> None:
    """Every thread of `pid` and of its descendants onto `cpus` (new ones inherit it)."""
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with suppress(psutil.Error):
            for thread in proc.threads():
                with suppress(ProcessLookupError, PermissionError):
                    os.sched_setaffinity(thread.id, cpus)


class TreeCpuMeter:
    """CPU seconds (user, system) of named process trees, each less excluded subtrees."""

    def __init__(self, trees: dict[str, tuple[int, tuple[int, ...]]]) -> None:
        self._trees = trees

    def read(self) -> dict[str, tuple[float, float]]:
        readings = {}
        for who, (root_pid, excluded) in self._trees.items():
            root = psutil.Process(root_pid)
            skip: set[int] = set()
            for pid in excluded:
                with suppress(psutil.Error):
                    skip |= {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
            user = system = 0.0
            for proc in [root, *root.children(recursive=True)]:
                if proc.pid in skip:
                    continue
                with suppress(psutil.Error):
                    times = proc.cpu_times()
                    user += times.user
                    system += times.system
            readings[who] = (user, system)
        return readings
