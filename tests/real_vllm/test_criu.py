"""CRIU with a real vLLM tree: pre-bake, restore on first request, again, and a crash.

`gpumux serve CONFIG --checkpoint a --eviction retain+checkpoint` starts the real
`vllm serve`, warms it, dumps the live tree (API server, resource tracker, EngineCore,
worker) and exits; later daemons name the image in `checkpoint_path` and restore it on
the first request instead of a ~20 s cold start. `retain`: the CPU build has no sleep
mode, and vLLM refuses `reload_weights` for dummy weights, so a `discard` image could
never be woken.

Needs root, CRIU >= 4.2 and `kernel.io_uring_disabled=2` (uvloop's io_uring cannot be
dumped); `scripts/test` provides all three. Missing ones FAIL these tests.

One pre-baked image serves the module; each test runs its own daemon on the same state
directory as the pre-bake (the image holds the backend's log file by path).
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpumux.checkpoint.reserved_ports import RESERVED_PORTS
from gpumux.core.port_ranges import parse_ports
from tests.support.cpu_vllm import (
    STARTUP_TIMEOUT_SECS,
    RealVllm,
    backend_tree,
    complete,
    vllm_model,
    vllm_overrides,
)
from tests.support.criu import checkpoint_section, image_snapshot, require_criu, run_prebake
from tests.support.daemon import RunningDaemon, daemon_config, events, running_daemon
from tests.support.metrics import metric_value
from tests.support.procs import alive
from tests.support.waits import wait_until

pytestmark = pytest.mark.real_vllm

CHECKPOINT = {"weights": "retain", "process": "checkpoint"}
STOP = {"weights": "retain", "process": "stop"}
PROMPT = "Frozen in time"
#: Cold start + warm-up + dump (~2-7 s for a ~1.7 GB image) + writing the image.
PREBAKE_TIMEOUT_SECS = STARTUP_TIMEOUT_SECS + 180
#: A restore is ~0.5 s on an idle machine (shared/reference/vllm-cpu.md §6); a cold
#: start is ~20 s. Generous for a loaded CI machine, still well below a cold start.
RESTORE_BOUND_SECS = 10.0
IO_URING_KNOB = Path("/proc/sys/kernel/io_uring_disabled")


@dataclass(frozen=True)
class Baked:
    """The module's pre-baked image and the config it was made with."""

    tmp: Path
    config: dict[str, Any]
    image: Path
    manifest: dict[str, Any]
    seconds: float
    #: The dumped tree's /dev/shm segments still on /dev/shm when the pre-bake exited.
    shm_left: list[str]

    def models(self) -> dict[str, dict[str, Any]]:
        """The models, with `a` restored from the pre-baked image on its first request."""
        models: dict[str, dict[str, Any]] = json.loads(json.dumps(self.config["models"]))
        models["a"]["checkpoint_path"] = str(self.image)
        return models

    def daemon(self, name: str) -> Any:
        """A daemon on the pre-bake's state directory and checkpoint section."""
        return running_daemon(
            self.tmp / name,
            self.models(),
            **vllm_overrides(
                RealVllm(Path(self.config["vllm_command"][0])),
                checkpoint=self.config["checkpoint"],
                state_dir=self.config["state_dir"],
            ),
        )


def _require_checkpointable_vllm() -> None:
    require_criu()
    if IO_URING_KNOB.exists() and IO_URING_KNOB.read_text().strip() != "2":
        pytest.fail(
            "kernel.io_uring_disabled must be 2: vLLM's uvloop opens an io_uring that CRIU "
            "cannot dump (scripts/test sets it)"
        )


