"""The audio routes through the real daemon: the official `openai` SDK's transcription and
translation (multipart forms) routed by their `model` field (an alias too) with a switch,
`text`/`verbose_json`, a streamed transcription, the form refusals (415, missing, twice,
no boundary, unknown model), the endpoint label and the request log; and, against a
backend that mirrors what it got, a form forwarded byte for byte — or with only the
`model` value's bytes replaced when the client named an alias."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.admin import Admin
from tests.support.client import Reply, assert_openai_error, post
from tests.support.daemon import RunningDaemon, chat, mock_model, running_daemon
from tests.support.echo_backend import ECHO_COMMAND
from tests.support.metrics import metric_value
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

TOKEN = "audio-routes-token"
AUDIO = bytes(range(256)) * 64  # 16 KiB of every byte value: CR, LF and dashes included
OTHER_AUDIO = AUDIO[::-1]
BOUNDARY = "gpumux-test-boundary"
TRANSCRIBE = "/v1/audio/transcriptions"
TRANSLATE = "/v1/audio/translations"


def form(*fields: tuple[str, str], audio: bytes = AUDIO, boundary: str = BOUNDARY) -> bytes:
    """A form as a client writes it: the fields, then the file."""
    parts = [
        f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
        for name, value in fields
    ]
    parts.append(
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio
    )
    delimiter = b"--" + boundary.encode()
    return b"".join(delimiter + b"\r\n" + p + b"\r\n" for p in parts) + delimiter + b"--\r\n"


def send_form(daemon: RunningDaemon, path: str, body: bytes, content_type: str = "") -> Reply:
    kind = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return post(daemon, path, body, headers={"Content-Type": kind})


@pytest.mark.timeout(180)
def test_the_openai_sdk_transcribes_and_translates_through_gpumux(tmp_path: Path) -> None:
    models = {"chat": mock_model(), "whisper": mock_model(aliases=["whisper-1"])}
    with running_daemon(
        tmp_path, models, env={"T": TOKEN}, admin_port=free_port(), admin_token_env="T"
    ) as daemon:
        chat(daemon, "chat")  # one awake at a time: the transcription must switch
        with openai.OpenAI(
            base_url=daemon.url + "/v1", api_key="unused", max_retries=0, timeout=60
        ) as sdk:
            audio = sdk.audio
            first = audio.transcriptions.create(model="whisper-1", file=("a.wav", AUDIO))
            assert metric_value(daemon, "gpumux_switches_total", to="whisper", outcome="ok") == 1
            again = audio.transcriptions.create(model="whisper", file=("b.wav", AUDIO))
            other = audio.transcriptions.create(model="whisper", file=("a.wav", OTHER_AUDIO))
            assert first.text
            assert first.text == again.text  # deterministic in the audio's bytes
            assert other.text != first.text
            text = audio.transcriptions.create(
                model="whisper", file=("a.wav", AUDIO), response_format="text"
            )
            assert isinstance(text, str)
            assert text == first.text
            verbose = audio.transcriptions.create(
                model="whisper-1", file=("a.wav", AUDIO), response_format="verbose_json"
            )
            assert verbose.text == first.text
            assert verbose.duration == pytest.approx(len(AUDIO) / 32_000)
            # openai 3.x marks translations deprecated (OpenAI's own endpoint); vLLM serves it.
            with pytest.warns(DeprecationWarning, match="deprecated"):
                translated = audio.translations.create(model="whisper-1", file=("a.wav", AUDIO))
            assert translated.text
            assert translated.text != first.text
            with pytest.raises(openai.NotFoundError):
                audio.transcriptions.create(model="nope", file=("a.wav", AUDIO))

        streamed = send_form(daemon, TRANSCRIBE, form(("model", "whisper-1"), ("stream", "true")))
        assert streamed.status == 200, streamed.body
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.body.endswith(b"data: [DONE]\n\n")
        chunks = [
            json.loads(line[len(b"data: ") :])
            for line in streamed.body.split(b"\n")
            if line.startswith(b"data: {")
        ]
        assert {c["object"] for c in chunks} == {"transcription.chunk"}
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == first.text

        assert_refusals(daemon)
        for path, count in ((TRANSCRIBE, 6), (TRANSLATE, 1)):
            labels = {"model": "whisper", "endpoint": path, "code": "200"}
            assert metric_value(daemon, "gpumux_requests_total", **labels) == count
        code, body = Admin(daemon, TOKEN).get("/api/requests?limit=100&model=whisper")
        assert code == 200, body
        logged = [(r["endpoint"], r["alias"], r["status"]) for r in body["requests"]]
        assert (TRANSLATE, "whisper-1", 200) in logged
        assert (TRANSCRIBE, None, 200) in logged


def assert_refusals(daemon: RunningDaemon) -> None:
    """Each malformed form is refused with an OpenAI-shaped error, before any queueing."""
    body = form(("model", "whisper"))
    as_json = send_form(daemon, TRANSCRIBE, body, "application/json")
    assert_openai_error(as_json, 415, "unsupported_media_type")
    no_boundary = send_form(daemon, TRANSCRIBE, body, "multipart/form-data")
    assert "boundary" in assert_openai_error(no_boundary, 400, "invalid_request")["message"]
    missing = send_form(daemon, TRANSLATE, form(("language", "en")))
    assert assert_openai_error(missing, 400, "missing_model")["param"] == "model"
    twice = send_form(daemon, TRANSCRIBE, form(("model", "whisper"), ("model", "chat")))
    assert "more than one" in assert_openai_error(twice, 400)["message"]
    too_long = send_form(daemon, TRANSCRIBE, form(("model", "w" * 5000)))
    assert_openai_error(too_long, 400, "invalid_request")
    cut = send_form(daemon, TRANSCRIBE, body[:-40])
    assert "closing delimiter" in assert_openai_error(cut, 400)["message"]
    unknown = send_form(daemon, TRANSLATE, form(("model", "nope")))
    assert_openai_error(unknown, 404, "model_not_found")
    # A form gpumux can route but the backend refuses: its 400, in vLLM's shape.
    no_file = form(("model", "whisper")).replace(b'; filename="a.wav"', b"")
    refused = send_form(daemon, TRANSCRIBE, no_file)
    assert refused.status == 400, refused.body
    assert refused.json()["error"]["param"] == "file"


def mirrored(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply.body[:500]
    found: dict[str, Any] = reply.json()
    return found


@pytest.mark.timeout(120)
def test_a_form_reaches_the_backend_byte_for_byte(tmp_path: Path) -> None:
    model = mock_model(aliases=["echo-alias"])
    model["extra_args"] = []
    with running_daemon(tmp_path, {"echo": model}, vllm_command=list(ECHO_COMMAND)) as daemon:
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
        sent = form(("model", "echo"), ("prompt", "--" + BOUNDARY + "-ish text"))
        got = mirrored(send_form(daemon, TRANSCRIBE, sent, content_type))
        assert got["raw_path"] == TRANSCRIBE
        assert got["body_sha256"] == hashlib.sha256(sent).hexdigest()
        headers = {k.lower(): v for k, v in got["headers"]}
        assert headers["content-type"] == content_type  # the boundary unchanged
        assert int(headers["content-length"]) == len(sent)

        # Through an alias: only the `model` value's bytes change.
        aliased = form(("prompt", "x"), ("model", "echo-alias"))
        got = mirrored(send_form(daemon, TRANSLATE, aliased, content_type))
        expected = aliased.replace(b"\r\n\r\necho-alias\r\n", b"\r\n\r\necho\r\n")
        assert got["body_sha256"] == hashlib.sha256(expected).hexdigest()
        assert {k.lower(): v for k, v in got["headers"]}["content-type"] == content_type
