"""The on-disk list of backend trees gpumux is responsible for, and the sweep at start.

Owns: `<state_dir>/children.json` (pid, pgid, create_time, model per live tree) and
`sweep_leftovers`, which kills whatever a previous gpumux left behind.
Does not: spawn, reap or stop trees of the running daemon (`spawn`, `reaper`, `tree`).

Why: if gpumux dies by SIGKILL it cannot clean up. Each backend root gets a
parent-death SIGKILL from the kernel, but a vLLM root's children (EngineCore, workers)
do not, and survive as orphans. The next gpumux start reads this file and sweeps them,
before it spawns anything or installs its Reaper. `create_time` guards against pid
reuse: an entry whose pid now belongs to a different process is skipped.

The file is replaced atomically (write a temp file, rename) with mode 0600. It is not
fsynced: the case it exists for is the daemon dying while the kernel keeps running,
and the page cache survives that; after a power loss there is nothing left to sweep.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import psutil
import structlog

from gpumux.procs.tree import alive_pids, enumerate_tree, same_process, signal_members

log = structlog.get_logger(__name__)

REGISTRY_FILE_NAME = "children.json"
STATE_DIR_MODE = 0o700

# How long the sweep waits for killed leftovers to disappear before giving up on them.
SWEEP_WAIT_SECS = 5.0
_SWEEP_POLL_INTERVAL_SECS = 0.05


class TreeRecordLike(Protocol):
    """What the registry needs to know about a tree (a `BackendProcess` qualifies)."""

    @property
    def model(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def pgid(self) -> int: ...
    @property
    def create_time(self) -> float: ...


@dataclass(frozen=True)
class ChildRecord:
    pid: int
    pgid: int
    create_time: float
    model: str


class ChildRegistry:
    """The live trees of this daemon, mirrored to `<state_dir>/children.json`.

    Call `add` right after a spawn or adopt and `remove` only once `kill_tree` has
    returned (the root's exit alone leaves orphans the sweep must still find).
    Entries already in the file are kept, so constructing this before
    `sweep_leftovers` loses nothing. A failed write is logged, not raised: a spawned
    backend should keep serving even if the state directory is read-only.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / REGISTRY_FILE_NAME
        self._entries = {record.pid: record for record in read_records(self.path)}

    def add(self, proc: TreeRecordLike) -> None:
        self._entries[proc.pid] = ChildRecord(proc.pid, proc.pgid, proc.create_time, proc.model)
        self._save()

    def remove(self, pid: int) -> None:
        if self._entries.pop(pid, None) is not None:
            self._save()

    def records(self) -> list[ChildRecord]:
        return list(self._entries.values())

    def _save(self) -> None:
        try:
            write_records(self.path, self._entries.values())
        except OSError as exc:
            log.error("child_registry_write_failed", path=str(self.path), error=str(exc))


def read_records(path: Path) -> list[ChildRecord]:
    """The entries in `path`; [] if it is missing, and [] (logged) if it is unreadable."""
    try:
        data = json.loads(path.read_text())
        return [
            ChildRecord(
                pid=int(entry["pid"]),
                pgid=int(entry["pgid"]),
                create_time=float(entry["create_time"]),
                model=str(entry["model"]),
            )
            for entry in data["children"]
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("child_registry_unreadable", path=str(path), error=str(exc))
        return []


def write_records(path: Path, records: Iterable[ChildRecord]) -> None:
    """Atomically replace `path` with `records`."""
    path.parent.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    entries = [asdict(record) for record in records]
    payload = json.dumps({"children": entries}, indent=1) + "\n"
    # mkstemp creates the file with mode 0600 in the same directory, so the rename
    # below is atomic and never exposes a half-written or world-readable file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sweep_leftovers(state_dir: Path, *, wait_secs: float = SWEEP_WAIT_SECS) -> list[int]:
    """SIGKILL every tree a previous gpumux recorded and left running; return the pids.

    Synchronous and bounded by `wait_secs`: run it at daemon start, before the Reaper is
    installed (it reaps any leftover that happens to be its own child itself) and
    before anything is spawned. Entries whose trees could not be confirmed gone stay
    in the file for the next start; the rest are cleared.
    """
    path = state_dir / REGISTRY_FILE_NAME
    records = read_records(path)
    if not records and not path.exists():
        return []
    killed: dict[int, psutil.Process] = {}
    swept: list[tuple[ChildRecord, list[int]]] = []
    for record in records:
        if same_process(record.pid, record.create_time) is None and psutil.pid_exists(record.pid):
            log.info("leftover_skipped", model=record.model, pid=record.pid, reason="pid_reused")
            continue
        tree = enumerate_tree(record.pid, record.pgid, record.create_time)
        signal_members(tree, record.pgid, signal.SIGKILL)
        killed.update(tree.members)
        swept.append((record, sorted(tree.members)))
    left = _wait_gone(killed, wait_secs)
    survivors = []
    for record, pids in swept:
        if pids:
            log.warning("leftover_swept", model=record.model, pid=record.pid, pids=pids)
        if set(pids) & set(left):
            survivors.append(record)
    if left:
        log.error("leftover_sweep_incomplete", pids=sorted(left))
    if survivors:
        write_records(path, survivors)
    else:
        path.unlink(missing_ok=True)
    return sorted(killed)


def _wait_gone(processes: dict[int, psutil.Process], wait_secs: float) -> list[int]:
    deadline = time.monotonic() + wait_secs
    while True:
        _reap_own_zombies(processes)
        left = alive_pids(processes.values())
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(_SWEEP_POLL_INTERVAL_SECS)


def _reap_own_zombies(processes: dict[int, psutil.Process]) -> None:
    # Only safe because the Reaper is not installed yet (see sweep_leftovers).
    me = os.getpid()
    for pid, process in processes.items():
        try:
            if process.ppid() == me and process.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue
