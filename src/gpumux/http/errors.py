"""Error responses, the one rendering every HTTP edge shares, shaped per API.

Owns: turning a `GpumuxError` into a JSON response (status, `Retry-After`,
`x-should-retry`, `WWW-Authenticate`, `Connection: close` while shutting down, the
request id) or into the SSE bytes that end a failed stream, through an `ErrorShape`: the
OpenAI one here (`OPENAI`, every route but Anthropic's), Anthropic's in `anthropic_errors`.
A shape decides only what an API's clients read (status, body, stream ending, id header);
the headers that steer retries and connections are the same for every API.
Does not: choose which error applies (the proxy, the admin API and the scheduler do),
define the taxonomy (`core/errors` does) or choose the shape (the proxy does, by route).
The proxy and the admin API both use it, so it lives beside the proxy rather than in it.
"""

from __future__ import annotations

import json
from typing import Protocol

from aiohttp import web

from gpumux.core.errors import (
    BackendCrashed,
    GpumuxError,
    InvalidApiKey,
    ShuttingDown,
    UpstreamTimeout,
    openai_envelope,
)

REQUEST_ID = "X-Request-Id"
_SSE_DONE = b"data: [DONE]\n\n"

#: Failures a blind retry may repeat: the request itself may be what crashed or hung the
#: backend (a "query of death"), so the OpenAI SDK is told not to retry them on its own.
_NO_AUTOMATIC_RETRY = frozenset({BackendCrashed.code, UpstreamTimeout.code})


class ErrorShape(Protocol):
    """How one API's clients expect to read an error."""

    def status(self, error: GpumuxError) -> int:
        """The HTTP status this API uses for `error`."""

    def envelope(self, error: GpumuxError, request_id: str | None) -> dict[str, object]:
        """The JSON error body."""

    def stream_error(self, error: GpumuxError) -> bytes:
        """The SSE bytes that end a stream begun with 200: never a clean end."""

    def stream_refusal(self, status: int, message: str) -> bytes:
        """The same, for a backend that refused (`status`) after gpumux had sent 200."""

    def id_headers(self, request_id: str) -> dict[str, str]:
        """Response headers beyond `X-Request-Id` that carry the request id."""


class OpenAIShape:
    """`{"error": {"message", "type", "param", "code"}}`; a stream ends `data:` + [DONE]."""

    def status(self, error: GpumuxError) -> int:
        return error.http_status

    def envelope(self, error: GpumuxError, request_id: str | None) -> dict[str, object]:
        return error.envelope()

    def stream_error(self, error: GpumuxError) -> bytes:
        return _data_then_done(error.envelope())

    def stream_refusal(self, status: int, message: str) -> bytes:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return _data_then_done(openai_envelope(message, kind, "upstream_error"))

    def id_headers(self, request_id: str) -> dict[str, str]:
        return {}


OPENAI: ErrorShape = OpenAIShape()


def _data_then_done(envelope: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(envelope).encode() + b"\n\n" + _SSE_DONE


def should_retry(error: GpumuxError, status: int | None = None) -> str | None:
    """The `x-should-retry` value for an error the SDK would otherwise judge by status.

    The OpenAI and Anthropic SDKs both retry 408/409/429/5xx by default (529 included);
    gpumux says so deliberately: "true" where waiting `Retry-After` is expected to help
    (queue full, model starting or restarting, backend unreachable), "false" where it is
    not (see `_NO_AUTOMATIC_RETRY`, and 5xx without a Retry-After). None for the 4xx the
    SDKs never retry. `status` is the one the client sees (a shape may change it).
    """
    status = error.http_status if status is None else status
    if status < 500 and status not in (408, 409, 429):
        return None
    if error.code in _NO_AUTOMATIC_RETRY or error.retry_after is None:
        return "false"
    return "true"


def error_response(
    error: GpumuxError, request_id: str | None = None, shape: ErrorShape = OPENAI
) -> web.Response:
    status = shape.status(error)
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    retry = should_retry(error, status)
    if retry is not None:
        headers["x-should-retry"] = retry
    if isinstance(error, InvalidApiKey):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, ShuttingDown):
        headers["Connection"] = "close"  # let clients reconnect elsewhere, not reuse this one
    if request_id:
        headers[REQUEST_ID] = request_id
        headers.update(shape.id_headers(request_id))
    return web.json_response(shape.envelope(error, request_id), status=status, headers=headers)


def sse_error_event(error: GpumuxError, shape: ErrorShape = OPENAI) -> bytes:
    return shape.stream_error(error)
