"""The adapter loader in-process, against a recording fake of vLLM's load API: one load per
adapter per backend process however many requests wait on it, a failed load fails its
waiters but not the next try, new processes and level-2 sleeps load again (in place where
vLLM still lists the adapter), and a SIGHUP's removals and moves reach the backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gpumux.backends.adapters import AdapterApiError, AdapterLoader
from gpumux.core.config import Config
from gpumux.core.config_rules import parse_config
from tests.support.lora import Call, RecordingAdapterApi

pytestmark = pytest.mark.unit


def config(adapters: dict[str, str]) -> Config:
    raw: dict[str, Any] = {
        "models": {
            "base": {
                "model_path": "org/base",
                "port": 8001,
                "extra_args": ["--enable-lora"],
                "adapters": adapters,
            }
        }
    }
    parsed, _ = parse_config(raw)
    return parsed


class Resets:
    """The backend's cold-start/level-2 counter, as `Backends.weight_resets` reports it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, model: str) -> int:
        return self.count


def make(
    adapters: dict[str, str] | None = None,
) -> tuple[AdapterLoader, RecordingAdapterApi, Resets, list[tuple[str, str, str]]]:
    api = RecordingAdapterApi()
    resets = Resets()
    outcomes: list[tuple[str, str, str]] = []
    loader = AdapterLoader(
        config(adapters or {"sql": "/a/sql"}),
        api,
        resets,
        lambda *observed: outcomes.append(observed),
    )
    return loader, api, resets, outcomes


async def test_concurrent_first_requests_share_one_load() -> None:
    loader, api, _, outcomes = make()
    api.hold()
    waiters = [asyncio.create_task(loader.ensure("base", 100, "sql")) for _ in range(5)]
    await api.started.wait()
    await asyncio.sleep(0)  # every waiter has joined the load in flight
    assert not any(w.done() for w in waiters)
    api.release()
    await asyncio.gather(*waiters)
    assert api.calls == [Call("load", "base", 8001, "sql", "/a/sql", inplace=False)]
    await loader.ensure("base", 100, "sql")  # loaded: no call at all
    assert len(api.calls) == 1
    assert outcomes == [("base", "sql", "loaded")]


async def test_a_client_that_leaves_does_not_cancel_the_load() -> None:
    loader, api, _, _ = make()
    api.hold()
    first = asyncio.create_task(loader.ensure("base", 100, "sql"))
    await api.started.wait()
    second = asyncio.create_task(loader.ensure("base", 100, "sql"))
    await asyncio.sleep(0)
    first.cancel()
    api.release()
    await second
    assert first.cancelled()
    assert len(api.loads()) == 1


async def test_a_failed_load_fails_its_waiters_and_the_next_request_tries_again() -> None:
    loader, api, _, outcomes = make()
    api.fail_next(404, "Loading lora sql failed: No adapter found for /a/sql")
    api.hold()
    waiters = [asyncio.create_task(loader.ensure("base", 100, "sql")) for _ in range(2)]
    await api.started.wait()
    api.release()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    for result in results:
        assert isinstance(result, AdapterApiError)
        assert result.status == 404
        assert "No adapter found" in result.message
    await loader.ensure("base", 100, "sql")
    assert [c.inplace for c in api.loads()] == [False, False]
    assert outcomes == [("base", "sql", "failed"), ("base", "sql", "loaded")]


async def test_already_loaded_counts_as_loaded() -> None:
    loader, api, _, outcomes = make()
    api.fail_next(400, "The lora adapter 'sql' has already been loaded. If you want ...")
    await loader.ensure("base", 100, "sql")
    await loader.ensure("base", 100, "sql")
    assert len(api.loads()) == 1
    assert outcomes == [("base", "sql", "loaded")]


async def test_a_new_process_loads_again_and_a_level_2_sleep_reloads_in_place() -> None:
    loader, api, resets, _ = make()
    await loader.ensure("base", 100, "sql")
    await loader.ensure("base", 100, None)  # a request for the base model loads nothing
    resets.count += 1  # cold start: a new pid
    await loader.ensure("base", 200, "sql")
    resets.count += 1  # level-2 sleep and wake: the same pid, vLLM still lists it
    await loader.ensure("base", 200, "sql")
    await loader.ensure("base", 200, "sql")  # a CRIU restore keeps pid and memory: nothing
    assert [(c.inplace) for c in api.loads()] == [False, False, True]


async def test_a_reload_unloads_removed_adapters_and_reloads_moved_ones_in_place() -> None:
    loader, api, _, _ = make({"sql": "/a/sql", "chat": "/a/chat"})
    await loader.ensure("base", 100, "sql")
    await loader.ensure("base", 100, "chat")
    loader.reload(config({"sql": "/a/sql-v2"}))
    assert len(api.calls) == 2  # nothing happens until a lease on the model
    await loader.ensure("base", 100, None)
    assert api.calls[2:] == [Call("unload", "base", 8001, "chat")]
    await loader.ensure("base", 100, "sql")
    assert api.calls[3:] == [Call("load", "base", 8001, "sql", "/a/sql-v2", inplace=True)]


async def test_an_adapter_removed_and_added_back_before_a_request_is_not_unloaded() -> None:
    loader, api, _, _ = make()
    await loader.ensure("base", 100, "sql")
    loader.reload(config({}))
    loader.reload(config({"sql": "/a/sql"}))
    await loader.ensure("base", 100, "sql")
    assert api.calls == [Call("load", "base", 8001, "sql", "/a/sql", inplace=False)]
