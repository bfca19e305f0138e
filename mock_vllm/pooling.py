"""Embeddings, tokenize and detokenize: the non-generating OpenAI-side routes, and the
one path every pooling request takes through the engine (`pooled`).

Owns: their request checks and response shapes, and `pooled`: a pooling request
(embeddings, rerank, score, pooling, classify) queues in the engine like any model work
(it waits while asleep) and obeys the fault knobs: `http_error_status` (with its marker),
`slow_first_byte_secs`, and the chunk faults at zero chunks (a pooling answer is one
piece, so `crash_after_chunks`/`hang_after_chunks` of 0 crash or hang before it).
Tokenizing needs only the tokenizer, so it does not queue.
Does not: the scoring and classification shapes (`scoring`, `classify`) or audio (`audio`).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from mock_vllm import bodies, textgen
from mock_vllm.errors import ApiError
from mock_vllm.generate import ENGINE, OPTIONS


def inputs(body: dict[str, object]) -> list[str]:
    given = body.get("input")
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and given and all(isinstance(x, str) for x in given):
        return [str(x) for x in given]
    if isinstance(given, list) and given and all(isinstance(x, int) for x in given):
        return [" ".join(str(x) for x in given)]
    raise ApiError(400, "input must be a string, a list of strings, or token ids", param="input")


async def pooled(request: web.Request, rid: str, texts: list[str]) -> int:
    """Run one pooling request over `texts` through the engine; its prompt tokens."""
    engine, opts = request.app[ENGINE], request.app[OPTIONS]
    req = engine.new_request(rid, request.path, False)
    try:
        engine.check_alive()
        status = engine.faults.error_status_for("\n".join(texts))
        if status is not None:
            raise ApiError(status, "mock fault: http_error_status")
        if engine.faults.slow_first_byte_secs > 0:
            await asyncio.sleep(engine.faults.slow_first_byte_secs)
        if not await engine.admit(req):
            req.finish_reason = "abort"
            raise ApiError(500, "Request was aborted.")
        await asyncio.sleep(opts.ttft_ms / 1000)
        await engine.after_chunk(0)
        engine.check_alive()
        req.finish_reason = "stop"
    except asyncio.CancelledError:
        engine.client_abort(req)
        raise
    finally:
        engine.finish(req)
    tokens = sum(textgen.count_tokens(t) for t in texts)
    engine.stats.prompt_tokens += tokens
    return tokens


def usage(tokens: int) -> dict[str, object]:
    """vLLM's `UsageInfo` for a pooling answer (no completion)."""
    return {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
            "prompt_tokens_details": None}  # fmt: skip


async def embeddings(request: web.Request) -> web.Response:
    opts = request.app[OPTIONS]
    body = await bodies.read_json(request)
    model = bodies.check_model(body, opts)
    texts = inputs(body)
    rid = bodies.request_id(request)
    tokens = await pooled(request, rid, texts)
    data = [
        {"index": i, "object": "embedding",
         "embedding": textgen.embedding(model, text, opts.embedding_dim)}
        for i, text in enumerate(texts)
    ]  # fmt: skip
    return web.json_response(
        {"id": f"embd-{rid}", "object": "list", "created": int(time.time()),
         "model": model, "data": data, "usage": usage(tokens)},
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
