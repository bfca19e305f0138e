"""One reply from a backend, as `backends.http1` reads it: its head, and its body read whole
or relayed to a client as it arrives.

Owns: the errors an exchange ends with, `Exchange` (one reply's body as it arrives on a
connection: whole chunks passed straight to the client's transport from the read
callback, or kept for a reader; when it is done, and how it failed) and `Reply`, what the
proxy holds (`read`, `relay`, `unsent_payload`, `close`).
Does not: own connections or sockets (`http1._Connection` feeds an `Exchange` and obeys
`ReadControl`), or parse bytes (`http1_framing` does).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from gpumux.backends.http1_framing import ChunkedScanner, ResponseHead, decode_chunks

#: Past this many bytes queued for a slow client, reading from the backend pauses.
CLIENT_BUFFER_LIMIT: Final = 64 * 1024
#: Chunks kept after they went straight to the client (the last usually carry `usage`).
RECENT_CHUNKS: Final = 4


class UpstreamError(Exception):
    """The exchange with the backend failed."""


class UpstreamUnreachable(UpstreamError):
    """No connection to the backend could be opened."""


class UpstreamStalled(UpstreamError, TimeoutError):
    """Nothing came from the backend for the idle timeout (or the connect timeout)."""


class UpstreamClosed(UpstreamError):
    """The backend closed the connection before its reply was complete."""

    def __init__(self, message: str, *, before_reply: bool) -> None:
        super().__init__(message)
        self.before_reply = before_reply  # not one byte of a reply had arrived


class UpstreamMalformed(UpstreamError):
    """The backend's reply is not well-formed HTTP/1.1."""


class ClientGone(ConnectionResetError):
    """The client's connection closed while its reply was being relayed."""


class ReadControl(Protocol):
    """What a reply may ask of the connection it arrives on."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


class Reply:
    """The backend's reply to one request: its head, and its body to read or relay."""

    def __init__(self, connection: ReadControl, exchange: Exchange, head: ResponseHead) -> None:
        self._connection = connection
        self._exchange = exchange
        self.status = head.status
        self.headers = head.headers
        self._tail = b""  # what `relay` returned for write_eof: not yet sent

    async def read(self) -> bytes:
        """The whole body (chunked framing removed)."""
        exchange = self._exchange
        while not exchange.done:
            await exchange.wait()
        exchange.raise_failure()
        raw = b"".join(exchange.received)
        return decode_chunks(raw) if exchange.scanner is not None else raw

    @property
    def chunked(self) -> bool:
        return self._exchange.scanner is not None

    async def relay(
        self,
        sink: asyncio.Transport | None,
        drain: Callable[[], Awaitable[None]],
        write: Callable[[bytes], Awaitable[None]],
        on_first_bytes: Callable[[], None],
    ) -> bytes:
        """Pass the body on as it arrives; returns the payload to end the reply with (give
        it to `write_eof`, which adds the last chunk to it in the same write).

        With a `sink` (the client's transport, whose response is chunked too) a chunked
        body goes out as whole chunks: the first ones through `write` (so the response
        head can leave with them), the ones after straight to `sink` as they came, except
        those that came with the body's end. `drain` waits while the client is slow.
        Without a sink, or for a body that is not chunked, it all goes through `write`.
        Raises `UpstreamError`, or `ClientGone`; `unsent_payload()` then holds what
        arrived and was not passed on.
        """
        exchange = self._exchange
        if sink is None or exchange.scanner is None:
            await self._relay_through(write, on_first_bytes)
            return b""
        while not exchange.received and not exchange.done:
            await exchange.wait()
        if not exchange.done:
            on_first_bytes()
            await write(decode_chunks(exchange.take_received()))
            exchange.go_direct(sink)
        while not exchange.done:
            if exchange.sink_full:
                self._connection.pause_reading()
                await drain()
                exchange.sink_full = False
                self._connection.resume_reading()
            else:
                await exchange.wait()
        exchange.raise_failure()
        tail = self._tail = decode_chunks(exchange.take_received())
        if tail and exchange.sink is None:
            on_first_bytes()  # the whole body came at once: it all leaves with write_eof
        return tail

    def delivered(self) -> bool:
        """The body ended cleanly and every chunk of it went straight to the client: only
        the last chunk (`write_eof`'s) is left to send."""
        exchange = self._exchange
        return (
            exchange.done
            and exchange.failure is None
            and exchange.sink is not None
            and not exchange.received
            and not self._tail
        )

    def recent_chunks(self) -> tuple[bytes, ...]:
        """The last chunks that went straight to the client (empty when none did)."""
        return tuple(self._exchange.recent)

    def unsent_payload(self) -> bytes:
        """After a failure: the payload that arrived and was not passed on."""
        exchange = self._exchange
        kept = b"".join(exchange.received)
        if exchange.scanner is None:
            return kept
        return decode_chunks(kept) + exchange.scanner.held_payload()

    def close(self) -> None:
        """Abandon the reply: its connection closes unless the body had already ended."""
        if not self._exchange.done or self._exchange.failure is not None:
            self._connection.close()

    async def _relay_through(
        self, write: Callable[[bytes], Awaitable[None]], on_first_bytes: Callable[[], None]
    ) -> None:
        exchange, first = self._exchange, True
        while True:
            while not exchange.received and not exchange.done:
                await exchange.wait()
            data = exchange.take_received()
            if exchange.scanner is not None:
                data = decode_chunks(data)
            if data:
                if first:
                    on_first_bytes()
                    first = False
                await write(data)
            elif exchange.done:
                exchange.raise_failure()
                return


class Exchange:
    """One request's reply as it arrives on a connection."""

    __slots__ = (
        "_loop",
        "done",
        "failure",
        "length_left",
        "received",
        "recent",
        "scanner",
        "sink",
        "sink_full",
        "waiter",
    )

    def __init__(self, head: ResponseHead, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop  # the connection's: no get_running_loop() (a syscall) per wait
        self.scanner = ChunkedScanner() if head.chunked else None
        self.length_left = head.length  # None: until the connection closes (or chunked)
        self.received: list[bytes] = []
        # The last chunks sent straight to the client (framing included): the proxy reads
        # `usage` out of them for its request log, as it does from the chunks it writes.
        self.recent: deque[bytes] = deque(maxlen=RECENT_CHUNKS)
        self.sink: asyncio.Transport | None = None  # set once chunks go straight out
        self.sink_full = False
        self.done = head.bodiless or head.length == 0
        self.failure: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        self.waiter = self._loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_received(self) -> bytes:
        data, self.received = b"".join(self.received), []
        return data

    def go_direct(self, sink: asyncio.Transport) -> None:
        """From now on whole chunks go straight to `sink`, those kept meanwhile first."""
        self.sink = sink
        kept = self.take_received()
        if kept:
            self.forward(kept)

    def forward(self, chunks: bytes) -> None:
        sink = self.sink
        assert sink is not None
        if sink.is_closing():
            raise ClientGone("the client left")
        sink.write(chunks)
        self.recent.append(chunks)
        if sink.get_write_buffer_size() > CLIENT_BUFFER_LIMIT:
            self.sink_full = True

    def finish(self, failure: BaseException | None = None) -> None:
        if not self.done:
            self.done, self.failure = True, failure
        self.wake()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure
