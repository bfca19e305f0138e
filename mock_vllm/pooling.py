"""Embeddings, tokenize and detokenize: the non-generating OpenAI-side routes.

Owns: their request checks and response shapes. Embeddings queue in the engine like any
model work (they wait while asleep); tokenizing needs only the tokenizer, so it does not.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from mock_vllm import bodies, textgen
from mock_vllm.errors import ApiError
from mock_vllm.generate import ENGINE, OPTIONS


def _inputs(body: dict[str, object]) -> list[str]:
    given = body.get("input")
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and given and all(isinstance(x, str) for x in given):
        return [str(x) for x in given]
    if isinstance(given, list) and given and all(isinstance(x, int) for x in given):
        return [" ".join(str(x) for x in given)]
    raise ApiError(400, "input must be a string, a list of strings, or token ids", param="input")


async def embeddings(request: web.Request) -> web.Response:
    engine, opts = request.app[ENGINE], request.app[OPTIONS]
    body = await bodies.read_json(request)
    model = bodies.check_model(body, opts)
    texts = _inputs(body)
    rid = bodies.request_id(request)
    req = engine.new_request(rid, request.path, False)
    try:
        engine.check_alive()
        status = engine.faults.error_status_for("\n".join(texts))
        if status is not None:
            raise ApiError(status, "mock fault: http_error_status")
        if not await engine.admit(req):
            req.finish_reason = "abort"
            raise ApiError(500, "Request was aborted.")
        await asyncio.sleep(opts.ttft_ms / 1000)
        req.finish_reason = "stop"
    except asyncio.CancelledError:
        engine.client_abort(req)
        raise
    finally:
        engine.finish(req)
    data = [
        {"index": i, "object": "embedding",
         "embedding": textgen.embedding(model, text, opts.embedding_dim)}
        for i, text in enumerate(texts)
    ]  # fmt: skip
    tokens = sum(textgen.count_tokens(t) for t in texts)
    engine.stats.prompt_tokens += tokens
    return web.json_response(
        {"id": f"embd-{rid}", "object": "list", "created": int(time.time()),
         "model": model, "data": data,
         "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                   "prompt_tokens_details": None}},
        headers={"X-Request-Id": rid},
    )  # fmt: skip


async def tokenize(request: web.Request) -> web.Response:
    opts = request.app[OPTIONS]
    body = await bodies.read_json(request)
    bodies.check_model(body, opts)
    if "messages" in body:
        text = bodies.chat_prompt(body)
    elif isinstance(body.get("prompt"), str):
        text = str(body["prompt"])
    else:
        raise ApiError(400, "prompt (string) or messages is required", param="prompt")
    tokens = textgen.tokenize(text)
    return web.json_response(
        {
            "count": len(tokens),
            "max_model_len": opts.max_model_len,
            "tokens": tokens,
            "token_strs": None,
        }
    )


async def detokenize(request: web.Request) -> web.Response:
    opts = request.app[OPTIONS]
    body = await bodies.read_json(request)
    bodies.check_model(body, opts)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise ApiError(400, "tokens must be a list of integers", param="tokens")
    return web.json_response({"prompt": textgen.detokenize([int(t) for t in tokens])})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