@pytest.fixture(scope="module")
def baked(real_vllm: RealVllm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baked]:
    _require_checkpointable_vllm()
    tmp = tmp_path_factory.mktemp("criu")
    models = {
        "a": vllm_model(real_vllm, tmp / "a-tmp", "tiny-a", eviction=CHECKPOINT),
        "b": vllm_model(real_vllm, tmp / "b-tmp", "tiny-b", eviction=STOP),
    }
    config = daemon_config(
        tmp, models, **vllm_overrides(real_vllm, checkpoint=checkpoint_section(tmp))
    )
    baked = run_prebake(
        tmp,
        config,
        *("--eviction", "retain+checkpoint", "--log-format", "json"),
        timeout=PREBAKE_TIMEOUT_SECS,
    )
    result, seconds = baked.result, baked.seconds
    assert result.returncode == 0, f"pre-bake failed:\n{result.stdout}\n{result.stderr[-5000:]}"
    assert baked.image is not None, result.stdout
    image = baked.image
    manifest = json.loads((image / "manifest.json").read_text())
    shm_left = [name for name in manifest["shm_files"] if Path(name).exists()]
    try:
        yield Baked(tmp, config, image, manifest, seconds, shm_left)
    finally:
        # ~1.7 GB per image: do not leave them to pytest's temp-dir retention.
        shutil.rmtree(tmp / "images", ignore_errors=True)
        for name in manifest.get("shm_files", []):
            Path(name).unlink(missing_ok=True)


def _first_reply(daemon: RunningDaemon) -> tuple[str, float]:
    started = time.monotonic()
    text = complete(daemon, "a", PROMPT)
    return text, time.monotonic() - started


@pytest.mark.timeout(PREBAKE_TIMEOUT_SECS + 60)
def test_prebake_dumps_the_live_vllm_tree(baked: Baked) -> None:
    manifest = baked.manifest
    assert manifest["eviction"] == "retain+checkpoint"
    assert manifest["prebaked"] is True
    assert len(manifest["pids"]) >= 3  # API server, EngineCore, worker (+ resource tracker)
    assert manifest["shm_files"], "vLLM's /dev/shm message queues must travel with the image"
    assert all(Path(f).name.startswith("psm_") for f in manifest["shm_files"])
    size = sum(p.stat().st_size for p in baked.image.iterdir() if p.is_file())
    assert size > 200 * 1024**2  # the whole tree's memory, not a stub
    assert not [pid for pid in manifest["pids"] if alive(pid)], "the dump must end the tree"
    listened = {(x["host"], x["port"]) for x in manifest["listen_ports"]}
    assert ("127.0.0.1", manifest["port"]) in listened  # the API server's port
    assert len(listened) > 1, "and the ports the kernel picked for vLLM's own sockets"


@pytest.mark.timeout(PREBAKE_TIMEOUT_SECS + 60)
def test_prebake_reserves_the_ports_the_tree_listened_on(baked: Baked) -> None:
    """Kept out of the kernel's automatic choice (no bind(0) or outgoing connection is
    handed one) until a later daemon restores the image: the pre-bake ran as root."""
    ports = {x["port"] for x in baked.manifest["listen_ports"]}
    assert ports <= parse_ports(RESERVED_PORTS.read_text())


@pytest.mark.timeout(PREBAKE_TIMEOUT_SECS + 2 * STARTUP_TIMEOUT_SECS + 120)
def test_restore_on_first_request_then_evict_and_restore_the_live_tree(baked: Baked) -> None:
    """Restore the pre-baked image; evicting `a` dumps the restored tree; it comes back."""
    root = baked.manifest["pids"][0]
    with baked.daemon("live") as daemon:
        assert metric_value(daemon, "gpumux_model_state", model="a", state="checkpointed") == 1
        text, seconds = _first_reply(daemon)
        assert seconds < RESTORE_BOUND_SECS
        assert [e["pid"] for e in events(daemon, "criu_restored", model="a")] == [root]
        assert not events(daemon, "process_spawned", model="a")  # no cold start
        assert backend_tree(daemon, "a")[0].pid == root  # the same pids as at the dump

        complete(daemon, "b")  # one GPU: a leaves, by a CRIU dump of the restored tree
        wait_until(
            lambda: events(daemon, "criu_dumped", model="a"),
            timeout=60,
            what="the dump of the restored tree",
        )
        wait_until(  # the dump is logged just before the operation reports its end
            lambda: (
                metric_value(daemon, "gpumux_model_state", model="a", state="checkpointed") == 1
            ),
            what="a checkpointed",
        )
        assert not alive(root)

        again, seconds = _first_reply(daemon)
        assert again == text  # greedy text survives dump and restore
        assert seconds < RESTORE_BOUND_SECS + STARTUP_TIMEOUT_SECS  # includes stopping b
        restored = events(daemon, "criu_restored", model="a")
        assert len(restored) == 2
        assert restored[-1]["path"] != str(baked.image)  # the new image of the live tree
        assert not events(daemon, "process_spawned", model="a")


