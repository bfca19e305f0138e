"""Enumerating, killing and adopting backend process trees.

Owns: what "the tree" of a backend is, and stopping it for good: SIGTERM to the
process group and to every descendant, a grace period, SIGKILL to the re-enumerated
tree, then waiting until the root is reaped and every member is gone. Also `adopt`,
which turns a pid that is already our child (a CRIU-restored root) into a
`BackendProcess`.
Does not: reap (the `Reaper` does; this module only waits for its futures), decide
when to stop, or handle `/dev/shm` leftovers of a SIGKILLed vLLM (the CRIU adapter's
business).

"The tree" is the root, its descendants, and every process still in the root's
process group or session. The last part matters once the root is dead: vLLM's
EngineCore and workers are then orphans (reparented to gpumux or init) that no
parent/child walk from the root can find, but they keep the group and session. Linux
does not hand a pid number out again while a group or session still carries it, so
matching on it is safe as long as the leader is either our recorded process or gone.

A zombie whose parent is not gpumux counts as gone: it holds no resources, and only
its parent (or init) can remove it. Our own zombie children are not gone until the
Reaper has collected them, because a restore needs their pids free.

psutil scans read /proc for every process on the host, so they run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog

from gpumux.procs.errors import AdoptFailed, KillTreeStuck
from gpumux.procs.reaper import Reaper
from gpumux.procs.spawn import BackendProcess

log = structlog.get_logger(__name__)

# psutil's create_time is boot time + start ticks, in epoch seconds: identical for the
# same process, but it follows wall-clock adjustments. Half a second absorbs slews;
# a different process on the same pid within that span would need the pid counter
# to wrap around in half a second.
CREATE_TIME_TOLERANCE_SECS = 0.5

# How often waits for "all gone" re-check the members.
GONE_POLL_INTERVAL_SECS = 0.05

# Lower bound on the wait for the root to be reaped after SIGKILL, so that a
# zero-grace kill still gives the kernel time to tear the processes down.
MIN_REAP_WAIT_SECS = 5.0


def descendants(pid: int) -> list[int]:
    """Pids of every descendant of `pid` reachable through parent links (sync)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


async def tree_pids(pid: int) -> list[int]:
    """`pid` followed by its descendants, or [] if `pid` does not exist."""
    return await asyncio.to_thread(_tree_pids, pid)


