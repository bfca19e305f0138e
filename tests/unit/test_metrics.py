"""Every design §1 metric exists, parses, passes promtool when present, and is served."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gpumux.core.states import ModelState
from gpumux.gpu.probe import GpuMemory
from gpumux.telemetry.metrics import Metrics, measure_loop_lag, metrics_app

pytestmark = pytest.mark.unit

#: family name -> (type, label names), as exposed (counters with `_total`).
EXPECTED: dict[str, tuple[str, frozenset[str]]] = {
    "gpumux_requests_total": ("counter", frozenset({"model", "endpoint", "code"})),
    "gpumux_queue_depth": ("gauge", frozenset({"model"})),
    "gpumux_queue_wait_seconds": ("histogram", frozenset({"model"})),
    "gpumux_inflight_requests": ("gauge", frozenset({"model"})),
    "gpumux_time_to_first_token_seconds": ("histogram", frozenset({"model"})),
    "gpumux_switch_duration_seconds": ("histogram", frozenset({"strategy", "outcome"})),
    "gpumux_switch_phase_seconds": ("histogram", frozenset({"phase"})),
    "gpumux_switches_total": ("counter", frozenset({"from", "to", "outcome"})),
    "gpumux_model_state": ("gauge", frozenset({"model", "state"})),
    "gpumux_backend_restarts_total": ("counter", frozenset({"model", "reason"})),
    "gpumux_backend_5xx_streak_checks_total": ("counter", frozenset({"model", "verdict"})),
    "gpumux_checkpoint_ops_duration_seconds": ("histogram", frozenset({"op"})),
    "gpumux_gpu_memory_used_bytes": ("gauge", frozenset({"gpu"})),
    "gpumux_gpu_memory_total_bytes": ("gauge", frozenset({"gpu"})),
    "gpumux_host_memory_available_bytes": ("gauge", frozenset()),
    "gpumux_event_loop_lag_seconds": ("histogram", frozenset()),
    "gpumux_build_info": ("gauge", frozenset({"version"})),
}


def populated() -> Metrics:
    """A Metrics with a sample in every family."""
    m = Metrics(version="1.2.3")
    m.init_models(["llama", "qwen"])
    m.requests.labels("llama", "/v1/chat/completions", "200").inc()
    m.queue_depth.labels("llama").set(3)
    m.queue_wait.labels("llama").observe(0.2)
    m.inflight.labels("llama").inc()
    m.time_to_first_token.labels("llama").observe(1.5)
    m.switch_duration.labels("sleep_l1", "ok").observe(2.0)
    m.switch_phase.labels("wake").observe(1.0)
    m.switches.labels("qwen", "llama", "ok").inc()
    m.set_model_state("llama", ModelState.READY)
    m.backend_restarts.labels("qwen", "crashed").inc()
    m.checkpoint_ops_duration.labels("dump").observe(40.0)
    m.set_gpu_memory([GpuMemory(0, 80 * 1024**3, 70 * 1024**3)])
    m.host_memory_available.set(64 * 1024**3)
    m.observe_loop_lag(0.002)
    return m


def families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    out = {}
    for family in text_string_to_metric_families(text):
        labels = frozenset(
            k for s in family.samples for k in s.labels if k not in {"le", "quantile"}
        )
        # The text parser strips `_total` from counter families; expose it again.
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = (family.type, labels)
    return out


def test_every_design_metric_is_rendered_with_its_type_and_labels() -> None:
    body, content_type = populated().render()
    assert content_type.startswith("text/plain; version=0.0.4")
    found = families(body.decode())
    for name, expected in EXPECTED.items():
        assert found.get(name) == expected, name


def test_every_name_is_present_even_before_any_sample() -> None:
    text = Metrics().render()[0].decode()
    for name in EXPECTED:
        assert f"# TYPE {name} " in text, name


def test_exposition_is_valid() -> None:
    """promtool when installed (CI installs it); otherwise the reference parser."""
    body, _ = populated().render()
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, check=False
        )
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    else:
        assert len(list(text_string_to_metric_families(body.decode()))) >= len(EXPECTED)


def test_registries_are_private() -> None:
    a, b = Metrics(), Metrics()
    a.requests.labels("m", "/v1/completions", "200").inc()
    assert b'gpumux_requests_total{code="200"' not in b.render()[0]
    assert b'gpumux_requests_total{code="200"' in a.render()[0]


def test_set_model_state_sets_exactly_one_state() -> None:
    m = Metrics()
    m.set_model_state("llama", ModelState.READY)
    m.set_model_state("llama", "sleeping")
    m.set_model_state("qwen", ModelState.FAILED)
    values = {
        (s.labels["model"], s.labels["state"]): s.value
        for f in text_string_to_metric_families(m.render()[0].decode())
        if f.name == "gpumux_model_state"
        for s in f.samples
    }
    for model, current in [("llama", "sleeping"), ("qwen", "failed")]:
        assert {st for (mo, st), v in values.items() if mo == model and v == 1} == {current}
        assert {st for (mo, st) in values if mo == model} == {s.value for s in ModelState}
    with pytest.raises(ValueError, match="asleep"):
        m.set_model_state("llama", "asleep")


def test_build_info_carries_the_version() -> None:
    assert b'gpumux_build_info{version="1.2.3"} 1.0' in Metrics(version="1.2.3").render()[0]
    assert b"gpumux_build_info{version=" in Metrics().render()[0]


def test_openmetrics_is_negotiated() -> None:
    body, content_type = populated().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def block_loop(seconds: float) -> None:
    time.sleep(seconds)  # deliberately blocks the event loop


async def test_measure_loop_lag_records_a_blocked_loop() -> None:
    m = Metrics()
    task = asyncio.create_task(measure_loop_lag(m, 0.01))
    await asyncio.sleep(0)  # let it start its first sleep
    block_loop(0.1)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    text = m.render()[0].decode()
    lag_sum = next(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "gpumux_event_loop_lag_seconds"
        for s in f.samples
        if s.name.endswith("_sum")
    )
    assert lag_sum >= 0.08
    assert m.last_loop_lag_seconds >= 0.0


async def test_measure_loop_lag_rejects_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        await measure_loop_lag(Metrics(), 0)


@pytest.fixture
async def metrics_url() -> AsyncIterator[tuple[Metrics, str]]:
    m = populated()
    runner = web.AppRunner(metrics_app(m))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield m, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_metrics_app_serves_metrics(metrics_url: tuple[Metrics, str]) -> None:
    m, url = metrics_url
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await resp.text()
        m.set_queue_load("llama", 7, 2)  # read when the next scrape renders it
        async with session.get(url + "/metrics") as resp:
            text_after = await resp.text()
        assert 'gpumux_queue_depth{model="llama"} 7.0' in text_after
        assert 'gpumux_inflight_requests{model="llama"} 2.0' in text_after
        async with session.get(url + "/other") as resp:
            assert resp.status == 404
    assert set(EXPECTED) <= set(families(text))