@pytest.mark.timeout(PREBAKE_TIMEOUT_SECS + 120)
def test_the_same_prebaked_image_restores_again(baked: Baked) -> None:
    """Two daemons, one image: a restore does not use the image up (nor its shm files),
    and writes nothing into it."""
    texts = []
    before = image_snapshot(baked.image)
    for run in ("first", "second"):
        with baked.daemon(run) as daemon:
            text, seconds = _first_reply(daemon)
            texts.append(text)
            assert seconds < RESTORE_BOUND_SECS
            restored = events(daemon, "criu_restored", model="a")
            assert [e["path"] for e in restored] == [str(baked.image)]
            assert not events(daemon, "process_spawned", model="a")
            # The pre-bake stamped the image when it hashed it: no restore hashes ~1.3 GB
            # again (bench/real_vllm.py: that was most of a restore's time).
            (timeline,) = events(daemon, "criu_restore_timeline", model="a")
            assert timeline["outcome"] == "ok"
            assert "sha256" not in timeline["phases"]
            assert timeline["phases"]["criu"] < seconds
    assert texts[0] == texts[1]
    assert (baked.image / "manifest.json").is_file()
    assert not (baked.image / "stats-restore").exists()  # CRIU's stats went beside its log
    assert image_snapshot(baked.image) == before  # every inode, size, mtime, ctime kept


def _crash_restored_root(daemon: RunningDaemon, root: int) -> None:
    """Restore `a`, SIGKILL the restored root alone, and wait until gpumux has noticed."""
    assert backend_tree(daemon, "a")[0].pid == root
    psutil.Process(root).send_signal(signal.SIGKILL)
    # The restored root is gpumux's child (subreaper): its exit is reaped, not polled.
    wait_until(
        lambda: [e for e in events(daemon, "process_exited", model="a") if e["pid"] == root],
        timeout=30,
        what="gpumux to notice the restored root's exit",
    )


@pytest.mark.timeout(PREBAKE_TIMEOUT_SECS + STARTUP_TIMEOUT_SECS + 120)
def test_a_crash_of_the_restored_tree_is_noticed_and_handled(baked: Baked) -> None:
    """SIGKILL of the restored root: gpumux sees it, and the next request is served."""
    root, *members = baked.manifest["pids"]
    with baked.daemon("crash") as daemon:
        text, _ = _first_reply(daemon)
        _crash_restored_root(daemon, root)
        assert [e["code"] for e in events(daemon, "backend_crashed", model="a")] == [-9]
        assert metric_value(daemon, "gpumux_model_state", model="a", state="ready") == 0
        assert metric_value(daemon, "gpumux_backend_restarts_total", model="a", reason="crash") == 1
        again, _ = _first_reply(daemon)
        assert again == text  # whichever way it came back, the same seeded weights answer
        tree = backend_tree(daemon, "a")
        assert tree, "the model serves again"
        # The crashed tree's orphans (EngineCore, worker) are gone: a cold start ends them.
        orphans = [pid for pid in members if alive(pid) and pid not in {p.pid for p in tree}]
        assert not orphans, f"orphans of the crashed tree still run: {orphans}"


@pytest.mark.timeout(PREBAKE_TIMEOUT_SECS + 120)
def test_orphans_of_a_crashed_tree_end_without_waiting_for_a_request(baked: Baked) -> None:
    root, *members = baked.manifest["pids"]
    with baked.daemon("orphans") as daemon:
        _first_reply(daemon)
        _crash_restored_root(daemon, root)
        wait_until(
            lambda: not [pid for pid in members if alive(pid)],
            timeout=30,
            what="the crashed tree's orphans to be ended",
        )


@pytest.mark.timeout(PREBAKE_TIMEOUT_SECS + 60)
def test_prebake_leaves_no_shm_segments_behind(baked: Baked) -> None:
    assert baked.shm_left == []
