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
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from gpumux.backends.http1_framing import ChunkedScanner, ResponseHead, decode_chunks

#: Past this many bytes queued for a slow client, reading from the backend pauses.
CLIENT_BUFFER_LIMIT: Final = 64 * 1024


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
    ) -> None:
        """Pass the body on as it arrives.

        With a `sink` (the client's transport, whose response is chunked too) a chunked
        body goes straight to it, whole chunks as they came, without the last chunk (the
        caller's `write_eof` writes one); `drain` waits while the client is slow. Without
        one, or for a body that is not chunked, the payload goes through `write`. Raises
        `UpstreamError`, or `ClientGone`; `unsent_payload()` then holds what a chunk that
        never finished had brought.
        """
        exchange = self._exchange
        if sink is None or exchange.scanner is None:
            await self._relay_through(write, on_first_bytes)
            return
        exchange.start_relay(sink, on_first_bytes)
        while True:
            if exchange.sink_full and not exchange.done:
                self._connection.pause_reading()
                await drain()
                exchange.sink_full = False
                self._connection.resume_reading()
            elif exchange.done:
                exchange.raise_failure()
                return
            else:
                await exchange.wait()

    def unsent_payload(self) -> bytes:
        scanner = self._exchange.scanner
        return scanner.held_payload() if scanner is not None else b""

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
            data, exchange.received = b"".join(exchange.received), []
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
        "done",
        "failure",
        "first",
        "length_left",
        "on_first",
        "received",
        "scanner",
        "sink",
        "sink_full",
        "waiter",
    )

    def __init__(self, head: ResponseHead) -> None:
        self.scanner = ChunkedScanner() if head.chunked else None
        self.length_left = head.length  # None: until the connection closes (or chunked)
        self.received: list[bytes] = []
        self.sink: asyncio.Transport | None = None
        self.on_first: Callable[[], None] | None = None
        self.first = True
        self.sink_full = False
        self.done = head.bodiless or head.length == 0
        self.failure: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def start_relay(self, sink: asyncio.Transport, on_first: Callable[[], None]) -> None:
        self.sink, self.on_first = sink, on_first
        held, self.received = b"".join(self.received), []
        if held:  # chunks that came with the head (already scanned: whole ones only)
            self.forward(held)

    def forward(self, chunks: bytes) -> None:
        sink = self.sink
        assert sink is not None
        if sink.is_closing():
            raise ClientGone("the client left")
        sink.write(chunks)
        if self.first:
            self.first = False
            assert self.on_first is not None
            self.on_first()
        if sink.get_write_buffer_size() > CLIENT_BUFFER_LIMIT:
            self.sink_full = True

    def finish(self, failure: BaseException | None = None) -> None:
        if not self.done:
            self.done, self.failure = True, failure
        self.wake()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure
