"""cuda_suspend through the real daemon: models suspended to host memory and back.

gpumux runs as a subprocess with mock backends and `mock-cuda-checkpoint` as its
`cuda_checkpoint_path` (no GPU and no cuda-bindings here, so it picks the CLI). The fake
ledger shows where each worker's memory is; the replies show the model came back intact.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.backend import backend_state, control_calls
from tests.support.daemon import RunningDaemon, chat, mock_model, running_daemon
from tests.support.ledger import gpu_used
from tests.support.metrics import metric_value
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

GIB = 1024**3
CAPACITY = 80 * GIB
MOCK_CLI = Path(sys.executable).parent / "mock-cuda-checkpoint"
RETAIN_SUSPEND = {"weights": "retain", "process": "cuda_suspend"}
DISCARD_SUSPEND = {"weights": "discard", "process": "cuda_suspend"}
TP2 = ["-tp", "2", "--enforce-eager", "--disable-custom-all-reduce"]


def checkpoint_section(tmp: Path) -> dict[str, Any]:
    assert MOCK_CLI.exists(), "mock-cuda-checkpoint is not installed beside python"
    return {
        "cuda_checkpoint_path": str(MOCK_CLI),
        "images_dir": str(tmp / "images"),
        "cuda_verify_interval_secs": 0.05,
        "cuda_checkpoint_timeout_secs": 30,
    }


def worker_pids(daemon: RunningDaemon, model: str) -> list[int]:
    pids: list[int] = backend_state(daemon, model)["worker_pids"]
    return pids


def bookings(daemon: RunningDaemon, pids: list[int]) -> list[dict[str, Any]]:
    data: dict[str, Any] = json.loads(daemon.ledger_path.read_text())
    return [data["allocations"][str(pid)] for pid in pids]


def test_retain_suspend_moves_the_whole_reservation_to_host_and_back(tmp_path: Path) -> None:
    models = {"a": mock_model(eviction=RETAIN_SUSPEND), "b": mock_model()}
    with running_daemon(tmp_path, models, checkpoint=checkpoint_section(tmp_path)) as daemon:
        first = chat(daemon, "a")
        (worker,) = worker_pids(daemon, "a")
        chat(daemon, "b")
        (suspended,) = bookings(daemon, [worker])
        reserved = int(0.9 * CAPACITY)
        assert suspended["state"] == "suspended"
        assert suspended["gpus"] == {"0": 0}
        assert suspended["host_bytes"] == reserved
        assert suspended["cuda"]["state"] == "checkpointed"
        assert metric_value(daemon, "gpumux_model_state", model="a", state="suspended") == 1
        assert gpu_used(daemon) <= CAPACITY

        assert chat(daemon, "a") == first
        assert worker_pids(daemon, "a") == [worker]  # the same process, resumed
        (back,) = bookings(daemon, [worker])
        assert (back["state"], back["gpus"], back["host_bytes"]) == ("awake", {"0": reserved}, 0)
        assert "cuda" not in back
        # retain: no vLLM sleep at all, only the CUDA state moved.
        assert control_calls(daemon, "a") == ["cuda_suspended", "cuda_resumed"]
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="ok") >= 1


def test_discard_suspend_parks_only_the_residual_and_reloads_weights(tmp_path: Path) -> None:
    models = {"a": mock_model(eviction=DISCARD_SUSPEND), "b": mock_model()}
    with running_daemon(tmp_path, models, checkpoint=checkpoint_section(tmp_path)) as daemon:
        first = chat(daemon, "a")
        (worker,) = worker_pids(daemon, "a")
        chat(daemon, "b")
        # b was served once a's level-2 sleep freed the GPU (policy.overlap); a's suspend
        # goes on in the background until the model rests suspended.
        wait_until(
            lambda: metric_value(daemon, "gpumux_model_state", model="a", state="suspended") == 1,
            "a suspended after its sleep",
        )
        (suspended,) = bookings(daemon, [worker])
        assert (suspended["state"], suspended["gpus"]) == ("suspended", {"0": 0})
        assert suspended["host_bytes"] == GIB // 2  # mock_vllm's residual CUDA context
        assert suspended["cuda"]["state_before"] == "sleeping"

        again = chat(daemon, "a")
        assert again == first
        assert "!!!" not in again
        assert control_calls(daemon, "a") == [
            "sleep:2:wait",
            "cuda_suspended",
            "cuda_resumed",
            "wake_up:weights",
            "rpc:reload_weights",
            "wake_up:kv_cache",
            "reset_prefix_cache",
        ]
        (back,) = bookings(daemon, [worker])
        assert back["state"] == "awake"
        assert gpu_used(daemon) <= CAPACITY


def test_tensor_parallel_model_suspends_and_resumes_every_worker(tmp_path: Path) -> None:
    models = {
        "a": mock_model(eviction=RETAIN_SUSPEND, extra_args=TP2),
        "b": mock_model(extra_args=TP2),
    }
    gpu = {"probe": "fake", "fake_capacity_gib": [80, 80], "sleeping_residual_gib": 0.5}
    with running_daemon(
        tmp_path, models, checkpoint=checkpoint_section(tmp_path), gpu=gpu
    ) as daemon:
        first = chat(daemon, "a")
        pids = worker_pids(daemon, "a")
        assert len(pids) == 2
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert b"NCCL_P2P_DISABLE=1" in environ
            assert b"NCCL_SHM_DISABLE=1" in environ
        chat(daemon, "b")
        suspended = bookings(daemon, pids)
        assert [b["gpus"] for b in suspended] == [{"0": 0}, {"1": 0}]
        assert all(b["cuda"]["state"] == "checkpointed" for b in suspended)
        assert gpu_used(daemon, 0) <= CAPACITY
        assert gpu_used(daemon, 1) <= CAPACITY

        assert chat(daemon, "a") == first
        back = bookings(daemon, pids)
        reserved = int(0.9 * CAPACITY)
        assert [b["gpus"] for b in back] == [{"0": reserved}, {"1": reserved}]
        assert all(b["state"] == "awake" for b in back)
        # b's workers (offload+keep_running) never get the NCCL-safe settings.
        for pid in worker_pids(daemon, "b"):
            assert b"NCCL_P2P_DISABLE=1" not in Path(f"/proc/{pid}/environ").read_bytes()


def test_a_failed_resume_falls_back_to_a_cold_start(tmp_path: Path) -> None:
    models = {"a": mock_model(eviction=RETAIN_SUSPEND), "b": mock_model()}
    faults = {"MOCK_VLLM_CUDA_FAULTS": "restore"}  # every restore fails (CUDA_ERROR_UNKNOWN)
    with running_daemon(
        tmp_path, models, env=faults, checkpoint=checkpoint_section(tmp_path)
    ) as daemon:
        first = chat(daemon, "a")
        (worker,) = worker_pids(daemon, "a")
        chat(daemon, "b")
        assert bookings(daemon, [worker])[0]["state"] == "suspended"

        assert chat(daemon, "a") == first
        assert worker_pids(daemon, "a") != [worker]  # a new tree
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="fallback_cold") == 1
        restarts = metric_value(
            daemon, "gpumux_backend_restarts_total", model="a", reason="wake_failed"
        )
        assert restarts == 1
        assert gpu_used(daemon) <= CAPACITY
        assert "cuda_resume" in daemon.log_text()
