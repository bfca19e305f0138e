"""A file-backed fake of GPU memory: mock backends book into it, the fake GPU probe reads it.

Owns: the JSON ledger format, its locking (``fcntl.flock`` on ``<path>.lock``), atomic
rewrites (temporary file + ``os.replace``), capacity checks, and dead-pid pruning.
Does not: know about models, vLLM or gpumux state; poll; log. Blocking but brief (one
small file under a local lock), so callers may use it inline.

Format::

    {"capacity_bytes": {"0": 85899345920, ...},
     "allocations": {"<pid>": {"gpus": {"0": bytes, ...}, "host_bytes": int,
                               "model": str, "state": "awake"|"sleeping"|"suspended",
                               "cuda": {...}}}}    # only while not "running"

``cuda`` is the pid's cuda-checkpoint state, written by ``update`` (mock_vllm's fake
driver): ``{"state": "locked"|"checkpointed"|"failed", "image": {"0": bytes},
"state_before": "awake"|"sleeping", "restore_failed": bool}``. ``image`` is what a
checkpoint moved from the GPUs to host memory, to be moved back on restore. A pid whose
CUDA state is not running cannot be rebooked (``book`` raises ``CudaBusy``), because a
real process's CUDA calls block until it is unlocked.

Real GPUs free a process's memory when it dies, so every read ignores allocations whose
pid is gone or a zombie, and every write drops them for good.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

AllocationState = Literal["awake", "sleeping", "suspended"]
ALLOCATION_STATES: frozenset[str] = frozenset({"awake", "sleeping", "suspended"})
#: cuda-checkpoint's process states (`cuda-checkpoint --get-state`).
CudaState = Literal["running", "locked", "checkpointed", "failed"]
CUDA_STATES: frozenset[str] = frozenset({"running", "locked", "checkpointed", "failed"})

PathLike = str | os.PathLike[str]


class LedgerFull(Exception):
    """A booking would push a GPU past its capacity; nothing was written."""

    def __init__(self, gpu: int, free: int, wanted: int) -> None:
        super().__init__(f"GPU {gpu}: {wanted} bytes wanted, {free} bytes free")
        self.gpu = gpu
        self.free = free
        self.wanted = wanted

    def __reduce__(self) -> tuple[type[LedgerFull], tuple[int, int, int]]:
        # Keeps the exception picklable across multiprocessing boundaries.
        return (LedgerFull, (self.gpu, self.free, self.wanted))


class CudaBusy(Exception):
    """The pid's CUDA state is locked or checkpointed, so it cannot change its booking."""

    def __init__(self, pid: int, cuda_state: str) -> None:
        super().__init__(f"pid {pid}: CUDA is {cuda_state}")
        self.pid = pid
        self.cuda_state = cuda_state

    def __reduce__(self) -> tuple[type[CudaBusy], tuple[int, str]]:
        return (CudaBusy, (self.pid, self.cuda_state))


@dataclass(frozen=True, slots=True)
class Allocation:
    """One live process's booking."""

    pid: int
    gpus: dict[int, int]
    host_bytes: int
    model: str
    state: AllocationState
    cuda_state: CudaState = "running"
    #: Device bytes per GPU that a cuda-checkpoint moved to host memory (while checkpointed).
    image: dict[int, int] = field(default_factory=dict)
    #: The booking state to return to when the image is restored.
    state_before: AllocationState | None = None
    #: A restore ran out of memory: like the real driver, the process stays stuck.
    restore_failed: bool = False


def pid_is_dead(pid: int) -> bool:
    """True when ``pid`` no longer holds memory: gone, a zombie (Z) or dead (X)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The command name sits in parentheses and may itself contain ") ", so the state
    # letter is found after the *last* closing parenthesis.
    state = stat[stat.rfind(")") + 2 : stat.rfind(")") + 3]
    return state in ("Z", "X", "")


def create_ledger(path: PathLike, capacities_bytes: list[int]) -> None:
    """(Re)initialise the ledger with one capacity per GPU index; keeps no allocation."""
    if any(c < 0 for c in capacities_bytes):
        raise ValueError("capacities must be non-negative")
    data = {"capacity_bytes": {str(i): int(c) for i, c in enumerate(capacities_bytes)}}
    with _locked(path, exclusive=True):
        _write(path, {**data, "allocations": {}})


def book(
    path: PathLike,
    pid: int,
    gpus: Mapping[int, int],
    *,
    model: str,
    state: AllocationState,
    host_bytes: int = 0,
) -> None:
    """Set ``pid``'s whole allocation to ``gpus`` (index -> bytes), all or nothing.

    The pid's current allocation does not count against the new one, so a rebook to a
    smaller or larger size only needs the difference to be free. Raises ``LedgerFull``
    (writing nothing) when any GPU would exceed its capacity once dead pids are pruned,
    and ``CudaBusy`` when the pid's CUDA state is locked or checkpointed.
    """
    if state not in ALLOCATION_STATES:
        raise ValueError(f"unknown state {state!r}")
    if host_bytes < 0 or any(b < 0 for b in gpus.values()):
        raise ValueError("byte counts must be non-negative")
    with _locked(path, exclusive=True):
        data = _pruned(_read(path))
        capacity = _capacities(data)
        allocs: dict[str, Any] = data["allocations"]
        current = allocs.get(str(pid))
        if current is not None and "cuda" in current:
            raise CudaBusy(pid, str(current["cuda"].get("state", "locked")))
        others = {k: v for k, v in allocs.items() if k != str(pid)}
        used = _used(others)
        for gpu, wanted in sorted(gpus.items()):
            if gpu not in capacity:
                raise ValueError(f"GPU {gpu} is not in the ledger {os.fspath(path)}")
            free = capacity[gpu] - used.get(gpu, 0)
            if wanted > free:
                raise LedgerFull(gpu, max(free, 0), wanted)
        others[str(pid)] = {
            "gpus": {str(g): int(b) for g, b in sorted(gpus.items())},
            "host_bytes": int(host_bytes),
            "model": model,
            "state": state,
        }
        data["allocations"] = others
        _write(path, data)


def release(path: PathLike, pid: int) -> None:
    """Drop ``pid``'s allocation (a no-op when it has none)."""
    with _locked(path, exclusive=True):
        data = _pruned(_read(path))
        data["allocations"].pop(str(pid), None)
        _write(path, data)


