"""Rerank, score, pooling and classify through the real daemon and mock backends: routed by
the body's `model` (aliases too), a rerank that needs a switch gets one, the same errors
as chat (unknown model 404, bad JSON 400, wrong media type 415), the endpoint label in
`gpumux_requests_total`, a request-log entry per route, the mock's fault knobs, and loading
feedback kept out of replies that are not streams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import Admin
from tests.support.backend import set_faults
from tests.support.client import Reply, assert_openai_error, post
from tests.support.daemon import RunningDaemon, chat, mock_model, running_daemon
from tests.support.metrics import metric_value
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

TOKEN = "pooling-routes-token"
DOCUMENTS = ["the fox jumps", "a lazy dog", "GPU memory", "queues and switches"]
RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank")
SCORE_PATHS = ("/score", "/v1/score")


def send(daemon: RunningDaemon, path: str, **body: Any) -> Reply:
    return post(daemon, path, json.dumps(body).encode())


def ok(reply: Reply) -> Any:
    assert reply.status == 200, reply.body[:500]
    return reply.json()


def objects(found: Any) -> list[tuple[int, str]]:
    return [(d["index"], d["object"]) for d in found["data"]]


def check_rerank(found: Any, model: str, top_n: int) -> None:
    assert found["model"] == model
    assert found["id"]
    assert found["usage"]["total_tokens"] > 0
    results = found["results"]
    assert len(results) == top_n
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s < 1 for s in scores)
    for result in results:
        assert result["document"]["text"] == DOCUMENTS[result["index"]]


@pytest.mark.timeout(180)
def test_each_pooling_route_is_routed_switched_counted_and_logged(tmp_path: Path) -> None:
    models = {"chat": mock_model(), "ranker": mock_model(aliases=["ranker-v1"])}
    with running_daemon(
        tmp_path, models, env={"T": TOKEN}, admin_port=free_port(), admin_token_env="T"
    ) as daemon:
        chat(daemon, "chat")  # one awake at a time (0.9 each): the rerank must switch
        check_rerank(
            ok(send(daemon, "/rerank", model="ranker", query="fox", documents=DOCUMENTS, top_n=2)),
            "ranker",
            2,
        )
        assert metric_value(daemon, "gpumux_switches_total", to="ranker", outcome="ok") == 1
        assert metric_value(daemon, "gpumux_model_state", model="ranker", state="ready") == 1
        assert metric_value(daemon, "gpumux_model_state", model="chat", state="ready") == 0

        for path in RERANK_PATHS[1:]:  # through the alias: the backend sees the real name
            found = ok(send(daemon, path, model="ranker-v1", query="fox", documents=DOCUMENTS))
            check_rerank(found, "ranker", len(DOCUMENTS))
        for path in SCORE_PATHS:
            found = ok(send(daemon, path, model="ranker", queries="fox", documents=DOCUMENTS[:2]))
            assert found["model"] == "ranker"
            assert found["object"] == "list"
            assert objects(found) == [(0, "score"), (1, "score")]
            assert found["usage"]["prompt_tokens"] > 0
        pooled = ok(send(daemon, "/pooling", model="ranker-v1", input=["a b", "c"]))
        assert objects(pooled) == [(0, "pooling"), (1, "pooling")]
        assert all(isinstance(x, float) for x in pooled["data"][0]["data"])
        classified = ok(send(daemon, "/classify", model="ranker", input="a fine day"))
        (only,) = classified["data"]
        assert only["num_classes"] == len(only["probs"]) == 2
        assert only["label"] in ("negative", "positive")
        assert abs(sum(only["probs"]) - 1) < 1e-9

        # The same refusals as chat, before anything is queued.
        assert_openai_error(
            send(daemon, "/score", model="nope", queries="q", documents=["d"]),
            404,
            "model_not_found",
        )
        assert_openai_error(post(daemon, "/classify", b'{"model": "ranker",'), 400, "invalid_json")
        assert_openai_error(send(daemon, "/pooling", input="x"), 400, "missing_model")
        form_type = {"Content-Type": "multipart/form-data; boundary=x"}
        reply = post(daemon, "/rerank", b"--x--\r\n", headers=form_type)
        assert_openai_error(reply, 415, "unsupported_media_type")
        # The backend's own refusal passes through in vLLM's shape.
        refused = send(daemon, "/score", model="ranker", queries=["a", "b"], documents=["c"] * 3)
        assert refused.status == 400
        assert refused.json()["error"]["message"] == "Input lengths must be either 1:1, 1:N or N:N"

        counted = {
            path: metric_value(
                daemon, "gpumux_requests_total", model="ranker", endpoint=path, code="200"
            )
            for path in (*RERANK_PATHS, *SCORE_PATHS, "/pooling", "/classify")
        }
        assert counted == dict.fromkeys(counted, 1.0)
        unknown = {"model": "_unknown", "endpoint": "/score", "code": "404"}
        assert metric_value(daemon, "gpumux_requests_total", **unknown) == 1

        code, body = Admin(daemon, TOKEN).get("/api/requests?limit=100&model=ranker")
        assert code == 200, body
        logged = {(r["endpoint"], r["status"]) for r in body["requests"]}
        assert {(path, 200) for path in counted} <= logged
        assert ("/score", 400) in logged
        rerank_entry = next(r for r in body["requests"] if r["endpoint"] == "/rerank")
        assert rerank_entry["prompt_tokens"] > 0  # read from the backend's `usage`
        assert rerank_entry["queue_secs"] > 0  # it waited for the switch


@pytest.mark.timeout(120)
def test_the_mocks_fault_knobs_apply_to_pooling_routes(tmp_path: Path) -> None:
    with running_daemon(tmp_path, {"ranker": mock_model()}) as daemon:
        ok(send(daemon, "/classify", model="ranker", input="warm"))
        set_faults(daemon, "ranker", http_error_status=503, http_error_marker="poison")
        assert send(daemon, "/classify", model="ranker", input="fine").status == 200
        poisoned = send(daemon, "/rerank", model="ranker", query="q", documents=["poison"])
        assert poisoned.status == 503
        assert poisoned.json()["error"]["code"] == 503  # vLLM's shape, passed through
        set_faults(daemon, "ranker", http_error_status=None, crash_after_chunks=0)
        crashed = send(daemon, "/score", model="ranker", queries="q", documents=["d"])
        assert_openai_error(crashed, 502)
        # The crash is noticed, and the model comes back for the next request.
        wait_until(
            lambda: metric_value(
                daemon, "gpumux_backend_restarts_total", model="ranker", reason="crash"
            ),
            "the crash noticed",
        )
        ok(send(daemon, "/score", model="ranker", queries="q", documents=["d"]))


@pytest.mark.timeout(120)
def test_loading_feedback_never_enters_a_rerank_reply(tmp_path: Path) -> None:
    """`stream: true` in a rerank body is not a stream: a slow cold start sends no SSE
    comments into the JSON reply, while a streamed transcription does get them."""
    slow = ["--mock-startup-secs", "2"]
    models = {"ranker": mock_model(extra_args=slow), "whisper": mock_model(extra_args=slow)}
    with running_daemon(
        tmp_path, models, loading_feedback="comments", loading_feedback_after_secs=0.3
    ) as daemon:
        reply = send(daemon, "/rerank", model="ranker", query="q", documents=DOCUMENTS, stream=True)
        assert float(reply.headers["x-gpumux-queue-seconds"]) > 0.3  # it waited
        assert reply.headers["content-type"].startswith("application/json")
        assert b"gpumux" not in reply.body
        assert len(ok(reply)["results"]) == len(DOCUMENTS)

        boundary = "fb0undary"
        form = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            f"\r\nRIFF\r\n--{boundary}--\r\n"
        ).encode()
        streamed = post(
            daemon,
            "/v1/audio/transcriptions",
            form,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert streamed.status == 200, streamed.body
        assert streamed.body.startswith(b": gpumux: waiting for whisper (")
        assert streamed.body.endswith(b"data: [DONE]\n\n")
