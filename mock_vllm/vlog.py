"""vLLM-shaped log lines on stdout, so gpumux's log handling sees what real vLLM prints.

Owns: the ``(APIServer pid=N) INFO MM-DD HH:MM:SS [file:line] message`` format.
Does not: configure the ``logging`` module (vLLM's format is easier to mimic directly,
and each line is flushed at once so a supervisor can use it as startup progress).
"""

from __future__ import annotations

import os
import sys
import time


def log(
    message: str,
    *,
    level: str = "INFO",
    where: str = "api_server.py:1",
    proc: str = "APIServer",
    pid: int | None = None,
    stream: str = "stdout",
) -> None:
    """Print one vLLM-formatted line and flush it; never raises on a closed stdout."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    line = f"({proc} pid={os.getpid() if pid is None else pid}) {level} {stamp} [{where}] {message}"
    out = sys.stderr if stream == "stderr" else sys.stdout
    try:
        out.write(line + "\n")
        out.flush()
    except (OSError, ValueError):
        # A supervisor that went away must not turn logging into a crash.
        pass


def access(peer: str, method: str, path: str, status: int, reason: str) -> None:
    """Uvicorn's access line, which vLLM prints for every request."""
    log(f'{peer} - "{method} {path} HTTP/1.1" {status} {reason}', where="h11_impl.py:1")
