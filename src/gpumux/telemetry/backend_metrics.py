"""`GET /metrics/backends`: every live backend's own `vllm:` metrics, with a `model` label.

Owns: scraping each live backend's loopback `/metrics` concurrently under one timeout,
parsing the text with `prometheus_client.parser`, adding `model="<alias>"` to every
sample, merging families across backends (one HELP/TYPE each) and rendering the result
in the Prometheus text format; plus `gpumux_backend_scrape_success{model}` (1 or 0) so a
silent backend is visible rather than missing.
Does not: keep anything between scrapes, or expose backends' ports: children bind
127.0.0.1, so Prometheus can only see them through this path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

BACKENDS_PATH = "/metrics/backends"
SCRAPE_TIMEOUT_SECS = 2.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class BackendMetrics:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        live_ports: Callable[[], dict[str, int]],
        *,
        timeout_secs: float = SCRAPE_TIMEOUT_SECS,
    ) -> None:
        self._session = session
        self._live_ports = live_ports
        self._timeout = aiohttp.ClientTimeout(total=timeout_secs)

    async def handle(self, request: web.Request) -> web.Response:
        ports = self._live_ports()
        texts = await asyncio.gather(*(self._scrape(port) for port in ports.values()))
        body = render(dict(zip(ports, texts, strict=True)))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _scrape(self, port: int) -> str | None:
        try:
            async with self._session.get(
                f"http://127.0.0.1:{port}/metrics", timeout=self._timeout
            ) as response:
                if response.status != 200:
                    return None
                return await response.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None


def render(scrapes: dict[str, str | None]) -> bytes:
    """Merge `{model: exposition text or None}` into one exposition with `model` labels."""
    merged: dict[str, Metric] = {}
    success = GaugeMetricFamily(
        "gpumux_backend_scrape_success",
        "1 if the backend's /metrics answered in time on the last scrape, else 0.",
        labels=["model"],
    )
    for model, text in sorted(scrapes.items()):
        families = _parse(text) if text is not None else None
        success.add_metric([model], 0 if families is None else 1)
        for family in families or []:
            target = merged.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            target.samples.extend(
                Sample(s.name, {**s.labels, "model": model}, s.value, s.timestamp)
                for s in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([*merged.values(), success]))
    return generate_latest(registry)


def _parse(text: str) -> list[Metric] | None:
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return None
    return list(_normalise(families))


def _normalise(families: Iterable[Metric]) -> Iterator[Metric]:
    """Re-attach counters written as `# TYPE x counter` + samples `x_total`.

    The parser keeps such a TYPE as an empty counter family and the samples as an
    `unknown` one; prometheus_client itself writes `# TYPE x_total counter`.
    """
    families = list(families)
    empty_counters = {f.name for f in families if f.type == "counter" and not f.samples}
    docs = {f.name: f.documentation for f in families}
    for family in families:
        if not family.samples:
            continue
        base = family.name.removesuffix("_total")
        if family.type == "unknown" and family.name.endswith("_total") and base in empty_counters:
            fixed = Metric(base, docs.get(base, family.documentation), "counter")
            fixed.samples = list(family.samples)
            yield fixed
        else:
            yield family


class _Fixed:
    """A one-shot collector over already-built families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
