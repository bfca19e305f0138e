"""gpumux's sleep/wake protocol against the dev routes of a real vLLM (CPU build).

The CPU build refuses `--enable-sleep-mode`, so every model runs with
`enable_sleep_mode: false`. With `VLLM_SERVER_DEV_MODE=1` (which gpumux sets) vLLM still
mounts `/sleep`, `/wake_up`, `/is_sleeping`, `/collective_rpc` and `/reset_prefix_cache`
and answers them for real: the engine pauses and resumes, requests queue while it
sleeps, `reload_weights` reloads from disk, and only the memory effect is missing (the
CPU worker logs "sleep mode is not supported on CPU, ignore it"). So these tests check
what can be checked here: which calls gpumux makes, in which order, what vLLM answers,
and that the same process then serves the same text. What vLLM received is read from
its own uvicorn access log, which gpumux captures in the model's log file.

One daemon serves the module, with three models of one GPU each (so one is awake at a
time): `l1` sleeps at level 1, `l2` at level 2 with real weights on disk, and
`l2dummy` at level 2 with `--load-format dummy`, for which vLLM refuses
`reload_weights` (HTTP 500), so gpumux must fall back to a cold start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from gpumux.backends.vllm_client import BackendControlError, VllmClient
from tests.support.cpu_vllm import (
    STARTUP_TIMEOUT_SECS,
    RealVllm,
    access_log,
    backend_tree,
    complete,
    vllm_daemon,
    vllm_model,
)
from tests.support.daemon import RunningDaemon
from tests.support.metrics import metric_value

pytestmark = pytest.mark.real_vllm

#: The dev routes a switch calls, every one a POST. gpumux's health monitor also asks a
#: ready model `GET /is_sleeping` every `health_interval_secs`, at whatever moment the
#: model is ready (before a switch takes it away, right after one brought it back): that
#: probe is no part of a switch, so the method tells the two apart, not timing. (That
#: the probe never lands inside a switch is tests/unit/test_health_probe.py's business.)
SWITCH_ROUTES = ("/sleep", "/wake_up", "/collective_rpc", "/reset_prefix_cache")
#: Budget of a test that may cold-start two models and switch between them.
TWO_STARTS_SECS = 2 * STARTUP_TIMEOUT_SECS + 120

OFFLOAD = {"weights": "offload", "process": "keep_running"}
DISCARD = {"weights": "discard", "process": "keep_running"}


@pytest.fixture(scope="module")
def protocol(
    real_vllm: RealVllm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningDaemon]:
    tmp = tmp_path_factory.mktemp("protocol")
    models = {
        "l1": vllm_model(real_vllm, tmp / "l1-tmp", "tiny-a", eviction=OFFLOAD),
        "l2": vllm_model(
            real_vllm,
            tmp / "l2-tmp",
            "tiny-b",
            eviction=DISCARD,
            dummy_weights=False,
        ),
        "l2dummy": vllm_model(real_vllm, tmp / "l2dummy-tmp", "tiny-a", eviction=DISCARD),
    }
    with vllm_daemon(tmp, real_vllm, models) as daemon:
        yield daemon


def switch_calls(daemon: RunningDaemon, model: str, since: int = 0) -> list[str]:
    """The dev-route calls of switches that `model`'s vLLM answered after the first
    `since` access lines: `POST /route?query STATUS`, in order."""
    return [
        line
        for line in access_log(daemon, model)[since:]
        if line.startswith("POST ") and line.split()[1].startswith(SWITCH_ROUTES)
    ]


def root_pid(daemon: RunningDaemon, model: str) -> int:
    tree = backend_tree(daemon, model)
    assert tree, f"no vLLM process for {model}"
    return tree[0].pid


@pytest.mark.timeout(TWO_STARTS_SECS)
def test_level_1_sleep_and_wake_keep_the_process_and_its_answers(
    protocol: RunningDaemon,
) -> None:
    daemon = protocol
    before = complete(daemon, "l1", "Level one")
    since = len(access_log(daemon, "l1"))  # whatever ran before, l1 is awake now
    pid = root_pid(daemon, "l1")
    complete(daemon, "l2")  # one GPU: l1 must leave, and offload means sleep level 1
    assert metric_value(daemon, "gpumux_model_state", model="l1", state="sleeping") == 1
    after = complete(daemon, "l1", "Level one")
    assert switch_calls(daemon, "l1", since) == [
        "POST /sleep?level=1&mode=wait 200",
        "POST /wake_up 200",
    ]
    assert root_pid(daemon, "l1") == pid  # woken, not restarted
    assert after == before
    assert metric_value(daemon, "gpumux_switches_total", to="l1", outcome="ok") >= 1


@pytest.mark.timeout(TWO_STARTS_SECS)
def test_level_2_wake_reloads_the_weights_in_vllms_order(protocol: RunningDaemon) -> None:
    daemon = protocol
    before = complete(daemon, "l2", "Level two")
    since = len(access_log(daemon, "l2"))  # whatever ran before, l2 is awake now
    pid = root_pid(daemon, "l2")
    complete(daemon, "l1")  # l2 leaves: discard means sleep level 2
    after = complete(daemon, "l2", "Level two")
    assert switch_calls(daemon, "l2", since) == [
        "POST /sleep?level=2&mode=wait 200",
        "POST /wake_up?tags=weights 200",
        "POST /collective_rpc 200",  # {"method": "reload_weights"}: read model.safetensors
        "POST /wake_up?tags=kv_cache 200",
        "POST /reset_prefix_cache 200",
    ]
    assert root_pid(daemon, "l2") == pid
    assert after == before


@pytest.mark.timeout(TWO_STARTS_SECS + STARTUP_TIMEOUT_SECS)
def test_refused_reload_falls_back_to_a_cold_start(protocol: RunningDaemon) -> None:
    """vLLM answers 500 to reload_weights with dummy weights; the request still succeeds."""
    daemon = protocol
    restarts = metric_value(
        daemon, "gpumux_backend_restarts_total", model="l2dummy", reason="wake_failed"
    )
    before = complete(daemon, "l2dummy", "Dummy")
    since = len(access_log(daemon, "l2dummy"))  # whatever ran before, l2dummy is awake now
    pid = root_pid(daemon, "l2dummy")
    complete(daemon, "l1")
    after = complete(daemon, "l2dummy", "Dummy")
    assert switch_calls(daemon, "l2dummy", since) == [
        "POST /sleep?level=2&mode=wait 200",
        "POST /wake_up?tags=weights 200",
        "POST /collective_rpc 500",  # "Model reloading with `dummy` format" is refused
    ]
    assert root_pid(daemon, "l2dummy") != pid  # killed and cold-started
    assert after == before  # dummy weights are seeded: a new process answers the same
    assert (
        metric_value(daemon, "gpumux_backend_restarts_total", model="l2dummy", reason="wake_failed")
        == restarts + 1
    )
    assert metric_value(daemon, "gpumux_switches_total", to="l2dummy", outcome="fallback_cold") >= 1


@pytest.mark.timeout(STARTUP_TIMEOUT_SECS + 60)
def test_vllm_client_against_the_real_dev_routes(protocol: RunningDaemon) -> None:
    """gpumux's `VllmClient`, straight at a gpumux-started vLLM: vLLM's real answers.

    gpumux is left alone meanwhile (no proxy traffic) and the model is awake again at
    the end, so the daemon's view stays true.
    """
    daemon = protocol
    expected = complete(daemon, "l1", "Asleep")  # awake and ready, whatever ran before
    asyncio.run(_exercise_dev_routes(daemon.backend_url("l1"), expected))


async def _exercise_dev_routes(base_url: str, expected: str) -> None:
    body = {"model": "l1", "prompt": "Asleep", "max_tokens": 8, "temperature": 0}
    async with aiohttp.ClientSession() as session:
        vllm = VllmClient(session, base_url)
        assert await vllm.health(timeout=5)
        assert await vllm.is_sleeping(timeout=5) is False

        await vllm.sleep(1, mode="wait", timeout=30)
        assert await vllm.is_sleeping(timeout=5) is True
        assert await vllm.health(timeout=5)  # /health stays 200 while asleep
        # A request sent to a sleeping vLLM waits (it is not refused) until the wake.
        queued = asyncio.create_task(_completion(session, base_url, body))
        await asyncio.sleep(1.5)
        assert not queued.done()
        await vllm.wake_up(None, timeout=30)
        async with asyncio.timeout(60):
            assert await queued == expected
        assert await vllm.is_sleeping(timeout=5) is False

        # Level 2 with dummy weights: each step's real answer.
        await vllm.sleep(2, mode="wait", timeout=30)
        await vllm.wake_up(["weights"], timeout=30)
        assert await vllm.is_sleeping(timeout=5) is True  # the KV cache still sleeps
        with pytest.raises(BackendControlError) as refused:
            await vllm.collective_rpc("reload_weights", timeout=30)
        assert refused.value.status == 500
        assert "dummy" in refused.value.detail
        await vllm.wake_up(["kv_cache"], timeout=30)
        assert await vllm.is_sleeping(timeout=5) is False
        assert await vllm.reset_prefix_cache(timeout=30) is True
        assert await _completion(session, base_url, body) == expected

        with pytest.raises(BackendControlError) as unknown:
            await vllm.collective_rpc("no_such_method", timeout=30)
        assert unknown.value.status == 500
        assert await vllm.is_sleeping(timeout=5) is False


async def _completion(
    session: aiohttp.ClientSession, base_url: str, body: dict[str, object]
) -> str:
    async with session.post(
        base_url + "/v1/completions", json=body, timeout=aiohttp.ClientTimeout(total=60)
    ) as resp:
        assert resp.status == 200, await resp.text()
        reply = await resp.json()
    text: str = reply["choices"][0]["text"]
    return text
