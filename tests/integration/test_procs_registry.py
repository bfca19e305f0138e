"""The children registry survives a gpumux crash and the next start sweeps leftovers."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from gpumux.procs import ChildRecord, ChildRegistry, sweep_leftovers
from tests.support.procs import alive
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

DEADLINE_SECS = 10.0

# Runs in its own session, forks a grandchild, and both sleep until killed.
TREE = textwrap.dedent(
    """
    import os, time
    os.fork()
    time.sleep(120)
    """
)


@pytest.fixture
def detached_tree() -> Iterator[list[psutil.Process]]:
    """A two-process tree in its own session whose parent (standing in for a dead
    gpumux) has exited, like the orphans a SIGKILLed daemon leaves behind."""
    launcher = textwrap.dedent(
        f"""
        import os, sys
        quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
        pid = os.posix_spawn(sys.executable, [sys.executable, "-c", {TREE!r}], os.environ,
                             setsid=True, file_actions=quiet)
        print(pid)
        """
    )
    # No Reaper runs in these synchronous tests, so subprocess may wait for the launcher.
    launched = subprocess.run(
        [sys.executable, "-c", launcher],
        capture_output=True,
        text=True,
        check=True,
        timeout=DEADLINE_SECS,
    )
    root_pid = int(launched.stdout)
    root = psutil.Process(root_pid)
    wait_until(lambda: len(root.children()) == 1, "the grandchild to start")
    tree = [root, *root.children()]
    yield tree
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def record_of(process: psutil.Process, *, create_time: float | None = None) -> ChildRecord:
    return ChildRecord(
        pid=process.pid,
        pgid=os.getpgid(process.pid),
        create_time=process.create_time() if create_time is None else create_time,
        model="tiny",
    )


def test_registry_file_is_private_and_tracks_adds_and_removes(tmp_path: Path) -> None:
    """children.json is written atomically with mode 0600 and mirrors add/remove."""
    state_dir = tmp_path / "state"
    registry = ChildRegistry(state_dir)
    registry.add(ChildRecord(pid=101, pgid=101, create_time=1.5, model="a"))
    registry.add(ChildRecord(pid=202, pgid=202, create_time=2.5, model="b"))
    registry.remove(101)

    path = state_dir / "children.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {
        "children": [{"pid": 202, "pgid": 202, "create_time": 2.5, "model": "b"}]
    }
    assert [p.name for p in state_dir.iterdir()] == ["children.json"]  # no temp files left
    assert ChildRegistry(state_dir).records() == registry.records()


def test_sweep_kills_a_recorded_tree_left_by_a_dead_daemon(
    tmp_path: Path, detached_tree: list[psutil.Process]
) -> None:
    """Every process of a recorded tree is SIGKILLed and the file is cleared."""
    root, grandchild = detached_tree
    ChildRegistry(tmp_path).add(record_of(root))

    with capture_logs() as logs:
        swept = sweep_leftovers(tmp_path)

    assert swept == sorted([root.pid, grandchild.pid])
    assert not alive(root.pid)
    assert not alive(grandchild.pid)
    assert not (tmp_path / "children.json").exists()
    assert any(e["event"] == "leftover_swept" and e["pid"] == root.pid for e in logs)


def test_sweep_kills_orphans_whose_root_is_already_gone(
    tmp_path: Path, detached_tree: list[psutil.Process]
) -> None:
    """With the root dead (its parent-death signal fired), the group still gets swept."""
    root, grandchild = detached_tree
    ChildRegistry(tmp_path).add(record_of(root))
    root.kill()
    wait_until(lambda: not alive(root.pid), "the root to die")

    swept = sweep_leftovers(tmp_path)

    assert grandchild.pid in swept
    assert not alive(grandchild.pid)


def test_sweep_spares_a_process_that_reused_the_pid(
    tmp_path: Path, detached_tree: list[psutil.Process]
) -> None:
    """An entry whose pid now has another create_time belongs to a stranger: untouched."""
    root, grandchild = detached_tree
    ChildRegistry(tmp_path).add(record_of(root, create_time=root.create_time() - 3600))

    with capture_logs() as logs:
        assert sweep_leftovers(tmp_path) == []

    assert alive(root.pid)
    assert alive(grandchild.pid)
    assert any(e["event"] == "leftover_skipped" for e in logs)
    assert not (tmp_path / "children.json").exists()


def test_sweep_without_a_file_does_nothing(tmp_path: Path) -> None:
    """A first start (no registry yet) sweeps nothing."""
    assert sweep_leftovers(tmp_path) == []


def test_a_corrupt_registry_is_reported_and_replaced(tmp_path: Path) -> None:
    """An unreadable file is logged and treated as empty, never a crash at start."""
    (tmp_path / "children.json").write_text("{not json")
    with capture_logs() as logs:
        assert sweep_leftovers(tmp_path) == []
    assert any(e["event"] == "child_registry_unreadable" for e in logs)
    assert not (tmp_path / "children.json").exists()
