"""Models take turns on one fake GPU through the real daemon, with the real openai SDK."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from tests.support.backend import backend_state, control_calls, event_names, set_faults
from tests.support.daemon import chat, mock_model, running_daemon
from tests.support.ledger import gpu_used
from tests.support.metrics import metric_value

pytestmark = pytest.mark.integration

CAPACITY = 80 * 1024**3


def test_two_models_alternate_on_one_gpu(tmp_path: Path) -> None:
    """Two 0.9 models alternate: each switch sleeps one (level 1, mode=wait) and wakes the other."""
    models = {"a": mock_model(), "b": mock_model()}
    # Strict alternation predicts a's next request before b's: eviction ahead of need
    # would put b to sleep after its last turn, and this test checks where it rests.
    with running_daemon(tmp_path, models, policy={"evict_ahead": False}) as daemon:
        for _ in range(3):
            assert chat(daemon, "a")
            assert gpu_used(daemon) <= CAPACITY
            assert chat(daemon, "b")
            assert gpu_used(daemon) <= CAPACITY
        assert control_calls(daemon, "a")[:2] == ["sleep:1:wait", "wake_up:all"]
        assert metric_value(daemon, "gpumux_switches_total", to="b", outcome="ok") >= 3
        assert metric_value(daemon, "gpumux_model_state", model="b", state="ready") == 1


def test_discard_wake_reloads_weights_in_order(tmp_path: Path) -> None:
    """Level 2 wake: weights -> reload_weights -> kv_cache -> reset_prefix_cache; no garbage."""
    discard = {"weights": "discard", "process": "keep_running"}
    models = {"a": mock_model(eviction=discard), "b": mock_model()}
    with running_daemon(tmp_path, models) as daemon:
        first = chat(daemon, "a", "same prompt")
        chat(daemon, "b")
        again = chat(daemon, "a", "same prompt")
        assert control_calls(daemon, "a") == [
            "sleep:2:wait",
            "wake_up:weights",
            "rpc:reload_weights",
            "wake_up:kv_cache",
            "reset_prefix_cache",
        ]
        assert again == first
        assert "!!!" not in again


def test_stop_strategy_cold_starts_again(tmp_path: Path) -> None:
    stop = {"weights": "retain", "process": "stop"}
    models = {"a": mock_model(eviction=stop), "b": mock_model(eviction=stop)}
    with running_daemon(tmp_path, models) as daemon:
        chat(daemon, "a")
        assert backend_state(daemon, "a")["pid"]  # the backend answers
        chat(daemon, "b")
        assert gpu_used(daemon) <= CAPACITY
        chat(daemon, "a")
        assert metric_value(daemon, "gpumux_model_state", model="b", state="stopped") == 1


def test_models_that_fit_stay_awake_together_and_never_overcommit(tmp_path: Path) -> None:
    """Three 0.45 models on 80 GiB: two stay awake, a third evicts one; never over-committed."""
    half = ["--gpu-memory-utilization", "0.45"]
    models = {m: mock_model(extra_args=half) for m in ("a", "b", "c")}
    with running_daemon(tmp_path, models) as daemon:
        chat(daemon, "a")
        chat(daemon, "b")
        assert control_calls(daemon, "a") == []  # b fitted beside a: nobody slept
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            jobs = [pool.submit(chat, daemon, m) for m in "abcabcabcabc"]
            for job in jobs:
                assert job.result()
                assert gpu_used(daemon) <= CAPACITY
        assert gpu_used(daemon) <= CAPACITY
        failures = metric_value(
            daemon, "gpumux_backend_restarts_total", model="c", reason="start_failed"
        )
        assert failures == 0  # the mock refuses over-commit; nothing was refused


def test_wake_failure_falls_back_to_a_cold_start(tmp_path: Path) -> None:
    """A backend whose /wake_up fails is killed and cold-started; the request still succeeds."""
    models = {"a": mock_model(), "b": mock_model()}
    with running_daemon(tmp_path, models) as daemon:
        chat(daemon, "a")
        chat(daemon, "b")  # a is asleep now
        set_faults(daemon, "a", fail_wake=True)
        assert chat(daemon, "a")
        assert (
            metric_value(daemon, "gpumux_backend_restarts_total", model="a", reason="wake_failed")
            == 1
        )
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="fallback_cold") == 1
        assert gpu_used(daemon) <= CAPACITY


def test_sleep_failure_kills_the_victim_so_the_target_fits(tmp_path: Path) -> None:
    models = {"a": mock_model(), "b": mock_model()}
    with running_daemon(tmp_path, models) as daemon:
        chat(daemon, "a")
        set_faults(daemon, "a", fail_sleep=True)
        assert chat(daemon, "b")
        assert metric_value(daemon, "gpumux_model_state", model="a", state="stopped") == 1
        assert gpu_used(daemon) <= CAPACITY


def test_warmup_answers_once_and_evicts_each_model_before_serving(tmp_path: Path) -> None:
    models = {"a": mock_model(), "b": mock_model()}
    with running_daemon(tmp_path, models, warmup=True) as daemon:
        # Requests queue behind the warm-up and are served after it.
        assert chat(daemon, "b")
        a_events = event_names(daemon, "a")
        assert "request" in a_events
        assert "sleep" in a_events
