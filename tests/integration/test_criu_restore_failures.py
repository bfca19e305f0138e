"""Restores that must not happen or cannot work (ecosystem §4 case 23), with real CRIU.

A pid of the image taken by another process (found before CRIU runs, or by CRIU itself:
"Can't fork for PID: File exists"), the model's port or a port the tree listened on
internally taken (found before CRIU runs, or by CRIU itself: "Address already in use"),
and an image made for another model, launch or host. Each ends in a cold start, is counted in
`gpumux_checkpoint_restore_failures_total{model,reason}`, and treats the image by whose
fault it was (`gpumux.checkpoint.checkpoints`): a host condition leaves it in place, a mismatched
pre-baked image is never restored and never moved. Needs root and CRIU >= 4.2: without
them these tests FAIL.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from gpumux.checkpoint import images
from gpumux.checkpoint.catalog import RestoreFailure
from gpumux.checkpoint.checkpoints import CheckpointFailed, Checkpoints
from gpumux.checkpoint.criu_inventory import taken_pids
from gpumux.checkpoint.identity import ModelIdentity
from gpumux.checkpoint.images import Image
from gpumux.core.config import CheckpointConfig
from gpumux.core.port_ranges import parse_ports
from gpumux.procs import BackendProcess, Reaper, kill_tree, spawn_backend
from tests.support.criu import (
    baked_image,
    chat,
    checkpoint_section,
    pid_taken,
    prebake,
)
from tests.support.daemon import daemon_config, events, mock_model, running_daemon, wait_event
from tests.support.metrics import metric_value, promtool_lint, scrape
from tests.support.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("criu")]

FAILURES = "gpumux_checkpoint_restore_failures_total"
SLEEPER = "import time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.2)\n"
#: A tree that, like vLLM's, also listens on a port the kernel picked (ZMQ, torch).
LISTENER = (
    "import socket, time\n"
    "inner = socket.create_server(('127.0.0.1', 0))\n"
    "print('ready', inner.getsockname()[1], flush=True)\n"
    "while True:\n    time.sleep(0.2)\n"
)


def baked(tmp: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any], Path]:
    """(models, config, image): model `a` pre-baked, its image named in `checkpoint_path`."""
    models = {"a": mock_model()}
    config = daemon_config(tmp, models, checkpoint=checkpoint_section(tmp))
    image = baked_image(prebake(tmp, config))
    models["a"]["checkpoint_path"] = str(image)
    return models, config, image


def restore_log(config: dict[str, Any]) -> Path:
    """The log `criu restore` writes for `a`: absent means CRIU never ran a restore."""
    return Path(config["state_dir"]) / "logs" / "a.criu-restore.log"


def edit_manifest(image: Path, **changes: object) -> bytes:
    """Rewrite the manifest (not itself checksummed); return the original bytes."""
    path = image / "manifest.json"
    original = path.read_bytes()
    manifest = json.loads(original)
    manifest.update(changes)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return original


def test_taken_pid_cold_starts_and_the_prebaked_image_is_kept_for_later(tmp_path: Path) -> None:
    models, config, image = baked(tmp_path)
    root = json.loads((image / "manifest.json").read_text())["pids"][0]
    run: dict[str, Any] = {"checkpoint": config["checkpoint"], "state_dir": config["state_dir"]}
    with (
        pid_taken(root) as squatter,
        running_daemon(tmp_path / "taken", models, **run) as daemon,
    ):
        assert metric_value(daemon, "gpumux_model_state", model="a", state="checkpointed") == 1
        assert chat(daemon, "a")  # cold-started instead
        failed = wait_event(daemon, "criu_restore_failed", model="a")
        assert failed["reason"] == "pid_collision"
        assert f"{root}: 'sleep" in failed["error"]  # which pid, and who holds it
        assert failed["image"] == "left in place"
        assert metric_value(daemon, FAILURES, model="a", reason="pid_collision") == 1
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="fallback_cold") == 1
        assert not events(daemon, "criu_restored")
        assert not restore_log(config).exists()  # found before CRIU ran
        assert squatter.poll() is None  # the squatter is not ours to kill
        assert promtool_lint(scrape(daemon, "/metrics")) == (0, "")  # with the series present
    assert (image / "manifest.json").is_file()
    assert not list(image.parent.glob("*.quarantined-*"))  # left where it was...
    with running_daemon(tmp_path / "free", models, **run) as daemon:
        assert chat(daemon, "a")  # ...so once the pid is free it restores again
        assert [e["pid"] for e in events(daemon, "criu_restored", model="a")] == [root]
        assert metric_value(daemon, FAILURES, model="a", reason="pid_collision") == 0


def test_criu_reporting_file_exists_counts_as_a_pid_collision(tmp_path: Path) -> None:
    """A pid taken after the check: CRIU's own "Can't fork for PID: File exists"."""
    models, config, image = baked(tmp_path)
    pids = json.loads((image / "manifest.json").read_text())["pids"]
    edit_manifest(image, pids=pids[1:])  # the check no longer looks at the root pid
    run: dict[str, Any] = {"checkpoint": config["checkpoint"], "state_dir": config["state_dir"]}
    with pid_taken(pids[0]), running_daemon(tmp_path / "race", models, **run) as daemon:
        assert chat(daemon, "a")
        failed = wait_event(daemon, "criu_restore_failed", model="a")
        assert failed["reason"] == "pid_collision"
        assert f"Can't fork for {pids[0]}: File exists" in failed["error"]  # CRIU's words
        assert failed["image"] == "left in place"
        assert metric_value(daemon, FAILURES, model="a", reason="pid_collision") == 1
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="fallback_cold") == 1
        assert not events(daemon, "criu_restored")
    assert "File exists" in restore_log(config).read_text()
    assert (image / "manifest.json").is_file()
    assert not list(image.parent.glob("*.quarantined-*"))


