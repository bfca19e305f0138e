"""`GET /metrics/epp`: this node as llm-d's endpoint picker (EPP) reads a vLLM server.

Owns: the series the gateway-api-inference-extension's picker scrapes from each endpoint —
`vllm:num_requests_waiting` (requests queued in gpumux for a model to come up),
`vllm:num_requests_running` (requests at a backend), `vllm:kv_cache_usage_perc` (the
fullest awake backend's own reading) and `vllm:lora_requests_info` whose
`running_lora_adapters` are the models awake now and `waiting_lora_adapters` the models
with queued requests (value: the wall-clock time, as vLLM writes it) — so the picker's
LoRA affinity sends a model's requests to a node where it is awake.
Does not: decide anything or read scheduler state (an `EppSnapshot` is handed in, built
from node status), or keep history. The KV reading is scraped from awake backends' own
`/metrics` at most once per `KV_MAX_AGE_SECS` however often the picker polls (its
default is every 50 ms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

EPP_PATH = "/metrics/epp"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KV_MAX_AGE_SECS = 1.0
SCRAPE_TIMEOUT_SECS = 1.0
#: vLLM's KV-cache gauge, newest name first (the picker reads either).
KV_SERIES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(frozen=True)
class EppSnapshot:
    waiting: int
    running: int
    running_models: tuple[str, ...]
    waiting_models: tuple[str, ...]
    max_models: int  # `max_lora`: models this node can serve (taking turns on its GPUs)


def render_epp(snapshot: EppSnapshot, kv_cache_usage: float, wall_time: float) -> bytes:
    """The exposition text (prometheus_client does the label escaping)."""
    waiting = GaugeMetricFamily(
        "vllm:num_requests_waiting", "Requests queued in gpumux for a model to come up."
    )
    waiting.add_metric([], snapshot.waiting)
    running = GaugeMetricFamily("vllm:num_requests_running", "Requests at a backend.")
    running.add_metric([], snapshot.running)
    kv = GaugeMetricFamily(
        "vllm:kv_cache_usage_perc", "KV-cache usage of the fullest awake backend (1 = 100%)."
    )
    kv.add_metric([], kv_cache_usage)
    lora = GaugeMetricFamily(
        "vllm:lora_requests_info",
        "Models awake now (running) and with queued requests (waiting); value: wall time.",
        labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
    )
    lora.add_metric(
        [
            str(snapshot.max_models),
            ",".join(snapshot.running_models),
            ",".join(snapshot.waiting_models),
        ],
        wall_time,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([waiting, running, kv, lora]))
    return generate_latest(registry)


def kv_usage_in(text: str) -> float | None:
    """The largest KV-cache usage sample in one backend's exposition, if it has one."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return None
    values = [s.value for f in families if f.name in KV_SERIES for s in f.samples]
    return max(values) if values else None


class EppMetrics:
    """The route handler; `snapshot` is called once per scrape."""

    def __init__(
        self,
        snapshot: Callable[[], EppSnapshot],
        session: aiohttp.ClientSession,
        live_ports: Callable[[], dict[str, int]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshot = snapshot
        self._session = session
        self._live_ports = live_ports
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECS)
        self._kv: tuple[float, tuple[str, ...], float] | None = None  # (at, models, value)
        self._scrape: asyncio.Task[float] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        snapshot = self._snapshot()
        kv = await self._kv_usage(snapshot.running_models)
        body = render_epp(snapshot, kv, time.time())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _kv_usage(self, awake: tuple[str, ...]) -> float:
        if self._kv is not None:
            at, models, value = self._kv
            if models == awake and self._clock() - at < KV_MAX_AGE_SECS:
                return value
        if self._scrape is None or self._scrape.done():
            ports = self._live_ports()
            wanted = [ports[m] for m in awake if m in ports]
            self._scrape = asyncio.get_running_loop().create_task(self._scrape_all(wanted))
        # Concurrent pollers share one scrape; shield it so one leaving does not cancel it.
        value = await asyncio.shield(self._scrape)
        self._kv = (self._clock(), awake, value)
        return value

    async def _scrape_all(self, ports: Iterable[int]) -> float:
        readings = await asyncio.gather(*(self._scrape_one(port) for port in ports))
        return max((r for r in readings if r is not None), default=0.0)

    async def _scrape_one(self, port: int) -> float | None:
        try:
            async with self._session.get(
                f"http://127.0.0.1:{port}/metrics", timeout=self._timeout
            ) as response:
                if response.status != 200:
                    return None
                return kv_usage_in(await response.text())
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None


class _Fixed:
    """A one-shot collector over already-built families."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self._families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self._families
