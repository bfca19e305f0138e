"""LoRA adapters in running backends: load each one once per backend process, on demand.

Owns: `AdapterLoader`, which knows which configured adapters each model's live backend
has loaded, keyed by the process's generation (its pid, and how many times its weights
were discarded), loads one through vLLM's runtime API (`POST /v1/load_lora_adapter`)
before the first request that needs it, joins a second request to the load already in
flight (one load per adapter per process, never two at once), and forgets a failed load
so the next request tries again; `VllmAdapterApi`, the HTTP seam.
Does not: decide when a backend runs (the proxy calls `ensure` while it holds a lease,
so the backend is awake and never being dumped), start processes, or validate config.

When an adapter is (re)loaded:
- a new process (cold start, or a restore of a pre-baked image): it holds nothing, so
  every adapter is loaded at its first request;
- a level-1 sleep or cuda-checkpoint suspend keeps it, and so does a CRIU dump/restore
  of a process whose weights were kept (the same pid comes back with its memory);
- a level-2 sleep discards the weights. vLLM 0.32's `reload_weights` then resets the
  workers' LoRA state while its API server still lists the adapter, so gpumux loads it
  again with `load_inplace` (explicit and eager: a bad adapter fails its request with
  vLLM's message instead of mid-generation, and it stays right on vLLM versions whose
  reload path keeps stale LoRA buffers);
- a SIGHUP that changes an adapter's path re-loads it in place from the new path at its
  next request; one that removes it unloads it at the model's next request (under a
  lease, never into a process that is asleep or being dumped); until then vLLM keeps it
  but gpumux no longer routes to it.
A 400 "has already been loaded" counts as loaded: the process got it some other way
(an image baked with it loaded).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import structlog

from gpumux.core.config import Config

log = structlog.get_logger(__name__)

#: vLLM's answer to a load of a name it already serves (without `load_inplace`).
ALREADY_LOADED = "has already been loaded"
_MESSAGE_MAX_CHARS = 500


class AdapterApiError(Exception):
    """vLLM refused a load or unload (`status`), or did not answer (None)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdapterApi(Protocol):
    """vLLM's runtime LoRA routes on `model`'s backend at `port`."""

    async def load(
        self, model: str, port: int, name: str, path: str, *, inplace: bool, timeout: float
    ) -> None: ...

    async def unload(self, model: str, port: int, name: str, *, timeout: float) -> None: ...


#: (pid, discards): the process, and how many times it discarded its weights.
Generation = tuple[int | None, int]
LoadObserver = Callable[[str, str, str], None]  # (model, adapter, outcome)


@dataclass
class _Held:
    """What one backend process has loaded, and what is being loaded into it now."""

    generation: Generation
    loaded: dict[str, str] = field(default_factory=dict)  # name → path it was loaded from
    loading: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    #: Loaded by an earlier generation of this same process (a level-2 sleep since):
    #: vLLM's API server still lists them, so they are re-loaded in place.
    registered: set[str] = field(default_factory=set)
    #: Removed from the config while loaded (name → path): unloaded under the model's
    #: next lease, unless a later SIGHUP brings it back first.
    to_unload: dict[str, str] = field(default_factory=dict)


