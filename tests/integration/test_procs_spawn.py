"""Backends start with process hygiene, report their exit, and stop as a whole tree."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from gpumux.procs import (
    AdoptFailed,
    BackendProcess,
    KillTreeStuck,
    LogTail,
    Reaper,
    SpawnFailed,
    adopt,
    descendants,
    kill_tree,
    spawn_backend,
    tree_pids,
)
from tests.support.procs import alive
from tests.support.waits import wait_until_async

pytestmark = pytest.mark.integration

DEADLINE_SECS = 10.0

# A root that forks one grandchild; both stay until killed. `IGNORE_TERM=1` makes both
# ignore SIGTERM, `GRANDCHILD_SETSID=1` moves the grandchild out of the group, and
# `ROOT_EXITS=1` makes the root exit at once, orphaning the grandchild.
TREE_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("root", os.getpid(), flush=True)
    if os.fork() == 0:
        if os.environ.get("GRANDCHILD_SETSID"):
            os.setsid()
        print("grandchild", os.getpid(), flush=True)
        time.sleep(120)
        os._exit(0)
    if os.environ.get("ROOT_EXITS"):
        sys.exit(0)
    time.sleep(120)
    """
)


class Leftovers:
    """Processes to SIGKILL at teardown, so a failing test leaves nothing behind.

    psutil handles remember create_time, so a pid reused since is left alone.
    """

    def __init__(self) -> None:
        self.processes: list[psutil.Process] = []

    def add(self, pid: int) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.processes.append(psutil.Process(pid))

    def kill_all(self) -> None:
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


@pytest.fixture
def leftovers() -> Iterator[Leftovers]:
    tracker = Leftovers()
    yield tracker
    tracker.kill_all()


def start_tree(reaper: Reaper, tmp_path: Path, leftovers: Leftovers, **env: str) -> BackendProcess:
    proc = spawn_backend(
        [sys.executable, "-c", TREE_SCRIPT],
        model="tiny",
        env={**os.environ, **env},
        log_path=tmp_path / "logs" / "tiny.log",
        reaper=reaper,
    )
    leftovers.add(proc.pid)
    return proc


async def grandchild_of(proc: BackendProcess, leftovers: Leftovers) -> int:
    """The grandchild's pid, read from the log once the tree has printed it."""
    found: list[int] = []

    def printed() -> bool:
        for line in proc.log_path.read_text().splitlines():
            if line.startswith("grandchild "):
                found.append(int(line.split()[1]))
                return True
        return False

    await wait_until_async(printed, "the grandchild to start")
    leftovers.add(found[0])
    return found[0]


