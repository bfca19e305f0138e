"""vLLM's development routes (sleep, wake, RPC) and the mock's own control routes.

Owns: ``/sleep``, ``/wake_up``, ``/is_sleeping``, ``/collective_rpc``,
``/reset_prefix_cache``, ``/server_info`` (only with ``VLLM_SERVER_DEV_MODE=1``, as in
vLLM, and unauthenticated like vLLM's), and ``/mock/events``, ``/mock/faults``,
``/mock/state``, ``/mock/checksum`` (always; the mock's private test hooks; the checksum
of the weights on the GPU exists only with ``--mock-gpu torch``).
Does not: implement the transitions (the engine does, detached from the HTTP caller).
"""

from __future__ import annotations

import json
import os

from aiohttp import web

from mock_vllm.engine import SLEEP_MODES, TAGS
from mock_vllm.errors import ApiError
from mock_vllm.generate import ENGINE, OPTIONS


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"{name}: Input should be a valid integer", param=name) from None


async def _json_object(request: web.Request) -> dict[str, object]:
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise ApiError(400, "Invalid JSON format") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Body must be a JSON object")
    return body


async def sleep(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    level = _query_int(request, "level", 1)
    mode = request.query.get("mode", "abort")
    if not 0 <= level <= 2:
        raise ApiError(400, "level: Input should be 0, 1 or 2", param="level")
    if mode not in SLEEP_MODES:
        raise ApiError(400, "mode: Input should be 'abort', 'wait' or 'keep'", param="mode")
    await engine.detached(engine.sleep(level, mode))
    return web.json_response({"status": "sleeping", "level": level})


async def wake_up(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    tags = request.query.getall("tags", []) or None
    for tag in tags or []:
        if tag not in TAGS:
            raise ApiError(400, f"Unknown wake-up tag {tag!r}; expected one of {TAGS}.")
    status = await engine.detached(engine.wake(tags))
    return web.json_response({"status": status, "tags": tags})


async def is_sleeping(request: web.Request) -> web.Response:
    return web.json_response({"is_sleeping": bool(request.app[ENGINE].asleep)})


async def collective_rpc(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await _json_object(request)
    method = body.get("method")
    if not isinstance(method, str) or not method:
        raise ApiError(400, "Missing 'method' in request body")
    results = await engine.detached(engine.collective_rpc(method))
    return web.json_response({"results": results})


async def reset_prefix_cache(request: web.Request) -> web.Response:
    return web.json_response({"success": request.app[ENGINE].reset_prefix_cache()})


async def server_info(request: web.Request) -> web.Response:
    opts = request.app[OPTIONS]
    config = {k: v for k, v in vars(opts).items() if k != "faults"}
    # Like vLLM, leave out anything that looks like a secret.
    env = {k: v for k, v in os.environ.items() if "KEY" not in k.upper()}
    return web.json_response({"vllm_config": json.dumps(config, default=str), "system_env": env})


async def events(request: web.Request) -> web.Response:
    return web.json_response({"events": request.app[ENGINE].events.snapshot()})


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENGINE].faults.as_dict())


async def set_faults(request: web.Request) -> web.Response:
    faults = request.app[ENGINE].faults
    try:
        faults.merge(await _json_object(request))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return web.json_response(faults.as_dict())


async def state(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response({
        "pid": os.getpid(),
        "worker_pids": [pid for pid, _gpu in engine.gpu.ranks],
        "gpus": [gpu for _pid, gpu in engine.gpu.ranks],
        "asleep": sorted(engine.asleep),
        "sleep_state": engine.sleep_state(),
        "weights_valid": engine.weights_valid,
        "cuda_running": engine.cuda_running.is_set(),
        "running": engine.count("running"),
        "waiting": engine.count("waiting"),
        "device": engine.device.info() if engine.device is not None else None,
    })  # fmt: skip


async def checksum(request: web.Request) -> web.Response:
    device = request.app[ENGINE].device
    if device is None:
        raise ApiError(404, "no device memory: start with --mock-gpu torch")
    return web.json_response({"checksum": await device.checksum()})


def add_dev_routes(app: web.Application) -> None:
    app.router.add_post("/sleep", sleep)
    app.router.add_post("/wake_up", wake_up)
    app.router.add_get("/is_sleeping", is_sleeping)
    app.router.add_post("/collective_rpc", collective_rpc)
    app.router.add_post("/reset_prefix_cache", reset_prefix_cache)
    app.router.add_get("/server_info", server_info)


def add_mock_routes(app: web.Application) -> None:
    app.router.add_get("/mock/events", events)
    app.router.add_get("/mock/faults", get_faults)
    app.router.add_post("/mock/faults", set_faults)
    app.router.add_get("/mock/state", state)
    app.router.add_get("/mock/checksum", checksum)
