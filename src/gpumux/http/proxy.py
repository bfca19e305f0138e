"""The front door on port 3000: OpenAI's API, and the rest of vLLM's routes beside it.

Owns: request validation (auth, content type, body limit, `model`; which routes are
forwarded and how each body names its model is `routes.py`'s table), the wait for a lease
(with loading feedback) and the lease around each forwarded request (held until the body
ends or the client leaves), the fast lane's admission (`admit`: a request served without
aiohttp's server when it passes the same checks and a lease stands ready, `fast_lane`),
the rule that a stream begun with 200 ends with an error event, never a second status,
and errors in the shape of the route's API (OpenAI's; Anthropic's on its Messages routes:
`anthropic`, `anthropic_errors`).
Does not: decide where or when a model runs (it asks the scheduler for a lease), judge
backends (`passive_health`), or forward and relay (`forward`: byte-exact, streaming, into
either lane's `Downstream`).
One request's checks stay in one place for both lanes: what `_dispatch` refuses, `admit`
declines, so aiohttp's path answers it. Aliases, request ids, the request log, the
feedback stream, the route table and the body readers live in their own modules
(`aliases`, `request_ids`, `request_log`, `feedback`, `routes`, `body`, `multipart`), and
LoRA adapter loading in `lora`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial

import structlog
from aiohttp import HttpVersion11, web
from multidict import MultiMapping

from gpumux.backends.upstream import UpstreamPools
from gpumux.core.config import Config
from gpumux.core.errors import (
    ClientError,
    ExpectationFailed,
    GpumuxError,
    MethodNotAllowed,
    RequestTooLarge,
    RouteNotFound,
    ShuttingDown,
)
from gpumux.http.aliases import Resolved, adapter_entries, alias_entries, resolve
from gpumux.http.anthropic import api_key, presented_authorization, shape_for
from gpumux.http.auth import ApiKeys
from gpumux.http.body import read_body
from gpumux.http.downstream import AiohttpDownstream, Downstream, RawDownstream
from gpumux.http.errors import REQUEST_ID, error_response, sse_error_event
from gpumux.http.feedback import LoadingFeedback, describe_wait
from gpumux.http.forward import QUEUE_SECONDS, Forward, Forwarder
from gpumux.http.listener import BareHandler
from gpumux.http.lora import AdapterGate, refuse_runtime_lora_route
from gpumux.http.passive_health import BackendStreaks
from gpumux.http.request_ids import client_request_id
from gpumux.http.request_log import RequestLog, RequestRecord, key_hash
from gpumux.http.routes import JSON_BODY, ROUTES
from gpumux.http.simple_request import SimpleRequest, json_media_type
from gpumux.scheduler.runner import Lease, Scheduler
from gpumux.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)

#: The `model` label of requests naming a model that is not configured.
UNKNOWN_MODEL_LABEL = "_unknown"
#: The request's log record, kept on the aiohttp request while it is handled.
_RECORD = web.RequestKey("gpumux_record", RequestRecord)
#: The id the request is logged, echoed and forwarded under (`client_request_id`).
_REQUEST_ID = web.RequestKey("gpumux_request_id", str)
#: The methods the two pages beside the forwarded routes answer (HEAD: the head only).
_READ_METHODS = frozenset({"GET", "HEAD"})


class Proxy:
    def __init__(
        self,
        config: Config,
        scheduler: Scheduler,
        upstream: UpstreamPools,
        metrics: Metrics,
        api_keys: ApiKeys,
        is_shutting_down: Callable[[], bool],
        streaks: BackendStreaks | None = None,
        adapters: AdapterGate | None = None,
    ) -> None:
        self._config = config
        self._adapters = adapters or AdapterGate(None, metrics)  # LoRA loads before forwards
        self._forwarder = Forwarder(config, upstream, metrics, streaks)
        # `created` in /v1/models: stable for the daemon's life, like a model registry's.
        self._started_at = int(time.time())
        self._scheduler = scheduler
        self._metrics = metrics
        self._keys = api_keys
        self._shutting_down = is_shutting_down
        self.request_log = RequestLog(config.request_log_size)
        self._feedback = LoadingFeedback(
            config.loading_feedback, config.loading_feedback_after_secs
        )
        self._pages: dict[str, Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]] = {
            "/health": self._health,
            "/v1/models": self._models,
        }

    def reload(self, config: Config) -> None:
        """Serve a new model table (SIGHUP); limits and timeouts stay as started."""
        self._config = config
        self._adapters.reload(config)
        self._forwarder.reload(config)

    def front_door(self) -> BareHandler:
        """The proxy port's one handler: every method and path comes here (no router)."""
        return BareHandler(self._handle, self._config.max_request_body_bytes, fast=self)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route by the raw path, and answer every failure in the route's API shape."""
        request_id = client_request_id(request.headers.get(REQUEST_ID))
        request[_REQUEST_ID] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        # Match on the raw path: `/v1/../sleep` or `//sleep` never normalise into a route.
        path = request.raw_path.split("?", 1)[0]
        try:
            if "Expect" in request.headers:
                await _expect_continue(request)
            page = self._pages.get(path)
            if page is not None and request.method in _READ_METHODS:
                return await page(request)
            return await self._dispatch(request, path)
        except GpumuxError as exc:
            if isinstance(exc, ClientError):
                _log_rejection(request, path, exc.http_status, exc.code)
            return self._error_reply(exc, request_id, path, request.get(_RECORD))
        except web.HTTPRequestEntityTooLarge:
            limit = self._config.max_request_body_bytes
            _log_rejection(request, path, 413, RequestTooLarge.code)
            return error_response(
                RequestTooLarge(f"Request body exceeds {limit} bytes."), request_id, shape_for(path)
            )
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "model", "alias", "adapter")

    async def _health(self, request: web.BaseRequest) -> web.Response:
        if self._shutting_down():
            return error_response(ShuttingDown("gpumux is shutting down", retry_after=5))
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.BaseRequest) -> web.Response:
        self._keys.check(request.headers.get("Authorization"))
        created = self._started_at
        data = [
            {
                "id": alias,
                "object": "model",
                "created": created,
                "owned_by": "gpumux",
                "root": model.model_path,
            }
            for alias, model in self._config.models.items()
        ]
        data += alias_entries(self._config, created)
        data += adapter_entries(self._config, created)
        return web.json_response({"object": "list", "data": data})

    async def _dispatch(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        refuse_runtime_lora_route(path)
        route = ROUTES.get(path)
        if route is None:
            raise RouteNotFound(f"Unknown route {request.method} {path[:200]}.")
        if request.method != "POST":
            raise MethodNotAllowed(f"{path} accepts POST only.")
        self._keys.check(request.headers.get("Authorization"), api_key(path, request.headers))
        if self._shutting_down():
            raise ShuttingDown("gpumux is shutting down", retry_after=5)
        route.body.check_media_type(request.content_type)
        body = await read_body(request)
        content_type = request.headers.get("Content-Type", "")
        peeked = route.read(body, content_type)
        resolved = resolve(self._config, peeked.model)
        forward = self._forwarding(
            request.raw_path,
            request.headers,
            request[_REQUEST_ID],
            request.remote,
            resolved,
            peeked.stream,
        )
        if resolved.via_alias is not None:
            body = route.body.with_model(body, content_type, resolved.model)
        record = request[_RECORD] = forward.record
        shape = forward.shape
        with (
            self._adapters.counting(record),
            self.request_log.tracking(record, time.monotonic, shape.status),
        ):
            lease, prepared = await self._wait(
                request, resolved.model, record, resolved.known, forward.stream
            )
            if lease is None:
                assert prepared is not None  # the wait failed after 200: the stream said why
                return prepared
            downstream = AiohttpDownstream(request, prepared)
            await self._serve(lease, forward, body, downstream)
        assert downstream.response is not None
        return downstream.response

    # -- the fast lane (`fast_lane`): requests aiohttp's server never saw -------------------

    def admit(self, request: SimpleRequest) -> Callable[[RawDownstream], Awaitable[None]] | None:
        """The fast lane's question: may `request` be served now, as `_handle` would serve
        it, without a wait? Yes when it passes every check `_dispatch` makes and a lease
        stands ready for its model (a standing grant, taken here); the answer is the
        serving, for the lane to run. None: hand it to aiohttp's server, nothing done (the
        checks run there again, and answer whatever failed here in the API's shape)."""
        path, headers = request.path, request.headers
        if self._shutting_down() or not json_media_type(headers):
            return None
        try:
            self._keys.check(headers.get("Authorization"), api_key(path, headers))
            peeked = ROUTES[path].read(request.body, headers.get("Content-Type", ""))
            resolved = resolve(self._config, peeked.model)
        except GpumuxError:
            return None
        if resolved.adapter is not None:  # an adapter may need loading first: the slow way
            return None
        lease = self._scheduler.take_standing(resolved.model)
        if lease is None:
            return None
        return partial(self._serve_fast, request, peeked.stream, resolved, lease)

    async def _serve_fast(
        self,
        request: SimpleRequest,
        stream: bool,
        resolved: Resolved,
        lease: Lease,
        downstream: RawDownstream,
    ) -> None:
        """What `_handle` and `_dispatch` do after the wait, for an admitted request."""
        headers = request.headers
        request_id = client_request_id(headers.get(REQUEST_ID))
        structlog.contextvars.bind_contextvars(request_id=request_id)  # `_handle` binds it there
        forward = self._forwarding(
            request.path, headers, request_id, downstream.peer, resolved, stream
        )
        body = request.body
        if resolved.via_alias is not None:
            body = JSON_BODY.with_model(body, headers.get("Content-Type", ""), resolved.model)
        record, shape = forward.record, forward.shape
        record.queue_secs = 0.0  # a lease stood ready
        try:
            with (
                self._adapters.counting(record),
                self.request_log.tracking(record, time.monotonic, shape.status),
            ):
                await self._serve(lease, forward, body, downstream)
        except GpumuxError as exc:
            reply = self._error_reply(exc, forward.request_id, forward.path, record)
            await downstream.answer(reply)
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "model", "alias", "adapter")

    # -- both lanes, once a lease is held ---------------------------------------------------

    def _forwarding(
        self,
        raw_path: str,
        headers: MultiMapping[str],
        request_id: str,
        client: str | None,
        resolved: Resolved,
        stream: bool,
    ) -> Forward:
        """The request's record and what its forward needs; its model (and alias, adapter)
        bound for its logs beside the request id its lane bound."""
        path = raw_path.split("?", 1)[0]
        model = resolved.model
        structlog.contextvars.bind_contextvars(model=model[:128])
        if resolved.via_alias is not None:
            structlog.contextvars.bind_contextvars(alias=resolved.via_alias)
        if resolved.adapter is not None:
            structlog.contextvars.bind_contextvars(adapter=resolved.adapter)
        record = RequestRecord(
            started_at=time.time(),
            model=model[:128],
            alias=resolved.via_alias,
            endpoint=path,
            client=client,
            key_hash=key_hash(presented_authorization(path, headers)),
            adapter=resolved.adapter,
        )
        shape = shape_for(path)
        return Forward(raw_path, headers, request_id, record, shape, time.monotonic(), stream)

    async def _serve(
        self, lease: Lease, forward: Forward, body: bytes, downstream: Downstream
    ) -> None:
        """Forward on `lease` and release it; a gpumux error before any reply began is
        raised (the caller answers it), after one began it ends the stream as an event."""
        record = forward.record
        try:
            await self._adapters.ready(lease, record)
            await self._forwarder.forward(forward, lease, body, downstream)
        except GpumuxError as exc:
            if not downstream.begun:
                raise
            await downstream.write(sse_error_event(exc, forward.shape))  # 200 was sent
            record.status = forward.shape.status(exc)
        finally:
            self._scheduler.release(lease)
        record.status = record.status or downstream.status

    def _error_reply(
        self, exc: GpumuxError, request_id: str, path: str, record: RequestRecord | None
    ) -> web.Response:
        response = error_response(exc, request_id, shape_for(path))
        if record is not None and record.queue_secs is not None:
            response.headers[QUEUE_SECONDS] = f"{record.queue_secs:.3f}"
        return response

    async def _wait(
        self, request: web.BaseRequest, model: str, record: RequestRecord, known: bool, stream: bool
    ) -> tuple[Lease | None, web.StreamResponse | None]:
        """A lease; for a stream with loading feedback on, also the response already begun
        if the wait outlasted the threshold (None lease: the wait failed after that)."""
        acquire = self._acquire(model, record, known=known)
        started = time.monotonic()
        if not (stream and self._feedback.enabled):
            return await acquire, None

        shape = shape_for(record.endpoint)

        def headers() -> dict[str, str]:
            # Sent before the wait ends: the wait so far (the log has the whole of it).
            waited = f"{time.monotonic() - started:.3f}"
            ids = shape.id_headers(request[_REQUEST_ID])
            return {REQUEST_ID: request[_REQUEST_ID], **ids, QUEUE_SECONDS: waited}

        describe = partial(describe_wait, self._scheduler, model)
        waited = await self._feedback.wait(
            request,
            acquire,
            self._scheduler.release,
            headers,
            describe,
            model=record.alias or record.model,
            shape=shape,
        )
        if waited.error is not None:
            record.status = shape.status(waited.error)
        return waited.lease, waited.response

    async def _acquire(self, model: str, record: RequestRecord, *, known: bool) -> Lease:
        """A lease on `model`; the wait lands in `record` whatever the outcome."""
        started = time.monotonic()
        try:
            return await self._scheduler.acquire(model)
        except GpumuxError as exc:
            # Client-chosen names never become label values (unbounded series).
            label = model if known else UNKNOWN_MODEL_LABEL
            status = shape_for(record.endpoint).status(exc)  # the status the client sees
            self._metrics.count_request(label, record.endpoint, status)
            raise
        finally:
            record.queue_secs = round(time.monotonic() - started, 6)


def _log_rejection(request: web.BaseRequest, path: str, status: int, code: str) -> None:
    """One warning line per refused request: no body, no query string (it may hold
    secrets), no traceback; the request id and model are bound in the context."""
    log.warning(
        "request_rejected", status=status, code=code, method=request.method, path=path[:200]
    )


async def _expect_continue(request: web.BaseRequest) -> None:
    """`Expect: 100-continue` (curl sends it for large bodies) gets its interim reply before
    the body is read; any other expectation is a 417 (RFC 9110 §10.1.1), as aiohttp's
    router answered both before the proxy port lost its router. HTTP/1.0 has neither."""
    if request.version != HttpVersion11:
        return
    expect = request.headers.get("Expect", "")
    if expect.strip().lower() != "100-continue":
        raise ExpectationFailed(f"Unknown expectation: {expect[:100]!r}.")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the reply's own bytes start after it
