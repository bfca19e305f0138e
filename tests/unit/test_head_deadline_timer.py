"""`HeadDeadline`'s one timer per quiet period, on a clock the test moves: a head that
starts while the timer of an earlier period is pending is timed from its own first byte
(never spared, never cut early); heads in time and idle kept-alive connections are left
alone; a request in progress is never timed."""

from __future__ import annotations

import asyncio
import contextvars
import heapq
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from gpumux.http.listener import HeadDeadline

TIMEOUT = 10.0


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class Clock:
    """The two loop methods `HeadDeadline` uses, with time moved by `advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Timer] = []
        self.armed = 0

    def time(self) -> float:
        return self.now

    def call_later(
        self, delay: float, callback: Callable[[], None], *, context: contextvars.Context
    ) -> Timer:
        self.armed += 1
        timer = Timer(self.now + delay, callback)
        heapq.heappush(self.timers, timer)
        return timer

    def advance(self, secs: float) -> None:
        until = self.now + secs
        while self.timers and self.timers[0].when <= until:
            timer = heapq.heappop(self.timers)
            self.now = timer.when
            if not timer.cancelled:
                timer.callback()
        self.now = until


class Inner:
    """Stands in for aiohttp's handler: records what reached it."""

    def __init__(self) -> None:
        self.received = b""

    def connection_made(self, transport: Any) -> None:
        return None

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        return None


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5) if name == "peername" else default


def connection(clock: Clock) -> tuple[HeadDeadline, Transport, Inner]:
    inner, transport = Inner(), Transport()
    loop = cast(asyncio.AbstractEventLoop, clock)
    guard = HeadDeadline(cast(web.RequestHandler, inner), TIMEOUT, loop)
    guard.connection_made(transport)
    return guard, transport, inner


def closed(transport: Transport) -> bool:
    return transport.closed


def serve_one(guard: HeadDeadline) -> None:
    guard.data_received(b"POST / HTTP/1.1\r\n\r\n")
    guard.request_started()
    guard.request_finished()


def test_a_head_begun_under_an_earlier_timer_gets_its_own_full_time() -> None:
    clock = Clock()
    guard, transport, inner = connection(clock)
    clock.advance(1)
    serve_one(guard)
    clock.advance(4)
    guard.data_received(b"POST / HT")  # at 5 s, under the timer armed at 0 s
    clock.advance(9)  # 14 s: that timer fired at 10 s and re-armed for 15 s
    assert not closed(transport)
    clock.advance(1)
    assert closed(transport)  # 10 s after the head's first byte
    assert inner.received == b"POST / HTTP/1.1\r\n\r\nPOST / HT"


def test_heads_in_time_requests_and_idle_keepalive_are_left_alone() -> None:
    clock = Clock()
    guard, transport, _ = connection(clock)
    for _ in range(3):
        guard.data_received(b"POST / HTTP/1.1\r\n\r\n")
        guard.request_started()
        clock.advance(TIMEOUT * 2)  # a request longer than the deadline is never timed
        guard.request_finished()
    armed = clock.armed
    for _ in range(50):  # quick requests: one timer serves them all
        serve_one(guard)
        clock.advance(TIMEOUT / 100)
    assert clock.armed - armed <= 1
    clock.advance(TIMEOUT * 10)  # idle after a request: left to keep-alive
    assert not transport.closed


def test_a_connection_that_never_sends_a_byte_is_closed() -> None:
    clock = Clock()
    _, transport, _ = connection(clock)
    clock.advance(TIMEOUT)
    assert transport.closed
