"""gpumux's Prometheus metrics (design §1): definitions, exposition, loop-lag sampling.

Owns: `Metrics`, every `gpumux_*` series in its own `CollectorRegistry` (never the
process-global one, so tests and several daemons in one process do not collide), with
base units and `_total` counters; small helpers that keep multi-series invariants
(`set_model_state`: exactly one state is 1 per model); `render()` for the exposition
text; `metrics_app()`, the aiohttp app serving `GET /metrics`; and `measure_loop_lag`,
the task that samples event-loop lag.

Does not: decide what to count or when (the proxy, scheduler and orchestrator call the
attributes), read GPUs (the daemon feeds `set_gpu_memory` from a probe), re-export
backends' `vllm:` metrics, or bind ports (the daemon runs the app).

Labels stay low-cardinality: `model` comes from config, `endpoint` from the proxy's fixed
allow-list, `code` is an HTTP status, `strategy` ∈ {sleep_l1, sleep_l2, cuda_suspend,
criu, cold}, `outcome` ∈ {ok, fallback, failed}, a restore failure's `reason` is
`image_catalog.RestoreFailure`. Never a request id or a user.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Final, TypeVar, cast

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase

from gpumux.core.states import ModelState
from gpumux.gpu.probe import GpuMemory

#: Request-scale waits: a hot request's queue wait up to a long switch.
LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
    300.0, 600.0,
)  # fmt: skip
#: Switch-scale durations: a 0.1 s level-1 wake up to a 10-minute cold start.
SWITCH_BUCKETS: Final = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
#: CRIU dumps/restores and multi-GB S3 transfers run longer than switches.
CHECKPOINT_BUCKETS: Final = (*SWITCH_BUCKETS, 1200.0, 1800.0, 3600.0)
LOOP_LAG_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

METRICS_PATH: Final = "/metrics"


def gpumux_version() -> str:
    try:
        return package_version("gpumux")
    except PackageNotFoundError:
        return "unknown"


_Metric = TypeVar("_Metric", bound=MetricWrapperBase)


class Metrics:
    """Every gpumux series, as typed attributes, in a private registry."""

    def __init__(self, *, version: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        self.requests = Counter(
            "gpumux_requests",
            "Proxied requests by model, endpoint and HTTP status code.",
            ["model", "endpoint", "code"],
            registry=r,
        )
        # Adapters get their own series: `gpumux_requests_total` keeps its contract labels,
        # and `adapter` values are only configured names (unknown ones 404 as models).
        self.adapter_requests = Counter(
            "gpumux_adapter_requests",
            "Proxied requests for a LoRA adapter by its model, adapter, endpoint and status.",
            ["model", "adapter", "endpoint", "code"],
            registry=r,
        )
        self.adapter_loads = Counter(
            "gpumux_adapter_loads",
            "LoRA adapter loads into a backend process by outcome (loaded, failed).",
            ["model", "adapter", "outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "gpumux_queue_depth",
            "Requests waiting for a lease on the model.",
            ["model"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "gpumux_queue_wait_seconds",
            "Time from arrival to lease (or rejection), including any switch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "gpumux_inflight_requests",
            "Requests holding a lease (being served by the backend).",
            ["model"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gpumux_time_to_first_token_seconds",
            "Time from arrival at the proxy to the first response byte sent to the client.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.switch_duration = Histogram(
            "gpumux_switch_duration_seconds",
            "Duration of a whole switch (drain, evict, wake, warm-up).",
            ["strategy", "outcome"],
            buckets=SWITCH_BUCKETS,
            registry=r,
        )
        self.switch_phase = Histogram(
            "gpumux_switch_phase_seconds",
            "Duration of one phase of a switch.",
            ["phase"],
            buckets=SWITCH_BUCKETS,
            registry=r,
        )
        self.switches = Counter(
            "gpumux_switches",
            "Switches by outgoing model, incoming model and outcome.",
            ["from", "to", "outcome"],
            registry=r,
        )
        self.model_state = Gauge(
            "gpumux_model_state",
            "1 for the model's current lifecycle state, 0 for the others.",
            ["model", "state"],
            registry=r,
        )
        self.backend_restarts = Counter(
            "gpumux_backend_restarts",
            "Backend process restarts by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.backend_5xx_streak_checks = Counter(
            "gpumux_backend_5xx_streak_checks",
            "Confirmations of a streak of backend 5xx by gpumux's own probe, by verdict "
            "(unhealthy: the backend is restarted; healthy: the 5xx were client-specific).",
            ["model", "verdict"],
            registry=r,
        )
        self.checkpoint_restore_failures = Counter(
            "gpumux_checkpoint_restore_failures",
            "Restores from a CRIU image that did not happen or did not work (the model "
            "cold-starts), by reason: corrupt, identity, pid_collision, port_busy, "
            "criu_error, timeout, unhealthy, unavailable.",
            ["model", "reason"],
            registry=r,
        )
        self.checkpoint_ops_duration = Histogram(
            "gpumux_checkpoint_ops_duration_seconds",
            "Duration of checkpoint operations (dump, restore, upload, download).",
            ["op"],
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "gpumux_gpu_memory_used_bytes",
            "GPU memory in use, as the GPU probe reports it.",
            ["gpu"],
            registry=r,
        )
        self.gpu_memory_total = Gauge(
            "gpumux_gpu_memory_total_bytes",
            "GPU memory capacity, as the GPU probe reports it.",
            ["gpu"],
            registry=r,
        )
        self.host_memory_available = Gauge(
            "gpumux_host_memory_available_bytes",
            "Host RAM available for new allocations.",
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "gpumux_event_loop_lag_seconds",
            "How late the event loop woke a periodic sleeper.",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            "gpumux_build_info",
            "Always 1; the version label says which gpumux runs.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version or gpumux_version()).set(1)
        #: The latest loop-lag sample in seconds, for a watchdog to read.
        self.last_loop_lag_seconds = 0.0
        # Label children of the per-request series, found once per label set: `labels()`
        # validates and locks on every call, and the proxy and the scheduler call these
        # for every request.
        # Bounded like the labels themselves (configured models x allow-listed endpoints
        # x statuses); children are never removed, so a cached one stays the live one.
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}
        #: (queue depth, requests in flight) per model, as the scheduler last reported.
        self._queue_load: dict[str, tuple[int, int]] = {}

    def count_request(self, model: str, endpoint: str, status: int) -> None:
        """`gpumux_requests_total{model,endpoint,code}` += 1."""
        self._child(self.requests, model, endpoint, str(status)).inc()

    def observe_time_to_first_token(self, model: str, seconds: float) -> None:
        self._child(self.time_to_first_token, model).observe(seconds)

    def observe_queue_wait(self, model: str, seconds: float) -> None:
        """`gpumux_queue_wait_seconds{model}`: one granted request's wait."""
        self._child(self.queue_wait, model).observe(seconds)

    def set_queue_load(self, model: str, depth: int, inflight: int) -> None:
        """`gpumux_queue_depth{model}` and `gpumux_inflight_requests{model}`.

        The scheduler reports this after nearly every step (twice per request), and a
        scrape is rare: the values are kept here and read when a scrape renders them, in
        place of two locked gauge writes per report."""
        load = self._queue_load
        if model not in load:
            self._child(self.queue_depth, model).set_function(lambda: load[model][0])
            self._child(self.inflight, model).set_function(lambda: load[model][1])
        load[model] = (depth, inflight)

    def _child(self, metric: _Metric, *labels: str) -> _Metric:
        """`metric.labels(*labels)`, looked up once per label set."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return cast(_Metric, child)

    def init_models(self, models: Iterable[str]) -> None:
        """Create each model's series at zero (state `stopped`), so dashboards see them."""
        for model in models:
            self.set_queue_load(model, 0, 0)
            self.set_model_state(model, ModelState.STOPPED)
            for verdict in ("healthy", "unhealthy"):  # health.HEALTHY / health.UNHEALTHY
                self.backend_5xx_streak_checks.labels(model, verdict)

    def set_model_state(self, model: str, state: ModelState | str) -> None:
        """Set `gpumux_model_state{model,state}` to 1 and the model's other states to 0."""
        current = ModelState(state)
        for candidate in ModelState:
            self.model_state.labels(model, candidate.value).set(1 if candidate is current else 0)

    def set_gpu_memory(self, gpus: Iterable[GpuMemory]) -> None:
        for gpu in gpus:
            self.gpu_memory_used.labels(str(gpu.index)).set(gpu.used_bytes)
            self.gpu_memory_total.labels(str(gpu.index)).set(gpu.total_bytes)

    def observe_loop_lag(self, lag_seconds: float) -> None:
        self.last_loop_lag_seconds = lag_seconds
        self.event_loop_lag.observe(lag_seconds)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type); Prometheus text 0.0.4 unless `accept` asks for OpenMetrics."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


async def measure_loop_lag(metrics: Metrics, interval_secs: float) -> None:
    """Forever: sleep `interval_secs`, record how much later than asked the loop woke us."""
    if interval_secs <= 0:
        raise ValueError("interval_secs must be positive")
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_secs)
        metrics.observe_loop_lag(max(0.0, loop.time() - started - interval_secs))


def metrics_app(metrics: Metrics) -> web.Application:
    """An aiohttp app serving `GET /metrics` (HEAD too) from `metrics`."""

    async def handle(request: web.Request) -> web.Response:
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get(METRICS_PATH, handle)
    return app
