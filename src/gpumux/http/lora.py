"""LoRA adapters at the front door: loaded before the forward, counted by name, not forwarded.

Owns: `AdapterGate`, the proxy's one hook per request — after the lease, before the
forward, the backend holding the lease gets the adapter the request named (through
`backends.adapters.AdapterLoader`), and a failed load becomes a 502 `adapter_load_failed`
with vLLM's message; the per-adapter request count (`gpumux_adapter_requests_total`);
and the refusal of vLLM's runtime LoRA routes.
Does not: resolve names (`aliases`), keep per-process load state (the loader), or
queue (the request waits on its base model like any other).

Why clients may not call `/v1/load_lora_adapter` or `/v1/unload_lora_adapter` through
gpumux: an adapter loaded behind gpumux's back would vanish at the next cold start or
level-2 sleep with nobody to load it again, gpumux could not route to a name that is
not in its config, and the route makes vLLM read whatever path a client names.
Adapters are configured in gpumux's config (`models.<name>.adapters`).
"""

from __future__ import annotations

from gpumux.backends.adapters import AdapterApiError, AdapterLoader
from gpumux.core.config import Config
from gpumux.core.errors import AdapterLoadFailed, RouteNotFound
from gpumux.http.request_log import RequestRecord
from gpumux.scheduler.runner import Lease
from gpumux.telemetry.metrics import Metrics

#: vLLM's runtime adapter routes, which gpumux itself drives.
RUNTIME_LORA_ROUTES = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


def refuse_runtime_lora_route(path: str) -> None:
    """Raise a clear 404 for vLLM's runtime LoRA routes (see the module docstring)."""
    if path in RUNTIME_LORA_ROUTES:
        raise RouteNotFound(
            f"{path} is not served through gpumux: LoRA adapters are configured in "
            "gpumux's config (models.<model>.adapters: {name: path}) and gpumux loads "
            "them into the backend itself; request an adapter by its name as `model`."
        )


class AdapterGate:
    def __init__(self, loader: AdapterLoader | None, metrics: Metrics) -> None:
        self._loader = loader  # None: no backend can load adapters (tests, pre-bake)
        self._metrics = metrics

    def reload(self, config: Config) -> None:
        if self._loader is not None:
            self._loader.reload(config)

    async def ready(self, lease: Lease, record: RequestRecord) -> None:
        """Before forwarding on `lease`: the adapter `record` names loaded in its process
        (and unloads a SIGHUP left pending done). Raises AdapterLoadFailed."""
        if self._loader is None:
            return
        adapter = record.adapter
        try:
            await self._loader.ensure(lease.model, lease.pid, adapter)
        except AdapterApiError as exc:
            self._metrics.count_request(lease.model, record.endpoint, AdapterLoadFailed.http_status)
            status = f" (HTTP {exc.status})" if exc.status is not None else ""
            raise AdapterLoadFailed(
                f"Loading LoRA adapter `{adapter}` into `{lease.model}` failed{status}: "
                f"{exc.message}",
                param="model",
            ) from exc

    def counting(self, record: RequestRecord) -> _Counting:
        """Count a request for an adapter when it ends, with the status it ended with
        (wrap the request log's `tracking`, which sets that status)."""
        return _Counting(self._metrics, record)


class _Counting:
    """`AdapterGate.counting`'s block: a class, not a generator, as it runs per request."""

    __slots__ = ("_metrics", "_record")

    def __init__(self, metrics: Metrics, record: RequestRecord) -> None:
        self._metrics = metrics
        self._record = record

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        record = self._record
        if record.adapter is not None:
            self._metrics.adapter_requests.labels(
                record.model, record.adapter, record.endpoint, str(record.status)
            ).inc()
