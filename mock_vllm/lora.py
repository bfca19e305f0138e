"""LoRA adapters loaded at run time, as vLLM serves them with `--enable-lora`.

Owns: `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` (only with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING` true, as in vLLM; without `--enable-lora` a load fails
with vLLM's message), the served adapters (listed in `/v1/models` with `parent`, accepted
as a request's `model`), and `/mock/lora`, the mock's private count of loads and unloads
per adapter (tests check "loaded once" and "loaded again after a cold start" with it).
Faults: `lora_load_failures` (the next N loads fail with 500), `lora_load_delay_secs`.
Does not: generate (an adapter's answer starts with `[lora NAME]`, see `generate`).

vLLM's shapes: a load answers 200 with plain text; a second load of a served name
without `load_inplace` is 400 "has already been loaded"; a path without an adapter is
404 "Loading lora X failed: No adapter found for P"; a rank above `--max-lora-rank` is a
500 with vLLM's "LoRA rank R is greater than max_lora_rank M."; a request for an adapter
that is not loaded is 404 "The model `X` does not exist." (`bodies.check_model`).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from mock_vllm.errors import ApiError
from mock_vllm.generate import ENGINE, LORA, OPTIONS


@dataclass
class Counts:
    """Loads and unloads per adapter name, for the tests (`/mock/lora`)."""

    loads: dict[str, int] = field(default_factory=dict)
    unloads: dict[str, int] = field(default_factory=dict)


COUNTS: web.AppKey[Counts] = web.AppKey("lora_counts", Counts)


def runtime_updating_enabled() -> bool:
    """vLLM's `VLLM_ALLOW_RUNTIME_LORA_UPDATING`: "1" or "true", any case."""
    return os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true")


async def _body(request: web.Request) -> dict[str, object]:
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise ApiError(400, "Invalid JSON format") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Input should be a valid dictionary or object")
    return body


def _adapter_rank(path: str) -> int | None:
    """The adapter's rank `r`, or None when `path` holds no PEFT adapter."""
    config = Path(path).expanduser() / "adapter_config.json"
    try:
        document = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    rank = document.get("r") if isinstance(document, dict) else None
    return rank if isinstance(rank, int) else None


async def load_lora_adapter(request: web.Request) -> web.Response:
    served, counts, opts = request.app[LORA], request.app[COUNTS], request.app[OPTIONS]
    faults = request.app[ENGINE].faults
    body = await _body(request)
    name, path = body.get("lora_name"), body.get("lora_path")
    if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
        raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.")
    if name in opts.served_names:
        raise ApiError(400, f"The lora adapter '{name}' conflicts with a served base model.")
    if body.get("load_inplace") is not True and name in served:
        raise ApiError(
            400,
            f"The lora adapter '{name}' has already been loaded. If you want to load the "
            "adapter in place, set 'load_inplace' to True.",
        )
    if faults.lora_load_delay_secs > 0:
        await asyncio.sleep(faults.lora_load_delay_secs)
    if faults.lora_load_failures:
        faults.lora_load_failures -= 1
        raise ApiError(500, "mock fault: lora_load_failures")
    if not opts.enable_lora:
        raise ApiError(500, "LoRA is not enabled. Use --enable-lora to enable LoRA.")
    rank = _adapter_rank(path)
    if rank is None:
        raise ApiError(404, f"Loading lora {name} failed: No adapter found for {path}")
    if rank > opts.max_lora_rank:
        raise ApiError(500, f"LoRA rank {rank} is greater than max_lora_rank {opts.max_lora_rank}.")
    served[name] = path
    counts.loads[name] = counts.loads.get(name, 0) + 1
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora_adapter(request: web.Request) -> web.Response:
    served, counts = request.app[LORA], request.app[COUNTS]
    name = (await _body(request)).get("lora_name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
    if name not in served:
        raise ApiError(404, f"The lora adapter '{name}' cannot be found.")
    del served[name]
    counts.unloads[name] = counts.unloads.get(name, 0) + 1
    return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


async def mock_lora(request: web.Request) -> web.Response:
    counts = request.app[COUNTS]
    return web.json_response(
        {"served": request.app[LORA], "loads": counts.loads, "unloads": counts.unloads}
    )


def model_cards(app: web.Application, created: int) -> list[dict[str, object]]:
    """`/v1/models` entries of the served adapters, as vLLM lists them."""
    parent = app[OPTIONS].model_id
    return [
        {"id": name, "object": "model", "created": created, "owned_by": "vllm",
         "root": path, "parent": parent, "max_model_len": None, "permission": []}
        for name, path in app[LORA].items()
    ]  # fmt: skip


def add_routes(app: web.Application) -> None:
    app[LORA] = {}
    app[COUNTS] = Counts()
    app.router.add_get("/mock/lora", mock_lora)
    if runtime_updating_enabled():
        app.router.add_post("/v1/load_lora_adapter", load_lora_adapter)
        app.router.add_post("/v1/unload_lora_adapter", unload_lora_adapter)