class AdapterLoader:
    def __init__(
        self,
        config: Config,
        api: AdapterApi,
        discards: Callable[[str], int],
        on_load: LoadObserver | None = None,
    ) -> None:
        """`discards(model)`: how many times the model's weights were discarded so far."""
        self._config = config
        self._api = api
        self._discards = discards
        self._on_load = on_load
        self._held: dict[str, _Held] = {}

    def reload(self, config: Config) -> None:
        """A new model table (SIGHUP): removed adapters are unloaded at the model's next
        lease; one whose path changed is re-loaded in place at its next request."""
        self._config = config
        for model, held in self._held.items():
            wanted = config.models[model].adapters if model in config.models else {}
            for name, path in list(held.loaded.items()):
                if name not in wanted:
                    held.to_unload[name] = held.loaded.pop(name)
                elif wanted[name] != path:
                    del held.loaded[name]
                    held.registered.add(name)
            for name in set(held.to_unload) & set(wanted):  # back before it was unloaded
                path = held.to_unload.pop(name)
                if wanted[name] == path:
                    held.loaded[name] = path
                else:
                    held.registered.add(name)

    async def ensure(self, model: str, pid: int | None, adapter: str | None) -> None:
        """Before a request on `model`'s process `pid`: settle pending unloads, and have
        `adapter` (when the request named one) loaded. Raises AdapterApiError."""
        if adapter is None and model not in self._held:
            return  # a model whose adapters were never asked for: nothing to settle
        held = self._current(model, pid)
        if held.to_unload:
            await self._unload(model, held)
        if adapter is None or adapter in held.loaded:
            return
        pending = held.loading.get(adapter)
        if pending is None:
            pending = asyncio.ensure_future(self._load(model, held, adapter))
            held.loading[adapter] = pending
            pending.add_done_callback(_retrieved)
        # Shielded: a client that leaves does not cancel the load others wait on.
        await asyncio.shield(pending)

    def _current(self, model: str, pid: int | None) -> _Held:
        generation = (pid, self._discards(model))
        held = self._held.get(model)
        if held is not None and held.generation == generation:
            return held
        fresh = _Held(generation)
        if held is not None and held.generation[0] == pid:
            fresh.registered = held.registered | set(held.loaded)
            fresh.to_unload = dict(held.to_unload)
        self._held[model] = fresh
        return fresh

    async def _load(self, model: str, held: _Held, adapter: str) -> None:
        config = self._config.models[model]
        path = config.adapters[adapter]
        inplace = adapter in held.registered
        timeout = self._config.supervision.adapter_load_timeout_secs
        try:
            await self._api.load(
                model, config.port, adapter, path, inplace=inplace, timeout=timeout
            )
        except AdapterApiError as exc:
            if not (exc.status == 400 and ALREADY_LOADED in exc.message):
                log.warning(
                    "adapter_load_failed",
                    model=model,
                    adapter=adapter,
                    status=exc.status,
                    error=exc.message,
                )
                self._observe(model, adapter, "failed")
                raise
        finally:
            held.loading.pop(adapter, None)
        held.registered.discard(adapter)
        current = self._config.models.get(model)
        if current is None or current.adapters.get(adapter) != path:
            held.to_unload[adapter] = path  # a SIGHUP removed or moved it while it loaded
        else:
            held.loaded[adapter] = path
        log.info("adapter_loaded", model=model, adapter=adapter, pid=held.generation[0])
        self._observe(model, adapter, "loaded")

    async def _unload(self, model: str, held: _Held) -> None:
        names, held.to_unload = sorted(held.to_unload), {}
        timeout = self._config.supervision.adapter_load_timeout_secs
        port = self._config.models[model].port
        for name in names:
            held.registered.discard(name)
            try:
                await self._api.unload(model, port, name, timeout=timeout)
            except AdapterApiError as exc:  # vLLM keeps it; gpumux no longer routes to it
                log.warning("adapter_unload_failed", model=model, adapter=name, error=exc.message)
                continue
            log.info("adapter_unloaded", model=model, adapter=name)

    def _observe(self, model: str, adapter: str, outcome: str) -> None:
        if self._on_load is not None:
            self._on_load(model, adapter, outcome)


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark a load's failure as seen, so a load whose waiters all left logs no warning."""
    if not future.cancelled():
        future.exception()


class VllmAdapterApi:
    """`AdapterApi` over vLLM's runtime LoRA routes (they answer plain text, not JSON)."""

    def __init__(self, session_for: Callable[[str], aiohttp.ClientSession]) -> None:
        self._session_for = session_for  # the model's own pool (CRIU drops it whole)

    async def load(
        self, model: str, port: int, name: str, path: str, *, inplace: bool, timeout: float
    ) -> None:
        body: dict[str, object] = {"lora_name": name, "lora_path": path}
        if inplace:
            body["load_inplace"] = True
        await self._post(model, port, "/v1/load_lora_adapter", body, timeout)

    async def unload(self, model: str, port: int, name: str, *, timeout: float) -> None:
        await self._post(model, port, "/v1/unload_lora_adapter", {"lora_name": name}, timeout)

    async def _post(
        self, model: str, port: int, path: str, body: dict[str, object], timeout: float
    ) -> None:
        url = f"http://127.0.0.1:{port}{path}"
        try:
            async with self._session_for(model).post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise AdapterApiError(None, f"no answer within {timeout:g}s") from None
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:  # RuntimeError: pool closed
            raise AdapterApiError(None, f"{type(exc).__name__}: {exc}") from None
        if not 200 <= status < 300:
            raise AdapterApiError(status, _message(raw))


def _message(raw: bytes) -> str:
    """vLLM's error message from its `{"error": {"message"}}` body, else the text."""
    text = raw.decode("utf-8", errors="replace")
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        error = decoded.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(decoded.get("detail"), str):
            text = decoded["detail"]
    text = " ".join(text.split())
    return text[:_MESSAGE_MAX_CHARS] or "empty reply"
