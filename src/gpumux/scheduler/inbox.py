"""The scheduler's inbox: the typed inputs other components send it, in arrival order.

Owns: the inputs not yet handled, and the one wait the scheduler task makes on them,
which ends at the first input or after a delay (the core's next deadline), whichever
comes first.
Does not: read or order inputs by meaning (the runner hands them to the core as they
came), or run anything.

Why not `asyncio.Queue` under `asyncio.timeout`: the owner task waits here about twice
per proxied request (a Submit, a Release), and the queue's getter bookkeeping, its loop
lookup (a getpid() syscall on Python 3.11) and a `Timeout` context per wait were a
measurable part of the proxy's CPU per streamed request (bench/compare.py). This is one
deque, one future and one timer per wait. Loop-thread only, as asyncio.Queue is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the first waiter's

    def put(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def take(self) -> T:
        """The oldest input; call only when not `empty()`."""
        return self._items.popleft()

    async def wait(self, delay: float | None) -> bool:
        """Until an input is there (True) or `delay` seconds have passed first (False);
        `None` waits for an input however long it takes."""
        if self._items:
            return True
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if delay is None else loop.call_later(delay, _lapse, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return bool(self._items)


def _lapse(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
