"""Anthropic's Messages API in tests: bodies, the official SDK pointed at a gpumux daemon
(or any base URL), and readers for Anthropic-shaped errors and event streams.

Owns: nothing but client-side plumbing, so a failing test shows what the daemon sent.
Does not: start daemons (`tests.support.daemon`) or speak OpenAI's shapes (`client`).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic

from tests.support.client import Reply

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"


def messages_body(model: str = "a", text: str = "hi", **extra: Any) -> bytes:
    """A Messages body (3 tokens unless `max_tokens` says otherwise)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": text}],
    }
    body.update(extra)
    return json.dumps(body).encode()


def sdk(base_url: str, api_key: str = "unused", **options: Any) -> anthropic.Anthropic:
    """The official SDK on `base_url` (no retries unless `max_retries` says otherwise)."""
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", 60.0)
    return anthropic.Anthropic(base_url=base_url, api_key=api_key, **options)


def events(body: bytes) -> list[tuple[str | None, Any]]:
    """(event name, decoded data) for each SSE event; comments and blank lines skipped."""
    found: list[tuple[str | None, Any]] = []
    for block in body.decode().split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                text = line[len("data: ") :]
                data = text if text == "[DONE]" else json.loads(text)
        if name is not None or data is not None:
            found.append((name, data))
    return found


def assert_anthropic_error(reply: Reply, status: int, error_type: str) -> dict[str, Any]:
    """An Anthropic error body with `status` and `error_type`; the request id in both
    `request-id` (Anthropic's header) and `X-Request-Id` (gpumux's), and in the body."""
    assert reply.status == status, (reply.status, reply.body[:500])
    body = reply.json()
    assert body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == error_type, body
    assert body["error"]["message"], body
    assert reply.headers["request-id"] == reply.headers["x-request-id"] == body["request_id"]
    error: dict[str, Any] = body["error"]
    return error


def assert_failed_anthropic_stream(reply: Reply, error_type: str) -> dict[str, Any]:
    """A stream that failed after 200: it ends with Anthropic's `event: error` frame with
    `error_type`, and has no OpenAI ending (`[DONE]`), which the SDK would read as a clean end."""
    assert reply.status == 200, reply.body[:500]
    found = events(reply.body)
    assert found, reply.body
    name, data = found[-1]
    assert name == "error", reply.body[-500:]
    assert data["type"] == "error", data
    assert data["error"]["type"] == error_type, data
    assert b"[DONE]" not in reply.body
    assert ("message_stop", {"type": "message_stop"}) not in found
    error: dict[str, Any] = data["error"]
    return error
