"""One reaper collects every child; helpers run through it; prctl keeps trees tidy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import uvloop
from structlog.testing import capture_logs

from gpumux.procs import (
    CommandFailedToStart,
    CommandTimeout,
    Reaper,
    current_reaper,
    run_command,
)
from tests.support.procs import alive
from tests.support.waits import wait_until, wait_until_async

pytestmark = pytest.mark.integration

DEADLINE_SECS = 10.0


def read_line(stream: object, timeout: float = DEADLINE_SECS) -> str:
    """One line from a helper's stdout pipe, failing instead of hanging past `timeout`."""
    assert hasattr(stream, "readline")
    assert hasattr(stream, "fileno")
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise AssertionError("helper printed nothing in time")
    line: str = stream.readline()
    return line


def spawn_unwatched(code: str) -> int:
    """Start a Python child without Popen, so nothing but the Reaper waits for it."""
    return os.posix_spawn(sys.executable, [sys.executable, "-c", code], os.environ)


async def test_an_exit_reaped_before_watch_is_still_delivered(reaper: Reaper) -> None:
    """A child that exits and is reaped before anyone watches it resolves watch() at once."""
    pid = spawn_unwatched("raise SystemExit(7)")
    with capture_logs() as logs:
        await wait_until_async(
            lambda: not psutil.pid_exists(pid), "the reaper to collect the child"
        )
        await reaper.reap_now()
    assert {"event": "orphan_reaped", "pid": pid, "exit_code": 7, "log_level": "info"} in logs

    late = reaper.watch(pid)

    assert late.done()
    assert late.result() == 7


async def test_a_cached_exit_is_not_given_to_a_new_child_with_the_same_pid(
    reaper: Reaper,
) -> None:
    """watch(new_child=True) ignores a stale cached exit left by an earlier pid owner."""
    pid = spawn_unwatched("pass")
    await wait_until_async(lambda: not psutil.pid_exists(pid), "the reaper to collect the child")

    fresh = reaper.watch(pid, new_child=True)

    assert not fresh.done()
    fresh.cancel()
    assert not reaper.watch(pid).done()  # the stale entry is gone for good


async def test_cancelling_one_watcher_does_not_affect_another(reaper: Reaper) -> None:
    """Each watch() returns its own future; the remaining watcher still gets the code."""
    pid = spawn_unwatched("raise SystemExit(2)")
    first, second = reaper.watch(pid), reaper.watch(pid)
    first.cancel()
    assert await asyncio.wait_for(second, DEADLINE_SECS) == 2


async def test_run_command_returns_output_and_exit_code(reaper: Reaper) -> None:
    """stdout and stderr come back separately, with the exit status."""
    script = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(0)"
    result = await run_command([sys.executable, "-c", script], timeout=DEADLINE_SECS)
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")
    assert current_reaper() is reaper


async def test_run_command_reports_a_non_zero_exit(reaper: Reaper, tmp_path: Path) -> None:
    """A failing command is a result, not an exception; cwd and env are applied."""
    script = "import os, sys; print(os.getcwd(), os.environ['ONLY']); sys.exit(5)"
    result = await run_command(
        [sys.executable, "-c", script],
        timeout=DEADLINE_SECS,
        env={"ONLY": "this", "PATH": os.environ["PATH"]},
        cwd=tmp_path,
    )
    assert result.returncode == 5
    assert result.stdout == f"{tmp_path} this\n"


async def test_run_command_timeout_kills_the_whole_group(reaper: Reaper) -> None:
    """On timeout the command and its grandchild are SIGKILLed and CommandTimeout raised."""
    script = textwrap.dedent(
        """
        import os, time
        if os.fork() == 0:
            print("grandchild", os.getpid(), flush=True)
        else:
            print("root", os.getpid(), flush=True)
        time.sleep(120)
        """
    )
    with pytest.raises(CommandTimeout) as caught:
        await run_command([sys.executable, "-c", script], timeout=1.0)
    pids = [int(line.split()[1]) for line in caught.value.stdout.splitlines()]
    assert len(pids) == 2
    await wait_until_async(lambda: not any(alive(pid) for pid in pids), "the group to die")


async def test_run_command_cancellation_kills_the_command(reaper: Reaper, tmp_path: Path) -> None:
    """Cancelling the awaiting task SIGKILLs the command instead of abandoning it."""
    marker = tmp_path / "pid"
    script = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    async with asyncio.TaskGroup() as group:
        task = group.create_task(run_command([sys.executable, "-c", script], timeout=60))
        await wait_until_async(lambda: marker.exists() and marker.read_text() != "", "the start")
        pid = int(marker.read_text())
        task.cancel()
    assert task.cancelled()
    await wait_until_async(lambda: not alive(pid), "the command to die")


