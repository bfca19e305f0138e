"""OpenAI-shaped error responses, the one rendering every HTTP edge shares.

Owns: turning a `GpumuxError` into a JSON response (status, `Retry-After`,
`x-should-retry`, `WWW-Authenticate`, `Connection: close` while shutting down, the
request id) or into a terminal SSE event, and the `X-Request-Id` header name.
Does not: choose which error applies (the proxy, the admin API and the scheduler do) or
define the taxonomy (`core/errors` does). The proxy and the admin API both use it, so it
lives beside the proxy rather than in it.
"""

from __future__ import annotations

import json

from aiohttp import web

from gpumux.core.errors import (
    BackendCrashed,
    GpumuxError,
    InvalidApiKey,
    ShuttingDown,
    UpstreamTimeout,
)

REQUEST_ID = "X-Request-Id"
_SSE_DONE = b"data: [DONE]\n\n"

#: Failures a blind retry may repeat: the request itself may be what crashed or hung the
#: backend (a "query of death"), so the OpenAI SDK is told not to retry them on its own.
_NO_AUTOMATIC_RETRY = frozenset({BackendCrashed.code, UpstreamTimeout.code})


def should_retry(error: GpumuxError) -> str | None:
    """The `x-should-retry` value for an error the SDK would otherwise judge by status.

    The SDK retries 408/409/429/5xx by default; gpumux says so deliberately: "true" where
    waiting `Retry-After` is expected to help (queue full, model starting or restarting,
    backend unreachable), "false" where it is not (see `_NO_AUTOMATIC_RETRY`, and 5xx
    without a Retry-After). None for the 4xx the SDK never retries.
    """
    if error.http_status < 500 and error.http_status not in (408, 409, 429):
        return None
    if error.code in _NO_AUTOMATIC_RETRY or error.retry_after is None:
        return "false"
    return "true"


def error_response(error: GpumuxError, request_id: str | None = None) -> web.Response:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    retry = should_retry(error)
    if retry is not None:
        headers["x-should-retry"] = retry
    if isinstance(error, InvalidApiKey):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, ShuttingDown):
        headers["Connection"] = "close"  # let clients reconnect elsewhere, not reuse this one
    if request_id:
        headers[REQUEST_ID] = request_id
    return web.json_response(error.envelope(), status=error.http_status, headers=headers)


def sse_error_event(error: GpumuxError) -> bytes:
    return b"data: " + json.dumps(error.envelope()).encode() + b"\n\n" + _SSE_DONE
