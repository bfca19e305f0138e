"""The proxy's forwarding client against a scripted backend on loopback: keep-alive, whole
and relayed bodies, stale connections, a backend that dies or stalls, a slow client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from gpumux.backends.http1 import ForwardPool
from gpumux.backends.http1_reply import (
    ClientGone,
    Reply,
    UpstreamClosed,
    UpstreamMalformed,
    UpstreamStalled,
    UpstreamUnreachable,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
EVENTS = [b"data: a\n\n", b"data: bb\n\n", b"data: [DONE]\n\n"]
FRAMES = [b"%x\r\n%s\r\n" % (len(e), e) for e in EVENTS]
LAST = b"0\r\n\r\n"

#: A step of a scripted reply: bytes to send, a pause in seconds, or "close".
Step = bytes | float | str


@dataclass
class Backend:
    """Answers each request on a connection with the next script in `replies`."""

    replies: list[list[Step]]
    port: int = field(default_factory=free_port)
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                for step in self.replies.pop(0):
                    if step == "close":
                        writer.close()
                        return
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    elif isinstance(step, bytes):
                        writer.write(step)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the test is over, or the client closed
        finally:
            writer.close()


@asynccontextmanager
async def serving(*replies: Sequence[Step]) -> AsyncIterator[Backend]:
    backend = Backend([list(r) for r in replies])
    server = await asyncio.start_server(backend.handle, "127.0.0.1", backend.port)
    try:
        yield backend
    finally:
        server.close()


class FakeSink(asyncio.Transport):
    """A client transport that records what it was given; `full` fakes a slow reader."""

    def __init__(self) -> None:
        super().__init__()
        self.data = b""
        self.closing = False
        self.full = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 1 << 20 if self.full else 0


async def send(pool: ForwardPool, backend: Backend, idle: float | None = 5.0) -> Reply:
    return await pool.send(backend.port, REQUEST, connect_timeout=5.0, idle_timeout=idle)


@dataclass
class Relayed:
    written: list[bytes] = field(default_factory=list)  # through the response's writer
    firsts: int = 0  # on_first_bytes calls
    tail: bytes = b""  # for write_eof


async def relay_into(reply: Reply, sink: FakeSink, relayed: Relayed | None = None) -> Relayed:
    out = relayed or Relayed()

    async def write(data: bytes) -> None:
        out.written.append(data)

    async def no_wait() -> None:
        return None

    def first() -> None:
        out.firsts += 1

    out.tail = await reply.relay(sink, no_wait, write, first)
    return out


async def test_whole_bodies_are_read_and_the_connection_is_kept() -> None:
    json_reply = [b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"a":1}']
    chunked_reply = [STREAM_HEAD, *FRAMES, LAST]
    async with serving(json_reply, chunked_reply, json_reply) as backend:
        pool = ForwardPool(keepalive_secs=4.0)
        reply = await send(pool, backend)
        assert (reply.status, await reply.read()) == (200, b'{"a":1}')
        reply.close()  # after the end: a no-op, the connection is pooled again
        reply = await send(pool, backend)
        assert await reply.read() == b"".join(EVENTS)
        reply = await send(pool, backend)
        assert await reply.read() == b'{"a":1}'
        assert backend.connections == 1
        assert backend.requests == [REQUEST] * 3
        pool.close()


async def test_a_chunked_reply_is_relayed_as_its_chunks() -> None:
    """The first chunks go through the writer (the head leaves with them), later ones
    straight to the client as they came, and those that came with the end are the tail
    (they leave with the last chunk)."""
    script: list[Step] = [STREAM_HEAD, FRAMES[0], 0.05, FRAMES[1][:5], 0.05, FRAMES[1][5:]]
    async with serving([*script, 0.05, FRAMES[2] + LAST]) as backend:
        pool = ForwardPool(keepalive_secs=4.0)
        reply = await send(pool, backend)
        sink = FakeSink()
        relayed = await relay_into(reply, sink)
        assert (relayed.written, sink.data, relayed.tail) == ([EVENTS[0]], FRAMES[1], EVENTS[2])
        assert relayed.firsts == 1
        assert reply.headers["Content-Type"] == "text/event-stream"
    # A body that arrives whole leaves whole, with the last chunk.
    async with serving([STREAM_HEAD + b"".join(FRAMES) + LAST]) as backend:
        reply = await send(pool, backend)
        relayed = await relay_into(reply, sink := FakeSink())
        assert (relayed.written, sink.data, relayed.tail) == ([], b"", b"".join(EVENTS))
        assert relayed.firsts == 1
        pool.close()


async def test_delivered_once_every_chunk_but_the_last_went_out() -> None:
    """What the request log needs when a client leaves at `[DONE]`: was anything but the
    last chunk still to be sent?"""
    script: list[Step] = [STREAM_HEAD, FRAMES[0], 0.05, FRAMES[1], 0.05, FRAMES[2], 0.05, LAST]
    async with serving(
        script, [STREAM_HEAD, FRAMES[0], 0.05, FRAMES[1] + FRAMES[2] + LAST]
    ) as backend:
        pool = ForwardPool(keepalive_secs=4.0)
        reply = await send(pool, backend)
        assert not reply.delivered()  # nothing relayed yet
        relayed = await relay_into(reply, sink := FakeSink())
        assert (sink.data, relayed.tail) == (FRAMES[1] + FRAMES[2], b"")
        assert reply.delivered()
        # `[DONE]` came with the end: it is the tail, still to be sent.
        reply = await send(pool, backend)
        relayed = await relay_into(reply, FakeSink())
        assert relayed.tail == EVENTS[1] + EVENTS[2]
        assert not reply.delivered()
        pool.close()


async def test_without_a_sink_the_payload_goes_through_the_writer() -> None:
    async with serving([STREAM_HEAD, FRAMES[0], 0.05, FRAMES[1] + FRAMES[2] + LAST]) as backend:
        pool = ForwardPool(keepalive_secs=4.0)
        reply = await send(pool, backend)
        written: list[bytes] = []

        async def write(data: bytes) -> None:
            written.append(data)

        async def no_wait() -> None:
            return None

        await reply.relay(None, no_wait, write, lambda: None)
        assert b"".join(written) == b"".join(EVENTS)
        pool.close()


async def test_a_backend_dying_mid_chunk_keeps_what_the_chunk_had_brought() -> None:
    async with serving([STREAM_HEAD, FRAMES[0], FRAMES[1][:8], 0.05, "close"]) as backend:
        pool = ForwardPool(keepalive_secs=4.0)
        reply = await send(pool, backend)
        relayed = Relayed()
        with pytest.raises(UpstreamClosed) as failure:
            await relay_into(reply, FakeSink(), relayed)
        assert not failure.value.before_reply
        assert relayed.written == [EVENTS[0]]
        assert reply.unsent_payload() == FRAMES[1][3:8]  # after "a\r\n"
        pool.close()


async def test_a_stale_pooled_connection_is_retried_on_a_fresh_one() -> None:
    json_reply: list[Step] = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    # The first connection answers once, then closes when the next request arrives.
    async with serving(json_reply, ["close"], json_reply) as backend:
        pool = ForwardPool(keepalive_secs=4.0)
        assert await (await send(pool, backend)).read() == b"ok"
        assert await (await send(pool, backend)).read() == b"ok"
        assert backend.connections == 2
        pool.close()


async def test_a_stalled_backend_times_out_and_a_slow_client_does_not() -> None:
    async with serving([STREAM_HEAD, FRAMES[0], 1.0, FRAMES[1]]) as backend:
        pool = ForwardPool(keepalive_secs=4.0)
        reply = await send(pool, backend, idle=0.3)
        with pytest.raises(UpstreamStalled):
            await relay_into(reply, FakeSink())
    # A client slower than the idle timeout: reading pauses, and the clock with it.
    script: list[Step] = [STREAM_HEAD, FRAMES[0], 0.05, FRAMES[1], 0.05, FRAMES[2], 0.05, LAST]
    async with serving(script) as backend:
        reply = await send(pool := ForwardPool(keepalive_secs=4.0), backend, idle=0.3)
        sink = FakeSink()
        sink.full = True
        drained: list[float] = []

        async def slow_drain() -> None:
            await asyncio.sleep(0.6)
            sink.full = False
            drained.append(0.6)

        async def write(data: bytes) -> None:
            return None

        tail = await reply.relay(sink, slow_drain, write, lambda: None)
        # FRAMES[2] waited in the socket with the end, so it leaves with the last chunk.
        assert (sink.data, tail, drained) == (FRAMES[1], EVENTS[2], [0.6])
        pool.close()


async def test_a_client_gone_mid_relay_closes_the_backend_connection() -> None:
    async with serving([STREAM_HEAD, FRAMES[0], 0.1, FRAMES[1], 0.5, FRAMES[2], LAST]) as backend:
        pool = ForwardPool(keepalive_secs=4.0)
        reply = await send(pool, backend)
        sink, relayed = FakeSink(), Relayed()
        task = asyncio.ensure_future(relay_into(reply, sink, relayed))
        await asyncio.sleep(0.05)
        sink.closing = True
        with pytest.raises(ClientGone):
            await task
        reply.close()
        assert (relayed.written, sink.data) == ([EVENTS[0]], b"")
        pool.close()


async def test_unreachable_interim_and_malformed_replies() -> None:
    pool = ForwardPool(keepalive_secs=4.0)
    with pytest.raises(UpstreamUnreachable):
        await pool.send(free_port(), REQUEST, connect_timeout=5.0, idle_timeout=5.0)
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    async with serving(
        [interim, b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n!"], [b"HTTP/9 nope\r\n\r\n"]
    ) as backend:
        reply = await send(pool, backend)
        assert (reply.status, await reply.read()) == (201, b"!")
        with pytest.raises(UpstreamMalformed):
            await send(pool, backend)
    pool.close()


async def test_closing_the_pool_closes_idle_connections() -> None:
    json_reply: list[Step] = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    async with serving(json_reply, json_reply) as backend:
        pool = ForwardPool(keepalive_secs=4.0)
        assert await (await send(pool, backend)).read() == b"ok"
        pool.close()
        with pytest.raises(UpstreamClosed):
            await send(pool, backend)
        await asyncio.sleep(0.05)
        assert backend.replies == [json_reply]  # the server saw the connection end
