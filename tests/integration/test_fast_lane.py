"""The proxy port's fast lane, on a real listener and real sockets, in process: which
requests it serves, that its replies are aiohttp's byte for byte, and that everything else
(and everything after it) reaches aiohttp's server unread; the head deadline, pipelining,
a client that leaves, a slow client, idle keep-alive and the listener's stop."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gpumux.http import listener
from gpumux.http.downstream import AiohttpDownstream, Downstream, RawDownstream
from gpumux.http.listener import BareHandler, listen
from gpumux.http.simple_request import SimpleRequest
from tests.support.client import RawReply, parse_reply, raw_post
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
BODY = b'{"model": "a", "stream": true}'
STREAM_HEADERS = {"content-type": "text/event-stream", "x-request-id": "r1"}

Serve = Callable[[SimpleRequest | None, Downstream], Awaitable[None]]


async def whole_reply(request: SimpleRequest | None, downstream: Downstream) -> None:
    await downstream.whole(200, {"content-type": "application/json", "x-a": "1"}, b'{"ok": 1}')


async def stream_reply(request: SimpleRequest | None, downstream: Downstream) -> None:
    await downstream.begin(200, dict(STREAM_HEADERS))
    for n in range(3):
        await downstream.write(b"data: %d\n\n" % n)
    await downstream.end(b"data: [DONE]\n\n")


@dataclass
class Front:
    """The proxy's part, faked: admits while `admitting`, serves with `serve`."""

    serve: Serve = whole_reply
    admitting: bool = True
    admitted: list[SimpleRequest] = field(default_factory=list)
    cancelled: int = 0

    def admit(self, request: SimpleRequest) -> Callable[[RawDownstream], Awaitable[None]] | None:
        if not self.admitting:
            return None
        self.admitted.append(request)
        return partial(self._serve, request)

    async def _serve(self, request: SimpleRequest, downstream: RawDownstream) -> None:
        try:
            await self.serve(request, downstream)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


@asynccontextmanager
async def serving(front: Front, header_timeout: float = 5.0) -> AsyncIterator[int]:
    """A listener whose aiohttp handler answers with `front.serve` too (through aiohttp's
    response objects), so both lanes' bytes can be compared."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST":
            return web.json_response({"lane": "aiohttp", "path": request.path})
        await request.read()
        downstream = AiohttpDownstream(request, None)
        await front.serve(None, downstream)
        assert downstream.response is not None
        return downstream.response

    port = free_port()
    runner = await listen(
        BareHandler(handle, 1 << 20, fast=front),
        HOST,
        port,
        header_timeout_secs=header_timeout,
        cancel_on_disconnect=True,
    )
    try:
        yield port
    finally:
        await runner.cleanup()


def post(body: bytes = BODY, path: str = "/v1/chat/completions") -> bytes:
    return raw_post(path, body)


class Client:
    """One connection: what it read and has not yet parsed stays in `buffer`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.buffer = reader, writer, b""

    async def read_until(self, marker: bytes) -> None:
        while marker not in self.buffer:
            await self._more()

    async def answer(self) -> RawReply:
        while (parsed := parse_reply(self.buffer)) is None:
            await self._more()
        reply, self.buffer = parsed
        return reply

    async def closed_by_server(self, within: float) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), within) == b""
        except TimeoutError:
            return False

    async def _more(self) -> None:
        piece = await asyncio.wait_for(self.reader.read(65536), 5)
        if not piece:
            raise ConnectionError("closed by the server")
        self.buffer += piece


async def connect(port: int) -> Client:
    return Client(*await asyncio.open_connection(HOST, port))


def without_date(raw: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*\r\n", b"", raw)


@pytest.mark.parametrize("serve", [whole_reply, stream_reply])
async def test_the_lane_serves_a_connections_simple_requests_as_aiohttp_would(
    serve: Serve,
) -> None:
    front = Front(serve)
    async with serving(front) as port:
        client = await connect(port)
        fast = []
        for _ in range(3):
            client.writer.write(post())
            fast.append(await client.answer())
        assert len(front.admitted) == 3
        assert front.admitted[0].body == BODY
        # The same reply through aiohttp's response objects: a connection that began
        # with a request the lane does not take is aiohttp's from then on.
        client2 = await connect(port)
        client2.writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await client2.answer()).status == 200
        client2.writer.write(post())
        slow = await client2.answer()
        assert len(front.admitted) == 3  # the lane never saw it
        client.writer.close()
        client2.writer.close()
    assert {without_date(a.raw) for a in fast} == {without_date(fast[0].raw)}
    assert without_date(fast[0].raw) == without_date(slow.raw)
    if serve is stream_reply:
        assert fast[0].body == b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"


async def test_a_request_the_proxy_declines_reaches_aiohttp_unread() -> None:
    front = Front(admitting=False)
    async with serving(front) as port:
        client = await connect(port)
        client.writer.write(post(b'{"model": "b"}'))
        answer = await client.answer()
        assert answer.status == 200
        front.admitting = True
        client.writer.write(post())  # the connection stays aiohttp's
        assert (await client.answer()).status == 200
        assert front.admitted == []
        client.writer.close()