def test_prebaked_image_of_another_launch_or_host_is_never_restored(tmp_path: Path) -> None:
    models, config, image = baked(tmp_path)
    run: dict[str, Any] = {"checkpoint": config["checkpoint"], "state_dir": config["state_dir"]}
    moved: dict[str, dict[str, Any]] = json.loads(json.dumps(models))
    moved["a"]["model_path"] = "mock/another-model"  # same alias, other weights
    elsewhere = {"kernel": "0.0.0-elsewhere"}  # the manifest says another host made it
    for name, config_models, tamper, field in (
        ("model_path", moved, {}, "model_path"),
        ("kernel", models, elsewhere, "kernel"),
    ):
        original = edit_manifest(image, **tamper)
        try:
            with running_daemon(tmp_path / name, config_models, **run) as daemon:
                # Checked at start: the model is not offered as checkpointed at all.
                assert metric_value(daemon, "gpumux_model_state", model="a", state="stopped") == 1
                rejected = events(daemon, "prebaked_image_rejected", model="a")
                assert rejected, name
                assert rejected[0]["error"].count(f"{field}: image has") == 1
                assert metric_value(daemon, FAILURES, model="a", reason="identity") == 1
                assert chat(daemon, "a")
                assert events(daemon, "process_spawned", model="a")  # a cold start
                assert not events(daemon, "criu_restored")
                assert not restore_log(config).exists()  # CRIU never ran
        finally:
            (image / "manifest.json").write_bytes(original)
        assert (image / "manifest.json").is_file()  # never moved, never deleted
        assert not list(image.parent.glob("*.quarantined-*"))


# ---- the restore-time checks, on `Checkpoints` with a real dump ------------------------


