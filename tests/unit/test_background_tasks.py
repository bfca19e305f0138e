"""An image owner's background tasks: kept while they run, all cancelled on close."""

from __future__ import annotations

import asyncio

import pytest

from gpumux.checkpoint.background import BackgroundTasks

pytestmark = pytest.mark.unit


async def test_close_cancels_what_still_runs_and_a_finished_task_keeps_its_result() -> None:
    tasks = BackgroundTasks()
    never = asyncio.Event()
    hanging = tasks.spawn(never.wait())
    done = tasks.spawn(asyncio.sleep(0, result="ok"))
    assert await done == "ok"
    await tasks.close()
    assert hanging.cancelled()
    assert done.result() == "ok"


async def test_a_task_that_failed_does_not_make_close_raise() -> None:
    tasks = BackgroundTasks()

    async def fail() -> None:
        raise RuntimeError("upload failed")

    failed = tasks.spawn(fail())
    await asyncio.wait([failed])
    await tasks.close()
    assert isinstance(failed.exception(), RuntimeError)