async def test_a_head_and_body_in_pieces_are_served_and_a_slow_body_is_not_timed() -> None:
    front = Front()
    async with serving(front, header_timeout=1.0) as port:
        client = await connect(port)
        data = post()
        head_end = data.index(b"\r\n\r\n") + 4
        for piece in (data[:10], data[10:head_end], data[head_end : head_end + 5]):
            client.writer.write(piece)
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.5)  # the head is whole: the body has all the time it needs
        client.writer.write(data[head_end + 5 :])
        assert (await client.answer()).status == 200
        assert len(front.admitted) == 1
        client.writer.close()


async def test_a_head_that_trickles_past_the_deadline_is_closed() -> None:
    front = Front()
    async with serving(front, header_timeout=0.3) as port:
        client = await connect(port)
        client.writer.write(post()[:20])
        assert await client.closed_by_server(5.0)
        assert front.admitted == []
        client.writer.close()


async def test_pipelined_requests_are_aiohttps_and_answered_in_order() -> None:
    front = Front()
    async with serving(front) as port:
        client = await connect(port)
        client.writer.write(post(b'{"n": 1}') + post(b'{"n": 2}'))
        first, second = await client.answer(), await client.answer()
        assert (first.status, second.status) == (200, 200)
        assert front.admitted == []
        client.writer.close()


async def test_a_request_sent_while_one_is_served_is_served_after_it() -> None:
    gate = asyncio.Event()

    async def gated(request: SimpleRequest | None, downstream: Downstream) -> None:
        await downstream.begin(200, dict(STREAM_HEADERS))
        await downstream.write(b"data: 0\n\n")
        await gate.wait()
        await downstream.end(b"data: [DONE]\n\n")

    front = Front(gated)
    async with serving(front) as port:
        client = await connect(port)
        client.writer.write(post(b'{"n": 1}'))
        await client.read_until(b"data: 0\n\n")
        client.writer.write(post(b'{"n": 2}'))
        await asyncio.sleep(0.1)
        assert len(front.admitted) == 1  # read only once the first is done
        gate.set()
        first = await client.answer()
        assert first.body.endswith(b"data: [DONE]\n\n")
        assert (await client.answer()).body.endswith(b"data: [DONE]\n\n")
        assert [r.body for r in front.admitted] == [b'{"n": 1}', b'{"n": 2}']
        client.writer.close()


async def test_a_client_that_leaves_cancels_its_request() -> None:
    async def endless(request: SimpleRequest | None, downstream: Downstream) -> None:
        await downstream.begin(200, dict(STREAM_HEADERS))
        while True:
            await downstream.write(b"data: x\n\n")
            await asyncio.sleep(0.01)

    front = Front(endless)
    async with serving(front) as port:
        client = await connect(port)
        client.writer.write(post())
        await client.read_until(b"data: x\n\n")
        client.writer.close()
        for _ in range(250):
            if front.cancelled:
                break
            await asyncio.sleep(0.02)
        assert front.cancelled == 1


async def test_a_slow_client_gets_every_byte() -> None:
    piece = b"x" * 65536

    async def big(request: SimpleRequest | None, downstream: Downstream) -> None:
        await downstream.begin(200, dict(STREAM_HEADERS))
        for _ in range(64):  # 4 MiB: far past what the socket buffers hold
            await downstream.write(piece)
        await downstream.end(b"")

    front = Front(big)
    async with serving(front) as port:
        client = await connect(port)
        client.writer.write(post())
        await asyncio.sleep(0.5)  # not reading: the lane must wait, not buffer it all
        answer = await client.answer()
        assert answer.body == piece * 64
        client.writer.close()


async def test_a_failing_request_is_a_500_and_closes_the_connection() -> None:
    async def broken(request: SimpleRequest | None, downstream: Downstream) -> None:
        raise RuntimeError("a bug")

    front = Front(broken)
    with capture_logs() as logs:
        async with serving(front) as port:
            client = await connect(port)
            client.writer.write(post())
            answer = await client.answer()
            assert answer.status == 500
            assert ("Connection", "close") in answer.headers
            assert await client.closed_by_server(5.0)
            client.writer.close()
    (failed,) = [e for e in logs if e["event"] == "fast_lane_failed"]
    assert failed["log_level"] == "error"
    assert failed["exc_info"] is True


async def test_a_reply_that_says_close_closes() -> None:
    async def refusal(request: SimpleRequest | None, downstream: Downstream) -> None:
        assert isinstance(downstream, RawDownstream)
        response = web.json_response({"error": "x"}, status=503, headers={"Connection": "close"})
        await downstream.answer(response)

    front = Front(refusal)
    async with serving(front) as port:
        client = await connect(port)
        client.writer.write(post())
        answer = await client.answer()
        assert (answer.status, answer.body) == (503, b'{"error": "x"}')
        assert await client.closed_by_server(5.0)
        client.writer.close()


async def test_an_idle_connection_closes_after_the_keepalive_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener, "IDLE_KEEPALIVE_SECS", 0.5)
    front = Front()
    async with serving(front) as port:
        client = await connect(port)
        for _ in range(3):  # kept alive from one request to the next
            client.writer.write(post())
            assert (await client.answer()).status == 200
        assert await client.closed_by_server(5.0)
        client.writer.close()


async def test_stopping_the_listener_closes_the_lanes_connections() -> None:
    front = Front()
    async with serving(front) as port:
        client = await connect(port)
        client.writer.write(post())
        assert (await client.answer()).status == 200
    assert await client.closed_by_server(5.0)
    client.writer.close()
