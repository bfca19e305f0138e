"""The generation routes: chat, completions, responses; streaming and not.

Owns: one request's path through the engine (record, fault status, slow first byte,
queue, tokens, close), SSE writing with chunk faults and keep-alive comments, and
noticing a client that went away (cancellation or a failed write).
Does not: know the body shapes (``formats``) or parse requests (``bodies``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from mock_vllm import bodies as rq
from mock_vllm.engine import Engine, Request
from mock_vllm.errors import ApiError
from mock_vllm.formats import DONE, ChatFormat, CompletionFormat, Format, ResponsesFormat, sse
from mock_vllm.options import ServeOptions
from mock_vllm.textgen import count_tokens

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
OPTIONS: web.AppKey[ServeOptions] = web.AppKey("options", ServeOptions)
#: The served LoRA adapters (name → path); `lora` fills it.
LORA: web.AppKey[dict[str, str]] = web.AppKey("lora_served", dict)

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def openai_error_frames(exc: ApiError) -> list[bytes]:
    return [sse(exc.body()), DONE]


@dataclass
class Job:
    """One generation request, parsed."""

    prompt: str
    max_tokens: int
    explicit_limit: bool
    stream: bool
    include_usage: bool
    fmt: Format
    # How a failure after the headers went out ends the stream: vLLM's OpenAI routes send
    # an error chunk and [DONE]; its Anthropic route an `event: error` frame.
    error_frames: Callable[[ApiError], list[bytes]] = openai_error_frames
    adapter: str | None = None  # the LoRA adapter serving it: its answer says so

    def finish_reason(self, completed: bool) -> str:
        if not completed:
            return "abort"
        return "length" if self.explicit_limit else "stop"


def _stream_flags(body: dict[str, object]) -> tuple[bool, bool]:
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include = isinstance(options, dict) and options.get("include_usage") is True
    return stream, include


async def _run(
    request: web.Request, engine: Engine, req: Request, job: Job, rid: str
) -> web.StreamResponse:
    faults = engine.faults
    engine.check_alive()
    status = faults.error_status_for(job.prompt)
    if status is not None:
        raise ApiError(status, "mock fault: http_error_status")
    if faults.slow_first_byte_secs > 0:
        await asyncio.sleep(faults.slow_first_byte_secs)
    prompt_tokens = count_tokens(job.prompt)
    if not job.stream:
        pieces: list[str] = []

        async def collect(piece: str) -> None:
            pieces.append(piece)
            await engine.after_chunk(len(pieces))

        done = await engine.admit(req)
        if done:
            await engine.after_chunk(0)
            done = await engine.generate(req, job.prompt, job.max_tokens, collect, job.adapter)
        engine.check_alive()
        req.finish_reason = job.finish_reason(done)
        body = job.fmt.full("".join(pieces), req.finish_reason, prompt_tokens, len(pieces))
        return web.json_response(body, headers={"X-Request-Id": rid})

    resp = web.StreamResponse(headers={**SSE_HEADERS, "X-Request-Id": rid})
    await resp.prepare(request)
    sent = 0
    n_out = 0

    async def send(frame: bytes) -> None:
        nonlocal sent
        await resp.write(frame)
        sent += 1
        await engine.after_chunk(sent)

    async def keepalive() -> None:
        await resp.write(b": keep-alive\n\n")

    async def on_token(piece: str) -> None:
        nonlocal n_out
        n_out += 1
        await send(job.fmt.token_frame(piece))

    try:
        every = faults.sse_keepalive_secs
        done = await engine.admit(req, keepalive if every > 0 else None, every)
        if done:
            await engine.after_chunk(0)
            for frame in job.fmt.open_frames():
                await send(frame)
            done = await engine.generate(req, job.prompt, job.max_tokens, on_token, job.adapter)
        engine.check_alive()
        req.finish_reason = job.finish_reason(done)
        closing = job.fmt.close_frames(req.finish_reason, prompt_tokens, n_out, job.include_usage)
        for frame in closing:
            await (resp.write(frame) if frame == DONE else send(frame))
        await resp.write_eof()
    except ApiError as exc:
        # Headers are gone already: vLLM reports a mid-stream failure as an error event.
        for frame in job.error_frames(exc):
            await resp.write(frame)
        await resp.write_eof()
    except ConnectionError:
        # The peer reset the connection between two writes.
        engine.client_abort(req)
    return resp


async def serve(
    request: web.Request, parse: Callable[[dict[str, object], str, str], Job]
) -> web.StreamResponse:
    """One generation request of any API: `parse` turns its body into a `Job`."""
    body = await rq.read_json(request)
    adapters = request.app[LORA]
    model = rq.check_model(body, request.app[OPTIONS], adapters)
    rid = rq.request_id(request)
    job = parse(body, rid, model)
    if model in adapters:
        job.adapter = model
    return await serve_job(request, job, rid)


async def serve_job(request: web.Request, job: Job, rid: str) -> web.StreamResponse:
    """Run one parsed generation request (any API, ``audio`` included) to its response."""
    engine, opts = request.app[ENGINE], request.app[OPTIONS]
    if count_tokens(job.prompt) + job.max_tokens > opts.max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {opts.max_model_len} "
            "tokens. Please reduce the length of the messages or completion.",
        )
    req = engine.new_request(rid, request.path, job.stream)
    try:
        return await _run(request, engine, req, job, rid)
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client disconnects (handler_cancellation).
        engine.client_abort(req)
        raise
    finally:
        engine.finish(req)


def _chat(body: dict[str, object], rid: str, model: str) -> Job:
    rq.check_n(body)
    limit, explicit = rq.max_tokens(body, "max_completion_tokens", "max_tokens")
    stream, include = _stream_flags(body)
    return Job(rq.chat_prompt(body), limit, explicit, stream, include, ChatFormat(rid, model))


def _completion(body: dict[str, object], rid: str, model: str) -> Job:
    rq.check_n(body)
    limit, explicit = rq.max_tokens(body, "max_tokens")
    stream, include = _stream_flags(body)
    fmt = CompletionFormat(rid, model)
    return Job(rq.completion_prompt(body), limit, explicit, stream, include, fmt)


def _responses(body: dict[str, object], rid: str, model: str) -> Job:
    limit, explicit = rq.max_tokens(body, "max_output_tokens")
    fmt = ResponsesFormat(rid, model)
    return Job(rq.responses_prompt(body), limit, explicit, body.get("stream") is True, False, fmt)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await serve(request, _chat)


async def completions(request: web.Request) -> web.StreamResponse:
    return await serve(request, _completion)


async def responses(request: web.Request) -> web.StreamResponse:
    return await serve(request, _responses)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", responses)
