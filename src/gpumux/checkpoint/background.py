"""Background tasks an image owner starts and must cancel when it closes.

Owns: a set of running tasks (each forgotten when it ends), `spawn` and `close` (cancel
every task still running and wait for all of them to finish).
Does not: decide what runs in the background (the catalog and the verifier do) or log a
task's failure (each task reports its own outcome).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task `close` cancels; kept referenced while it runs (the loop holds only
        weak references to tasks)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
