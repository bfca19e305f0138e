"""How the daemon's HTTP listeners are built: an aiohttp app (admin, metrics) or one bare
handler (the proxy: `BareHandler`, aiohttp's low-level server without an Application,
with the proxy's fast lane in front of it: `fast_lane`) bound to a TCP port whose
connections must deliver each request head in time (the slowloris guard).

Owns: the runner/site pair behind every listener (proxy, admin, metrics) and the
per-connection request-head deadline, `header_timeout_secs`. A connection has that long
from when it opens, and on a kept-alive connection from the first byte of each later
request, to deliver a complete request line and headers; past it the connection is closed
(no 408: the client is abusive or broken, and a reply could be read as the answer to a
request it sends at that very moment). aiohttp's server has no such deadline, so without
it a client trickling one header byte at a time holds a connection and a descriptor for
as long as it likes.
Never timed here: anything after the head. Once aiohttp hands a request to the app, the
deadline is off until that request is finished — slow bodies, queued requests waiting
minutes for a model switch and long streams are untouched. An idle kept-alive connection
that sends nothing is left to aiohttp's keep-alive timeout, so client pools keep working.
Also owns: the answer to a request aiohttp's HTTP parser refuses before any app sees it
(a header or request line over 8190 bytes, more than 128 headers, `Content-Length` with
`Transfer-Encoding`, a malformed chunk, bytes that are not HTTP): the API's own error
shape — 431 for header fields too large, 414 for a request line too long, else 400 —
and one warning line, where aiohttp would send text/plain and log a traceback.
Does not: route, authenticate or answer requests (the apps and the proxy's handler do).

How, using aiohttp's public surface and one documented-by-use method, `RequestHandler.
handle_error` (tests/faults/test_faults_bad_input.py and
tests/security/test_security_http_framing.py fail loudly if a hook stops firing): the site
hands asyncio a protocol that wraps the `RequestHandler` aiohttp's `web.Server` makes for
each connection, so it sees every byte before aiohttp parses it, and an outermost
middleware (around a bare handler: the same function) tells the wrapper when aiohttp
dispatches a request (its head is complete) and when the handler is done. Bytes that
arrive while a request is being handled are its body (or a pipelined head): they are not
timed, and the next byte after that request ends starts the clock. A client that goes
silent mid-head after such bytes costs what an idle kept-alive connection costs and is
left to the keep-alive timeout too.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from gpumux.core.errors import openai_envelope
from gpumux.http.fast_lane import FastFront, FastLane

log = structlog.get_logger(__name__)

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


#: An idle kept-alive connection (no request under way) is closed after this long, as
#: nginx does; aiohttp's own default (about an hour) lets idle clients hold descriptors.
IDLE_KEEPALIVE_SECS = 75.0
#: What every connection's aiohttp handler is built with (the runner's and ours alike).
_HANDLER_ARGS: dict[str, Any] = {"access_log": None, "keepalive_timeout": IDLE_KEEPALIVE_SECS}


@dataclass(frozen=True)
class BareHandler:
    """One handler served by aiohttp's low-level server, for the hot port (the proxy).

    No `web.Application`: no router, middleware chain, signals or `Expect` handling, so a
    request costs aiohttp's parse, a `BaseRequest` and one call. The handler answers every
    method and path itself (so a 404 or 405 is in its API's shape without a middleware
    translating aiohttp's), and sends `100 Continue` itself. `client_max_size` bounds what
    `request.read()` accepts, as an Application's `client_max_size` does.
    """

    handle: _Handler
    client_max_size: int
    #: Serves a connection's plainest requests without aiohttp's server (`fast_lane`).
    fast: FastFront | None = None


async def listen(
    served: web.Application | BareHandler,
    host: str,
    port: int,
    *,
    header_timeout_secs: float,
    cancel_on_disconnect: bool = False,
) -> web.BaseRunner:
    """Serve `served` on host:port; `runner.cleanup()` stops it (and closes its connections)."""
    # handler_cancellation: a client that leaves cancels its handler, which closes the
    # upstream request so vLLM aborts it (aiohttp's default is False in production).
    runner: web.BaseRunner
    fast = served.fast if isinstance(served, BareHandler) else None
    max_body = served.client_max_size if isinstance(served, BareHandler) else 0
    if isinstance(served, BareHandler):
        server = web.Server(
            partial(_track_requests, handler=served.handle),  # sees the whole request
            request_factory=_request_factory(served.client_max_size),
            handler_cancellation=cancel_on_disconnect,
            **_HANDLER_ARGS,
        )
        runner = web.ServerRunner(server)
    else:
        # Outermost: it sees the whole request.
        served.middlewares.insert(0, web.middleware(_track_requests))
        runner = web.AppRunner(served, handler_cancellation=cancel_on_disconnect, **_HANDLER_ARGS)
    await runner.setup()
    await HeadDeadlineSite(runner, host, port, header_timeout_secs, fast, max_body).start()
    return runner


class HeadDeadline(asyncio.Protocol):
    """One connection: aiohttp's own handler inside, plus the request-head deadline."""

    def __init__(
        self, inner: asyncio.Protocol, timeout: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._inner = inner
        self._timeout = timeout
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        # One timer per quiet period, not one per request: a request's head that arrives
        # in time only clears `_head_since`; the timer, when it fires, re-arms for what
        # is left of the current head's time or lapses when no head is under way.
        self._timer: asyncio.TimerHandle | None = None
        self._head_since: float | None = None  # loop time the pending head began
        self._active = 0  # requests dispatched and not yet finished (aiohttp: at most 1)
        self._served = 0
        self._head_bytes = 0  # counted for the log line only; header contents never are

    # -- asyncio.Protocol: every callback goes on to aiohttp's handler --------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (create_server); uvloop's is not an asyncio.Transport subclass.
        self._transport = cast(asyncio.Transport, transport)
        self._head_started()  # a connection that never sends a byte is not spared
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        # Bytes while no request is being handled start (or continue) a request head.
        # Bytes while one is handled are its body (or a pipelined head, timed from the
        # first byte after that request ends).
        if self._active == 0 and data:
            if self._head_since is None:
                self._head_started()
            self._head_bytes += len(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        # aiohttp's handler returns None (let asyncio close the transport); stay faithful.
        self._inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- told by the middleware -----------------------------------------------------------

    def request_started(self) -> None:
        """aiohttp dispatched a request (or the fast lane read a whole head): its head is
        complete, so the deadline is met."""
        self._active += 1
        self._head_since = None

    def request_finished(self) -> None:
        self._active -= 1
        self._served += 1

    def request_handed_back(self) -> None:
        """The fast lane said a request's head was whole, then gave the request to aiohttp,
        which says so again when it dispatches it."""
        self._active -= 1

    # -- the deadline ---------------------------------------------------------------------

    def _head_started(self) -> None:
        self._head_bytes = 0
        self._head_since = self._loop.time()
        if self._timer is None:
            self._arm(self._timeout)

    def _arm(self, delay: float) -> None:
        # A fresh context: the callback must not log under a request's bound ids.
        self._timer = self._loop.call_later(delay, self._expired, context=contextvars.Context())

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        transport, since = self._transport, self._head_since
        if self._active or since is None or transport is None or transport.is_closing():
            return  # no head under way: the next one arms a timer of its own
        left = since + self._timeout - self._loop.time()
        if left > 0:  # this head began after the one the timer was set for
            self._arm(left)
            return
        log.info(
            "header_timeout_closed",
            peer=_peer(transport),
            timeout_s=self._timeout,
            head_bytes=self._head_bytes,
            requests_served=self._served,
        )
        # Nothing of ours is being written (no request is active), so close() is immediate;
        # connection_lost then tells aiohttp's handler, which ends its task as usual.
        transport.close()


class HeadDeadlineSite(web.BaseSite):
    """Like `web.TCPSite`, but every connection is wrapped in a `HeadDeadline`."""

    __slots__ = (
        "_fast",
        "_host",
        "_lanes",
        "_listening",
        "_max_body",
        "_owner",
        "_port",
        "_timeout",
    )

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        timeout: float,
        fast: FastFront | None = None,
        max_body: int = 0,
    ) -> None:
        super().__init__(runner)
        self._owner = runner
        self._host = host
        self._port = port
        self._timeout = timeout
        self._fast = fast
        self._max_body = max_body  # the fast lane's: the proxy's `client_max_size`
        self._lanes: set[FastLane] = set()  # connections the fast lane still serves
        self._listening: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()  # registers the site, so runner.cleanup() stops it
        loop = asyncio.get_running_loop()
        server = self._owner.server
        assert server is not None  # BaseSite refuses a runner that was not set up

        def handler() -> ParseRefusals:
            # What web.Server's own factory does, with a handler that answers parse errors.
            return ParseRefusals(server, loop=loop, **_HANDLER_ARGS)

        def connection() -> HeadDeadline:
            fast = self._fast
            if fast is None:
                return HeadDeadline(handler(), self._timeout, loop)
            lanes, max_body = self._lanes, self._max_body
            lane = FastLane(fast, handler, max_body, IDLE_KEEPALIVE_SECS, lanes, loop)
            guard = HeadDeadline(lane, self._timeout, loop)
            lane.watched_by(guard)
            return guard

        # backlog as web.TCPSite's default, so nothing but the wrapper changes.
        self._listening = await loop.create_server(connection, self._host, self._port, backlog=128)

    async def stop(self) -> None:
        if self._listening is not None:
            self._listening.close()
        for lane in list(self._lanes):  # aiohttp's server closes the connections it has
            lane.close()
        await super().stop()


class ParseRefusals(web.RequestHandler):
    """aiohttp's per-connection handler, except for requests its parser refuses."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)  # a bug: keep its trace
        status, code, text = refusal(exc)
        # The class name only: aiohttp's message quotes the client's bytes (headers).
        log.warning("http_request_refused", status=status, reason=type(exc).__name__)
        response = web.json_response(
            openai_envelope(text, "invalid_request_error", code), status=status
        )
        response.force_close()  # the parser's state is unknown past a refused head
        return response


def refusal(exc: HttpProcessingError) -> tuple[int, str, str]:
    """(status, code, message) for a request aiohttp's HTTP parser refused."""
    if isinstance(exc, LineTooLong):
        # aiohttp says which line only by quoting its start: a request target starts with
        # "/" (or is absolute), a header line with its name, which cannot hold "/" or ":".
        line = exc.args[0] if exc.args else b""
        start = bytes(line) if isinstance(line, bytes | bytearray) else str(line).encode()
        if start.startswith((b"/", b"http://", b"https://")):
            return 414, "uri_too_long", "The request line is longer than the server accepts."
        return 431, "request_header_fields_too_large", "A header field is too large."
    first_line = str(exc.message).split("\n", 1)[0].rstrip(": ")[:200]
    if first_line.startswith("Too many headers"):
        return 431, "request_header_fields_too_large", "The request has too many headers."
    return 400, "invalid_request", f"The HTTP request could not be parsed: {first_line}"


def _request_factory(
    client_max_size: int,
) -> Callable[
    [RawRequestMessage, StreamReader, web.RequestHandler, AbstractStreamWriter, asyncio.Task[None]],
    web.BaseRequest,
]:
    """What `web.Server` builds each request with, bounding its body as an Application
    does (the low-level server's own factory keeps aiohttp's 1 MiB default)."""
    loop = asyncio.get_running_loop()

    def make(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=client_max_size
        )

    return make


_Request = TypeVar("_Request", bound=web.BaseRequest)


async def _track_requests(
    request: _Request, handler: Callable[[_Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tells the connection's `HeadDeadline` when a request is handed over and when it is
    done: an app's outermost middleware, or the bare handler's wrapper."""
    transport = request.transport
    guard = transport.get_protocol() if transport is not None else None
    if not isinstance(guard, HeadDeadline):
        return await handler(request)
    guard.request_started()
    try:
        return await handler(request)
    finally:
        guard.request_finished()


def _peer(transport: asyncio.Transport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
