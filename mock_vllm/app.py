"""The aiohttp application: error middleware, the always-on routes, and route wiring.

Owns: ``/health``, ``/version``, ``/load``, ``/v1/models``, ``/metrics``; turning
`ApiError` into vLLM's error body and routing misses into FastAPI's ``{"detail": …}``;
uvicorn-style access lines.
Does not: generate (``generate``, ``pooling``, ``scoring``, ``classify``, ``audio``,
``anthropic``, ``lora``) or sleep (``dev_routes``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from mock_vllm import (
    anthropic,
    audio,
    classify,
    dev_routes,
    generate,
    lora,
    metrics,
    pooling,
    scoring,
    vlog,
)
from mock_vllm.engine import Engine
from mock_vllm.errors import ApiError
from mock_vllm.generate import ENGINE, OPTIONS
from mock_vllm.options import ServeOptions

VERSION = "0.33.0-mock"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dev_mode_enabled() -> bool:
    """vLLM's ``VLLM_SERVER_DEV_MODE``: an integer flag, anything else is off."""
    try:
        return bool(int(os.environ.get("VLLM_SERVER_DEV_MODE", "0")))
    except ValueError:
        return False


@web.middleware
async def vllm_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = web.json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status not in (404, 405):
            raise
        # FastAPI answers routing misses with {"detail": ...}, not aiohttp's text.
        resp = web.json_response({"detail": exc.reason}, status=exc.status)
    if request.app[OPTIONS].access_log:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
        vlog.access(where, request.method, request.path_qs, resp.status, resp.reason)
    return resp


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    # Healthy while asleep too, as vLLM is; 503 only for a dead engine (or the fault).
    if engine.dead or engine.faults.never_healthy:
        return web.Response(status=503)
    return web.Response(status=200)


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


async def load(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response({"server_load": len(engine.requests)})


async def models(request: web.Request) -> web.Response:
    opts = request.app[OPTIONS]
    created = int(time.time())
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": created,
        "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
        "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
        "organization": "*", "group": None, "is_blocking": False,
    }  # fmt: skip
    data: list[dict[str, object]] = [
        {"id": name, "object": "model", "created": created, "owned_by": "vllm",
         "root": opts.model, "parent": None, "max_model_len": opts.max_model_len,
         "permission": [permission]}
        for name in opts.served_names
    ]  # fmt: skip
    data += lora.model_cards(request.app, created)
    return web.json_response({"object": "list", "data": data})


async def prometheus(request: web.Request) -> web.Response:
    engine, opts = request.app[ENGINE], request.app[OPTIONS]
    running = engine.count("running")
    text = metrics.render(
        engine.stats, model=opts.model_id, running=running, waiting=engine.count("waiting"),
        kv_usage=min(1.0, running / max(opts.max_num_seqs, 1)), sleep_state=engine.sleep_state(),
    )  # fmt: skip
    resp = web.Response(text=text)
    resp.headers["Content-Type"] = metrics.CONTENT_TYPE
    return resp


def build_app(engine: Engine, opts: ServeOptions) -> web.Application:
    app = web.Application(middlewares=[vllm_errors], client_max_size=64 * 1024 * 1024)
    app[ENGINE] = engine
    app[OPTIONS] = opts
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/load", load)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", prometheus)
    generate.add_routes(app)
    anthropic.add_routes(app)
    pooling.add_routes(app)
    scoring.add_routes(app)
    classify.add_routes(app)
    audio.add_routes(app)
    lora.add_routes(app)
    dev_routes.add_mock_routes(app)
    if dev_mode_enabled():
        dev_routes.add_dev_routes(app)
    return app


def route_lines(app: web.Application) -> list[str]:
    """The ``Route: /path, Methods: …`` lines vLLM logs at startup."""
    methods: dict[str, set[str]] = {}
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else "?"
        if route.method != "HEAD":
            methods.setdefault(path, set()).add(route.method)
    return [f"Route: {p}, Methods: {', '.join(sorted(m))}" for p, m in methods.items()]
