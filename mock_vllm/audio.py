"""Speech to text: ``/v1/audio/transcriptions`` and ``/v1/audio/translations`` with vLLM
0.32's shapes, read from a `multipart/form-data` body as vLLM's form parser reads it.

Owns: the form (`file`, `model` (the last one wins, as in Starlette), `prompt`,
`response_format`, `language`, `stream`, `stream_include_usage`,
`max_completion_tokens`), the bodies: `json` `{"text", "usage": {"type": "duration",
"seconds"}}`, `verbose_json` (`duration`, `language`, `text`, one segment), `text` (plain
text), and the stream (`transcription.chunk` / `translation.chunk` events, `[DONE]`).
The text is deterministic in the model, the audio's bytes and the prompt.
Does not: decode audio (the "duration" counts 16 kHz 16-bit mono bytes) or pace and fault
the generation (`generate.serve_job` does, as for chat).
"""

from __future__ import annotations

import hashlib
import json
import time

from aiohttp import web
from multidict import MultiDictProxy

from mock_vllm import bodies
from mock_vllm.errors import ApiError
from mock_vllm.formats import DONE, sse
from mock_vllm.generate import OPTIONS, Job, serve_job

_Form = MultiDictProxy[str | bytes | bytearray | web.FileField]
_FORMATS = ("json", "text", "verbose_json")
#: Pydantic's spellings of a true bool (vLLM's form model reads flags with it).
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_BYTES_PER_SECOND = 32_000  # 16 kHz, 16-bit, mono
_DEFAULT_TOKENS = 8


class SpeechFormat:
    """Transcription or translation bodies and stream frames (the `Format` protocol)."""

    def __init__(self, task: str, rid: str, model: str, seconds: float, language: str) -> None:
        self.task = task
        self.id = f"{task[:4]}-{rid}"
        self.model = model
        self.created = int(time.time())
        self.seconds = seconds
        self.language = language
        self.verbose = False

    def full(self, text: str, finish: str, prompt_tokens: int, n_out: int) -> dict[str, object]:
        if not self.verbose:
            return {"text": text, "usage": {"type": "duration", "seconds": round(self.seconds)}}
        segment = {"id": 0, "avg_logprob": -0.25, "compression_ratio": 1.0, "end": self.seconds,
                   "no_speech_prob": None, "seek": 0, "start": 0.0, "temperature": 0.0,
                   "text": text, "tokens": list(range(n_out))}  # fmt: skip
        return {"duration": self.seconds, "language": self.language, "text": text,
                "segments": [segment], "words": None}  # fmt: skip

    def _chunk(self, choices: list[dict[str, object]], **extra: object) -> bytes:
        return sse({"id": self.id, "object": f"{self.task}.chunk", "created": self.created,
                    "model": self.model, "choices": choices, **extra})  # fmt: skip

    def open_frames(self) -> list[bytes]:
        return []

    def token_frame(self, piece: str) -> bytes:
        return self._chunk([{"delta": {"content": piece}, "finish_reason": None,
                             "stop_reason": None}])  # fmt: skip

    def close_frames(
        self, finish: str, prompt_tokens: int, n_out: int, include_usage: bool
    ) -> list[bytes]:
        frames = [self._chunk([{"delta": {}, "finish_reason": finish, "stop_reason": None}])]
        if include_usage:
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n_out,
                     "total_tokens": prompt_tokens + n_out}  # fmt: skip
            frames.append(self._chunk([], usage=usage))
        return [*frames, DONE]


def _last(form: _Form, name: str) -> str | None:
    values = form.getall(name, [])
    value = values[-1] if values else None
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name} must be a form field, not a file", param=name)
    return value


def _flag(form: _Form, name: str) -> bool:
    return (_last(form, name) or "").strip().lower() in _TRUE


async def _speech(request: web.Request, task: str) -> web.StreamResponse:
    opts = request.app[OPTIONS]
    if request.content_type != "multipart/form-data":
        raise ApiError(400, "The request must be multipart/form-data with a `file` part")
    form = await request.post()
    model = bodies.check_model({"model": _last(form, "model")}, opts)
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise ApiError(400, "file: a file part is required", param="file")
    audio = upload.file.read()
    response_format = _last(form, "response_format") or "json"
    if response_format not in _FORMATS:
        raise ApiError(400, "Currently only support response_format: `text`, `json`, "
                       "`verbose_json`", param="response_format")  # fmt: skip
    limit_text = _last(form, "max_completion_tokens")
    try:
        limit = int(limit_text) if limit_text else _DEFAULT_TOKENS
    except ValueError:
        raise ApiError(400, "max_completion_tokens must be an integer") from None
    if limit < 1:
        raise ApiError(400, "max_completion_tokens must be at least 1")
    stream = _flag(form, "stream")
    include_usage = _flag(form, "stream_include_usage")
    if include_usage and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.",
                       param="stream_include_usage")  # fmt: skip
    rid = bodies.request_id(request)
    digest = hashlib.sha256(audio).hexdigest()[:16]
    prompt = f"{task} {digest} {_last(form, 'prompt') or ''}".strip()
    fmt = SpeechFormat(task, rid, model, len(audio) / _BYTES_PER_SECOND,
                       _last(form, "language") or "en")  # fmt: skip
    fmt.verbose = response_format == "verbose_json"
    job = Job(prompt, limit, limit_text is not None, stream, include_usage, fmt)
    response = await serve_job(request, job, rid)
    if response_format != "text" or stream or not isinstance(response, web.Response):
        return response
    assert isinstance(response.body, bytes)  # a JSON body `serve_job` wrote
    text = json.loads(response.body)["text"]
    return web.Response(text=text, content_type="text/plain", headers={"X-Request-Id": rid})


async def transcriptions(request: web.Request) -> web.StreamResponse:
    return await _speech(request, "transcription")


async def translations(request: web.Request) -> web.StreamResponse:
    return await _speech(request, "translation")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/translations", translations)
