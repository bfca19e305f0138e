"""The client's side of one forwarded reply: where the proxy writes what a backend answered.

Owns: `Downstream`, what the proxy's forward and relay write through (a whole reply; a
streamed one's head, payload, end; the transport whole chunks may go straight to; the
wait for a slow client), and its two forms: `AiohttpDownstream`, aiohttp's response
objects for a request aiohttp's server read (the handler returns `response`), and
`RawDownstream`, HTTP/1.1 written straight to a connection for a request the fast lane
read (`fast_lane`), as aiohttp would have written it: the same status line, the headers
given plus `Content-Length` or `Transfer-Encoding: chunked`, `Date` and `Server`, and the
same chunk framing (one chunk per write; the last payload and the last chunk together).
Does not: decide what to write (the proxy does), read requests, or own connections.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Final, Protocol

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE

#: Past this many bytes buffered for the client, a write waits for it to read.
WRITE_BUFFER_LIMIT: Final = 64 * 1024
_REASONS: Final = {status.value: status.phrase for status in HTTPStatus}
#: Replies that never have a body: no length, no chunks.
_BODILESS: Final = frozenset({204, 304})


class Downstream(Protocol):
    """Where one forwarded reply goes."""

    @property
    def begun(self) -> bool:
        """A 200 head is committed (a streamed reply began): no other status can follow."""

    @property
    def status(self) -> int:
        """The status of the reply written (0 before one began)."""

    async def whole(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """A reply with its whole body."""

    async def begin(self, status: int, headers: dict[str, str]) -> None:
        """A streamed reply's head; it leaves with the first payload written."""

    def sink(self) -> asyncio.Transport | None:
        """The transport whole chunks (framing included) may be written to as they are,
        once the first payload went through `write`; None: payload goes through `write`."""

    async def drain(self) -> None:
        """Wait while the client reads slower than the reply comes."""

    async def write(self, payload: bytes) -> None:
        """Payload of a streamed reply, framed as the reply needs."""

    async def end(self, payload: bytes) -> None:
        """The last payload of a streamed reply, and its end, in one write."""


class AiohttpDownstream:
    """A reply through aiohttp's response objects, for the request aiohttp's server read;
    into `prepared` where loading feedback began the stream already."""

    def __init__(self, request: web.BaseRequest, prepared: web.StreamResponse | None) -> None:
        self._request = request
        self._prepared = prepared is not None
        self.response: web.StreamResponse | None = prepared

    @property
    def begun(self) -> bool:
        return self.response is not None

    @property
    def status(self) -> int:
        return 0 if self.response is None else self.response.status

    async def whole(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.response = web.Response(status=status, body=body, headers=headers)

    async def begin(self, status: int, headers: dict[str, str]) -> None:
        response = self.response = _HeadWithFirstChunk(status=status, headers=headers)
        await response.prepare(self._request)

    def sink(self) -> asyncio.Transport | None:
        # When aiohttp chunks this response too (an HTTP/1.1 client), the backend's chunks
        # can go out as they came. A response loading feedback began has had aiohttp's own
        # writes: it keeps to them.
        response = self.response
        assert response is not None
        chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
        return self._request.transport if chunked and not self._prepared else None

    async def drain(self) -> None:
        await self._request.writer.drain()

    async def write(self, payload: bytes) -> None:
        assert self.response is not None
        await self.response.write(payload)

    async def end(self, payload: bytes) -> None:
        assert self.response is not None
        await self.response.write_eof(payload)


class _HeadWithFirstChunk(web.StreamResponse):
    """A stream whose head leaves with its first body bytes, in one write, as aiohttp's
    `web.Response` does (a `StreamResponse` sends it at `prepare`). Should aiohttp drop
    this switch, the head goes out at `prepare` again: still correct, one write more."""

    _send_headers_immediately = False


class Connection(Protocol):
    """What `RawDownstream` needs of the connection it writes to."""

    @property
    def transport(self) -> asyncio.Transport: ...

    @property
    def peer(self) -> str | None:
        """The client's address, as aiohttp's `request.remote` says it."""

    async def drain(self) -> None: ...


class RawDownstream:
    """A reply written as HTTP/1.1 straight to a fast-lane connection."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._transport = connection.transport
        self.peer = connection.peer
        self._head = b""  # a streamed reply's head, until its first payload goes out
        self._status = 0
        self.ended = False
        self.close_after = False  # the reply said `Connection: close`

    @property
    def begun(self) -> bool:
        return self._status != 0

    @property
    def status(self) -> int:
        return self._status

    async def whole(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self._status, self.ended = status, True
        self._transport.write(self._head_bytes(status, headers, f"{len(body)}") + body)
        await self._wait_if_full()

    async def answer(self, response: web.Response) -> None:
        """A reply aiohttp's `web.Response` describes (an error in the API's shape)."""
        body = response.body
        assert isinstance(body, bytes)  # json_response's: its text, encoded
        headers = dict(response.headers)
        self.close_after = headers.get("Connection", "").lower() == "close"
        await self.whole(response.status, headers, body)

    async def begin(self, status: int, headers: dict[str, str]) -> None:
        self._status = status
        self._head = self._head_bytes(status, headers, None)

    def sink(self) -> asyncio.Transport:
        return self._transport

    async def drain(self) -> None:
        await self._connection.drain()

    async def write(self, payload: bytes) -> None:
        if not payload:
            return
        head, self._head = self._head, b""
        self._transport.write(b"%s%x\r\n%s\r\n" % (head, len(payload), payload))
        await self._wait_if_full()

    async def end(self, payload: bytes) -> None:
        head, self._head = self._head, b""
        self.ended = True
        if payload:
            self._transport.write(b"%s%x\r\n%s\r\n0\r\n\r\n" % (head, len(payload), payload))
        else:
            self._transport.write(head + b"0\r\n\r\n")

    async def _wait_if_full(self) -> None:
        if self._transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            await self._connection.drain()

    @staticmethod
    def _head_bytes(status: int, headers: dict[str, str], length: str | None) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if status in _BODILESS:  # as aiohttp: neither a length nor chunks (RFC 9110 §8.6)
            pass
        elif length is None:
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            lines.append(f"Content-Length: {length}\r\n")
        typed = any(name.lower() == "content-type" for name in headers)
        if not typed and length != "0" and status not in _BODILESS:
            lines.append("Content-Type: application/octet-stream\r\n")
        # The Date aiohttp writes, from the same once-a-second cache.
        lines.append(f"Date: {rfc822_formatted_time()}\r\nServer: {SERVER_SOFTWARE}\r\n\r\n")
        # Header values came from the backend's head, decoded as surrogate escapes: they go
        # back out byte for byte, as aiohttp's writer sends them.
        return "".join(lines).encode("utf-8", "surrogateescape")
