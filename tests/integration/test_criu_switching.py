"""CRIU eviction through the real daemon: real `criu dump`/`restore` of mock backend trees.

Needs root and CRIU >= 4.2 (scripts/test installs it); without them these tests FAIL.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import pytest

from tests.support.backend import event_names
from tests.support.criu import (
    CHECKPOINT,
    chat,
    checkpoint_section,
    quarantined,
    wait_image,
)
from tests.support.daemon import events, mock_model, running_daemon, wait_event
from tests.support.metrics import metric_value
from tests.support.waits import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("criu")]

OFFLOAD_CHECKPOINT = {"weights": "offload", "process": "checkpoint"}


def test_discard_checkpoint_round_trip_restores_the_same_process(tmp_path: Path) -> None:
    """a is dumped when b needs the GPU, then restored: same pid, same reply, its memory kept."""
    # The backend keeps idle connections open, so only gpumux dropping its pooled ones
    # (proxy and control calls) lets the dump through: the regression this guards.
    patient = ["--mock-keepalive-timeout-secs", "120"]
    models = {"a": mock_model(eviction=CHECKPOINT, extra_args=patient), "b": mock_model()}
    ck = checkpoint_section(tmp_path)
    with running_daemon(tmp_path, models, checkpoint=ck) as daemon:
        first = chat(daemon, "a")
        pid = wait_event(daemon, "process_spawned", model="a")["pid"]
        chat(daemon, "b")
        image = wait_image(tmp_path / "images", "a")
        # The dump runs after b was served (policy.overlap): the state settles at its end.
        wait_until(
            lambda: (
                metric_value(daemon, "gpumux_model_state", model="a", state="checkpointed") == 1
            ),
            "a checkpointed after its dump",
        )
        again = chat(daemon, "a", "the same prompt")
        assert again == first
        restored = wait_event(daemon, "criu_restored", model="a")
        assert restored["pid"] == pid
        assert not events(daemon, "criu_dump_failed")
        assert wait_event(daemon, "criu_dumped", model="a")["secs"] < 5
        # The restored process remembers what happened before the dump, then wakes.
        calls = event_names(daemon, "a")
        assert calls[:4] == ["request", "request_done", "sleep", "sleep_done"]
        assert "collective_rpc" in calls  # discard: reload_weights after the restore
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="ok") >= 1
        # Private image: directories 0700, files 0600.
        for path in [image, *image.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_offload_checkpoint_wakes_everything_after_restore(tmp_path: Path) -> None:
    models = {"a": mock_model(eviction=OFFLOAD_CHECKPOINT), "b": mock_model()}
    with running_daemon(tmp_path, models, checkpoint=checkpoint_section(tmp_path)) as daemon:
        first = chat(daemon, "a")
        chat(daemon, "b")
        image = wait_image(tmp_path / "images", "a")
        assert '"eviction": "offload+checkpoint"' in (image / "manifest.json").read_text()
        assert chat(daemon, "a") == first
        calls = event_names(daemon, "a")
        assert calls.count("sleep") == 1
        assert "wake_up" in calls
        assert "collective_rpc" not in calls  # offload keeps the weights: no reload


def test_crash_of_a_restored_tree_is_noticed_and_restarted(tmp_path: Path) -> None:
    models = {"a": mock_model(eviction=CHECKPOINT), "b": mock_model()}
    with running_daemon(tmp_path, models, checkpoint=checkpoint_section(tmp_path)) as daemon:
        chat(daemon, "a")
        chat(daemon, "b")
        wait_image(tmp_path / "images", "a")
        chat(daemon, "a")
        pid = wait_event(daemon, "criu_restored", model="a")["pid"]
        os.killpg(pid, signal.SIGKILL)  # like a CUDA fault: the whole tree at once
        wait_until(
            lambda: (
                metric_value(daemon, "gpumux_backend_restarts_total", model="a", reason="crash")
                == 1
            ),
            what="the crash to be counted",
        )
        assert chat(daemon, "a")  # cold-started again
        assert events(daemon, "process_spawned", model="a")[-1]["pid"] != pid


def test_corrupt_image_is_quarantined_and_the_model_cold_starts(tmp_path: Path) -> None:
    models = {"a": mock_model(eviction=CHECKPOINT), "b": mock_model()}
    with running_daemon(tmp_path, models, checkpoint=checkpoint_section(tmp_path)) as daemon:
        chat(daemon, "a")
        chat(daemon, "b")
        image = wait_image(tmp_path / "images", "a")
        pages = max(image.glob("pages-*.img"), key=lambda p: p.stat().st_size)
        with pages.open("r+b") as stream:
            stream.truncate(pages.stat().st_size - 4096)
        assert chat(daemon, "a")
        assert [
            p.name.split(".quarantined-")[0] for p in quarantined(tmp_path / "images", "a")
        ] == [image.name]
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="fallback_cold") == 1
        failures = "gpumux_checkpoint_restore_failures_total"
        assert metric_value(daemon, failures, model="a", reason="corrupt") == 1
        assert wait_event(daemon, "criu_restore_failed", model="a")["image"] == "quarantined"
        assert not events(daemon, "criu_restored", model="a")


def test_dump_failure_leaves_the_tree_running_and_falls_back_to_a_kill(tmp_path: Path) -> None:
    """An established TCP connection into the tree makes CRIU refuse; the switch still works."""
    # The backend must not close our idle connection itself (the mock's default is 5 s,
    # which the dump's bounded wait for connections to drain would outlast).
    patient = ["--mock-keepalive-timeout-secs", "120"]
    models = {"a": mock_model(eviction=CHECKPOINT, extra_args=patient), "b": mock_model()}
    with running_daemon(tmp_path, models, checkpoint=checkpoint_section(tmp_path)) as daemon:
        chat(daemon, "a")
        port = daemon.config["models"]["a"]["port"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
            # A keep-alive HTTP exchange, then the connection just stays open.
            held.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held.recv(4096).startswith(b"HTTP/1.1 200")
            assert chat(daemon, "b")
            # With `policy.overlap`, b is served once a's sleep freed the GPU, while a's
            # dump still runs: the connection stays open until the dump has failed.
            detail = wait_event(daemon, "criu_dump_failed", model="a")["error"]
        assert "Connected TCP socket" in detail  # CRIU's own refusal, quoted from its log
        assert "still running" in detail  # checked when the dump failed, before the kill
        wait_event(daemon, "state_changed", model="a", after="stopped")  # the kill's outcome
        assert metric_value(daemon, "gpumux_model_state", model="a", state="stopped") == 1
        assert not (tmp_path / "images" / "a").exists() or not list(
            (tmp_path / "images" / "a").glob("2*")
        )
        assert chat(daemon, "a")  # and it comes back by a cold start
