"""LoRA adapters through the real daemon and mock backends, with the official openai SDK:
served by their base model and named in its answer, loaded once however many first
requests race, loaded again after a level-2 sleep and after a stop, listed with `parent`,
counted in metrics and the request log by name, a failed load answered with vLLM's
message and tried again, demand for an adapter waking its base model, a SIGHUP that adds
and removes adapters without a restart, and vLLM's runtime LoRA routes refused."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.admin import Admin
from tests.support.client import assert_openai_error, get_json, post, post_json
from tests.support.daemon import RunningDaemon, mock_model, running_daemon
from tests.support.lora import adapter_dir, lora_counts
from tests.support.metrics import metric_value
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

LORA_ARGS = ["--enable-lora", "--max-lora-rank", "8"]
DISCARD = {"weights": "discard", "process": "keep_running"}


def sdk(daemon: RunningDaemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=60)


def complete(daemon: RunningDaemon, model: str, prompt: str = "hello") -> str:
    with sdk(daemon) as client:
        reply = client.completions.create(model=model, prompt=prompt, max_tokens=4)
    assert reply.model == model
    return reply.choices[0].text


def completion_body(model: str) -> bytes:
    return json.dumps({"model": model, "prompt": "hi", "max_tokens": 3}).encode()


def lora_model(tmp: Path, *names: str, **overrides: Any) -> dict[str, Any]:
    adapters = {name: str(adapter_dir(tmp / "adapters", name)) for name in names}
    return mock_model(extra_args=LORA_ARGS, adapters=adapters, **overrides)


def state(admin: Admin, model: str) -> str:
    return str(admin.status()["models"][model]["state"])


@pytest.mark.timeout(120)
def test_an_adapter_is_served_by_its_base_model_through_the_openai_sdk(tmp_path: Path) -> None:
    models = {"base": lora_model(tmp_path, "sql-lora", eviction=DISCARD)}
    with running_daemon(tmp_path, models, admin_port=free_port()) as daemon:
        admin = Admin(daemon)
        with sdk(daemon) as client:
            text = client.completions.create(model="sql-lora", prompt="hi", max_tokens=4)
            chat = client.chat.completions.create(
                model="sql-lora", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            base = client.completions.create(model="base", prompt="hi", max_tokens=4)
        assert text.model == "sql-lora"
        assert text.choices[0].text.startswith("[lora sql-lora]")
        assert chat.model == "sql-lora"
        assert (chat.choices[0].message.content or "").startswith("[lora sql-lora]")
        assert not base.choices[0].text.startswith("[lora")
        assert lora_counts(daemon, "base")["loads"] == {"sql-lora": 1}

        listed = {m["id"]: m for m in get_json(daemon.url + "/v1/models")["data"]}
        assert listed["sql-lora"]["parent"] == "base"
        assert listed["sql-lora"]["root"] == models["base"]["adapters"]["sql-lora"]
        assert "parent" not in listed["base"]

        # Level-2 sleep, then wake: vLLM still lists it, gpumux loads it again in place.
        pid = admin.status()["models"]["base"]["pid"]
        assert admin.post("/api/models/base/evict")[0] == 200
        wait_until(lambda: state(admin, "base") == "sleeping", what="base asleep")
        assert complete(daemon, "sql-lora").startswith("[lora sql-lora]")
        assert admin.status()["models"]["base"]["pid"] == pid
        assert lora_counts(daemon, "base")["loads"] == {"sql-lora": 2}

        # A stop and a cold start: a new process, loaded again from scratch.
        assert admin.post("/api/models/base/restart")[0] == 200
        wait_until(lambda: admin.status()["models"]["base"]["pid"] != pid, what="a new pid")
        assert complete(daemon, "sql-lora").startswith("[lora sql-lora]")
        assert lora_counts(daemon, "base")["loads"] == {"sql-lora": 1}

        # Metrics and the request log name the adapter; the model is the base model.
        assert (
            metric_value(
                daemon,
                "gpumux_adapter_requests_total",
                model="base",
                adapter="sql-lora",
                endpoint="/v1/completions",
                code="200",
            )
            == 3
        )
        assert (
            metric_value(
                daemon,
                "gpumux_adapter_loads_total",
                model="base",
                adapter="sql-lora",
                outcome="loaded",
            )
            == 3
        )
        code, body = admin.get("/api/requests?model=sql-lora")
        assert code == 200
        assert {(r["model"], r["adapter"]) for r in body["requests"]} == {("base", "sql-lora")}
        assert len(body["requests"]) == 4
        loaded = [e for e in daemon.log_events() if e["event"] == "adapter_loaded"]
        assert len(loaded) == 3


@pytest.mark.timeout(120)
async def test_concurrent_first_requests_load_the_adapter_once(tmp_path: Path) -> None:
    slow = [*LORA_ARGS, "--mock-lora-load-delay-secs", "0.5"]
    adapters = {"sql-lora": str(adapter_dir(tmp_path, "sql-lora"))}
    models = {"base": mock_model(extra_args=slow, adapters=adapters)}
    with running_daemon(tmp_path, models) as daemon:
        async with openai.AsyncOpenAI(
            base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=60
        ) as client:
            replies = await asyncio.gather(
                *(
                    client.completions.create(model="sql-lora", prompt=f"p{i}", max_tokens=2)
                    for i in range(6)
                )
            )
        assert all(r.choices[0].text.startswith("[lora sql-lora]") for r in replies)
        assert lora_counts(daemon, "base")["loads"] == {"sql-lora": 1}


@pytest.mark.timeout(120)
def test_a_failed_load_answers_with_vllms_message_and_the_next_request_loads(
    tmp_path: Path,
) -> None:
    models = {"base": lora_model(tmp_path, "sql-lora", "wide")}
    # A rank above --max-lora-rank: vLLM refuses it, every time, with its own message.
    adapter_dir(tmp_path / "adapters", "wide", rank=64)
    with running_daemon(tmp_path, models) as daemon:
        complete(daemon, "base")
        post_json(daemon.backend_url("base") + "/mock/faults", {"lora_load_failures": 1})
        reply = post(daemon, "/v1/completions", completion_body("sql-lora"))
        error = assert_openai_error(reply, 502, "adapter_load_failed")
        assert "sql-lora" in error["message"]
        assert "mock fault: lora_load_failures" in error["message"]
        assert complete(daemon, "sql-lora").startswith("[lora sql-lora]")

        reply = post(daemon, "/v1/completions", completion_body("wide"))
        error = assert_openai_error(reply, 502, "adapter_load_failed")
        assert "LoRA rank 64 is greater than max_lora_rank 8." in error["message"]
        assert lora_counts(daemon, "base")["loads"] == {"sql-lora": 1}
        assert (
            metric_value(
                daemon, "gpumux_adapter_loads_total", model="base", adapter="wide", outcome="failed"
            )
            == 1
        )


@pytest.mark.timeout(120)
def test_demand_for_an_adapter_is_demand_for_its_base_model(tmp_path: Path) -> None:
    # One fake 80 GiB GPU and 0.9 utilisation each: only one model is awake at a time.
    models = {"base": lora_model(tmp_path, "sql-lora"), "other": mock_model()}
    with running_daemon(tmp_path, models, admin_port=free_port()) as daemon:
        admin = Admin(daemon)
        complete(daemon, "other")
        assert state(admin, "other") == "ready"
        assert complete(daemon, "sql-lora").startswith("[lora sql-lora]")
        status = admin.status()["models"]
        assert status["base"]["state"] == "ready"
        assert status["other"]["state"] != "ready"
        assert status["base"]["last_switch"]["victims"] == ["other"]


@pytest.mark.timeout(120)
def test_a_reload_adds_and_removes_adapters_without_a_restart(tmp_path: Path) -> None:
    models = {"base": lora_model(tmp_path, "sql-lora")}
    with running_daemon(tmp_path, models, admin_port=free_port()) as daemon:
        admin = Admin(daemon)
        assert complete(daemon, "sql-lora").startswith("[lora sql-lora]")
        pid = admin.status()["models"]["base"]["pid"]

        config_path = tmp_path / "gpumux.json"
        config = json.loads(config_path.read_text())
        config["models"]["base"]["adapters"] = {
            "chat-lora": str(adapter_dir(tmp_path / "adapters", "chat-lora"))
        }
        config_path.write_text(json.dumps(config))
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "chat-lora" in {m["id"] for m in get_json(daemon.url + "/v1/models")["data"]},
            what="adapters reloaded",
        )
        assert post(daemon, "/v1/completions", completion_body("sql-lora")).status == 404
        assert complete(daemon, "chat-lora").startswith("[lora chat-lora]")
        counts = lora_counts(daemon, "base")
        assert counts["unloads"] == {"sql-lora": 1}
        assert set(counts["served"]) == {"chat-lora"}
        assert admin.status()["models"]["base"]["pid"] == pid  # never restarted


@pytest.mark.timeout(60)
def test_the_runtime_lora_routes_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    models = {"base": lora_model(tmp_path, "sql-lora")}
    with running_daemon(tmp_path, models) as daemon:
        body = json.dumps({"lora_name": "x", "lora_path": "/etc"}).encode()
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            error = assert_openai_error(post(daemon, path, body), 404)
            assert "models.<model>.adapters" in error["message"]
