"""Rerank and score: a cross-encoder's routes, with vLLM 0.32's shapes.

Owns: ``/rerank``, ``/v1/rerank``, ``/v2/rerank`` (Jina/Cohere-style: `query`,
`documents`, `top_n`; results sorted by `relevance_score`, best first) and ``/score``,
``/v1/score`` (`queries`/`documents`, `queries`/`items`, `data_1`/`data_2` or
`text_1`/`text_2`, paired 1:1, 1:N or N:N), their checks and their bodies. A score is a
deterministic number in (0, 1) from the model and the pair.
Does not: queue or apply faults itself (`pooling.pooled` does).
"""

from __future__ import annotations

import hashlib
import time

from aiohttp import web

from mock_vllm import bodies
from mock_vllm.errors import ApiError
from mock_vllm.generate import OPTIONS
from mock_vllm.pooling import pooled, usage

#: The field pairs `/score` accepts, in the order vLLM's request union tries them.
_SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"),
                ("text_1", "text_2"))  # fmt: skip


def relevance(model: str, query: str, document: str) -> float:
    """A stable score in (0, 1) for one (query, document) pair."""
    digest = hashlib.sha256(f"{model}\0{query}\0{document}".encode()).digest()
    return (int.from_bytes(digest[:4], "big") + 1) / (2**32 + 2)


def _texts(value: object, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return [str(x) for x in value]
    raise ApiError(400, f"{name} must be a string or a non-empty list of strings", param=name)


def pairs(first: list[str], second: list[str]) -> list[tuple[str, str]]:
    """vLLM's pairing: 1:1, 1:N (the one repeated) or N:N; anything else is a 400."""
    if len(first) == 1:
        return [(first[0], s) for s in second]
    if len(first) == len(second):
        return list(zip(first, second, strict=True))
    raise ApiError(400, "Input lengths must be either 1:1, 1:N or N:N")


async def rerank(request: web.Request) -> web.Response:
    body = await bodies.read_json(request)
    model = bodies.check_model(body, request.app[OPTIONS])
    query = body.get("query")
    if not isinstance(query, str):
        raise ApiError(400, "query must be a string", param="query")
    documents = _texts(body.get("documents"), "documents")
    top_n = body.get("top_n", 0)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
        raise ApiError(400, "top_n must be an integer >= 0", param="top_n")
    rid = bodies.request_id(request)
    tokens = await pooled(request, rid, [f"{query} {d}" for d in documents])
    results = [
        {"index": i, "document": {"text": doc, "multi_modal": None},
         "relevance_score": relevance(model, query, doc)}
        for i, doc in enumerate(documents)
    ]  # fmt: skip
    results.sort(key=lambda r: r["relevance_score"], reverse=True)  # type: ignore[arg-type, return-value]
    return web.json_response(
        {"id": f"score-{rid}", "model": model,
         "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
         "results": results[: top_n or len(results)]},
        headers={"X-Request-Id": rid},
    )  # fmt: skip


async def score(request: web.Request) -> web.Response:
    body = await bodies.read_json(request)
    model = bodies.check_model(body, request.app[OPTIONS])
    names = next((p for p in _SCORE_PAIRS if p[0] in body and p[1] in body), None)
    if names is None:
        raise ApiError(400, "score needs queries and documents (or items, data_1/data_2, "
                       "text_1/text_2)")  # fmt: skip
    scored = pairs(_texts(body[names[0]], names[0]), _texts(body[names[1]], names[1]))
    rid = bodies.request_id(request)
    tokens = await pooled(request, rid, [f"{q} {d}" for q, d in scored])
    data = [{"index": i, "object": "score", "score": relevance(model, q, d)}
            for i, (q, d) in enumerate(scored)]  # fmt: skip
    return web.json_response(
        {"id": f"score-{rid}", "object": "list", "created": int(time.time()), "model": model,
         "data": data, "usage": usage(tokens)},
        headers={"X-Request-Id": rid},
    )  # fmt: skip


def add_routes(app: web.Application) -> None:
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        app.router.add_post(path, rerank)
    for path in ("/score", "/v1/score"):
        app.router.add_post(path, score)