async def test_port_busy_and_identity_are_refused_before_criu_runs(
    tmp_path: Path, reaper: Reaper, criu: str
) -> None:
    """After a dump, the image's port is taken, then the config moves on under it."""
    checkpoints, reported, _reserved = in_process(tmp_path, criu)
    identity = ModelIdentity("t", "t/model", tp=1, port=free_port(), launch="l1")
    log_path = tmp_path / "logs" / "t.log"

    try:
        first = await dumped(checkpoints, identity, log_path, reaper)
        with (
            socket.create_server(("127.0.0.1", identity.port)),
            pytest.raises(CheckpointFailed) as busy,
        ):
            await checkpoints.bring_back("t", identity, log_path=log_path, reaper=reaper)
        assert busy.value.reason is RestoreFailure.PORT_BUSY
        assert (first.path / "manifest.json").is_file()  # the host's fault: left in place
        assert checkpoints.catalog.entry("t").current is None  # and not tried again

        second = await dumped(checkpoints, identity, log_path, reaper)
        other = ModelIdentity("t", "t/other-model", tp=1, port=identity.port, launch="l2")
        with pytest.raises(CheckpointFailed) as mismatch:
            await checkpoints.bring_back("t", other, log_path=log_path, reaper=reaper)
        assert mismatch.value.reason is RestoreFailure.IDENTITY
        assert "model_path: image has 't/model', here 't/other-model'" in mismatch.value.detail
        assert "launch:" in mismatch.value.detail
        moved = mismatch.value.quarantined  # a dynamic image can never match again
        assert moved is not None
        assert (moved / "manifest.json").is_file()
        assert not second.path.exists()

        assert reported == [("t", "port_busy"), ("t", "identity")]
        assert not (tmp_path / "logs" / "t.criu-restore.log").exists()  # CRIU never ran
    finally:
        await checkpoints.close()


async def dumped(
    checkpoints: Checkpoints,
    identity: ModelIdentity,
    log_path: Path,
    reaper: Reaper,
    script: str = SLEEPER,
) -> Image:
    """A real dump of `script` (run as the backend) once its log says it is ready (the
    log may hold an earlier dump's lines: only a new "ready" counts)."""
    earlier = ready_lines(log_path)
    process = spawn_backend(
        [sys.executable, "-c", script],
        model="t",
        env=dict(os.environ),
        log_path=log_path,
        reaper=reaper,
    )
    try:
        for _ in range(200):
            if len(ready_lines(log_path)) > len(earlier):
                break
            await asyncio.sleep(0.05)
        finalize = await checkpoints.evict(
            "t", process, eviction="retain+checkpoint", identity=identity
        )
    finally:
        await kill_tree(process, grace_secs=0, graceful=False)
    image = await finalize
    assert image is not None
    return image


async def dumped_listener(
    checkpoints: Checkpoints, identity: ModelIdentity, log_path: Path, reaper: Reaper
) -> tuple[Image, int]:
    """A real dump of `LISTENER`: (its image, the internal port it listened on)."""
    image = await dumped(checkpoints, identity, log_path, reaper, LISTENER)
    inner = ready_port(log_path)
    assert inner is not None, "the listener never said it was ready"
    return image, inner


async def restore_again(
    checkpoints: Checkpoints, image: Image, identity: ModelIdentity, log_path: Path, reaper: Reaper
) -> BackendProcess:
    """The image a failed restore left in place, taken back into rotation and restored:
    the same tree (its root pid) comes back."""
    await checkpoints.catalog.adopt_prebaked("t", image.path, lambda _manifest: [])
    restored = await checkpoints.bring_back("t", identity, log_path=log_path, reaper=reaper)
    assert restored.pid == image.manifest.pids[0]
    return restored


def ready_lines(log_path: Path) -> list[str]:
    """The "ready" lines the backends of `log_path` printed so far."""
    text = log_path.read_text() if log_path.exists() else ""
    return [line for line in text.splitlines() if line.startswith("ready")]


def ready_port(log_path: Path) -> int | None:
    """The port the latest `LISTENER` printed in its log, once it did."""
    lines = ready_lines(log_path)
    return int(lines[-1].split()[1]) if lines and len(lines[-1].split()) > 1 else None