def _tree_pids(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return []


def same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The process `pid` if it is still the one created at `create_time`, else None."""
    try:
        candidate = psutil.Process(pid)
        if abs(candidate.create_time() - create_time) <= CREATE_TIME_TOLERANCE_SECS:
            return candidate
    except psutil.Error:
        pass
    return None


@dataclass
class TreeMembers:
    """A snapshot of one tree: its processes, and whether its group number is ours."""

    members: dict[int, psutil.Process]
    # Whether signalling the process group by number reaches our tree and no one else.
    group_is_ours: bool


def enumerate_tree(pid: int, pgid: int, create_time: float) -> TreeMembers:
    """Every process of the tree whose root was `pid` created at `create_time` (sync, slow)."""
    members: dict[int, psutil.Process] = {}
    me = os.getpid()

    def add_with_descendants(process: psutil.Process) -> None:
        members.setdefault(process.pid, process)
        try:
            children = process.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            if child.pid != me:
                members.setdefault(child.pid, child)

    root = same_process(pid, create_time)
    if root is not None:
        add_with_descendants(root)
    if pgid <= 1 or pgid in (os.getpgrp(), os.getsid(0)):
        # Not a tree of its own (an adopted process that never got a session):
        # signalling the group would hit gpumux itself.
        group_is_ours = False
    elif root is not None:
        group_is_ours = True
    else:
        # The root is gone. The group number is still ours unless another process
        # now owns that pid, which is only possible once our group is empty.
        group_is_ours = pgid != pid or not psutil.pid_exists(pgid)
    if group_is_ours:
        for candidate in psutil.pids():
            if candidate in members or candidate == me:
                continue
            try:
                if os.getpgid(candidate) != pgid and os.getsid(candidate) != pgid:
                    continue
                process = psutil.Process(candidate)
                if process.create_time() < create_time - CREATE_TIME_TOLERANCE_SECS:
                    continue  # older than our root: cannot be part of its tree
            except (OSError, psutil.Error):
                continue
            add_with_descendants(process)
    return TreeMembers(members, group_is_ours)


def signal_members(tree: TreeMembers, pgid: int, sig: int) -> None:
    """Send `sig` to the group (if ours) and to each member; vanished ones are skipped."""
    if tree.group_is_ours:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for process in tree.members.values():
        # psutil refuses (NoSuchProcess) if the pid was reused since enumeration.
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def _signal_tree(pid: int, pgid: int, create_time: float, sig: int) -> TreeMembers:
    tree = enumerate_tree(pid, pgid, create_time)
    signal_members(tree, pgid, sig)
    return tree


def is_gone(process: psutil.Process) -> bool:
    """Dead for our purposes: no such process, or a zombie someone else must reap."""
    try:
        if not process.is_running():
            return True
        if process.status() == psutil.STATUS_ZOMBIE:
            return process.ppid() != os.getpid()
        return False
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def alive_pids(processes: Iterable[psutil.Process]) -> list[int]:
    """Pids of `processes` that are not gone."""
    return [process.pid for process in processes if not is_gone(process)]


async def _wait_tree_gone(
    exited: asyncio.Future[int], processes: Iterable[psutil.Process], timeout: float
) -> list[int]:
    """Wait until the root is reaped and no member is alive; return what is left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    tracked = list(processes)
    while True:
        left = await asyncio.to_thread(alive_pids, tracked)
        remaining = deadline - loop.time()
        if (exited.done() and not left) or remaining <= 0:
            return left
        # Waking on `exited` ends the wait early when the root was all that was left.
        await asyncio.wait({exited}, timeout=min(GONE_POLL_INTERVAL_SECS, remaining))


def _exit_future(proc: BackendProcess) -> asyncio.Future[int]:
    if not proc.exited.cancelled():
        return proc.exited
    if proc.reaper is None:
        raise RuntimeError(f"exit future of pid {proc.pid} was cancelled and no Reaper is known")
    # Someone cancelled the shared future. The Reaper caches exits nobody waits for,
    # so a fresh watch still gets the code; store it for later consumers.
    proc.exited = proc.reaper.watch(proc.pid)
    return proc.exited


async def kill_tree(
    proc: BackendProcess,
    *,
    grace_secs: float,
    graceful: bool = True,
    reap_timeout_secs: float | None = None,
) -> int:
    """Stop `proc`'s whole tree and return the root's exit code.

    SIGTERM (skipped when `graceful` is False, e.g. for a tree whose CRIU image must
    keep vLLM's /dev/shm files) goes to the group and to every descendant; after up to
    `grace_secs` for the tree to leave on its own, SIGKILL goes to the re-enumerated
    tree. Then it waits up to `reap_timeout_secs` (default: grace, at least
    `MIN_REAP_WAIT_SECS`) for the root to be reaped and every member to be gone, and
    raises `KillTreeStuck` if not. Safe to call on a tree that is already dead, or
    twice. If cancelled mid-way, the known tree is SIGKILLed before the cancellation
    propagates, so a cancelled stop never leaves a half-stopped tree.
    """
    exited = _exit_future(proc)
    if reap_timeout_secs is None:
        reap_timeout_secs = max(grace_secs, MIN_REAP_WAIT_SECS)
    members: dict[int, psutil.Process] = {}
    group_is_ours = not exited.done()
    try:
        if graceful:
            tree = await asyncio.to_thread(
                _signal_tree, proc.pid, proc.pgid, proc.create_time, signal.SIGTERM
            )
            members.update(tree.members)
            group_is_ours = tree.group_is_ours
            # A stopped (SIGSTOP, hung) process keeps SIGTERM pending until it continues.
            await asyncio.to_thread(
                _signal_tree, proc.pid, proc.pgid, proc.create_time, signal.SIGCONT
            )
            await _wait_tree_gone(exited, members.values(), grace_secs)
        # Re-enumerate even if all looked gone: once the root is dead, orphans it left
        # behind are findable only by group and session, and they may have forked.
        tree = await asyncio.to_thread(
            _signal_tree, proc.pid, proc.pgid, proc.create_time, signal.SIGKILL
        )
        group_is_ours = tree.group_is_ours
        for pid, process in tree.members.items():
            members.setdefault(pid, process)
        left = await _wait_tree_gone(exited, members.values(), reap_timeout_secs)
    except asyncio.CancelledError:
        signal_members(
            TreeMembers(members, group_is_ours and not exited.done()), proc.pgid, signal.SIGKILL
        )
        raise
    if not exited.done() or left:
        stuck = sorted(set(left) | (set() if exited.done() else {proc.pid}))
        log.error("kill_tree_stuck", model=proc.model, pid=proc.pid, pids=stuck)
        raise KillTreeStuck(proc.model, stuck)
    code = exited.result()
    log.info(
        "process_tree_stopped",
        model=proc.model,
        pid=proc.pid,
        exit_code=code,
        pids=sorted(members),
    )
    return code


async def adopt(pid: int, *, model: str, log_path: Path, reaper: Reaper) -> BackendProcess:
    """Track `pid`, already a child of gpumux (e.g. a CRIU-restored root), as a backend.

    If the process has already exited and been reaped, the returned record's `exited`
    is resolved (and `create_time` is 0.0). Raises `AdoptFailed` if `pid` is alive but
    not our child, or gone without the Reaper having collected it.
    """
    # The check and the watch happen in one synchronous step (no await), so the
    # Reaper cannot collect the pid between them.
    parent: int | None = None
    create_time = 0.0
    try:
        process = psutil.Process(pid)
        parent = process.ppid()
        create_time = process.create_time()
    except psutil.Error:
        parent = None  # vanished while we looked: treat as gone
    if parent == os.getpid():
        exited = reaper.watch(pid, new_child=True)
    elif parent is not None:
        raise AdoptFailed(model, pid, f"its parent is pid {parent}, not gpumux")
    else:
        # Gone: only acceptable if the Reaper already collected it (a restored root
        # that died at once); its cached exit resolves the future now.
        exited = reaper.watch(pid)
        if not exited.done():
            exited.cancel()
            raise AdoptFailed(model, pid, "no such process")
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        pgid = pid
    proc = BackendProcess(
        model=model,
        pid=pid,
        pgid=pgid,
        create_time=create_time,
        log_path=log_path,
        exited=exited,
        log_offset=_file_size(log_path),
        reaper=reaper,
    )
    log.info("process_adopted", model=model, pid=pid, pgid=pgid)
    return proc


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
