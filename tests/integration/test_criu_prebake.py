"""`gpumux serve --checkpoint MODEL` pre-bakes a CRIU image; `checkpoint_path` restores it.

Needs root and CRIU >= 4.2 (scripts/test installs it); without them these tests FAIL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumux.checkpoint import verified
from tests.support.client import get_json
from tests.support.criu import (
    baked_image,
    chat,
    checkpoint_section,
    image_snapshot,
    prebake,
    quarantined,
)
from tests.support.daemon import daemon_config, events, mock_model, running_daemon, start_daemon
from tests.support.metrics import metric_value
from tests.support.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("criu")]


def test_prebake_then_restore_on_first_request_twice(tmp_path: Path) -> None:
    models = {"a": mock_model(), "b": mock_model()}
    config = daemon_config(tmp_path, models, checkpoint=checkpoint_section(tmp_path))
    image = baked_image(prebake(tmp_path, config))
    manifest = json.loads((image / "manifest.json").read_text())
    assert manifest["eviction"] == "discard+checkpoint"  # the --eviction default
    assert manifest["prebaked"] is True
    models["a"]["checkpoint_path"] = str(image)
    replies = []
    for run in ("first", "second"):  # the image survives a restore and can be used again
        admin_port = free_port()
        with running_daemon(
            tmp_path / run,
            models,
            checkpoint=config["checkpoint"],
            state_dir=config["state_dir"],
            admin_port=admin_port,
        ) as daemon:
            assert metric_value(daemon, "gpumux_model_state", model="a", state="checkpointed") == 1
            replies.append(chat(daemon, "a"))
            status = get_json(f"http://127.0.0.1:{admin_port}/api/status")
            assert status["models"]["a"]["image"]["location"] == "local"  # shown to operators
            assert status["models"]["a"]["image"]["path"]
            restored = [e["pid"] for e in events(daemon, "criu_restored", model="a")]
            assert restored == [manifest["pids"][0]]
            assert not events(daemon, "process_spawned", model="a")  # no cold start
            calls = [
                e["event"] for e in get_json(daemon.backend_url("a") + "/mock/events")["events"]
            ]
            assert calls[:2] == ["request", "request_done"]  # the pre-bake's warm-up
            assert "collective_rpc" in calls  # discard: weights reloaded after the restore
    assert replies[0] == replies[1]
    assert (image / "manifest.json").is_file()


def test_an_image_is_hashed_once_then_restored_on_its_stamp(tmp_path: Path) -> None:
    """A pre-baked image without a stamp (made before stamps) is hashed once, off the
    request path where the daemon has the time, and stamped; later restores read none of
    its bytes to check it. A restore writes nothing into the image (CRIU's stats go
    beside its log) but, the first time, the stamp."""
    models = {"a": mock_model(), "b": mock_model()}
    config = daemon_config(tmp_path, models, checkpoint=checkpoint_section(tmp_path))
    image = baked_image(prebake(tmp_path, config))
    stamp = image / verified.STAMP
    assert stamp.is_file()  # the pre-bake hashed every file when it published the image
    stamp.unlink()
    models["a"]["checkpoint_path"] = str(image)
    phases, snapshots = [], []
    for run in ("unstamped", "stamped"):
        with running_daemon(
            tmp_path / run, models, checkpoint=config["checkpoint"], state_dir=config["state_dir"]
        ) as daemon:
            assert chat(daemon, "a")
            timeline = events(daemon, "criu_restore_timeline", model="a")
            assert [t["outcome"] for t in timeline] == ["ok"]
            phases.append(timeline[0]["phases"])
        assert stamp.is_file()
        snapshots.append(image_snapshot(image))
    assert "criu" in phases[1]
    assert "sha256" not in phases[1]  # the stamp matched: nothing was read
    assert not (image / "stats-restore").exists()  # CRIU's stats went beside its log
    assert snapshots[1] == snapshots[0]  # the stamped restore left the image untouched


def test_prebake_refuses_a_non_checkpoint_eviction(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, {"a": mock_model()}, checkpoint=checkpoint_section(tmp_path))
    result = prebake(tmp_path, config, "--eviction", "offload+keep_running")
    assert result.returncode == 2
    assert "needs process `checkpoint`" in result.stderr


def test_corrupt_prebaked_image_is_quarantined_never_deleted(tmp_path: Path) -> None:
    models = {"a": mock_model(), "b": mock_model()}
    config = daemon_config(tmp_path, models, checkpoint=checkpoint_section(tmp_path))
    image = baked_image(prebake(tmp_path, config, "--eviction", "offload+checkpoint"))
    pages = max(image.glob("pages-*.img"), key=lambda p: p.stat().st_size)
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    pages.write_bytes(bytes(data))
    models["a"]["checkpoint_path"] = str(image)
    with running_daemon(
        tmp_path / "run", models, checkpoint=config["checkpoint"], state_dir=config["state_dir"]
    ) as daemon:
        assert chat(daemon, "a")
        assert not events(daemon, "criu_restored", model="a")
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="fallback_cold") == 1
        reason = events(daemon, "image_quarantined", model="a")[0]["reason"]
        assert "sha256 mismatch" in reason
        failures = "gpumux_checkpoint_restore_failures_total"
        assert metric_value(daemon, failures, model="a", reason="corrupt") == 1
    moved = quarantined(image.parent, image.parent.name) or sorted(
        image.parent.glob(image.name + ".quarantined-*")
    )
    assert moved
    assert (moved[0] / "manifest.json").is_file()  # renamed aside, files kept


def test_missing_prebaked_image_starts_the_model_stopped(tmp_path: Path) -> None:
    models = {"a": mock_model(checkpoint_path=str(tmp_path / "nowhere"))}
    config = daemon_config(tmp_path, models, checkpoint=checkpoint_section(tmp_path))
    daemon = start_daemon(tmp_path, config)
    try:
        daemon.wait_ready()
        assert metric_value(daemon, "gpumux_model_state", model="a", state="stopped") == 1
        assert chat(daemon, "a")
    finally:
        daemon.stop()
