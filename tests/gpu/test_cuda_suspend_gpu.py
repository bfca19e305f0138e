"""cuda_suspend on a real GPU: a torch process holding several GiB, suspended and resumed.

Runs only on a GPU machine (marker `gpu`; `scripts/test` selects `-m "not gpu"`, so CI
never collects it). `scripts/gpu-check` ran it in driver mode on an H200 (passed; the CLI
mode was not run there: no `cuda-checkpoint` binary). Prerequisites, each a failure (not
a skip) when missing, because whoever selects `-m gpu` means to test them:

- an NVIDIA driver >= 570 and `torch` with CUDA in this environment;
- for the `driver` case: `cuda-bindings` >= 12.8 (`pip install cuda-bindings`);
- for the `cli` case: NVIDIA's `cuda-checkpoint` binary on PATH (or GPUMUX_CUDA_CHECKPOINT);
- root, or the same user as the target process (the driver's own rule).

Run: `pytest -m gpu tests/gpu -s` (GPUMUX_GPU_TEST_GIB sets the size, default 4;
GPUMUX_GPU_MODES picks the modes, default `driver,cli`; GPUMUX_GPU_RESULTS_DIR, when set,
receives `cuda_suspend_<mode>.json`). `scripts/gpu-check` runs it once per mode.

What it checks, through gpumux's own `open_checkpointer` and `CudaSuspender`: the
holder's GPU memory leaves the device on suspend (NVML) and comes back on resume, the
data survives bit for bit (a checksum computed on the GPU), and the suspend and resume
rates in bytes/s, side by side with a pinned host<->device copy of the same size
measured by the same process in the same run (design §7: ratios, never a lone time).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpumux.core.config import CheckpointConfig
from gpumux.cuda.checkpointer import Checkpointer
from gpumux.cuda.driver import driver_api_available
from gpumux.cuda.suspend import CudaSuspender, SuspendSettings, open_checkpointer
from gpumux.procs import BackendProcess, Reaper, kill_tree, spawn_backend

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]

GIB = 1 << 30
SIZE_GIB = float(os.environ.get("GPUMUX_GPU_TEST_GIB", "4"))
MODES = [m.strip() for m in os.environ.get("GPUMUX_GPU_MODES", "driver,cli").split(",") if m]
DEADLINE_SECS = 120.0

# The holder: fills SIZE bytes on cuda:0 with a pattern, measures a pinned copy of the
# same size both ways, then answers checksum requests (a file appears) until killed.
HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    size = int(float(sys.argv[1]) * (1 << 30))
    work = sys.argv[2]
    dev = torch.device("cuda:0")
    data = torch.arange(size // 8, dtype=torch.int64, device=dev).mul_(2654435761)

    def checksum():
        torch.cuda.synchronize()
        return int(data.bitwise_xor(data >> 7).sum().item())

    pinned = torch.empty(size // 8, dtype=torch.int64, pin_memory=True)
    def timed(copy):
        torch.cuda.synchronize(); t = time.perf_counter(); copy(); torch.cuda.synchronize()
        return time.perf_counter() - t
    timed(lambda: pinned.copy_(data, non_blocking=True))  # warm-up
    d2h = timed(lambda: pinned.copy_(data, non_blocking=True))
    h2d = timed(lambda: data.copy_(pinned, non_blocking=True))
    del pinned
    baseline = {"bytes": size, "d2h_secs": d2h, "h2d_secs": h2d, "checksum": checksum()}
    with open(os.path.join(work, "ready.tmp"), "w") as f:
        json.dump(baseline, f)
    os.rename(os.path.join(work, "ready.tmp"), os.path.join(work, "ready"))
    request = os.path.join(work, "check")
    while True:
        if os.path.exists(request):
            os.unlink(request)
            with open(os.path.join(work, "result.tmp"), "w") as f:
                f.write(str(checksum()))
            os.rename(os.path.join(work, "result.tmp"), os.path.join(work, "result"))
        time.sleep(0.01)
    """
)


async def wait_for(path: Path, holder: BackendProcess) -> str:
    deadline = time.monotonic() + DEADLINE_SECS
    while not await asyncio.to_thread(path.exists):
        if holder.exited.done():
            pytest.fail(f"the holder exited: {holder.log_path.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {path.name} from the holder within {DEADLINE_SECS}s")
        await asyncio.sleep(0.02)
    text = await asyncio.to_thread(path.read_text)
    await asyncio.to_thread(path.unlink)
    return text


