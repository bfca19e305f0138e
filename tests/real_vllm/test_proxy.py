"""One real vLLM behind gpumux: cold start on the first request, then the OpenAI surface.

One daemon serves the whole module (a cold start costs ~18 s on 2 cores); the fixture
sends the first request and records how the cold start went, and each test then asks
through the real `openai` SDK.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.support.client import get_json, http_status, post_json
from tests.support.cpu_vllm import (
    STARTUP_TIMEOUT_SECS,
    RealVllm,
    backend_log,
    backend_tree,
    client,
    complete,
    vllm_daemon,
    vllm_model,
)
from tests.support.daemon import RunningDaemon
from tests.support.metrics import metric_value

# Whichever test runs first also pays for the module's cold start.
pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(STARTUP_TIMEOUT_SECS + 60)]

MODEL = "tiny"


@dataclass(frozen=True)
class ColdStart:
    """What the module fixture saw around the first request."""

    state_before: float
    seconds: float
    text: str


@pytest.fixture(scope="module")
def served(
    real_vllm: RealVllm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningDaemon, ColdStart]]:
    """A daemon with one real model, cold-started by a first completion."""
    tmp = tmp_path_factory.mktemp("proxy")
    models = {MODEL: vllm_model(real_vllm, tmp / "vllm-tmp")}
    with vllm_daemon(tmp, real_vllm, models) as daemon:
        before = metric_value(daemon, "gpumux_model_state", model=MODEL, state="stopped")
        started = time.monotonic()
        text = complete(daemon, MODEL, "The first request")
        yield daemon, ColdStart(before, time.monotonic() - started, text)


def test_first_request_cold_starts_the_model_and_waits_for_readiness(
    served: tuple[RunningDaemon, ColdStart],
) -> None:
    """Nothing runs before the first request; it is answered once vLLM reports healthy."""
    daemon, cold = served
    assert cold.state_before == 1  # stopped until asked for
    assert cold.text
    assert 1.0 < cold.seconds < STARTUP_TIMEOUT_SECS
    assert metric_value(daemon, "gpumux_model_state", model=MODEL, state="ready") == 1
    assert http_status(daemon.backend_url(MODEL) + "/health") == 200
    # The real tree: API server, EngineCore, worker (and multiprocessing's resource tracker).
    names = " ".join(p.name() + " " + " ".join(p.cmdline()) for p in backend_tree(daemon, MODEL))
    assert "VLLM::EngineCore" in names
    assert "VLLM::Worker" in names
    log = backend_log(daemon, MODEL)
    assert "Application startup complete" in log
    assert "Starting vLLM server on http://127.0.0.1:" in log  # gpumux's --host reached vLLM


def test_models_lists_the_alias(served: tuple[RunningDaemon, ColdStart]) -> None:
    daemon, _ = served
    listed = get_json(daemon.url + "/v1/models")
    assert [m["id"] for m in listed["data"]] == [MODEL]
    # vLLM itself serves under the alias gpumux passed as --served-model-name.
    upstream = get_json(daemon.backend_url(MODEL) + "/v1/models")
    assert [m["id"] for m in upstream["data"]] == [MODEL]
    assert upstream["data"][0]["max_model_len"] == 512


def test_chat_completion_applies_the_chat_template(
    served: tuple[RunningDaemon, ColdStart],
) -> None:
    daemon, _ = served
    with client(daemon) as sdk:
        replies = [
            sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Say something"}],
                max_tokens=6,
                temperature=0,
            )
            for _ in range(2)
        ]
    first, second = replies
    assert first.model == MODEL
    assert first.choices[0].message.role == "assistant"
    assert isinstance(first.choices[0].message.content, str)
    assert first.usage is not None
    assert first.usage.completion_tokens == 6
    # vLLM applied our chat template: <s><|user|>\n...<|end|>\n<|assistant|>\n.
    templated = post_json(
        daemon.url + "/tokenize",
        {"model": MODEL, "messages": [{"role": "user", "content": "Say something"}]},
    )
    plain = post_json(daemon.url + "/tokenize", {"model": MODEL, "prompt": "Say something"})
    assert first.usage.prompt_tokens == templated["count"] > plain["count"]
    shown = post_json(daemon.url + "/detokenize", {"model": MODEL, "tokens": templated["tokens"]})
    assert "<|user|>" in shown["prompt"]
    assert shown["prompt"].rstrip().endswith("<|assistant|>")
    assert first.choices[0].message.content == second.choices[0].message.content  # greedy


def test_completion_is_deterministic_at_temperature_zero(
    served: tuple[RunningDaemon, ColdStart],
) -> None:
    daemon, cold = served
    assert complete(daemon, MODEL, "The first request") == cold.text
    with client(daemon) as sdk:
        reply = sdk.completions.create(model=MODEL, prompt="abc", max_tokens=5, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5


def test_streaming_chat_matches_the_non_streaming_answer(
    served: tuple[RunningDaemon, ColdStart],
) -> None:
    daemon, _ = served
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "Stream please"}
    ]
    with client(daemon) as sdk:
        whole = sdk.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, temperature=0
        )
        stream = sdk.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    content = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(content) > 2  # really streamed, chunk by chunk
    assert "".join(content) == whole.choices[0].message.content
    assert finish == ["length"]
    assert usage[-1].completion_tokens == 12


def test_streaming_completion_ends_cleanly(served: tuple[RunningDaemon, ColdStart]) -> None:
    daemon, _ = served
    with client(daemon) as sdk:
        text = "".join(
            chunk.choices[0].text
            for chunk in sdk.completions.create(
                model=MODEL, prompt="Hello", max_tokens=8, temperature=0, stream=True
            )
            if chunk.choices
        )
    assert text == complete(daemon, MODEL, "Hello")


def test_tokenize_round_trips_through_the_proxy(served: tuple[RunningDaemon, ColdStart]) -> None:
    daemon, _ = served
    tokens = post_json(daemon.url + "/tokenize", {"model": MODEL, "prompt": "def main():"})
    assert tokens["count"] == len(tokens["tokens"]) > 1
    text = post_json(daemon.url + "/detokenize", {"model": MODEL, "tokens": tokens["tokens"]})
    assert text["prompt"].endswith("def main():")


def test_unknown_model_is_refused_by_gpumux(served: tuple[RunningDaemon, ColdStart]) -> None:
    daemon, _ = served
    with client(daemon) as sdk, pytest.raises(openai.NotFoundError) as caught:
        sdk.completions.create(model="nope", prompt="x", max_tokens=1)
    assert caught.value.code == "model_not_found"


def test_backend_temp_files_stay_in_the_model_tmpdir(
    served: tuple[RunningDaemon, ColdStart],
) -> None:
    """TMPDIR/VLLM_RPC_BASE_PATH from the model's `env` reach vLLM through the allow-list."""
    daemon, _ = served
    run_dir = Path(daemon.config["models"][MODEL]["env"]["TMPDIR"])
    sockets = [p for p in run_dir.iterdir() if p.is_socket()]
    assert sockets, f"vLLM created no ZMQ sockets in {run_dir}"
