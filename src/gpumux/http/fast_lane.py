"""The proxy port's fast lane: a connection whose requests are all of the plainest shape is
served without aiohttp's server, straight from the bytes to the proxy and back.

Owns: `FastLane`, the protocol of one proxy connection (inside the listener's
`HeadDeadline`), its `LaneState` and transition table, the request it serves, the idle
keep-alive close while it serves the connection itself, and the hand-off to aiohttp.
How: bytes that arrive while no request is under way are read by `read_simple`. One whole
request of the simple shape (`simple_request`) that the proxy admits (every check of its
own passed, a lease stood ready: `Proxy.admit`) is served here, its reply written by a
`RawDownstream`. Anything else, a request the proxy would not serve at once or bytes of
any other shape, hands the connection to aiohttp's server for good: its handler is made
then, sees the connection open, and gets every byte not yet read, unread. So aiohttp's
parser and limits judge everything the lane does not take, and a connection is never
read by both.
Does not: parse anything but that one shape, check requests (the proxy does), or time
request heads (`HeadDeadline` does, for both lanes: the lane tells it when a request's
head is complete and when the request is done, as aiohttp's middleware does).
What a client sees is the same either way: the reply's bytes are aiohttp's (downstream),
a client that leaves cancels its request (as `handler_cancellation` does), idle
connections close after `IDLE_KEEPALIVE_SECS`, and the listener's `stop` closes the
lane's connections (the daemon has drained its requests before).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Final, Protocol, cast

import structlog

from gpumux.http.downstream import RawDownstream
from gpumux.http.simple_request import Reading, SimpleRequest, read_simple

log = structlog.get_logger(__name__)

#: Bytes kept for a pipelined request while one is served, before reading pauses.
PENDING_LIMIT: Final = 64 * 1024
#: A body larger than this is read by aiohttp (the lane holds a request whole in memory).
FAST_BODY_LIMIT: Final = 1024 * 1024

Serving = Callable[[RawDownstream], Awaitable[None]]


class FastFront(Protocol):
    """What the lane serves requests with: the proxy."""

    def admit(self, request: SimpleRequest) -> Serving | None:
        """The serving of `request` now, or None: aiohttp's server shall have it."""


class Guard(Protocol):
    """The head deadline around the connection (`listener.HeadDeadline`)."""

    def request_started(self) -> None: ...

    def request_finished(self) -> None: ...

    def request_handed_back(self) -> None: ...


class LaneState(Enum):
    IDLE = "idle"  # between requests, read by the lane
    SERVING = "serving"  # a request the lane admitted is being answered
    HANDED_OFF = "handed_off"  # aiohttp's server reads everything from now on
    CLOSED = "closed"


_TRANSITIONS: Final[dict[LaneState, frozenset[LaneState]]] = {
    LaneState.IDLE: frozenset({LaneState.SERVING, LaneState.HANDED_OFF, LaneState.CLOSED}),
    LaneState.SERVING: frozenset({LaneState.IDLE, LaneState.CLOSED}),
    LaneState.HANDED_OFF: frozenset({LaneState.CLOSED}),
    LaneState.CLOSED: frozenset(),
}


