"""The log writer: access lines written in batches, every other line at once and in order."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from gpumux.telemetry import log_writer
from gpumux.telemetry.log_writer import ACCESS_FLUSH_SECS, ACCESS_HELD_LINES, LineWriter
from gpumux.telemetry.logs import configure_logging, log_hot

pytestmark = pytest.mark.unit


class Stream(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


async def test_access_lines_leave_together_within_the_flush_time() -> None:
    stream = Stream()
    writer = LineWriter(stream)
    for n in range(3):
        writer.hold(f"access {n}")
    assert stream.writes == []  # held: nothing written yet
    await asyncio.sleep(ACCESS_FLUSH_SECS * 3)
    assert stream.writes == ["access 0\naccess 1\naccess 2\n"]  # one write for the batch
    writer.hold("access 3")  # a new batch arms a new timer
    await asyncio.sleep(ACCESS_FLUSH_SECS * 3)
    assert stream.getvalue().splitlines() == [f"access {n}" for n in range(4)]


async def test_any_other_line_writes_the_held_ones_first() -> None:
    stream = Stream()
    writer = LineWriter(stream)
    writer.hold("access 0")
    writer.hold("access 1")
    writer.warning("a warning")
    assert stream.writes == ["access 0\naccess 1\na warning\n"]
    writer.hold("access 2")
    writer.write("a stdlib line\n")  # as logging.StreamHandler writes
    assert stream.getvalue().splitlines() == [
        "access 0",
        "access 1",
        "a warning",
        "access 2",
        "a stdlib line",
    ]


async def test_a_full_batch_is_written_without_waiting() -> None:
    stream = Stream()
    writer = LineWriter(stream)
    for n in range(ACCESS_HELD_LINES):
        writer.hold(f"access {n}")
    assert len(stream.writes) == 1
    assert len(stream.getvalue().splitlines()) == ACCESS_HELD_LINES


def test_without_a_running_loop_an_access_line_is_written_at_once() -> None:
    stream = Stream()
    LineWriter(stream).hold("access")
    assert stream.writes == ["access\n"]


def test_a_timer_on_a_closed_loop_does_not_strand_lines() -> None:
    stream = Stream()
    writer = LineWriter(stream)

    async def hold(line: str) -> None:
        writer.hold(line)

    asyncio.run(hold("access 0"))  # the loop closes before its timer fires
    assert stream.writes == []

    async def hold_and_wait() -> None:
        writer.hold("access 1")
        await asyncio.sleep(ACCESS_FLUSH_SECS * 3)

    asyncio.run(hold_and_wait())
    assert stream.getvalue().splitlines() == ["access 0", "access 1"]


def test_held_lines_are_written_when_another_writer_takes_over_and_at_exit() -> None:
    first, second = Stream(), Stream()
    old, new = LineWriter(first), LineWriter(second)

    async def hold(writer: LineWriter, line: str) -> None:
        writer.hold(line)

    log_writer.install(old)
    asyncio.run(hold(old, "access 0"))
    log_writer.install(new)
    assert first.getvalue() == "access 0\n"
    asyncio.run(hold(new, "access 1"))
    log_writer._flush_at_exit()  # what atexit runs
    assert second.getvalue() == "access 1\n"


async def test_the_daemons_streams_keep_the_order_lines_were_logged_in(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json")
    structlog.contextvars.bind_contextvars(request_id="r1")
    log_hot(structlog.get_logger(), "request_finished", endpoint="/v1/completions", status=200)
    logging.getLogger("aiohttp.server").warning("from the standard library")
    log_hot(structlog.get_logger(), "request_finished", endpoint="/v1/completions", status=201)
    structlog.get_logger("gpumux.x").info("state_changed", model="m")
    log_hot(structlog.get_logger(), "request_finished", endpoint="/v1/completions", status=202)
    await asyncio.sleep(ACCESS_FLUSH_SECS * 3)
    lines = capsys.readouterr().err.splitlines()
    assert ['"status": 200' in lines[0], "from the standard library" in lines[1]] == [True] * 2
    assert ['"status": 201' in lines[2], "state_changed" in lines[3]] == [True] * 2
    assert '"status": 202' in lines[4]
    assert len(lines) == 5
