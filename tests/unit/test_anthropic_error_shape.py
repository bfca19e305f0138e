"""The per-API error shapes: Anthropic's statuses, types, bodies and stream endings, and
OpenAI's kept byte for byte; `x-api-key` on the routes that accept it."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict

from gpumux.core.errors import (
    BackendCrashed,
    BackendUnreachable,
    GpumuxError,
    InvalidApiKey,
    InvalidJson,
    MethodNotAllowed,
    MissingModel,
    ModelNotFound,
    ModelUnavailable,
    QueueFull,
    QueueTimeout,
    RequestTooLarge,
    ShuttingDown,
    UnsupportedMediaType,
    UpstreamTimeout,
)
from gpumux.http.anthropic import api_key, presented_authorization, shape_for
from gpumux.http.anthropic_errors import ANTHROPIC
from gpumux.http.auth import ApiKeys
from gpumux.http.errors import OPENAI, error_response, sse_error_event
from gpumux.http.feedback import backend_error_event
from gpumux.http.request_log import key_hash, usage_from_tail


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidJson("bad"), 400, "invalid_request_error"),
        (MissingModel("no model"), 400, "invalid_request_error"),
        (UnsupportedMediaType("json only"), 400, "invalid_request_error"),
        (InvalidApiKey("key"), 401, "authentication_error"),
        (ModelNotFound("nope"), 404, "not_found_error"),
        (MethodNotAllowed("POST only"), 405, "invalid_request_error"),
        (RequestTooLarge("big"), 413, "request_too_large"),
        (QueueFull("full", retry_after=3), 529, "overloaded_error"),
        (QueueTimeout("waited"), 529, "overloaded_error"),
        (BackendCrashed("died", retry_after=5), 502, "api_error"),
        (BackendUnreachable("gone", retry_after=5), 502, "api_error"),
        (ModelUnavailable("cannot start", retry_after=5), 503, "api_error"),
        (ShuttingDown("bye", retry_after=5), 503, "api_error"),
        (UpstreamTimeout("hung", retry_after=5), 504, "timeout_error"),
    ],
)
def test_anthropic_status_and_type(error: GpumuxError, status: int, kind: str) -> None:
    response = error_response(error, "rid-1", ANTHROPIC)
    assert response.status == status
    assert response.body is not None
    body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    assert body == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
        "request_id": "rid-1",
    }
    assert response.headers["request-id"] == response.headers["X-Request-Id"] == "rid-1"


def test_anthropic_overload_keeps_the_retry_headers_the_sdk_obeys() -> None:
    response = error_response(QueueFull("full", retry_after=2.6), "r", ANTHROPIC)
    assert response.headers["Retry-After"] == "3"
    assert response.headers["x-should-retry"] == "true"
    # 529 is a 5xx: without a Retry-After the SDK is told not to retry blindly.
    assert error_response(QueueTimeout("waited"), "r", ANTHROPIC).headers["x-should-retry"] == (
        "false"
    )
    # A crash may be the request's own doing: never retried, whatever the API.
    crashed = error_response(BackendCrashed("died", retry_after=5), "r", ANTHROPIC)
    assert crashed.headers["x-should-retry"] == "false"


def test_openai_shape_is_unchanged() -> None:
    error = QueueFull("The queue for `a` is full.", retry_after=2)
    response = error_response(error, "rid")
    assert response.status == 429
    assert response.body is not None
    assert json.loads(bytes(response.body)) == error.envelope()  # type: ignore[arg-type]
    assert "request-id" not in response.headers
    assert sse_error_event(error) == (
        b"data: " + json.dumps(error.envelope()).encode() + b"\n\ndata: [DONE]\n\n"
    )
    refusal = backend_error_event(400, b'{"error": {"message": "too long"}}')
    assert refusal.endswith(b"data: [DONE]\n\n")
    assert b'"code": "upstream_error"' in refusal


def test_a_failed_anthropic_stream_ends_with_an_error_event() -> None:
    frame = sse_error_event(BackendCrashed("died"), ANTHROPIC)
    head, data = frame.split(b"\n", 1)
    assert head == b"event: error"
    assert data.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    assert json.loads(data[len(b"data: ") :]) == {
        "type": "error",
        "error": {"type": "api_error", "message": "died"},
    }
    assert b"[DONE]" not in frame
    # A backend's own refusal after loading feedback sent 200: its message, in the shape.
    payload = b'{"type": "error", "error": {"type": "BadRequestError", "message": "too long"}}'
    refusal = backend_error_event(400, payload, ANTHROPIC)
    assert refusal.startswith(b"event: error\ndata: ")
    assert json.loads(refusal.split(b"data: ", 1)[1])["error"] == {
        "type": "invalid_request_error",
        "message": "too long",
    }


def test_shape_follows_the_route() -> None:
    assert shape_for("/v1/messages") is ANTHROPIC
    assert shape_for("/v1/messages/count_tokens") is ANTHROPIC
    for path in ("/v1/chat/completions", "/v1/messages/other", "/health", "/v1/models"):
        assert shape_for(path) is OPENAI


def test_x_api_key_counts_only_where_the_route_takes_it() -> None:
    headers = CIMultiDict({"X-Api-Key": "k2"})
    assert api_key("/v1/messages", headers) == "k2"
    assert api_key("/v1/chat/completions", headers) is None
    keys = ApiKeys(["k1", "k2"])
    keys.check(None, "k2")
    keys.check("Bearer k1", None)
    keys.check("Bearer wrong", "k1")  # either presented key may be the valid one
    for authorization, key in ((None, None), (None, "nope"), ("Bearer nope", None), ("k1", None)):
        with pytest.raises(InvalidApiKey):
            keys.check(authorization, key)
    # The request log tells callers apart by key, whichever header carried it.
    logged = presented_authorization("/v1/messages", headers)
    assert key_hash(logged) == key_hash("Bearer k2")
    assert presented_authorization("/v1/chat/completions", headers) is None


def test_usage_is_read_from_anthropic_and_openai_tails() -> None:
    anthropic_tail = (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"end_turn"},"usage":{"input_tokens":12,"cache_read_input_tokens":4,'
        b'"output_tokens":7}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert usage_from_tail(anthropic_tail) == (12, 7)
    openai_tail = b'"usage":{"prompt_tokens":5,"total_tokens":8,"completion_tokens":3}'
    assert usage_from_tail(openai_tail) == (5, 3)
