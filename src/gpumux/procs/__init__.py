"""The backend process adapter: spawn, reap, kill, adopt, sweep and tail backend trees.

Owns: everything gpumux does with operating-system processes. Layering: an adapter;
it imports only the standard library, psutil and structlog, never aiohttp or the
coordination layer.

Start-up order the daemon must follow (on the event-loop thread):
1. `sweep_leftovers(state_dir)` (sync, before the loop serves anything),
2. `set_child_subreaper()`,
3. `Reaper().install(loop)`,
4. only then spawn (`spawn_backend`) or run helpers (`run_command`), recording each
   tree in a `ChildRegistry` and removing it after `kill_tree` returns.
Nothing in gpumux may use asyncio subprocesses, `subprocess.run` or `os.wait*`.
"""

from __future__ import annotations

from gpumux.procs.environment import child_environment, rejected_names
from gpumux.procs.errors import (
    AdoptFailed,
    CommandFailedToStart,
    CommandTimeout,
    KillTreeStuck,
    ProcsError,
    SpawnFailed,
)
from gpumux.procs.logtail import LogTail
from gpumux.procs.prctl import (
    is_child_subreaper,
    parent_death_signal_preexec,
    set_child_subreaper,
)
from gpumux.procs.reaper import CommandResult, Reaper, current_reaper, run_command
from gpumux.procs.registry import ChildRecord, ChildRegistry, sweep_leftovers
from gpumux.procs.spawn import BackendProcess, spawn_backend
from gpumux.procs.tree import adopt, descendants, kill_tree, tree_pids

__all__ = [
    "AdoptFailed",
    "BackendProcess",
    "ChildRecord",
    "ChildRegistry",
    "CommandFailedToStart",
    "CommandResult",
    "CommandTimeout",
    "KillTreeStuck",
    "LogTail",
    "ProcsError",
    "Reaper",
    "SpawnFailed",
    "adopt",
    "child_environment",
    "current_reaper",
    "descendants",
    "is_child_subreaper",
    "kill_tree",
    "parent_death_signal_preexec",
    "rejected_names",
    "run_command",
    "set_child_subreaper",
    "spawn_backend",
    "sweep_leftovers",
    "tree_pids",
]
