"""A real vLLM cross-encoder behind gpumux: a rerank that switches from a chat model,
rerank (all three paths), score (both), classify and pooling, routed by `model` (an alias
too), with the shapes mock_vllm copies.

The model is a tiny `LlamaForSequenceClassification` (one label) derived from the tier's
tiny Llama and served by vLLM's pooling runner with dummy weights (`cross_encoder_model`).
Audio is not here: the CPU environment has no audio decoder (see the README's route table).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.client import Reply, assert_openai_error, post
from tests.support.cpu_vllm import (
    CLIENT_TIMEOUT_SECS,
    STARTUP_TIMEOUT_SECS,
    RealVllm,
    complete,
    cross_encoder_model,
    vllm_daemon,
    vllm_model,
)
from tests.support.daemon import RunningDaemon
from tests.support.metrics import metric_value

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(3 * STARTUP_TIMEOUT_SECS + 120)]

MODEL = "ranker"
CHAT = "tiny"
ALIAS = "ranker-alias"
DOCUMENTS = ["the quick brown fox", "a lazy dog sleeps", "GPU memory is scarce"]


@pytest.fixture(scope="module")
def daemon(
    real_vllm: RealVllm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningDaemon]:
    tmp = tmp_path_factory.mktemp("scoring")
    models = {
        MODEL: cross_encoder_model(real_vllm, tmp / "ranker-tmp", aliases=[ALIAS]),
        CHAT: vllm_model(real_vllm, tmp / "chat-tmp"),
    }
    with vllm_daemon(tmp, real_vllm, models) as running:
        yield running


def send(daemon: RunningDaemon, path: str, **body: Any) -> Any:
    reply: Reply = post(daemon, path, json.dumps(body).encode(), timeout=CLIENT_TIMEOUT_SECS)
    assert reply.status == 200, (path, reply.body[:500])
    return reply.json()


def test_a_rerank_switches_from_the_chat_model(daemon: RunningDaemon) -> None:
    """One nominal GPU at 0.9 each: the rerank stops the chat model and starts the ranker."""
    assert complete(daemon, CHAT)
    switches = metric_value(daemon, "gpumux_switches_total", to=MODEL)
    found = send(daemon, "/rerank", model=MODEL, query="fox", documents=DOCUMENTS)
    assert found["model"] == MODEL
    assert metric_value(daemon, "gpumux_switches_total", to=MODEL) == switches + 1
    assert metric_value(daemon, "gpumux_model_state", model=CHAT, state="stopped") == 1
    assert metric_value(daemon, "gpumux_model_state", model=MODEL, state="ready") == 1


def test_rerank_on_every_path_sorted_and_cut_to_top_n(daemon: RunningDaemon) -> None:
    for path, model in (("/rerank", MODEL), ("/v1/rerank", ALIAS), ("/v2/rerank", MODEL)):
        found = send(daemon, path, model=model, query="fox", documents=DOCUMENTS, top_n=2)
        assert set(found) == {"id", "model", "usage", "results"}
        assert found["model"] == MODEL
        assert set(found["usage"]) == {"prompt_tokens", "total_tokens"}
        results = found["results"]
        assert len(results) == 2
        assert all(set(r) == {"index", "document", "relevance_score"} for r in results)
        scores = [r["relevance_score"] for r in results]
        assert scores == sorted(scores, reverse=True)
        for result in results:
            assert result["document"]["text"] == DOCUMENTS[result["index"]]
        labels = {"model": MODEL, "endpoint": path, "code": "200"}
        assert metric_value(daemon, "gpumux_requests_total", **labels) >= 1


def test_score_classify_and_pooling(daemon: RunningDaemon) -> None:
    for path in ("/score", "/v1/score"):
        found = send(daemon, path, model=ALIAS, queries="fox", documents=DOCUMENTS)
        assert {"id", "object", "created", "model", "data", "usage"} <= set(found)
        assert found["model"] == MODEL
        assert [(d["index"], d["object"]) for d in found["data"]] == [
            (i, "score") for i in range(len(DOCUMENTS))
        ]
    classified = send(daemon, "/classify", model=MODEL, input=["hello", "world"])
    assert [set(d) for d in classified["data"]] == [{"index", "label", "probs", "num_classes"}] * 2
    assert classified["data"][0]["num_classes"] == len(classified["data"][0]["probs"]) == 1
    pooled = send(daemon, "/pooling", model=MODEL, input="hello")
    (only,) = pooled["data"]
    assert only["object"] == "pooling"
    assert isinstance(only["data"], list)
    # vLLM's own refusal (not 1:1, 1:N or N:N) comes back in its shape, unchanged.
    reply = post(
        daemon,
        "/score",
        json.dumps({"model": MODEL, "queries": ["a", "b"], "documents": DOCUMENTS}).encode(),
        timeout=CLIENT_TIMEOUT_SECS,
    )
    assert reply.status == 400, reply.body
    assert "1:1, 1:N or N:N" in reply.json()["error"]["message"]
    unknown = post(daemon, "/rerank", json.dumps({"model": "nope", "query": "q"}).encode())
    assert_openai_error(unknown, 404, "model_not_found")
