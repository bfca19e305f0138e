"""vLLM's Anthropic Messages routes: ``/v1/messages`` and ``/v1/messages/count_tokens``.

Owns: reading a Messages body into a generation `Job` (system, messages, ``max_tokens``,
``stream``), the message and event shapes vLLM 0.32 writes (a ``message`` object; the
events ``message_start``, ``content_block_start``, ``content_block_delta`` with a
``text_delta``, ``content_block_stop``, ``message_delta`` with ``stop_reason`` and
``usage``, ``message_stop``, each ``event: X`` + ``data: {...}``, no ``[DONE]``), the
token count, and errors in vLLM's Anthropic shape (``{"type": "error", "error": {"type",
"message"}}``, ``type`` being vLLM's class-like name) — before the stream and, as an
``event: error`` frame, after it began.
Does not: generate, pace, queue or apply faults: ``generate.serve`` does all that for
every API, so the fault knobs (crash or hang after N chunks, error statuses, slow first
byte, keep-alive comments) apply here as to chat.
"""

from __future__ import annotations

from aiohttp import web

from mock_vllm import bodies as rq
from mock_vllm import generate
from mock_vllm.errors import ApiError
from mock_vllm.formats import sse
from mock_vllm.generate import OPTIONS, Job
from mock_vllm.textgen import count_tokens

#: vLLM's finish reasons as Anthropic stop reasons (an aborted request has none).
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def error_body(exc: ApiError) -> dict[str, object]:
    return {"type": "error", "error": {"type": exc.err_type, "message": exc.message}}


def error_frames(exc: ApiError) -> list[bytes]:
    return [sse(error_body(exc), "error")]


def _event(kind: str, **fields: object) -> bytes:
    return sse({"type": kind, **fields}, kind)


class MessagesFormat:
    """The Messages API as vLLM converts its chat completions into it."""

    def __init__(self, request_id: str, model: str, prompt_tokens: int) -> None:
        self.id = f"chatcmpl-{request_id}"  # vLLM keeps the chat completion's id
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.block_open = False

    def _message(
        self, content: list[dict[str, object]], stop: str | None, n_out: int
    ) -> dict[str, object]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": self.model,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": n_out},
        }

    def full(self, text: str, finish: str, prompt_tokens: int, n_out: int) -> dict[str, object]:
        message = self._message([{"type": "text", "text": text}], _STOP_REASONS.get(finish), n_out)
        # vLLM serialises the whole message without its null fields (`stop_sequence` but
        # for a matched stop string); the stream's `message_start` keeps them.
        return {key: value for key, value in message.items() if value is not None}

    def open_frames(self) -> list[bytes]:
        return [_event("message_start", message=self._message([], None, 0))]

    def token_frame(self, piece: str) -> bytes:
        # vLLM opens the text block at the first text it has, in the same write.
        opening = b""
        if not self.block_open:
            self.block_open = True
            block = {"type": "text", "text": ""}
            opening = _event("content_block_start", index=0, content_block=block)
        delta = {"type": "text_delta", "text": piece}
        return opening + _event("content_block_delta", index=0, delta=delta)

    def close_frames(
        self, finish: str, prompt_tokens: int, n_out: int, include_usage: bool
    ) -> list[bytes]:
        frames = [_event("content_block_stop", index=0)] if self.block_open else []
        delta = {"stop_reason": _STOP_REASONS.get(finish), "stop_sequence": None}
        usage = {"input_tokens": prompt_tokens, "output_tokens": n_out}
        frames.append(_event("message_delta", delta=delta, usage=usage))
        return [*frames, _event("message_stop")]


def messages_prompt(body: dict[str, object]) -> str:
    """The prompt the fake model reads: the system text, then the conversation."""
    system = body.get("system")
    if isinstance(system, list):
        system = " ".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    conversation = rq.chat_prompt(body)
    return f"system: {system}\n{conversation}" if isinstance(system, str) else conversation


def _require_model(body: dict[str, object]) -> None:
    # vLLM's Messages request has `model` as a required field (chat defaults it).
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError(400, "Field required: model", "BadRequestError", "model")


def _parse(body: dict[str, object], rid: str, model: str) -> Job:
    limit, explicit = rq.max_tokens(body, "max_tokens")
    prompt = messages_prompt(body)
    fmt = MessagesFormat(rid, model, count_tokens(prompt))
    stream = body.get("stream") is True
    return Job(prompt, limit, explicit, stream, True, fmt, error_frames)


async def messages(request: web.Request) -> web.StreamResponse:
    try:
        _require_model(await rq.read_json(request))  # aiohttp keeps the body: serve reads it again
        return await generate.serve(request, _parse)
    except ApiError as exc:
        return web.json_response(error_body(exc), status=exc.status)


async def count_tokens_route(request: web.Request) -> web.StreamResponse:
    try:
        body = await rq.read_json(request)
        _require_model(body)
        rq.check_model(body, request.app[OPTIONS])
        count = count_tokens(messages_prompt(body))
    except ApiError as exc:
        return web.json_response(error_body(exc), status=exc.status)
    return web.json_response(
        {"input_tokens": count, "context_management": {"original_input_tokens": count}}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens_route)
