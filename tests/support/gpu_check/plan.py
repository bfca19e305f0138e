"""The check's plan: one model per eviction strategy, their sizes, and the daemon config.

Owns: the strategies under test (with the phase names the daemon reports for their
evictions and wakes, and which bytes they move), the sizing rule (any three models fit
awake on the card, all four do not, so every switch evicts), and the gpumux config
(design §1) that runs them: torch-backed mocks and the NVML probe on a GPU, or ledger
mocks and the fake probe for `--fake-gpu` (the dry run that needs no GPU).
Does not: start anything (`drive` does). Pure apart from picking free ports.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

GIB = 1 << 30


@dataclass(frozen=True)
class Strategy:
    key: str
    weights: str
    process: str
    evict_phases: tuple[str, ...]  # the daemon's phase names (gpumux.core.eviction.PHASE_OF)
    wake_phases: tuple[str, ...]
    #: What crosses the bus each way: "weights" (the weight bytes), "process" (all the
    #: process's GPU memory), "none" (memory is freed or allocated, nothing copied).
    evict_moves: str
    wake_moves: str

    @property
    def alias(self) -> str:
        return f"m-{self.key.replace('_', '-')}"

    @property
    def eviction(self) -> dict[str, str]:
        return {"weights": self.weights, "process": self.process}


_DISCARD_WAKE = ("wake", "reload")
STRATEGIES = (
    Strategy("offload", "offload", "keep_running", ("sleep",), ("wake",), "weights", "weights"),
    Strategy("discard", "discard", "keep_running", ("sleep",), _DISCARD_WAKE, "none", "weights"),
    Strategy(
        "cuda_suspend", "retain", "cuda_suspend", ("suspend",), ("resume",), "process", "process"
    ),
    Strategy("stop", "retain", "stop", ("stop",), ("start",), "none", "weights"),
)
CRIU = Strategy(
    "criu", "discard", "checkpoint", ("sleep", "dump"), ("restore", *_DISCARD_WAKE), "none",
    "weights",
)  # fmt: skip


def sizing_problem(utilization: float, models: int, residual_fraction: float) -> str | None:
    """Why ``utilization`` does not make three fit and four not, or None when it does."""
    if models < 4:
        return f"needs at least 4 models, got {models}"
    three = 3 * utilization + (models - 3) * residual_fraction
    if three > 1:
        return f"three awake ({3 * utilization:.2f}) plus sleepers' residuals do not fit"
    if 4 * utilization <= 1:
        return f"four awake ({4 * utilization:.2f}) fit, so no switch would have to evict"
    return None


@dataclass(frozen=True)
class Plan:
    work: Path
    strategies: tuple[Strategy, ...]
    utilization: float
    weights_gib: float
    capacity_bytes: int
    fake_gpu: bool
    cuda_checkpoint: str  # the CLI path (fake: mock-cuda-checkpoint)
    criu: str | None = None

    def model(self, s: Strategy) -> dict[str, Any]:
        args = ["--gpu-memory-utilization", str(self.utilization)]
        args += ["--mock-model-gib", str(self.weights_gib), "--disable-uvicorn-access-log"]
        args += ["--mock-gpu", "ledger" if self.fake_gpu else "torch"]
        args += ["--mock-weights-dir", str(self.work / "weights")]
        entry: dict[str, Any] = {
            "model_path": f"mock/{s.key}",
            "port": free_port(),
            "extra_args": args,
            "eviction": s.eviction,
            "startup_timeout_secs": 300,
        }
        # What it pins in host RAM while evicted (the daemon's host budget counts it; the
        # ledger mocks of the dry run pin nothing real).
        if s.weights == "offload":
            entry["host_memory_gib"] = 0.5 if self.fake_gpu else self.weights_gib
        elif s.process == "cuda_suspend":
            held = self.utilization * self.capacity_bytes / GIB
            entry["host_memory_gib"] = 0.5 if self.fake_gpu else round(held, 2)
        return entry

    def config(self) -> dict[str, Any]:
        if self.fake_gpu:
            gpu = {
                "probe": "fake",
                "fake_capacity_gib": [self.capacity_bytes / GIB],
                "sleeping_residual_gib": 0.5,
            }
        else:
            gpu = {"probe": "nvml", "sleeping_residual_gib": 1.0}
        checkpoint: dict[str, Any] = {
            "images_dir": str(self.work / "images"),
            "cuda_checkpoint_api": "cli" if self.fake_gpu else "driver",
            "cuda_checkpoint_path": self.cuda_checkpoint,
            "cuda_checkpoint_timeout_secs": 180,
        }
        if self.criu:
            checkpoint["criu_path"] = self.criu
        return {
            "models": {s.alias: self.model(s) for s in self.strategies},
            "host": "127.0.0.1",
            "port": free_port(),
            "metrics_port": free_port(),
            "admin_port": free_port(),
            "vllm_command": [sys.executable, "-m", "mock_vllm"],
            "state_dir": str(self.work / "state"),
            "gpu": gpu,
            "checkpoint": checkpoint,
            "policy": {
                "policy_type": "fifo",
                "min_active_secs": 0,
                "drain_timeout_secs": 30,
                "request_timeout_secs": 600,
                # Each switch must record its victim's whole eviction (a CRIU dump too):
                # the check measures every step, not what a request waits for.
                "overlap": False,
                # Evictions happen when the check asks for them, never ahead of need, so
                # each one is timed where the check expects it.
                "evict_ahead": False,
                # Round-robin over four models of which three fit: least recently used
                # victims make every strategy leave and come back.
                "victims": "lru",
            },
            "supervision": {
                "stop_grace_secs": 15,
                "sleep_timeout_secs": 300,
                "wake_timeout_secs": 300,
                "shutdown_timeout_secs": 60,
            },
        }
