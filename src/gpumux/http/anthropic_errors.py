"""Anthropic's error shape, for `/v1/messages` and `/v1/messages/count_tokens`.

Owns: the `ErrorShape` Anthropic clients read: `{"type": "error", "error": {"type",
"message"}, "request_id"}` with Anthropic's status for each kind of failure, a failed
stream ending with `event: error` (the SDK raises on it; it ignores a `data:` line with
no event, so OpenAI's ending would read as a clean end), and the `request-id` header the
SDK reports as `_request_id`.
Does not: choose which error applies or which routes use this shape (`http/anthropic`),
or render the response (`http/errors.error_response`, with this shape).

The statuses follow Anthropic's API (and what its SDK retries: 408, 409, 429 and every
5xx, 529 included, honouring `x-should-retry` and `Retry-After`). gpumux's own statuses
are kept except where an Anthropic client reads a different one for the same failure:
- a full queue or a wait that timed out is overload, `529 overloaded_error` (Anthropic's
  429 `rate_limit_error` is a per-account limit, which gpumux does not have);
- a wrong content type is `400 invalid_request_error` (Anthropic has no 415).
A gpumux 503 (shutting down, a model that cannot start) stays 503, as `api_error`:
it is not capacity that frees up by waiting here, and a load balancer in front reads 503
as "try another node". 502 (backend crashed or unreachable) is `api_error` too, 504 for a
backend that stopped responding `timeout_error`.
"""

from __future__ import annotations

import json

from gpumux.core.errors import GpumuxError, QueueFull, QueueTimeout, UnsupportedMediaType
from gpumux.http.errors import ErrorShape

#: Anthropic's error `type` for each status it documents.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
#: gpumux codes whose status an Anthropic client expects to be different (see above).
_STATUS_BY_CODE = {
    QueueFull.code: 529,
    QueueTimeout.code: 529,
    UnsupportedMediaType.code: 400,
}
#: The header Anthropic's API names its request id with (the SDK reads it).
ANTHROPIC_REQUEST_ID = "request-id"


def error_type(status: int) -> str:
    """Anthropic's `type` for `status`; other 4xx are invalid requests, other 5xx API errors."""
    return _TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def anthropic_envelope(
    error_type_: str, message: str, request_id: str | None = None
) -> dict[str, object]:
    envelope: dict[str, object] = {
        "type": "error",
        "error": {"type": error_type_, "message": message},
    }
    if request_id:
        envelope["request_id"] = request_id
    return envelope


def error_event(error_type_: str, message: str) -> bytes:
    """One `event: error` SSE frame, as Anthropic's API (and vLLM) end a failed stream."""
    data = json.dumps(anthropic_envelope(error_type_, message)).encode()
    return b"event: error\ndata: " + data + b"\n\n"


class AnthropicShape:
    def status(self, error: GpumuxError) -> int:
        return _STATUS_BY_CODE.get(error.code, error.http_status)

    def envelope(self, error: GpumuxError, request_id: str | None) -> dict[str, object]:
        return anthropic_envelope(error_type(self.status(error)), error.message, request_id)

    def stream_error(self, error: GpumuxError) -> bytes:
        return error_event(error_type(self.status(error)), error.message)

    def stream_refusal(self, status: int, message: str) -> bytes:
        return error_event(error_type(status), message)

    def id_headers(self, request_id: str) -> dict[str, str]:
        return {ANTHROPIC_REQUEST_ID: request_id}


ANTHROPIC: ErrorShape = AnthropicShape()
