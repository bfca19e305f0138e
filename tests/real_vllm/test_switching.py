"""Two real vLLM models take turns under the stop strategy (retain+stop).

Both need the one (nominal) GPU, so serving one stops the other's whole tree and the
next request for it cold-starts it again. Greedy answers must survive the round trip
and each model must answer as itself.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from tests.support.cpu_vllm import (
    STARTUP_TIMEOUT_SECS,
    RealVllm,
    backend_log,
    backend_tree,
    complete,
    vllm_daemon,
    vllm_model,
)
from tests.support.metrics import metric_value
from tests.support.procs import alive
from tests.support.waits import wait_until

pytestmark = pytest.mark.real_vllm

STOP = {"weights": "retain", "process": "stop"}


@pytest.mark.timeout(3 * STARTUP_TIMEOUT_SECS + 120)
def test_two_models_take_turns_with_stop(real_vllm: RealVllm, tmp_path: Path) -> None:
    tmp = tmp_path
    models = {
        # Weights from disk: two seeds, two models that answer differently.
        "a": vllm_model(real_vllm, tmp / "a-tmp", "tiny-a", eviction=STOP, dummy_weights=False),
        "b": vllm_model(real_vllm, tmp / "b-tmp", "tiny-b", eviction=STOP, dummy_weights=False),
    }
    with vllm_daemon(tmp, real_vllm, models) as daemon:
        first_a = complete(daemon, "a", "Turn taking")
        tree_a = [p.pid for p in backend_tree(daemon, "a")]
        assert len(tree_a) >= 3  # API server, EngineCore, worker (+ resource tracker)

        # Two requests for b at once: one cold start serves both.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers_b = list(pool.map(lambda _: complete(daemon, "b", "Turn taking"), range(2)))
        assert answers_b[0] == answers_b[1]
        assert answers_b[0] != first_a  # another model answered
        assert backend_log(daemon, "b").count("Starting vLLM server on") == 1
        # a's whole tree was stopped before b started (one GPU, stop strategy).
        assert not [pid for pid in tree_a if alive(pid)]
        assert metric_value(daemon, "gpumux_model_state", model="a", state="stopped") == 1

        second_a = complete(daemon, "a", "Turn taking")
        assert second_a == first_a
        assert backend_log(daemon, "a").count("Starting vLLM server on") == 2
        assert metric_value(daemon, "gpumux_model_state", model="b", state="stopped") == 1
        wait_until(
            lambda: metric_value(daemon, "gpumux_switches_total", to="a", outcome="ok") >= 1,
            timeout=10,
            what="the switch back to a to be counted",
        )
        assert metric_value(daemon, "gpumux_switches_total", to="b", outcome="ok") >= 1
