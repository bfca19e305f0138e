"""Waiting for a condition with a deadline: the one polling loop every test uses.

Owns: `wait_until` (blocking, for tests that drive subprocesses from plain threads) and
`wait_until_async` (for tests on an event loop, which must not block it). Both poll a
predicate until it returns something truthy and fail with what was awaited once the
deadline passes; both return the truthy value, so a wait can also fetch.
Does not: retry anything. A wait is for a condition that has no signal of its own (a
process's exit seen through /proc, a line in a log); it never hides a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Long enough for a loaded 2-core machine; a condition that takes longer is a failure.
DEFAULT_TIMEOUT_SECS = 10.0


def wait_until(
    predicate: Callable[[], T],
    what: str = "condition",
    *,
    timeout: float = DEFAULT_TIMEOUT_SECS,
    interval: float = 0.05,
) -> T:
    """Poll `predicate` until it returns something truthy (returned), within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T],
    what: str = "condition",
    *,
    timeout: float = DEFAULT_TIMEOUT_SECS,
    interval: float = 0.02,
) -> T:
    """`wait_until` for a test on an event loop: sleeps with asyncio between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)
