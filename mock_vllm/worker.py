"""The fake EngineCore / tensor-parallel worker: a child process that only exists.

Real vLLM keeps its CUDA contexts in EngineCore and TP worker processes, so those are the
pids that hold GPU memory and the pids cuda-checkpoint and CRIU must handle. This child
mirrors that: the API server books ledger memory under this pid, and the child idles
until its parent goes away. Stdlib only, so it starts in tens of milliseconds.

Run as ``python -m mock_vllm.worker --parent PID --rank I --name EngineCore_DP0``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
POLL_SECS = 0.5


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the parent dies (vLLM uses a death pipe)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        # Without prctl the ppid poll below still ends us, just a little later.
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mock_vllm.worker")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--name", default="EngineCore_DP0")
    args = parser.parse_args(argv)
    die_with_parent()
    # The parent handles Ctrl-C for the whole tree and then stops us; a KeyboardInterrupt
    # traceback from every worker would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent may have died before prctl took effect; then nobody would kill us.
    while os.getppid() == args.parent:
        time.sleep(POLL_SECS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
