"""Reading an OpenAI request the way vLLM's front end does.

Owns: the JSON-only content type, body parsing, the model-name check, the request id
(``X-Request-Id`` echoed, else generated), and prompt extraction per API.
Does not: generate or write responses.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection

from aiohttp import web

from mock_vllm.errors import ApiError
from mock_vllm.options import ServeOptions

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


async def read_json(request: web.Request) -> dict[str, object]:
    """The body as a JSON object, or 400 like vLLM (content type, syntax, shape)."""
    if request.content_type != "application/json":
        raise ApiError(400, "Unsupported Media Type: Only 'application/json' is allowed")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Input should be a valid dictionary or object")
    return body


def request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def check_model(body: dict[str, object], opts: ServeOptions, adapters: Collection[str] = ()) -> str:
    """The served name (or loaded LoRA adapter) the body asks for (vLLM defaults a
    missing one), or 404."""
    model = body.get("model")
    if model is None:
        return opts.model_id
    if model not in opts.served_names and model not in adapters:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    return str(model)


def _text(content: object) -> str:
    """Message content: a string, or a list of parts of which the text ones count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise ApiError(400, "content must be a string or a list of content parts")


def chat_prompt(body: dict[str, object]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    if not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "each message must be an object", param="messages")
    return "\n".join(f"{m.get('role', 'user')}: {_text(m.get('content'))}" for m in messages)


def completion_prompt(body: dict[str, object]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return " ".join(str(t) for t in prompt)  # token ids: one fake token each
    raise ApiError(
        400, "prompt must be a string, a list of one string, or token ids", param="prompt"
    )


def responses_prompt(body: dict[str, object]) -> str:
    given = body.get("input")
    if isinstance(given, str):
        text = given
    elif isinstance(given, list) and all(isinstance(m, dict) for m in given):
        text = "\n".join(_text(m.get("content")) for m in given)
    else:
        raise ApiError(400, "input must be a string or a list of messages", param="input")
    instructions = body.get("instructions")
    return f"{instructions}\n{text}" if isinstance(instructions, str) else text


def max_tokens(body: dict[str, object], *keys: str, default: int = 16) -> tuple[int, bool]:
    """(limit, explicit): the first key present, else ``default`` ending in a "stop"."""
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"{key} must be at least 1, got {value!r}.", param=key)
        return value, True
    return default, False


def check_n(body: dict[str, object]) -> None:
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "mock-vllm supports only n=1", param="n")
