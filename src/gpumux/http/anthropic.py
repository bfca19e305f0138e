"""Anthropic's Messages API on the proxy: which routes speak it and what they accept.

Owns: the Anthropic routes (`/v1/messages`, `/v1/messages/count_tokens`), the error shape
a request's route calls for (`shape_for`: Anthropic's on these routes, OpenAI's on every
other), and the key a request presents there: Anthropic clients send `x-api-key`, which
these routes accept as well as `Authorization: Bearer`.
Does not: forward. These routes go through the proxy's one path for every forwarded
request (the body's `model` and `stream`, aliases, queueing, switching, leases, metrics
with the path as `endpoint`, the request log, a stream relayed byte for byte); only the
error shape and the key header differ. Errors are rendered by `anthropic_errors`.
"""

from __future__ import annotations

from multidict import MultiMapping

from gpumux.http.anthropic_errors import ANTHROPIC
from gpumux.http.errors import OPENAI, ErrorShape

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
ANTHROPIC_PATHS = frozenset({MESSAGES_PATH, COUNT_TOKENS_PATH})
API_KEY_HEADER = "x-api-key"


def shape_for(path: str) -> ErrorShape:
    """The error shape for a request to `path` (the raw path, without its query)."""
    return ANTHROPIC if path in ANTHROPIC_PATHS else OPENAI


def api_key(path: str, headers: MultiMapping[str]) -> str | None:
    """The `x-api-key` a request to `path` presents, where the route accepts one."""
    return headers.get(API_KEY_HEADER) if path in ANTHROPIC_PATHS else None


def presented_authorization(path: str, headers: MultiMapping[str]) -> str | None:
    """The `Authorization` value the request log hashes: the header itself, else the
    `x-api-key` as a Bearer token (the same key hashes the same either way)."""
    given = headers.get("Authorization")
    if given is None and (key := api_key(path, headers)):
        return f"Bearer {key}"
    return given
