"""What a process tree holds that decides whether CRIU can dump or restore it.

Owns: read-only scans of `/proc` for one tree: io_uring instances (CRIU cannot dump
them), files under `/dev/shm` (vLLM's `psm_*` segments, which an image must carry),
TCP sockets that are not listening (an established one fails a dump), the listening
ones (the image records them: its restore binds them again), and, before a restore,
whether the image's pids and listening ports are free and who holds a taken port.
Does not: run CRIU (`criu`), kill or reap anything, or decide what to do about findings.

Every function is synchronous and reads `/proc` of other processes: callers run them in
a thread. `proc_root` exists so tests can point the scanners at a directory laid out
like `/proc` (fd symlinks and `maps` files) instead of the live one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

PROC = Path("/proc")
SHM_DIR = "/dev/shm"
IO_URING = "anon_inode:[io_uring]"

#: The hint an operator needs when a tree holds an io_uring (uvloop >= 0.21 opens one).
IO_URING_HINT = (
    "CRIU cannot dump io_uring (uvloop's libuv opens one in vLLM's API server); set "
    "`sysctl -w kernel.io_uring_disabled=2` on the host (or run the server on plain asyncio)"
)


@dataclass(frozen=True)
class IoUringUse:
    pid: int
    where: str  # "fd 12" or "mapping 7f32fcb34000-7f32fcb38000"


def io_uring_users(pids: Iterable[int], proc_root: Path = PROC) -> list[IoUringUse]:
    """Every io_uring fd or mapping held by `pids` (vanished pids are skipped)."""
    found: list[IoUringUse] = []
    for pid in pids:
        for fd, target in _fd_links(proc_root, pid):
            if target == IO_URING:
                found.append(IoUringUse(pid, f"fd {fd}"))
        for span, path in _mappings(proc_root, pid):
            if path == IO_URING:
                found.append(IoUringUse(pid, f"mapping {span}"))
    return found


def describe_io_uring(uses: list[IoUringUse]) -> str:
    listed = ", ".join(f"pid {u.pid} {u.where}" for u in uses[:6])
    more = f" and {len(uses) - 6} more" if len(uses) > 6 else ""
    return f"the tree holds io_uring ({listed}{more}); {IO_URING_HINT}"


def shm_files(pids: Iterable[int], proc_root: Path = PROC) -> list[str]:
    """Existing files under /dev/shm that `pids` have open or mapped, sorted.

    Deleted-but-open files are left out: CRIU's `--link-remap` carries those itself.
    """
    found: set[str] = set()
    for pid in pids:
        paths = [target for _fd, target in _fd_links(proc_root, pid)]
        paths += [path for _span, path in _mappings(proc_root, pid)]
        for path in paths:
            if path.startswith(SHM_DIR + "/") and not path.endswith(" (deleted)"):
                found.add(path)
    return sorted(p for p in found if os.path.isfile(p))


def tcp_sockets(pids: Iterable[int]) -> tuple[list[str], list[tuple[str, int]]]:
    """The TCP sockets of `pids`, in one scan: the non-listening ones as
    `pid: local -> remote (STATUS)` (an open one fails a dump), and the (address, port)
    of the listening ones, sorted, once each (the image records them)."""
    open_: list[str] = []
    listening: set[tuple[str, int]] = set()
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN:
                if conn.laddr:
                    listening.add((conn.laddr.ip, conn.laddr.port))
                continue
            # psutil gives an empty tuple for an unconnected end, despite its stubs.
            local = ":".join(str(part) for part in conn.laddr) or "?"
            remote = ":".join(str(part) for part in conn.raddr) or "?"
            open_.append(f"pid {pid}: {local} -> {remote} ({conn.status})")
    return open_, sorted(listening)


def taken_pids(pids: Iterable[int]) -> dict[int, str]:
    """Which of `pids` exist now, with what (a zombie counts: its pid is not free)."""
    taken: dict[int, str] = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            taken[pid] = f"{process.name()} ({process.status()}, parent {process.ppid()})"
        except psutil.NoSuchProcess:
            continue
        except psutil.Error as exc:
            taken[pid] = type(exc).__name__
    return taken


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True iff a listener could bind `host:port` now (as the restored backend must)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # The backend binds with SO_REUSEADDR, so TIME_WAIT leftovers do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_holders(ports: Iterable[int]) -> dict[int, list[str]]:
    """Who has a TCP socket on each of `ports` (any address, any state), as
    `pid N (name)`; a socket whose owner is not visible counts as `pid ?`. Scans every
    process's sockets: for the message of a failed restore, not for a hot path."""
    wanted = set(ports)
    holders: dict[int, list[str]] = {}
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return holders
    for conn in connections:
        if not conn.laddr or conn.laddr.port not in wanted:
            continue
        who = f"pid {conn.pid} ({_name(conn.pid)})" if conn.pid else "pid ?"
        if who not in holders.setdefault(conn.laddr.port, []):
            holders[conn.laddr.port].append(who)
    return holders


def _name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "gone"


def _fd_links(proc_root: Path, pid: int) -> list[tuple[str, str]]:
    fd_dir = proc_root / str(pid) / "fd"
    links = []
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return []
    for name in names:
        try:
            links.append((name, os.readlink(fd_dir / name)))
        except OSError:
            continue  # closed while we looked
    return links


def _mappings(proc_root: Path, pid: int) -> list[tuple[str, str]]:
    try:
        text = (proc_root / str(pid) / "maps").read_text(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        # address perms offset dev inode [path]; the path may contain spaces.
        parts = line.split(maxsplit=5)
        if len(parts) == 6:
            found.append((parts[0], parts[5]))
    return found
