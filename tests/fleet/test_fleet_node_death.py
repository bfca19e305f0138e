"""A node SIGKILLed mid-load behind HAProxy: retried requests succeed, streams end loudly.

HAProxy buffers every body, so a request a dead node never answered (connection reset,
no response) is sent again to another node; a stream whose first bytes already reached
the client cannot be, and must end with an error the client sees, never a clean end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.client import get_json, post_json
from tests.support.daemon import mock_model
from tests.support.fleet import RunningFleet, chat_via, node_configs, running_fleet
from tests.support.waits import wait_until

pytestmark = pytest.mark.fleet

#: 20 tokens a second: a 30-token answer is in flight for 1.5 s.
SLOW = ["--gpu-memory-utilization", "0.3", "--mock-tokens-per-sec", "20"]
WORKERS = 6
STREAMS = 2


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[RunningFleet]:
    models = {node: {"m": mock_model(extra_args=SLOW)} for node in ("n1", "n2", "n3")}
    with running_fleet(tmp_path, node_configs(tmp_path, models)) as running:
        yield running


def inflight(fleet: RunningFleet, node: str) -> int:
    count: int = get_json(fleet.admin_url(node) + "/api/node")["models"]["m"]["inflight"]
    return count


def test_sigkill_loses_no_retryable_request_and_cuts_streams_loudly(
    fleet: RunningFleet,
) -> None:
    assert post_json(fleet.admin_url("n2") + "/api/models/m/wake", {}, timeout=30)["ok"]
    fleet.haproxy.wait_state("model_m/n2", "UP")

    streams: list[openai.Stream[object]] = []
    with fleet.sdk() as sdk:
        for _ in range(STREAMS):
            stream = sdk.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "go on"}],
                max_tokens=200,
                stream=True,
            )
            next(iter(stream))  # its first chunk came from n2: it can no longer be retried
            streams.append(stream)

        outcomes: list[tuple[str, str]] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def worker() -> None:
            with fleet.sdk() as own:
                while not stop.is_set():
                    try:
                        outcomes.append(chat_via(own, "m", max_tokens=30))
                    except Exception as exc:
                        failures.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        # Every worker has a request in flight on n2 (plus the two streams).
        wait_until(lambda: inflight(fleet, "n2") >= WORKERS + STREAMS, what="load on n2")
        served_before = len(outcomes)
        fleet.kill("n2")
        killed_at = time.monotonic()
        fleet.haproxy.wait_state("nodes/n2", "DOWN")
        wait_until(lambda: len(outcomes) >= served_before + 2 * WORKERS, timeout=30, what="load")
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

        for stream in streams:  # the SDK raises: the body ended without its last chunk
            with stream, pytest.raises(openai.APIConnectionError):
                for _ in stream:
                    pass
    assert not failures, failures
    after = outcomes[served_before:]
    assert {node for node, _ in after} - {"n2"} == {"n1"}, after  # the next node up, alone
    # One bring-up before the kill (n2, by the admin wake), then one for all the retries.
    assert sorted(fleet.bring_ups("m")) == [("n1", "starting"), ("n2", "starting")]
    assert time.monotonic() - killed_at < 30
