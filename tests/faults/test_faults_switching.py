"""Switching and eviction faults (ecosystem §4 cases 20–27) through the real daemon.

Two 0.9-utilisation models share one fake 80 GiB GPU, so every request for the other
model is a switch. The mock backends record every dev-route call, and the fake GPU
ledger (sampled every few milliseconds by `LedgerWatch`) shows whether memory was ever
over-committed while a switch went wrong.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest

from tests.support.backend import backend_state, event_names, set_faults
from tests.support.client import CHAT, chat_body, post
from tests.support.daemon import chat, mock_model, running_daemon
from tests.support.ledger import LedgerWatch
from tests.support.metrics import metric_value

pytestmark = pytest.mark.integration

CAPACITY = 80 * 1024**3


def test_wake_that_times_out_falls_back_to_a_cold_start(tmp_path: Path) -> None:
    """Case 21 (timeout): a `/wake_up` slower than `wake_timeout_secs` is abandoned; the
    backend is killed and cold-started, and the request still succeeds."""
    models = {"a": mock_model(), "b": mock_model()}
    with running_daemon(tmp_path, models, supervision={"wake_timeout_secs": 1.0}) as daemon:
        chat(daemon, "a")
        chat(daemon, "b")  # a sleeps
        asleep_pid = backend_state(daemon, "a")["pid"]
        set_faults(daemon, "a", wake_delay_secs=30)
        with LedgerWatch(daemon) as watch:
            started = time.monotonic()
            assert chat(daemon, "a")
            elapsed = time.monotonic() - started
        assert elapsed < 15
        assert backend_state(daemon, "a")["pid"] != asleep_pid
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="fallback_cold") == 1
        assert (
            metric_value(daemon, "gpumux_backend_restarts_total", model="a", reason="wake_failed")
            == 1
        )
        assert watch.samples > 0
        assert watch.peak.get("0", 0) <= CAPACITY


def test_sleep_that_times_out_kills_the_victim_before_the_target_starts(tmp_path: Path) -> None:
    """Case 22 (timeout): a `/sleep` slower than `sleep_timeout_secs` gets the victim's tree
    killed, and the target starts only after; the ledger never exceeds the GPU."""
    models = {"a": mock_model(), "b": mock_model()}
    with running_daemon(tmp_path, models, supervision={"sleep_timeout_secs": 1.0}) as daemon:
        chat(daemon, "a")
        set_faults(daemon, "a", sleep_delay_secs=30)
        with LedgerWatch(daemon) as watch:
            assert chat(daemon, "b")
        assert metric_value(daemon, "gpumux_model_state", model="a", state="stopped") == 1
        assert watch.samples > 0
        assert watch.peak.get("0", 0) <= CAPACITY
        assert chat(daemon, "a")  # and a comes back with a cold start


def test_alternating_demand_switches_no_faster_than_min_residency(tmp_path: Path) -> None:
    """Case 26: clients hammering a and b at once cannot make the GPU thrash.

    With `min_active_secs` = 1.5, switches over a window of T seconds stay at or below
    T / 1.5 + 1, and every request is still answered.
    """
    models = {"a": mock_model(), "b": mock_model()}
    window = 6.0
    min_active = 1.5
    with running_daemon(tmp_path, models, policy={"min_active_secs": min_active}) as daemon:
        started = time.monotonic()
        deadline = started + window

        def client(model: str) -> list[int]:
            statuses = []
            while time.monotonic() < deadline:
                statuses.append(post(daemon, CHAT, chat_body(model)).status)
            return statuses

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            jobs = [pool.submit(client, m) for m in "abab"]
            results = [job.result(timeout=60) for job in jobs]
        statuses = [s for r in results for s in r]
        assert statuses
        assert set(statuses) == {200}, statuses
        switches = sum(
            metric_value(daemon, "gpumux_switches_total", to=m, outcome="ok") for m in "ab"
        )
        # The first start of each model is a switch too; the rest are bounded by residency.
        elapsed = time.monotonic() - started
        assert switches <= elapsed / min_active + 2, switches
        assert event_names(daemon, "a").count("sleep") <= elapsed / min_active + 1
