"""The scheduler's inbox: inputs in arrival order, and a wait that ends at the first input
or after a delay (scheduler/inbox.py)."""

from __future__ import annotations

import asyncio

from gpumux.scheduler.inbox import Inbox


async def test_inputs_come_out_in_arrival_order_without_waiting() -> None:
    inbox: Inbox[int] = Inbox()
    assert inbox.empty()
    for item in (3, 1, 2):
        inbox.put(item)
    assert await inbox.wait(None)  # something is there: no suspension, no timer
    assert [inbox.take(), inbox.take(), inbox.take()] == [3, 1, 2]
    assert inbox.empty()


async def test_a_put_ends_the_wait() -> None:
    inbox: Inbox[str] = Inbox()
    waiting = asyncio.create_task(inbox.wait(60.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put("submit")
    assert await asyncio.wait_for(waiting, 5)
    assert inbox.take() == "submit"


async def test_the_delay_ends_an_empty_wait() -> None:
    inbox: Inbox[str] = Inbox()
    assert not await asyncio.wait_for(inbox.wait(0.0), 5)
    assert not await asyncio.wait_for(inbox.wait(0.01), 5)
    inbox.put("late")  # after the wait lapsed: kept for the next one
    assert await inbox.wait(0.0)
    assert inbox.take() == "late"


async def test_a_cancelled_wait_leaves_nothing_behind() -> None:
    inbox: Inbox[str] = Inbox()
    waiting = asyncio.create_task(inbox.wait(60.0))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled()
    inbox.put("next")  # no stale waiter to resolve; the next wait sees the input
    assert await inbox.wait(None)
    assert inbox.take() == "next"
