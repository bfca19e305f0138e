"""The API server's side of its worker children: spawn, notice death, stop, crash.

Owns: one ``mock_vllm.worker`` child per tensor-parallel rank, reaping them, and the
crash fault (SIGKILL the whole tree at once).
Does not: book memory (``gpu_memory`` does, keyed by these pids).

Deaths are found by polling ``Popen.poll`` from the event loop rather than through
asyncio's child watcher: Python 3.11's default watcher starts a thread per child, and
the mock must stay single-threaded so CRIU can dump it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from mock_vllm.vlog import log


def rank_name(rank: int, tp: int) -> str:
    """vLLM's process label: the engine core alone, or one worker per TP rank."""
    return "EngineCore_DP0" if tp == 1 else f"Worker_TP{rank}"


class Workers:
    """The worker children of this API server."""

    def __init__(self, tensor_parallel_size: int) -> None:
        self.tp = tensor_parallel_size
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def spawn(self) -> None:
        for rank in range(self.tp):
            name = rank_name(rank, self.tp)
            cmd = [
                sys.executable,
                "-m",
                "mock_vllm.worker",
                "--parent",
                str(os.getpid()),
                "--rank",
                str(rank),
                "--name",
                name,
            ]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
            self.procs.append(proc)
            log(
                "Waiting for init message from front-end.",
                proc=name,
                pid=proc.pid,
                where="core.py:1",
            )

    def first_dead(self) -> int | None:
        """The pid of a worker that has exited (and is now reaped), if any."""
        for proc in self.procs:
            if proc.poll() is not None:
                return proc.pid
        return None

    async def stop(self, grace_secs: float = 2.0) -> None:
        """SIGTERM every worker, SIGKILL what is left after ``grace_secs``, reap all."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = asyncio.get_running_loop().time() + grace_secs
        while any(p.poll() is None for p in self.procs):
            if asyncio.get_running_loop().time() >= deadline:
                for proc in self.procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                break
            await asyncio.sleep(0.02)

    def kill_now(self) -> None:
        """SIGKILL and reap every worker without waiting on the loop (startup failures)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def crash_tree(self) -> None:
        """Die like a CUDA fault takes vLLM down: the whole tree, at once, by SIGKILL."""
        log(
            "CUDA error: an illegal memory access was encountered",
            level="ERROR",
            where="core.py:1",
            proc=rank_name(0, self.tp),
            pid=self.pids[0] if self.procs else None,
        )
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        # Not a group leader (started without a new session): killing the group would hit
        # whoever started us, so kill our own tree only.
        for proc in self.procs:
            proc.kill()
        os.kill(os.getpid(), signal.SIGKILL)