def in_process(tmp_path: Path, criu: str) -> tuple[Checkpoints, list[tuple[str, str]], Path]:
    """`Checkpoints` on a stand-in reserved-ports list (the host's is left alone)."""
    config = CheckpointConfig(
        criu_path=criu, images_dir=str(tmp_path / "images"), cuda_plugin_dir=None
    )
    reported: list[tuple[str, str]] = []
    reserved = tmp_path / "ip_local_reserved_ports"
    reserved.write_text("\n")
    checkpoints = Checkpoints(
        config,
        log_dir=tmp_path / "logs",
        on_restore_failure=lambda *r: reported.append(r),
        reserved_ports=reserved,
    )
    return checkpoints, reported, reserved


async def test_an_internal_port_taken_is_port_busy_and_the_image_restores_once_free(
    tmp_path: Path, reaper: Reaper, criu: str
) -> None:
    """The tree listened on a port besides the model's; another socket binds it while
    the tree is dumped. Found before CRIU runs; the image is kept and restores later."""
    checkpoints, reported, reserved = in_process(tmp_path, criu)
    identity = ModelIdentity("t", "t/model", tp=1, port=free_port(), launch="l1")
    log_path = tmp_path / "logs" / "t.log"
    restored = None
    try:
        image, inner = await dumped_listener(checkpoints, identity, log_path, reaper)
        assert ("127.0.0.1", inner) in [(x.host, x.port) for x in image.manifest.listen_ports]
        # From the dump on, the kernel hands the image's ports to no bind(0) or connect.
        assert {inner, identity.port} <= parse_ports(reserved.read_text())
        with socket.create_server(("127.0.0.1", inner)), pytest.raises(CheckpointFailed) as busy:
            await checkpoints.bring_back("t", identity, log_path=log_path, reaper=reaper)
        assert busy.value.reason is RestoreFailure.PORT_BUSY
        assert f"127.0.0.1:{inner} (held by pid {os.getpid()} (" in busy.value.detail
        assert busy.value.detail.endswith("(image left in place)")
        assert busy.value.quarantined is None
        assert (image.path / "manifest.json").is_file()
        assert not (tmp_path / "logs" / "t.criu-restore.log").exists()  # CRIU never ran
        assert reported == [("t", "port_busy")]

        # Left in place: once the port is free, the same image restores.
        restored = await restore_again(checkpoints, image, identity, log_path, reaper)
    finally:
        if restored is not None:
            await kill_tree(restored, grace_secs=0, graceful=False)
        await checkpoints.close()


async def test_criu_reporting_address_in_use_counts_as_port_busy(
    tmp_path: Path, reaper: Reaper, criu: str
) -> None:
    """A port taken after the check: CRIU's own "Address already in use"; the failed
    restore's leftovers are reaped, so the image restores again once the port is free."""
    checkpoints, reported, _reserved = in_process(tmp_path, criu)
    identity = ModelIdentity("t", "t/model", tp=1, port=free_port(), launch="l1")
    log_path = tmp_path / "logs" / "t.log"
    restored = None
    try:
        image, inner = await dumped_listener(checkpoints, identity, log_path, reaper)
        # The manifest (not checksummed) forgets the internal port: the check misses it.
        blind = image.manifest.model_copy(update={"listen_ports": []})
        images.write_manifest(image.path, blind)
        checkpoints.catalog.entry("t").current = images.read(image.path)
        with socket.create_server(("127.0.0.1", inner)), pytest.raises(CheckpointFailed) as busy:
            await checkpoints.bring_back("t", identity, log_path=log_path, reaper=reaper)
        assert busy.value.reason is RestoreFailure.PORT_BUSY
        assert "Address already in use" in busy.value.detail  # CRIU's words
        assert busy.value.detail.endswith("(image left in place)")
        assert (image.path / "manifest.json").is_file()
        assert not list(image.path.parent.glob("*.quarantined-*"))
        assert reported == [("t", "port_busy")]
        assert taken_pids(image.manifest.pids) == {}  # the failed restore's zombies reaped
        log = (tmp_path / "logs" / "t.criu-restore.log").read_text()
        assert "Address already in use" in log

        restored = await restore_again(checkpoints, image, identity, log_path, reaper)
    finally:
        if restored is not None:
            await kill_tree(restored, grace_secs=0, graceful=False)
        await checkpoints.close()
