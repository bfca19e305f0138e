"""The route table in process: which paths are forwarded, how each body names its model,
the media type each one requires, `stream` only where a route can stream, and an alias
rewrite per body kind (a form keeps every byte but the `model` value)."""

from __future__ import annotations

import json

import pytest

from gpumux.core.errors import ClientError, MissingModel, UnsupportedMediaType
from gpumux.http.body import Peeked
from gpumux.http.routes import FORM_BODY, JSON_BODY, ROUTES

pytestmark = pytest.mark.unit

FORM_TYPE = "multipart/form-data; boundary=b0undary"
AUDIO = bytes(range(256)) * 4  # every byte value, CR and LF included


def form(model: str, *, stream: str | None = None) -> bytes:
    parts = [
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + AUDIO,
        b'Content-Disposition: form-data; name="model"\r\n\r\n' + model.encode(),
    ]
    if stream is not None:
        parts.append(b'Content-Disposition: form-data; name="stream"\r\n\r\n' + stream.encode())
    return b"".join(b"--b0undary\r\n" + p + b"\r\n" for p in parts) + b"--b0undary--\r\n"


def test_the_table_forwards_vllms_model_routes_and_nothing_else() -> None:
    # vLLM 0.32's routers: generate, pooling (embed/score/rerank/pooling/classify),
    # tokenize, speech-to-text and Anthropic's Messages; dev routes (/sleep,
    # /collective_rpc, ...) never.
    assert set(ROUTES) == {
        "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings",
        "/tokenize", "/detokenize", "/rerank", "/v1/rerank", "/v2/rerank", "/score",
        "/v1/score", "/pooling", "/classify", "/v1/audio/transcriptions",
        "/v1/audio/translations", "/v1/messages", "/v1/messages/count_tokens",
    }  # fmt: skip
    forms = {path for path, route in ROUTES.items() if route.body is FORM_BODY}
    assert forms == {"/v1/audio/transcriptions", "/v1/audio/translations"}
    assert all(route.body is JSON_BODY for path, route in ROUTES.items() if path not in forms)
    streaming = {path for path, route in ROUTES.items() if route.streams}
    assert streaming == {
        "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", *forms
    }  # fmt: skip


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("/rerank", "multipart/form-data"), ("/score", "text/plain"),
     ("/v1/audio/transcriptions", "application/json"),
     ("/v1/audio/translations", "application/x-www-form-urlencoded")],
)  # fmt: skip
def test_a_body_of_the_wrong_media_type_is_415(path: str, media_type: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=ROUTES[path].body.media_type):
        ROUTES[path].body.check_media_type(media_type)
    ROUTES[path].body.check_media_type(ROUTES[path].body.media_type)


def test_stream_counts_only_on_routes_that_stream() -> None:
    body = json.dumps({"model": "m", "stream": True, "query": "q", "documents": ["d"]}).encode()
    assert ROUTES["/rerank"].read(body, "application/json") == Peeked("m", False)
    assert ROUTES["/v1/chat/completions"].read(body, "application/json") == Peeked("m", True)
    path = "/v1/audio/transcriptions"
    assert ROUTES[path].read(form("whisper", stream="true"), FORM_TYPE) == Peeked("whisper", True)
    assert ROUTES[path].read(form("whisper"), FORM_TYPE) == Peeked("whisper", False)


def test_an_alias_is_rewritten_per_body_kind() -> None:
    body = b'{"model":"alias","query":"caf\xc3\xa9","documents":["a"],"top_n":1}'
    rewritten = JSON_BODY.with_model(body, "application/json", "real")
    assert json.loads(rewritten) == {**json.loads(body), "model": "real"}

    sent = form("alias")
    rewritten = FORM_BODY.with_model(sent, FORM_TYPE, "the-real-model")
    assert rewritten == form("the-real-model")  # the audio and every header as sent
    assert FORM_BODY.read(rewritten, FORM_TYPE) == Peeked("the-real-model", False)


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [(form("w"), "multipart/form-data", ClientError),  # no boundary
     (form("w"), "multipart/form-data; boundary=other", ClientError),
     (form("w").replace(b'name="model"', b'name="modelx"'), FORM_TYPE, MissingModel),
     (form("w").replace(b"--b0undary--", b'--b0undary\r\nContent-Disposition: form-data; '
                        b'name="model"\r\n\r\nv\r\n--b0undary--'), FORM_TYPE, ClientError),
     (form("m" * 2000), FORM_TYPE, ClientError)],
)  # fmt: skip
def test_a_bad_form_is_a_client_error(body: bytes, content_type: str, error: type) -> None:
    with pytest.raises(error):
        ROUTES["/v1/audio/translations"].read(body, content_type)