class FastLane(asyncio.Protocol):
    """One proxy connection: served here while its requests are simple, then aiohttp's."""

    def __init__(
        self,
        front: FastFront,
        make_handler: Callable[[], asyncio.Protocol],
        max_body: int,
        idle_secs: float,
        lanes: set[FastLane],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._front = front
        self._make_handler = make_handler
        self._max_body = min(max_body, FAST_BODY_LIMIT)
        self._idle_secs = idle_secs
        self._lanes = lanes  # the listener's: it closes them when it stops
        self._loop = loop
        self.state = LaneState.IDLE
        self._handler: asyncio.Protocol | None = None  # aiohttp's, once handed off
        self._transport: asyncio.Transport | None = None
        self._guard: Guard | None = None
        self.peer: str | None = None
        # Bytes not yet read: a request's start, or pipelined. `bytes`, not a bytearray: the
        # usual request arrives whole, and b"" + data is data itself, never a copy.
        self._pending = b""
        self._head_told = False  # the guard heard that the pending request's head is whole
        self._task: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None  # set while writing is paused
        self._writing_paused = False
        self._reading_paused = False
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    def watched_by(self, guard: Guard) -> None:
        """The head deadline around this lane, told when heads are whole and requests done."""
        self._guard = guard

    def transition(self, target: LaneState) -> None:
        if target not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"fast lane: {self.state.value} -> {target.value} is not allowed")
        self.state = target

    # -- what RawDownstream needs -----------------------------------------------------------

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    async def drain(self) -> None:
        """Wait while writing is paused; ConnectionResetError if the client left."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Connection lost")
        if not self._writing_paused:
            return
        if self._writable is None:
            self._writable = self._loop.create_future()
        await self._writable
        if self._transport is None:  # woken by the connection's loss
            raise ConnectionResetError("Connection lost")

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._lanes.add(self)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is LaneState.HANDED_OFF:
            assert self._handler is not None
            self._handler.data_received(data)
            return
        if state is LaneState.CLOSED:
            return
        self._pending += data
        if state is LaneState.SERVING:
            if len(self._pending) > PENDING_LIMIT and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
            return
        self._read_next()

    def eof_received(self) -> bool | None:
        if self._handler is not None:
            return self._handler.eof_received()
        return None  # close, as aiohttp's handler does when a client half-closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._lanes.discard(self)
        self._cancel_idle_timer()
        handler, task = self._handler, self._task
        if self.state is not LaneState.CLOSED:
            self.transition(LaneState.CLOSED)
        self._transport = None
        self._wake_writer()
        if handler is not None:
            handler.connection_lost(exc)
        elif task is not None:
            task.cancel()  # the client left: its request ends, its backend call is closed

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()
        else:
            self._writing_paused = True

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()
        else:
            self._writing_paused = False
            self._wake_writer()

    # -- serving ----------------------------------------------------------------------------

    def close(self) -> None:
        """The listener is stopping: close the connection unless aiohttp's server has it."""
        if self._transport is not None and self._handler is None:
            self._transport.close()

    def _read_next(self) -> None:
        """Read the pending bytes while idle: serve, wait for more, or hand off."""
        read = read_simple(self._pending, self._max_body)
        if read.reading is Reading.PARTIAL:
            if read.head_complete and not self._head_told:
                self._head_told = True  # a head, whole: the deadline is met
                if self._guard is not None:
                    self._guard.request_started()
            return
        if read.request is not None:
            serving = self._front.admit(read.request)
            if serving is not None:
                self._pending = b""
                self._serve(serving)
                return
        self._hand_off()

    def _serve(self, serving: Serving) -> None:
        self.transition(LaneState.SERVING)
        if not self._head_told and self._guard is not None:
            self._guard.request_started()
        self._head_told = False
        # Its own task, as aiohttp runs each handler: a client that leaves cancels it, and
        # the context it binds (request id, model) is its own.
        downstream = RawDownstream(self)
        self._task = self._loop.create_task(self._run(serving, downstream))

    async def _run(self, serving: Serving, downstream: RawDownstream) -> None:
        try:
            await serving(downstream)
            if not downstream.begun:
                raise RuntimeError("the request ended without a reply")
            if not downstream.ended:  # a stream an error event ended, as aiohttp's write_eof
                await downstream.end(b"")
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client left; nobody to answer
        except Exception:
            # A bug: answered as aiohttp answers one (500, trace logged), and closed.
            log.exception("fast_lane_failed")
            if not downstream.begun and self._transport is not None:
                self._transport.write(_INTERNAL_ERROR)
            downstream.close_after = True
        finally:
            self._task = None
            if self._guard is not None:
                self._guard.request_finished()
            self._after(downstream)

    def _after(self, downstream: RawDownstream) -> None:
        """The request is done: close, or read what came meanwhile, or wait idle."""
        transport = self._transport
        if self.state is LaneState.CLOSED or transport is None:
            return
        if downstream.close_after or not downstream.ended or transport.is_closing():
            self.transition(LaneState.CLOSED)
            transport.close()
            return
        self.transition(LaneState.IDLE)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if self._pending:
            self._read_next()
        else:
            self._idle_since = self._loop.time()
            if self._idle_timer is None:
                self._arm_idle(self._idle_secs)

    def _hand_off(self) -> None:
        """aiohttp's server reads this connection from now on, starting with what is
        pending, unread; its handler is made now and sees the connection open."""
        self.transition(LaneState.HANDED_OFF)
        self._cancel_idle_timer()
        self._lanes.discard(self)
        if self._head_told:  # aiohttp will say so itself when it dispatches the request
            self._head_told = False
            if self._guard is not None:
                self._guard.request_handed_back()
        handler = self._handler = self._make_handler()
        handler.connection_made(self.transport)
        if self._writing_paused:
            handler.pause_writing()
        data, self._pending = self._pending, b""
        handler.data_received(data)

    # -- idle keep-alive ---------------------------------------------------------------------

    def _arm_idle(self, delay: float) -> None:
        # A fresh context: the callback must not log under a request's bound ids.
        self._idle_timer = self._loop.call_later(
            delay, self._idle_expired, context=contextvars.Context()
        )

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self.state is not LaneState.IDLE or self._pending or self._transport is None:
            return  # a request (or a head) is under way: the next idle period arms anew
        left = self._idle_since + self._idle_secs - self._loop.time()
        if left > 0:
            self._arm_idle(left)
            return
        self.transition(LaneState.CLOSED)
        self._transport.close()

    def _wake_writer(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_INTERNAL_TEXT: Final = b"500 Internal Server Error"
_INTERNAL_ERROR: Final = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_INTERNAL_TEXT), _INTERNAL_TEXT)
)
