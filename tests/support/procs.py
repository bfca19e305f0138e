"""Processes as tests see them from outside: alive or not, a tree's pids, a frozen pid.

Owns: `alive` (a zombie counts as dead: init here may leave orphans unreaped),
`tree_pids`, and `stopped` (SIGSTOP for the body of a `with`, SIGCONT after).
Does not: kill anything a test did not freeze (tests and `tests.support.daemon` do).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psutil


def alive(pid: int) -> bool:
    """True for a live process; zombies and vanished pids are dead."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tree_pids(root: int) -> list[int]:
    """`root` and its descendants (empty when the root is gone)."""
    try:
        proc = psutil.Process(root)
        return [root, *(p.pid for p in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` for the body; SIGCONT it afterwards if it still exists."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
