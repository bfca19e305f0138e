"""The routes gpumux forwards, and how each one's body names its model: one table.

Owns: `ROUTES` (path → `Route`: the kind of body and whether the route can stream), the
two body kinds (`JSON_BODY`: `model`/`stream` peeked from a JSON object; `FORM_BODY`: the
`model`/`stream` fields of a `multipart/form-data` form, for the audio routes), each
kind's media-type check (415) and its rewrite of `model` for an alias.
Does not: read the body off the wire, resolve aliases, queue or forward (the proxy does),
or parse anything beyond the fields it routes by (`body`, `multipart`).

Only these paths reach a backend: vLLM's dev routes are unauthenticated, and every route
here is one a model answers (routing by `model`, queueing, switching, leases, metrics and
the request log are the same for all). The paths follow vLLM 0.32's routers: the rerank
family (`/rerank`, `/v1/rerank`, `/v2/rerank`), `/score` and `/v1/score`, `/pooling`,
`/classify`, and the two speech-to-text routes.

`streams` says whether a route ever answers with an event stream. A body's `stream: true`
on a route that cannot stream (rerank, score, ...) is ignored, so loading feedback never
writes SSE into a response the client reads as one JSON document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpumux.core.errors import UnsupportedMediaType
from gpumux.http import aliases, multipart
from gpumux.http.anthropic import COUNT_TOKENS_PATH, MESSAGES_PATH
from gpumux.http.body import Peeked, peek


@dataclass(frozen=True)
class BodyKind:
    """How a body names its model: the media type it must have, how to read `model` and
    `stream` from it (body, Content-Type header), and how to set `model` (for an alias)."""

    media_type: str
    read: Callable[[bytes, str], Peeked]
    with_model: Callable[[bytes, str, str], bytes]

    def check_media_type(self, media_type: str) -> None:
        """415 unless the request's media type (parameters stripped) is this kind's."""
        if media_type != self.media_type:
            raise UnsupportedMediaType(f"Content-Type must be {self.media_type}.")


def _read_json(body: bytes, content_type: str) -> Peeked:
    return peek(body)


def _json_with_model(body: bytes, content_type: str, model: str) -> bytes:
    return aliases.with_model(body, model)


def _read_form(body: bytes, content_type: str) -> Peeked:
    form = multipart.read_form(body, content_type)
    return Peeked(form.model, form.stream)


JSON_BODY = BodyKind("application/json", _read_json, _json_with_model)
#: The file stays as sent: an alias replaces only the `model` value's bytes.
FORM_BODY = BodyKind("multipart/form-data", _read_form, multipart.with_model)


@dataclass(frozen=True)
class Route:
    body: BodyKind
    streams: bool

    def read(self, body: bytes, content_type: str) -> Peeked:
        """`model`, and `stream` where this route can stream; a `ClientError` if bad."""
        peeked = self.body.read(body, content_type)
        return peeked if self.streams or not peeked.stream else Peeked(peeked.model, False)


_JSON_STREAM = Route(JSON_BODY, streams=True)
_JSON = Route(JSON_BODY, streams=False)
_FORM_STREAM = Route(FORM_BODY, streams=True)

#: Every forwarded path (POST only), with how its body is read.
ROUTES: dict[str, Route] = {
    "/v1/chat/completions": _JSON_STREAM,
    "/v1/completions": _JSON_STREAM,
    "/v1/responses": _JSON_STREAM,
    "/v1/embeddings": _JSON,
    "/tokenize": _JSON,
    "/detokenize": _JSON,
    "/rerank": _JSON,
    "/v1/rerank": _JSON,
    "/v2/rerank": _JSON,
    "/score": _JSON,
    "/v1/score": _JSON,
    "/pooling": _JSON,
    "/classify": _JSON,
    "/v1/audio/transcriptions": _FORM_STREAM,
    "/v1/audio/translations": _FORM_STREAM,
    MESSAGES_PATH: _JSON_STREAM,  # Anthropic's Messages API: errors in its shape (`anthropic`)
    COUNT_TOKENS_PATH: _JSON,
}
