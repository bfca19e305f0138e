"""LogTail follows a backend's log file through creation, truncation and bursts."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gpumux.procs import LogTail
from tests.support.waits import wait_until_async

pytestmark = pytest.mark.integration

DEADLINE_SECS = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def output_lines(logs: list[MutableMapping[str, Any]]) -> list[object]:
    return [e["line"] for e in logs if e["event"] == "backend_output"]


def append(path: Path, text: str) -> None:
    with path.open("a") as stream:
        stream.write(text)


def test_a_missing_file_is_waited_for(tmp_path: Path) -> None:
    """Before the backend creates its log there is nothing to read, and no error."""
    path = tmp_path / "tiny.log"
    tail = LogTail(path, model="tiny", pid=42)
    with capture_logs() as logs:
        assert tail.poll() == 0
        append(path, "first\nsecond\n")
        assert tail.poll() == 2
    assert output_lines(logs) == ["first", "second"]
    assert {(e["model"], e["pid"]) for e in logs} == {("tiny", 42)}


def test_start_offset_skips_an_earlier_run(tmp_path: Path) -> None:
    """Lines already in the file when the process started are not re-emitted."""
    path = tmp_path / "tiny.log"
    path.write_text("old run\n")
    tail = LogTail(path, model="tiny", start_offset=path.stat().st_size)
    append(path, "new run\n")
    tail.poll()
    assert tail.recent_lines() == ["new run"]


def test_partial_lines_wait_for_their_newline(tmp_path: Path) -> None:
    """A line is emitted once complete; carriage-return redraws keep their last state."""
    path = tmp_path / "tiny.log"
    tail = LogTail(path, model="tiny")
    append(path, "Loading 10%\rLoading 5")
    assert tail.poll() == 0
    append(path, "0%\rLoading 100%\r\n")
    assert tail.poll() == 1
    assert tail.recent_lines() == ["Loading 100%"]


def test_truncation_restarts_from_the_top(tmp_path: Path) -> None:
    """A file truncated under us is read again from its start."""
    path = tmp_path / "tiny.log"
    tail = LogTail(path, model="tiny")
    append(path, "a long first line\n")
    tail.poll()
    path.write_text("b\n")
    tail.poll()
    assert tail.recent_lines() == ["a long first line", "b"]


def test_a_replaced_file_is_followed(tmp_path: Path) -> None:
    """After a rename-and-recreate the old file is drained and the new one followed."""
    path = tmp_path / "tiny.log"
    tail = LogTail(path, model="tiny")
    append(path, "one\n")
    tail.poll()
    append(path, "two\n")
    path.rename(tmp_path / "tiny.log.1")
    append(path, "three\n")
    tail.poll()
    assert tail.recent_lines() == ["one", "two", "three"]


def test_recent_lines_are_bounded(tmp_path: Path) -> None:
    """Only the last keep_lines lines are kept for the dashboard."""
    path = tmp_path / "tiny.log"
    tail = LogTail(path, model="tiny", keep_lines=3)
    append(path, "".join(f"line {i}\n" for i in range(10)))
    tail.poll()
    assert tail.recent_lines() == ["line 7", "line 8", "line 9"]


def test_bursts_are_rate_limited_with_one_summary(tmp_path: Path) -> None:
    """Beyond max_lines_per_sec lines are counted, not logged, and summarised once."""
    path = tmp_path / "tiny.log"
    clock = FakeClock()
    tail = LogTail(path, model="tiny", pid=7, max_lines_per_sec=3, clock=clock)
    append(path, "".join(f"line {i}\n" for i in range(10)))
    with capture_logs() as logs:
        tail.poll()
        clock.now += 1.0
        tail.poll()
    assert output_lines(logs) == ["line 0", "line 1", "line 2"]
    summaries = [e for e in logs if e["event"] == "backend_output_dropped"]
    assert [(e["model"], e["pid"], e["lines_dropped"]) for e in summaries] == [("tiny", 7, 7)]
    assert tail.lines_dropped == 7
    assert len(tail.recent_lines()) == 10


async def test_run_follows_until_cancelled_and_flushes_the_last_line(tmp_path: Path) -> None:
    """run() polls on its own; on cancel it reads once more, including an unterminated line."""
    path = tmp_path / "tiny.log"
    tail = LogTail(path, model="tiny", poll_interval_secs=0.02)
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(tail.run())
            append(path, "ready\n")
            await wait_until_async(lambda: tail.recent_lines() == ["ready"], "the first line")
            append(path, "Traceback: crashed without a newline")
            task.cancel()
    assert output_lines(logs) == ["ready", "Traceback: crashed without a newline"]