async def holder_checksum(work: Path, holder: BackendProcess) -> int:
    (work / "check").touch()
    return int(await wait_for(work / "result", holder))


def device_used_bytes() -> int:
    import pynvml  # gpumux's own dependency (nvidia-ml-py)

    pynvml.nvmlInit()
    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return int(info.used)
    finally:
        pynvml.nvmlShutdown()


def require(mode: str) -> str:
    """The cuda-checkpoint path for `mode`; fails loudly when a prerequisite is missing."""
    try:
        import torch
    except ImportError:
        pytest.fail("torch is not installed (pip install torch)")
    if not torch.cuda.is_available():
        pytest.fail("torch sees no CUDA device")
    cli = os.environ.get("GPUMUX_CUDA_CHECKPOINT") or shutil.which("cuda-checkpoint") or ""
    if mode == "driver":
        available, why = driver_api_available()
        if not available:
            pytest.fail(f"the driver API is not usable: {why} (pip install cuda-bindings)")
    elif not cli:
        pytest.fail("cuda-checkpoint is not on PATH (NVIDIA/cuda-checkpoint bin/x86_64_Linux)")
    return cli or "cuda-checkpoint"


@pytest.mark.parametrize("mode", MODES)
async def test_suspend_and_resume_a_torch_process(
    mode: str, reaper: Reaper, tmp_path: Path
) -> None:
    cli_path = require(mode)
    work = tmp_path / "work"
    work.mkdir()
    holder = spawn_backend(
        [sys.executable, "-c", HOLDER, str(SIZE_GIB), str(work)],
        model="gpu-holder",
        env=dict(os.environ),
        log_path=tmp_path / "holder.log",
        reaper=reaper,
    )
    config = CheckpointConfig(
        cuda_checkpoint_api="driver" if mode == "driver" else "cli",
        cuda_checkpoint_path=cli_path,
        cuda_checkpoint_timeout_secs=DEADLINE_SECS,
    )

    async def open_() -> Checkpointer:
        return await open_checkpointer(config, cli_path=cli_path, reaper=reaper, log_dir=tmp_path)

    suspender = CudaSuspender(SuspendSettings.from_config(config), open_)
    try:
        baseline = json.loads(await wait_for(work / "ready", holder))
        size = int(baseline["bytes"])
        used_awake = device_used_bytes()
        await suspender.checkpointer()  # the helper's start-up is not part of the timing

        started = time.perf_counter()
        pids = await suspender.suspend("gpu-holder", holder.pid)
        suspend_secs = time.perf_counter() - started
        used_suspended = device_used_bytes()

        started = time.perf_counter()
        await suspender.resume("gpu-holder", holder.pid, pids)
        resume_secs = time.perf_counter() - started
        used_resumed = device_used_bytes()

        assert pids == [holder.pid]
        assert used_awake - used_suspended >= 0.9 * size, "the memory did not leave the GPU"
        assert used_resumed - used_suspended >= 0.9 * size, "the memory did not come back"
        assert await holder_checksum(work, holder) == baseline["checksum"]
        results = {
            "mode": mode,
            "bytes": size,
            "suspend_bytes_per_s": size / suspend_secs,
            "resume_bytes_per_s": size / resume_secs,
            "pinned_d2h_bytes_per_s": size / baseline["d2h_secs"],
            "pinned_h2d_bytes_per_s": size / baseline["h2d_secs"],
        }
        results["suspend_vs_pinned_d2h"] = (
            results["suspend_bytes_per_s"] / results["pinned_d2h_bytes_per_s"]
        )
        results["resume_vs_pinned_h2d"] = (
            results["resume_bytes_per_s"] / results["pinned_h2d_bytes_per_s"]
        )
        # Reported, not judged: published figures are few (peers §A6), so the first runs
        # establish what to expect; the correctness checks above are the assertions.
        print(json.dumps(results, indent=1))
        out = Path(os.environ.get("GPUMUX_GPU_RESULTS_DIR") or tmp_path)
        (out / f"cuda_suspend_{mode}.json").write_text(json.dumps(results))
    finally:
        await suspender.close()
        await kill_tree(holder, grace_secs=5)
