"""A tree's /dev/shm segments travel with its CRIU image (vLLM's psm_* MessageQueue files).

Real CRIU on a small process that maps a /dev/shm file, as vLLM's EngineCore does; the
file is deleted after the dump (what a graceful vLLM stop does) and the restore must put
it back from the image. Needs root and CRIU >= 4.2: without them this FAILS.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from gpumux.checkpoint.checkpoints import Checkpoints
from gpumux.checkpoint.identity import ModelIdentity
from gpumux.core.config import CheckpointConfig
from gpumux.procs import Reaper, kill_tree, spawn_backend
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

CHILD = """
import mmap, os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 1 << 20)
ring = mmap.mmap(fd, 1 << 20)
ring[:12] = b"state-before"
print("ready", flush=True)
while True:
    time.sleep(0.2)
"""


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


async def test_shm_files_are_kept_in_the_image_and_put_back(
    tmp_path: Path, reaper: Reaper, criu: str
) -> None:
    config = CheckpointConfig(
        criu_path=criu, images_dir=str(tmp_path / "images"), cuda_plugin_dir=None
    )
    shm = Path(f"/dev/shm/psm_gpumux_test_{os.getpid()}")
    log_path = tmp_path / "logs" / "t.log"
    process = spawn_backend(
        [sys.executable, "-c", CHILD, str(shm)],
        model="t",
        env=dict(os.environ),
        log_path=log_path,
        reaper=reaper,
    )
    reserved = tmp_path / "ip_local_reserved_ports"  # the host's list is left alone
    reserved.write_text("\n")
    checkpoints = Checkpoints(config, log_dir=tmp_path / "logs", reserved_ports=reserved)
    identity = ModelIdentity("t", "t/model", tp=1, port=free_port(), launch="t")
    restored = None
    try:
        for _ in range(200):
            if b"ready" in _read(log_path):
                break
            await asyncio.sleep(0.05)
        finalize = await checkpoints.evict(
            "t", process, eviction="retain+checkpoint", identity=identity
        )
        image = await finalize
        assert image is not None
        assert image.manifest.shm_files == [str(shm)]
        assert (image.path / "shm" / shm.name).stat().st_size == 1 << 20
        assert process.exited.done()
        _unlink(shm)  # a graceful stop of vLLM deletes its segments
        restored = await checkpoints.bring_back("t", identity, log_path=log_path, reaper=reaper)
        assert restored.pid == process.pid
        assert _read(shm)[:12] == b"state-before"
        assert str(shm).encode() in _read(Path(f"/proc/{restored.pid}/maps"))
    finally:
        for proc in (restored, process):
            if proc is not None:
                await kill_tree(proc, grace_secs=0, graceful=False)
        await checkpoints.close()
        _unlink(shm)
