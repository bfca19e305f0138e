"""Forwarding one request to a backend over HTTP/1.1, and relaying its reply byte for byte.

Owns: `ForwardPool`, kept-alive connections to the backends' ports (one pool per model,
held by `UpstreamPools` so a CRIU dump can close one model's), and each connection:
sending a request head and body in one write, reading the reply's head (1xx skipped),
feeding its body to the reply's `Exchange` (`http1_reply`), the per-exchange timeouts
(connect; idle: no byte from the backend for that long, not counted while a slow client
holds reading paused), and one retry on a fresh connection when a pooled one turns out
closed before any reply byte.
Does not: choose what to forward (the proxy builds the head), know about leases, SSE or
OpenAI errors, or speak anything but HTTP/1.1 to loopback backends.

Why not aiohttp's client (which the proxy used before): for a streamed reply it decodes
every chunk, feeds a StreamReader, wakes the relaying task, re-times the read timeout,
and aiohttp's server then re-encodes the chunk, for every chunk. Here a chunked reply
goes out as it came in: each read from the backend is scanned for chunk boundaries and
its whole chunks are written to the client's transport from the read callback itself —
no task switch, no copy in the common case — which took about half of the user CPU out
of gpumux's cost per streamed request (bench/compare.py). The bytes written are exactly
the backend's chunks; aiohttp's own writer, which believes it is chunking, adds only the
last chunk at `write_eof`.

Each connection's lifecycle is `ConnState` with one guarded `_transition`: IDLE (pooled,
nothing outstanding) → WAITING (request sent, reading the head) → BODY → IDLE again
when the body ended cleanly on a kept-alive connection, else CLOSED.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Final

from gpumux.backends.http1_framing import (
    MAX_HEAD_BYTES,
    FramingError,
    ResponseHead,
    head_end,
    parse_head,
)
from gpumux.backends.http1_reply import (
    ClientGone,
    Exchange,
    Reply,
    UpstreamClosed,
    UpstreamMalformed,
    UpstreamStalled,
    UpstreamUnreachable,
)

HOST: Final = "127.0.0.1"


class ConnState(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    BODY = "body"
    CLOSED = "closed"


_TRANSITIONS: Final = {
    ConnState.IDLE: frozenset({ConnState.WAITING, ConnState.CLOSED}),
    ConnState.WAITING: frozenset({ConnState.BODY, ConnState.CLOSED}),
    ConnState.BODY: frozenset({ConnState.IDLE, ConnState.CLOSED}),
    ConnState.CLOSED: frozenset(),
}


class ForwardPool:
    """Kept-alive connections to one model's backend (any port it has had)."""

    def __init__(self, *, keepalive_secs: float) -> None:
        self._keepalive_secs = keepalive_secs
        self._idle: list[_Connection] = []
        self._closed = False

    async def send(
        self,
        port: int,
        request: bytes,
        *,
        connect_timeout: float | None,
        idle_timeout: float | None,
    ) -> Reply:
        """Send `request` (head and body) and wait for the reply's head."""
        if self._closed:
            raise UpstreamClosed("the backend's connections were dropped", before_reply=True)
        for attempt in (1, 2):
            pooled = self._take_idle(port) if attempt == 1 else None
            connection = pooled or await self._connect(port, connect_timeout)
            try:
                return await connection.exchange(request, idle_timeout)
            except UpstreamClosed as exc:
                # A pooled connection the backend had closed: nothing was exchanged.
                if attempt == 2 or not exc.before_reply:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every idle connection now, and each busy one when its exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _take_idle(self, port: int) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            # The connection's own loop: asyncio.get_running_loop() is a getpid() syscall
            # on Python 3.11, on every request.
            fresh = connection.idle_for() < self._keepalive_secs
            if fresh and connection.port == port and connection.state is ConnState.IDLE:
                return connection
            connection.close()
        return None

    async def _connect(self, port: int, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, port), HOST, port
                )
        except TimeoutError as exc:
            raise UpstreamStalled(f"connect to port {port} timed out") from exc
        except OSError as exc:
            raise UpstreamUnreachable(f"cannot connect to port {port}: {exc}") from exc
        return connection

    def _give_back(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
        else:
            self._idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: ForwardPool, port: int) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()  # made by create_connection, on the loop
        self.port = port
        self.state = ConnState.IDLE
        self.idle_since = 0.0
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._head_ready: asyncio.Future[tuple[ResponseHead, Exchange]] | None = None
        self._exchange: Exchange | None = None
        self._idle_timeout: float | None = None
        self._last_received = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._received_any = False
        self._keep_alive = False

    # ---- the exchange, as the pool and the reply drive it --------------------------------

    async def exchange(self, request: bytes, idle_timeout: float | None) -> Reply:
        transport = self._transport
        if transport is None or transport.is_closing() or self.state is not ConnState.IDLE:
            raise UpstreamClosed("pooled connection already closed", before_reply=True)
        loop = self._loop
        self._transition(ConnState.WAITING)
        self._exchange = None
        self._head_ready = loop.create_future()
        self._received_any = False
        self._idle_timeout = idle_timeout
        self._last_received = loop.time()
        if self._timer is None:  # else the last exchange's timer re-arms for what is left
            self._arm(idle_timeout)
        transport.write(request)
        head, exchange = await self._head_ready
        return Reply(self, exchange, head)

    def idle_for(self) -> float:
        """Seconds since this connection went back to the pool."""
        return self._loop.time() - self.idle_since

    def pause_reading(self) -> None:
        """Stop reading for a slow client; the idle timeout is off meanwhile (the backend
        is not the one that is quiet)."""
        if self._transport is not None and self.state is ConnState.BODY:
            self._transport.pause_reading()
            self._disarm()

    def resume_reading(self) -> None:
        if self._transport is not None and self.state is ConnState.BODY:
            self._transport.resume_reading()
            self._last_received = self._loop.time()
            self._arm(self._idle_timeout)

    def close(self) -> None:
        if self.state is not ConnState.CLOSED:
            self._transition(ConnState.CLOSED)
        self._disarm()
        self._pool._forget(self)
        if self._transport is not None:
            self._transport.close()

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        self._received_any = True
        if self._idle_timeout is not None:
            self._last_received = self._loop.time()
        try:
            if self.state is ConnState.WAITING:
                self._head_received(data)
            elif self.state is ConnState.BODY:
                self._body_received(data)
            else:  # bytes nobody asked for: this connection cannot be trusted again
                self.close()
        except FramingError as exc:
            self._fail(UpstreamMalformed(str(exc)))
        except ClientGone as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.state is ConnState.WAITING:
            nothing = not self._received_any
            self._fail(UpstreamClosed("backend closed the connection", before_reply=nothing))
        elif self.state is ConnState.BODY:
            exchange = self._exchange
            assert exchange is not None
            if exchange.length_left is None and exchange.scanner is None:
                self.close()
                exchange.finish()  # a body that ends with the connection: it ended
            else:
                self._fail(UpstreamClosed("backend closed mid-reply", before_reply=False))
        else:
            self.close()

    # ---- inside ---------------------------------------------------------------------------

    def _head_received(self, data: bytes) -> None:
        self._head += data
        end = head_end(self._head)
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                raise FramingError("reply head too large")
            return
        raw, rest = bytes(self._head[:end]), bytes(self._head[end:])
        self._head = bytearray()
        head = parse_head(raw)
        if head.interim:  # 100 Continue and the like: the real head follows
            if rest:
                self._head_received(rest)
            return
        self._keep_alive = head.keep_alive
        exchange = self._exchange = Exchange(head, self._loop)
        self._transition(ConnState.BODY)
        assert self._head_ready is not None
        if not self._head_ready.done():
            self._head_ready.set_result((head, exchange))
        if exchange.done:
            self._body_ended(rest)
        elif rest:
            self._body_received(rest)

    def _body_received(self, data: bytes) -> None:
        exchange = self._exchange
        assert exchange is not None
        scanner = exchange.scanner
        if scanner is not None:
            chunks = scanner.feed(data)
            if scanner.finished:  # these leave with the reply's end, in one write
                if chunks:
                    exchange.received.append(chunks)
                self._body_ended(scanner.trailing)
            elif chunks and exchange.sink is not None:
                exchange.forward(chunks)
                if exchange.sink_full:
                    self.pause_reading()
                    exchange.wake()
            elif chunks:
                exchange.received.append(chunks)
                exchange.wake()
            return
        left = exchange.length_left
        if left is not None and len(data) >= left:
            exchange.received.append(data[:left])
            exchange.length_left = 0
            self._body_ended(data[left:])
            return
        if left is not None:
            exchange.length_left = left - len(data)
        exchange.received.append(data)
        exchange.wake()

    def _body_ended(self, trailing: bytes) -> None:
        exchange = self._exchange
        assert exchange is not None
        if self._keep_alive and not trailing and self._transport is not None:
            # The timer stays: it lapses if it fires while the connection is pooled, or
            # serves the next exchange (one timer per quiet period, not one per request).
            self._transition(ConnState.IDLE)
            self.idle_since = self._loop.time()
            self._idle_timeout = None
            self._pool._give_back(self)
        else:
            self.close()
        exchange.finish()

    def _fail(self, failure: BaseException) -> None:
        head_ready, exchange = self._head_ready, self._exchange
        self.close()
        if head_ready is not None and not head_ready.done():
            head_ready.set_exception(failure)
        elif exchange is not None:
            exchange.finish(failure)

    def _transition(self, to: ConnState) -> None:
        if to not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"connection cannot go from {self.state.value} to {to.value}")
        self.state = to

    # ---- idle timeout: one timer per quiet period, not one per read or per exchange --------

    def _arm(self, delay: float | None) -> None:
        self._disarm()
        if delay is not None:
            self._timer = self._loop.call_later(delay, self._check_idle)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        self._timer = None
        timeout = self._idle_timeout
        if timeout is None or self.state not in (ConnState.WAITING, ConnState.BODY):
            return  # pooled (or closed): the next exchange arms a timer of its own
        quiet = self._loop.time() - self._last_received
        if quiet < timeout:
            self._arm(timeout - quiet)
            return
        self._fail(UpstreamStalled(f"nothing from the backend for {timeout:g}s"))