def usage(path: PathLike) -> dict[int, tuple[int, int]]:
    """``{gpu: (used_bytes, capacity_bytes)}`` counting live pids only; writes nothing."""
    with _locked(path, exclusive=False):
        data = _pruned(_read(path))
    used = _used(data["allocations"])
    return {gpu: (used.get(gpu, 0), cap) for gpu, cap in _capacities(data).items()}


def allocations(path: PathLike) -> dict[int, Allocation]:
    """Every live pid's allocation, for tests and tools; writes nothing."""
    with _locked(path, exclusive=False):
        data = _pruned(_read(path))
    return {int(pid): _allocation(int(pid), entry) for pid, entry in data["allocations"].items()}


Change = Callable[[Allocation | None, dict[int, int]], Allocation | None]


def update(path: PathLike, pid: int, change: Change) -> Allocation | None:
    """Read, change and write ``pid``'s allocation as one step under the ledger lock.

    ``change`` gets the current allocation (None when the pid has none) and the free
    bytes per GPU not counting this pid; it returns the new allocation, or None to
    write nothing. It may raise to abort. A result that does not fit raises
    ``LedgerFull`` and writes nothing. Returns what was written (or None).
    """
    with _locked(path, exclusive=True):
        data = _pruned(_read(path))
        capacity = _capacities(data)
        allocs: dict[str, Any] = data["allocations"]
        current = _allocation(pid, allocs[str(pid)]) if str(pid) in allocs else None
        used = _used({k: v for k, v in allocs.items() if k != str(pid)})
        free = {gpu: cap - used.get(gpu, 0) for gpu, cap in capacity.items()}
        new = change(current, dict(free))
        if new is None:
            return None
        for gpu, wanted in sorted(new.gpus.items()):
            if gpu not in capacity:
                raise ValueError(f"GPU {gpu} is not in the ledger {os.fspath(path)}")
            if wanted > free[gpu]:
                raise LedgerFull(gpu, max(free[gpu], 0), wanted)
        allocs[str(pid)] = _entry(new)
        _write(path, data)
        return new


def _allocation(pid: int, entry: Mapping[str, Any]) -> Allocation:
    cuda: Mapping[str, Any] = entry.get("cuda") or {}
    before = cuda.get("state_before")
    return Allocation(
        pid=pid,
        gpus={int(g): int(b) for g, b in entry["gpus"].items()},
        host_bytes=int(entry.get("host_bytes", 0)),
        model=str(entry.get("model", "")),
        state=cast(AllocationState, entry.get("state", "awake")),
        cuda_state=cast(CudaState, cuda.get("state", "running")),
        image={int(g): int(b) for g, b in (cuda.get("image") or {}).items()},
        state_before=cast(AllocationState, before) if before in ALLOCATION_STATES else None,
        restore_failed=bool(cuda.get("restore_failed", False)),
    )


def _entry(alloc: Allocation) -> dict[str, Any]:
    if alloc.state not in ALLOCATION_STATES or alloc.cuda_state not in CUDA_STATES:
        raise ValueError(f"bad states {alloc.state!r}/{alloc.cuda_state!r}")
    entry: dict[str, Any] = {
        "gpus": {str(g): int(b) for g, b in sorted(alloc.gpus.items())},
        "host_bytes": int(alloc.host_bytes),
        "model": alloc.model,
        "state": alloc.state,
    }
    if alloc.cuda_state != "running":
        entry["cuda"] = {
            "state": alloc.cuda_state,
            "image": {str(g): int(b) for g, b in sorted(alloc.image.items())},
            "state_before": alloc.state_before,
            "restore_failed": alloc.restore_failed,
        }
    return entry


@contextlib.contextmanager
def _locked(path: PathLike, *, exclusive: bool) -> Iterator[None]:
    # The lock lives on a sidecar file because the ledger itself is replaced on every
    # write: a lock on the old inode would not exclude a writer that opened the new one.
    with open(f"{os.fspath(path)}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("capacity_bytes"), dict):
        raise ValueError(f"{os.fspath(path)} is not a GPU ledger")
    data.setdefault("allocations", {})
    return data


def _write(path: PathLike, data: dict[str, Any]) -> None:
    # Readers never see a half-written file: write a sibling, then rename over. No
    # fsync: the ledger describes live processes and means nothing after a reboot.
    tmp = f"{os.fspath(path)}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _pruned(data: dict[str, Any]) -> dict[str, Any]:
    live = {k: v for k, v in data["allocations"].items() if not pid_is_dead(int(k))}
    return {**data, "allocations": live}


def _capacities(data: dict[str, Any]) -> dict[int, int]:
    return {int(g): int(c) for g, c in data["capacity_bytes"].items()}


def _used(allocs: Mapping[str, Any]) -> dict[int, int]:
    used: dict[int, int] = {}
    for entry in allocs.values():
        for gpu, nbytes in entry["gpus"].items():
            used[int(gpu)] = used.get(int(gpu), 0) + int(nbytes)
    return used