async def test_run_command_missing_program(reaper: Reaper, tmp_path: Path) -> None:
    """A program that cannot be executed raises CommandFailedToStart."""
    with pytest.raises(CommandFailedToStart, match="no-such-criu"):
        await run_command([str(tmp_path / "no-such-criu"), "--version"], timeout=DEADLINE_SECS)


def test_a_second_reaper_cannot_be_installed() -> None:
    """There is one owner of waitpid per process."""

    async def main() -> None:
        first = Reaper()
        first.install(asyncio.get_running_loop())
        try:
            with pytest.raises(RuntimeError, match="one per process"):
                Reaper().install(asyncio.get_running_loop())
        finally:
            first.uninstall()
        with pytest.raises(RuntimeError, match="no Reaper"):
            current_reaper()

    asyncio.run(main())


def test_the_reaper_collects_children_on_uvloop() -> None:
    """The daemon runs on uvloop, which refuses SIGCHLD in add_signal_handler: exits
    still arrive (the reaper's own handler), and uninstall restores the old handler."""
    before = signal.getsignal(signal.SIGCHLD)

    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        try:
            script = "import sys; print('up'); sys.exit(3)"
            result = await run_command([sys.executable, "-c", script], timeout=DEADLINE_SECS)
            assert (result.returncode, result.stdout) == (3, "up\n")
            pid = spawn_unwatched("raise SystemExit(4)")
            assert await asyncio.wait_for(reaper.watch(pid), DEADLINE_SECS) == 4
        finally:
            reaper.uninstall()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    assert signal.getsignal(signal.SIGCHLD) == before


# The helpers below run in their own interpreter: being a subreaper, or being
# SIGKILLed, are process-wide and must not touch the pytest process.

PARENT_DEATH_HELPER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    import structlog
    from gpumux.procs import Reaper, spawn_backend

    # stdout carries the child's pid to the test; logs go elsewhere.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    async def main():
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        proc = spawn_backend(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            model="tiny", env=dict(os.environ), log_path=Path(sys.argv[1]), reaper=reaper,
        )
        print(proc.pid, flush=True)
        await asyncio.sleep(120)

    asyncio.run(main())
    """
)

# The child forks a grandchild and exits; the grandchild waits until it has been
# reparented (to the helper, if that is a subreaper) and then exits with status 4.
DOUBLE_FORK = textwrap.dedent(
    """
    import os, time
    parent = os.getpid()
    if os.fork() == 0:
        while os.getppid() == parent:
            time.sleep(0.01)
        os._exit(4)
    """
)

SUBREAPER_HELPER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from structlog.testing import capture_logs
    from gpumux.procs import Reaper, is_child_subreaper, run_command, set_child_subreaper

    async def main():
        subreaper = set_child_subreaper()
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        with capture_logs() as logs:
            argv = [sys.executable, "-c", os.environ["DOUBLE_FORK"]]
            result = await run_command(argv, timeout=10)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not any(e["event"] == "orphan_reaped" for e in logs) and loop.time() < deadline:
                await asyncio.sleep(0.02)
        orphans = [(e["pid"], e["exit_code"]) for e in logs if e["event"] == "orphan_reaped"]
        print(json.dumps({"subreaper": subreaper, "is_subreaper": is_child_subreaper(),
                          "returncode": result.returncode, "orphans": orphans}), flush=True)

    asyncio.run(main())
    """
)


def test_parent_death_kills_the_backend(tmp_path: Path) -> None:
    """When gpumux is SIGKILLed, the kernel SIGKILLs its backend roots."""
    helper = subprocess.Popen(
        [sys.executable, "-c", PARENT_DEATH_HELPER, str(tmp_path / "tiny.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    child: psutil.Process | None = None
    try:
        assert helper.stdout is not None
        child = psutil.Process(int(read_line(helper.stdout)))
        assert child.ppid() == helper.pid
        helper.send_signal(signal.SIGKILL)
        helper.wait(timeout=DEADLINE_SECS)
        wait_until(lambda: not alive(child.pid), "the orphan to end")
    finally:
        helper.kill()
        helper.wait(timeout=DEADLINE_SECS)
        if helper.stdout is not None:
            helper.stdout.close()
        if child is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def test_subreaper_reaps_reparented_orphans() -> None:
    """As a subreaper, gpumux inherits and reaps the grandchild a dead child left behind."""
    done = subprocess.run(
        [sys.executable, "-c", SUBREAPER_HELPER],
        env={**os.environ, "DOUBLE_FORK": DOUBLE_FORK},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["subreaper"] is True
    assert report["is_subreaper"] is True
    assert report["returncode"] == 0
    assert [code for _, code in report["orphans"]] == [4]
