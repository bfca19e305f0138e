"""Classify and pooling: a sequence classifier's and a pooling model's routes, with vLLM
0.32's shapes.

Owns: ``/classify`` (`input` or chat `messages`; per input a `label`, its `probs` and
`num_classes`) and ``/pooling`` (per input a vector under `data`), their checks and
bodies. Probabilities and vectors are deterministic in the model and the text.
Does not: queue or apply faults itself (`pooling.pooled` does).
"""

from __future__ import annotations

import math
import time

from aiohttp import web

from mock_vllm import bodies, textgen
from mock_vllm.generate import OPTIONS
from mock_vllm.pooling import inputs, pooled, usage

#: The mock classifier's labels (a config's `id2label`).
LABELS = ("negative", "positive")


def probabilities(model: str, text: str) -> list[float]:
    """A softmax over `LABELS` from the text's (deterministic) embedding."""
    logits = textgen.embedding(model, text, len(LABELS))
    exps = [math.exp(4 * x) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def _texts(body: dict[str, object]) -> list[str]:
    return [bodies.chat_prompt(body)] if "messages" in body else inputs(body)


async def classify(request: web.Request) -> web.Response:
    body = await bodies.read_json(request)
    model = bodies.check_model(body, request.app[OPTIONS])
    texts = _texts(body)
    rid = bodies.request_id(request)
    tokens = await pooled(request, rid, texts)
    data = []
    for i, text in enumerate(texts):
        probs = probabilities(model, text)
        label = LABELS[max(range(len(probs)), key=probs.__getitem__)]
        data.append({"index": i, "label": label, "probs": probs, "num_classes": len(probs)})
    return web.json_response(
        {"id": f"classify-{rid}", "object": "list", "created": int(time.time()),
         "model": model, "data": data, "usage": usage(tokens)},
        headers={"X-Request-Id": rid},
    )  # fmt: skip


async def pooling(request: web.Request) -> web.Response:
    opts = request.app[OPTIONS]
    body = await bodies.read_json(request)
    model = bodies.check_model(body, opts)
    texts = _texts(body)
    rid = bodies.request_id(request)
    tokens = await pooled(request, rid, texts)
    data = [{"index": i, "object": "pooling",
             "data": textgen.embedding(model, text, opts.embedding_dim)}
            for i, text in enumerate(texts)]  # fmt: skip
    return web.json_response(
        {"id": f"pooling-{rid}", "object": "list", "created": int(time.time()),
         "model": model, "data": data, "usage": usage(tokens)},
        headers={"X-Request-Id": rid},
    )  # fmt: skip


def add_routes(app: web.Application) -> None:
    app.router.add_post("/classify", classify)
    app.router.add_post("/pooling", pooling)