async def test_spawned_tree_has_its_own_session_and_a_private_log(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """The root leads a new session and group; stdout and stderr land in a 0600 file."""
    proc = spawn_backend(
        [
            sys.executable,
            "-c",
            "import sys; print('to stdout'); print('to stderr', file=sys.stderr)",
        ],
        model="tiny",
        env=dict(os.environ),
        log_path=tmp_path / "logs" / "tiny.log",
        reaper=reaper,
    )
    leftovers.add(proc.pid)
    assert proc.pgid == proc.pid
    assert os.getsid(proc.pid) == proc.pid
    assert proc.create_time == psutil.Process(proc.pid).create_time()
    assert await asyncio.wait_for(asyncio.shield(proc.exited), DEADLINE_SECS) == 0
    assert proc.log_path.read_text().splitlines() == ["to stdout", "to stderr"]
    assert stat.S_IMODE(proc.log_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(proc.log_path.parent.stat().st_mode) == 0o700


async def test_stdin_is_devnull_and_no_descriptors_leak(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """The child sees /dev/null on stdin and only fds 0-2 (plus what Python opens itself)."""
    script = (
        "import json, os; print(os.readlink('/proc/self/fd/0'));"
        " print(json.dumps(os.listdir('/proc/self/fd')))"
    )
    stray_r, stray_w = os.pipe()
    os.set_inheritable(stray_w, True)
    try:
        proc = spawn_backend(
            [sys.executable, "-c", script],
            model="tiny",
            env=dict(os.environ),
            log_path=tmp_path / "tiny.log",
            reaper=reaper,
        )
        leftovers.add(proc.pid)
        assert await asyncio.wait_for(asyncio.shield(proc.exited), DEADLINE_SECS) == 0
    finally:
        os.close(stray_r)
        os.close(stray_w)
    stdin_target, fds = proc.log_path.read_text().splitlines()
    assert stdin_target == "/dev/null"
    assert str(stray_w) not in json.loads(fds)


async def test_exit_codes_are_delivered_through_the_future(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """A normal exit gives its status; death by a signal gives minus the signal number."""
    exits = spawn_backend(
        [sys.executable, "-c", "raise SystemExit(3)"],
        model="a",
        env=dict(os.environ),
        log_path=tmp_path / "a.log",
        reaper=reaper,
    )
    killed = spawn_backend(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
        model="b",
        env=dict(os.environ),
        log_path=tmp_path / "b.log",
        reaper=reaper,
    )
    leftovers.add(exits.pid)
    leftovers.add(killed.pid)
    with capture_logs() as logs:
        assert await asyncio.wait_for(asyncio.shield(exits.exited), DEADLINE_SECS) == 3
        assert await asyncio.wait_for(asyncio.shield(killed.exited), DEADLINE_SECS) == -9
        await asyncio.sleep(0)  # let the done-callbacks that log run
    assert exits.returncode == 3
    exited = {
        (e["model"], e["pid"], e["exit_code"]) for e in logs if e["event"] == "process_exited"
    }
    assert exited == {("a", exits.pid, 3), ("b", killed.pid, -9)}


async def test_missing_executable_raises_spawn_failed(reaper: Reaper, tmp_path: Path) -> None:
    """An OSError from exec becomes SpawnFailed naming the model and the program."""
    with pytest.raises(SpawnFailed, match=r"model 'tiny'.*no-such-vllm"):
        spawn_backend(
            [str(tmp_path / "no-such-vllm"), "serve"],
            model="tiny",
            env=dict(os.environ),
            log_path=tmp_path / "tiny.log",
            reaper=reaper,
        )


async def test_spawning_off_the_loop_thread_is_refused(reaper: Reaper, tmp_path: Path) -> None:
    """A worker thread must not fork: the parent-death signal would fire when it exits."""

    def from_worker() -> None:
        spawn_backend(
            [sys.executable, "-c", "pass"],
            model="tiny",
            env=dict(os.environ),
            log_path=tmp_path / "tiny.log",
            reaper=reaper,
        )

    with pytest.raises(RuntimeError, match="event-loop thread"):
        await asyncio.to_thread(from_worker)
    assert threading.current_thread() is threading.main_thread()


async def test_kill_tree_leaves_no_process_behind(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """SIGTERM to the group stops root and grandchild; the root's code says SIGTERM."""
    proc = start_tree(reaper, tmp_path, leftovers)
    grandchild = await grandchild_of(proc, leftovers)
    assert descendants(proc.pid) == [grandchild]
    assert await tree_pids(proc.pid) == [proc.pid, grandchild]

    code = await kill_tree(proc, grace_secs=5.0)

    assert code == -signal.SIGTERM
    assert not alive(proc.pid)
    assert not alive(grandchild)
    assert await tree_pids(proc.pid) == []


async def test_kill_tree_escalates_to_sigkill_after_the_grace(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """A tree that ignores SIGTERM is SIGKILLed once the grace period is over."""
    proc = start_tree(reaper, tmp_path, leftovers, IGNORE_TERM="1")
    grandchild = await grandchild_of(proc, leftovers)

    code = await kill_tree(proc, grace_secs=0.3)

    assert code == -signal.SIGKILL
    assert not alive(grandchild)


async def test_kill_tree_finds_a_descendant_that_left_the_group(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """A grandchild in its own session is still reached through the parent links."""
    proc = start_tree(reaper, tmp_path, leftovers, IGNORE_TERM="1", GRANDCHILD_SETSID="1")
    grandchild = await grandchild_of(proc, leftovers)
    await wait_until_async(lambda: os.getsid(grandchild) == grandchild, "the grandchild's setsid")

    await kill_tree(proc, grace_secs=0.3)

    assert not alive(grandchild)


async def test_kill_tree_after_the_root_died_still_kills_its_orphans(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """Once the root is gone, the orphaned grandchild is found by its process group."""
    proc = start_tree(reaper, tmp_path, leftovers, ROOT_EXITS="1")
    grandchild = await grandchild_of(proc, leftovers)
    assert await asyncio.wait_for(asyncio.shield(proc.exited), DEADLINE_SECS) == 0
    assert alive(grandchild)

    assert await kill_tree(proc, grace_secs=5.0) == 0

    assert not alive(grandchild)


async def test_kill_tree_is_idempotent(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """Killing a tree twice returns the same code and signals nobody the second time."""
    proc = start_tree(reaper, tmp_path, leftovers)
    await grandchild_of(proc, leftovers)
    first = await kill_tree(proc, grace_secs=5.0)
    assert await kill_tree(proc, grace_secs=5.0) == first


async def test_kill_tree_without_grace_skips_sigterm(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """graceful=False goes straight to SIGKILL (a tree whose image must keep its files)."""
    proc = start_tree(reaper, tmp_path, leftovers)
    await grandchild_of(proc, leftovers)
    assert await kill_tree(proc, grace_secs=5.0, graceful=False) == -signal.SIGKILL


async def test_kill_tree_survives_a_cancelled_exit_future(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """If a consumer cancelled `exited`, kill_tree still learns the root's exit code."""
    proc = start_tree(reaper, tmp_path, leftovers)
    await grandchild_of(proc, leftovers)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(proc.exited, 0.01)  # the misuse: wait_for cancels it
    assert await kill_tree(proc, grace_secs=5.0) == -signal.SIGTERM


def spawn_sleeper_session() -> int:
    """A sleeping child in its own session, started without telling the Reaper."""
    argv = [sys.executable, "-c", "import time; time.sleep(120)"]
    return os.posix_spawn(sys.executable, argv, os.environ, setsid=True)


async def test_kill_tree_reports_a_root_that_is_never_reaped(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """If the root's exit never arrives, kill_tree logs and raises KillTreeStuck."""
    pid = spawn_sleeper_session()
    leftovers.add(pid)
    proc = BackendProcess(
        model="tiny",
        pid=pid,
        pgid=pid,
        create_time=psutil.Process(pid).create_time(),
        log_path=tmp_path / "tiny.log",
        exited=asyncio.get_running_loop().create_future(),  # nobody will resolve it
    )
    with capture_logs() as logs, pytest.raises(KillTreeStuck) as caught:
        await kill_tree(proc, grace_secs=0.1, reap_timeout_secs=0.3)
    assert caught.value.pids == [pid]
    assert [e["pids"] for e in logs if e["event"] == "kill_tree_stuck"] == [[pid]]


async def test_output_is_re_emitted_by_log_tail(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """Lines the backend writes reach structlog as backend_output with model and pid."""
    log_path = tmp_path / "tiny.log"
    log_path.write_text("from an earlier run\n")
    script = "import sys; print('one', flush=True); print('two', file=sys.stderr, flush=True)"
    with capture_logs() as logs:
        proc = spawn_backend(
            [sys.executable, "-c", script],
            model="tiny",
            env=dict(os.environ),
            log_path=log_path,
            reaper=reaper,
        )
        leftovers.add(proc.pid)
        tail = LogTail(proc.log_path, model="tiny", pid=proc.pid, start_offset=proc.log_offset)
        async with asyncio.TaskGroup() as group:
            task = group.create_task(tail.run())
            await wait_until_async(lambda: tail.recent_lines() == ["one", "two"], "both lines")
            task.cancel()
    emitted = [(e["model"], e["pid"], e["line"]) for e in logs if e["event"] == "backend_output"]
    assert emitted == [("tiny", proc.pid, "one"), ("tiny", proc.pid, "two")]


async def test_adopt_tracks_an_existing_child(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """A pid that is already our child (as after a CRIU restore) becomes a BackendProcess."""
    original = start_tree(reaper, tmp_path, leftovers)
    grandchild = await grandchild_of(original, leftovers)
    adopted = await adopt(original.pid, model="tiny", log_path=original.log_path, reaper=reaper)
    assert (adopted.pid, adopted.pgid, adopted.create_time) == (
        original.pid,
        original.pgid,
        original.create_time,
    )
    assert await kill_tree(adopted, grace_secs=5.0) == -signal.SIGTERM
    assert not alive(grandchild)


async def test_adopt_refuses_a_process_that_is_not_our_child(
    reaper: Reaper, tmp_path: Path, leftovers: Leftovers
) -> None:
    """A live process with another parent cannot be adopted: we could never reap it."""
    proc = start_tree(reaper, tmp_path, leftovers)
    grandchild = await grandchild_of(proc, leftovers)
    with pytest.raises(AdoptFailed, match=f"parent is pid {proc.pid}"):
        await adopt(grandchild, model="tiny", log_path=proc.log_path, reaper=reaper)
    await kill_tree(proc, grace_secs=5.0)
