"""One request on a lease: its forward to the lease's backend and the reply back through a
`Downstream`, whichever lane read the request.

Owns: `Forward` (what a forward needs of its request), `Forwarder` (the backend request
through the model's upstream pool; a stream relayed byte for byte or a whole reply read;
the request counted and its `request_finished` line logged, its time to first token, the
last chunks kept for the request log), the headers that travel each way
(`end_to_end_headers`, `X-Gpumux-Queue-Seconds`), the bytes sent upstream
(`request_bytes`), and the gpumux error an upstream failure becomes.
Does not: check or admit requests, wait for or release leases, or answer an error before
a reply began (the proxy does); own connections (`backends.http1` and the downstreams do).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog
from multidict import MultiMapping
from yarl import URL

from gpumux.backends.http1 import HOST
from gpumux.backends.http1_reply import Reply, UpstreamError, UpstreamUnreachable
from gpumux.backends.upstream import UpstreamPools
from gpumux.core.config import Config
from gpumux.core.errors import BackendCrashed, BackendUnreachable, GpumuxError, UpstreamTimeout
from gpumux.http.downstream import Downstream
from gpumux.http.errors import REQUEST_ID, ErrorShape, sse_error_event
from gpumux.http.feedback import backend_error_event
from gpumux.http.passive_health import BackendStreaks
from gpumux.http.request_log import RequestRecord
from gpumux.scheduler.runner import Lease
from gpumux.telemetry.logs import log_hot
from gpumux.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)

#: Hop-by-hop headers (RFC 9110 §7.6.1) plus those aiohttp recomputes.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "authorization",
        "x-api-key",  # gpumux's key as Anthropic clients send it: never forwarded
        "expect",  # answered by the proxy (`_expect_continue`); the body goes whole
        "date",
        "server",
    }
)

#: Headers the proxy sets itself on both legs, so a copy in another letter case (HTTP
#: names are case-insensitive; the dict below is not) never travels beside its own.
_SET_BY_PROXY = frozenset({REQUEST_ID.lower()})
_DROPPED = _HOP_BY_HOP | _SET_BY_PROXY

#: Seconds the request waited for its lease, on every proxied response (errors too).
QUEUE_SECONDS = "X-Gpumux-Queue-Seconds"


def end_to_end_headers(headers: MultiMapping[str]) -> dict[str, str]:
    """`headers` without the hop-by-hop ones (the fixed set, and any a `Connection` names:
    RFC 9110 §7.6.1) and without those the proxy sets itself, in either direction."""
    drop = _DROPPED
    if "Connection" in headers:  # case-insensitive, as the multidict is
        named = {
            token.strip().lower()
            for value in headers.getall("Connection")
            for token in value.split(",")
        }
        drop = _DROPPED | named
    return {k: v for k, v in headers.items() if k.lower() not in drop}


@dataclass
class Forward:
    """One request on its way to a backend: what the forward and the relay need of it,
    whichever lane read it."""

    raw_path: str
    headers: MultiMapping[str]
    request_id: str
    record: RequestRecord
    shape: ErrorShape
    started: float  # when its handling began (monotonic): time to first token counts from it
    stream: bool

    @property
    def path(self) -> str:
        return self.record.endpoint


class Forwarder:
    """Forwards requests on leases; one for the proxy, whichever lane read the request."""

    def __init__(
        self,
        config: Config,
        upstream: UpstreamPools,
        metrics: Metrics,
        streaks: BackendStreaks | None,
    ) -> None:
        self._config = config
        # Per-model pools let a CRIU dump drop one backend's connections.
        self._upstream = upstream
        self._metrics = metrics
        self._streaks = streaks  # passive health: counts statuses backends themselves sent
        self._connect_timeout = config.supervision.upstream_connect_timeout_secs
        self._idle_timeout = config.supervision.upstream_idle_timeout_secs

    def reload(self, config: Config) -> None:
        """A new model table (SIGHUP): ports; the timeouts stay as started."""
        self._config = config

    async def forward(
        self, forward: Forward, lease: Lease, body: bytes, downstream: Downstream
    ) -> None:
        """Forward to the lease's backend, and its reply to `downstream`."""
        headers = end_to_end_headers(forward.headers)
        headers[REQUEST_ID] = forward.request_id
        pid = lease.pid  # the process the lease was granted on
        upstream = await self._open_upstream(forward.raw_path, body, headers, lease.model)
        if self._streaks is not None:  # gpumux's own errors raised above; never counted
            self._streaks.record(lease.model, pid, upstream.status)
        try:
            if forward.stream and upstream.status == 200:
                await self._relay_stream(forward, upstream, lease.model, downstream)
                return
            try:
                payload = await upstream.read()
            except UpstreamError as exc:
                self.count(lease.model, forward.path, 502)
                raise _upstream_error(exc, lease.model) from exc
        finally:
            # A reply the client abandoned closes its connection, so vLLM aborts the
            # request and frees its KV cache; a finished one was already pooled again.
            upstream.close()
        self._observe_ttft(lease.model, forward)
        forward.record.tail.append(payload)
        self.count(lease.model, forward.path, upstream.status)
        if downstream.begun:  # 200 was sent: the backend's refusal ends the stream
            await downstream.write(backend_error_event(upstream.status, payload, forward.shape))
            forward.record.status = upstream.status
            return
        headers = self._response_headers(upstream, forward)
        await downstream.whole(upstream.status, headers, payload)

    async def _open_upstream(
        self, raw_path: str, body: bytes, headers: dict[str, str], model: str
    ) -> Reply:
        """Send upstream (the pool retries once when nothing was exchanged: a stale
        pooled connection) and wait for the reply's head."""
        port = self._config.models[model].port
        try:
            return await self._upstream.forwarding(model).send(
                port,
                request_bytes(raw_path, port, headers, body),
                connect_timeout=self._connect_timeout,
                idle_timeout=self._idle_timeout,
            )
        except UpstreamError as exc:
            raise _upstream_error(exc, model) from exc

    async def _relay_stream(
        self, forward: Forward, upstream: Reply, model: str, downstream: Downstream
    ) -> None:
        record = forward.record
        record.status = upstream.status
        if not downstream.begun:
            await downstream.begin(upstream.status, self._response_headers(upstream, forward))
        # Bytes go through as they arrive, never split into SSE events or parsed; the only
        # per-stream bookkeeping is the time to the first chunk and the last few chunks
        # (they carry `usage`, for the request log). Where the downstream frames chunks as
        # the backend did, the backend's chunks go out as they came (`sink`).

        async def write(chunk: bytes) -> None:
            record.tail.append(chunk)
            await downstream.write(chunk)

        try:
            tail = await upstream.relay(
                downstream.sink(),
                downstream.drain,
                write,
                lambda: self._observe_ttft(model, forward),
            )
        except UpstreamError as exc:
            # What a chunk cut short had brought, then never a clean EOF: an error event in
            # the route's API shape (OpenAI's with [DONE], Anthropic's `event: error`); the
            # SDKs raise on both.
            await downstream.write(upstream.unsent_payload())
            await downstream.write(sse_error_event(_upstream_error(exc, model), forward.shape))
            record.status = 502
            self.count(model, forward.path, 502)
            log.warning("stream_failed", model=model, error=type(exc).__name__)
            return
        except ConnectionResetError:  # ClientGone, or aiohttp's own while draining
            return  # nobody to tell; the handler is being cancelled
        except asyncio.CancelledError:
            # The client left; if it had every byte but the last chunk (it read `[DONE]`
            # and closed before the backend's end reached this task) the request succeeded.
            if upstream.delivered():
                record.tail.extend(upstream.recent_chunks())
                record.delivered = True
                self.count(model, forward.path, upstream.status)
            raise
        record.tail.extend(upstream.recent_chunks())
        if tail:  # an empty end would push the usage (Anthropic's `message_delta`) out
            record.tail.append(tail)
        record.delivered = not tail
        self.count(model, forward.path, upstream.status)
        await downstream.end(tail)  # with the last chunk, in one write

    def _response_headers(self, upstream: Reply, forward: Forward) -> dict[str, str]:
        headers = end_to_end_headers(upstream.headers)
        headers[REQUEST_ID] = forward.request_id
        headers.update(forward.shape.id_headers(forward.request_id))
        headers[QUEUE_SECONDS] = f"{forward.record.queue_secs or 0.0:.3f}"
        return headers

    def count(self, model: str, endpoint: str, status: int) -> None:
        self._metrics.count_request(model, endpoint, status)
        # request_id and model come from the context the middleware and _dispatch bound.
        log_hot(log, "request_finished", endpoint=endpoint, status=status)

    def _observe_ttft(self, model: str, forward: Forward) -> None:
        ttft = time.monotonic() - forward.started
        self._metrics.observe_time_to_first_token(model, ttft)
        forward.record.ttft_secs = round(ttft, 6)


def request_bytes(raw_path: str, port: int, headers: dict[str, str], body: bytes) -> bytes:
    """The request head and body sent upstream, in one piece.

    The target is the client's path; a query string is re-quoted as aiohttp's client did.
    Headers go out as the client sent them (aiohttp's server decoded them as UTF-8 with
    surrogate escapes, so they encode back to the same bytes), after `end_to_end_headers`;
    none are added but Host and Content-Length.
    """
    target = URL(f"http://{HOST}{raw_path}").raw_path_qs if "?" in raw_path else raw_path
    lines = [f"POST {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape") + body


def _upstream_error(exc: BaseException, model: str) -> GpumuxError:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return UpstreamTimeout(f"The backend for `{model}` stopped responding.", retry_after=5)
    if isinstance(exc, UpstreamUnreachable):
        return BackendUnreachable(f"The backend for `{model}` is unreachable.", retry_after=5)
    return BackendCrashed(f"The backend for `{model}` failed mid-request.", retry_after=5)
