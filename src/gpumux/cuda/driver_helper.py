"""The driver-API helper process: `cuCheckpointProcess*` calls on gpumux's behalf.

Owns: one long-lived process that imports `cuda.bindings.driver`, calls `cuInit` once
(a restore needs it, or persistence mode, in the caller), and answers requests on a
Unix socket, one JSON object per line each way:
``{"op": "get_state"|"lock"|"checkpoint"|"restore"|"unlock"|"ping", "pid": N,
"timeout_ms": N}`` → ``{"ok": true, "state": "running"}`` or
``{"ok": false, "code": 2, "error": "out of memory"}``. Each connection is served in its
own thread, so the ranks of a TP>1 model are handled at once.
Does not: decide anything; gpumux's `cuda_suspend` orders, verifies and rolls back.

Why a helper and not the daemon itself: the driver attach is paid once here instead of
about 2.5 s per `cuda-checkpoint` run (peers §A6, ai-dynamo/dynamo#7773), the daemon
never loads libcuda or opens /dev/nvidia*, and a driver crash (NVIDIA/cuda-checkpoint#5
reports segfaults) takes down only the helper. Stdlib only, besides the driver module.

Run as ``python -m gpumux.cuda.driver_helper --socket PATH [--driver MODULE]``; MODULE
defaults to ``cuda.bindings.driver`` and must offer the same calls (tests pass
``mock_vllm.cuda_driver``, a ledger-backed fake). What was exercised without a GPU: this
process, its protocol and the tuple/enum handling against that fake. The real
`cuda.bindings` calls were not run here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socketserver
import sys
from types import ModuleType
from typing import Any

STATE_BY_NAME = {
    "CU_PROCESS_STATE_RUNNING": "running",
    "CU_PROCESS_STATE_LOCKED": "locked",
    "CU_PROCESS_STATE_CHECKPOINTED": "checkpointed",
    "CU_PROCESS_STATE_FAILED": "failed",
}
STATE_BY_NUMBER = {0: "running", 1: "locked", 2: "checkpointed", 3: "failed"}
ACTION_CALLS = {
    "checkpoint": "cuCheckpointProcessCheckpoint",
    "restore": "cuCheckpointProcessRestore",
    "unlock": "cuCheckpointProcessUnlock",
}
#: Exit statuses of a helper that could not start (gpumux then falls back to the CLI).
EXIT_NO_DRIVER_MODULE = 2
EXIT_INIT_FAILED = 3


class Driver:
    """The checkpoint calls of one driver module, with errors turned into replies."""

    def __init__(self, module: ModuleType) -> None:
        self._m = module

    def init(self) -> str | None:
        """`cuInit(0)`; the error text, or None on success."""
        err = self._m.cuInit(0)[0]
        return None if int(err) == 0 else self._error_text(err)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True}
        try:
            pid = int(request["pid"])
            if op == "get_state":
                err, state = self._m.cuCheckpointProcessGetState(pid)
                if int(err) != 0:
                    return self._failure(err)
                return {"ok": True, "state": self._state_name(state)}
            if op == "lock":
                args = self._m.CUcheckpointLockArgs()
                args.timeoutMs = int(request.get("timeout_ms", 0))
                result = self._m.cuCheckpointProcessLock(pid, args)
            elif op in ACTION_CALLS:
                result = getattr(self._m, ACTION_CALLS[str(op)])(pid, None)
            else:
                return {"ok": False, "code": -1, "error": f"unknown op {op!r}"}
        except Exception as exc:  # any binding failure becomes a reply
            # Older bindings raise instead of returning an error (NVIDIA/cuda-python#561).
            return {"ok": False, "code": -1, "error": f"{type(exc).__name__}: {exc}"}
        err = result[0]
        return {"ok": True} if int(err) == 0 else self._failure(err)

    def _failure(self, err: Any) -> dict[str, Any]:
        return {"ok": False, "code": int(err), "error": self._error_text(err)}

    def _error_text(self, err: Any) -> str:
        try:
            text = self._m.cuGetErrorString(err)[1]
        except Exception:  # the code alone still says something
            return f"CUDA error {int(err)}"
        return text.decode(errors="replace") if isinstance(text, bytes) else str(text)

    @staticmethod
    def _state_name(state: Any) -> str:
        name = getattr(state, "name", "")
        if name in STATE_BY_NAME:
            return STATE_BY_NAME[name]
        return STATE_BY_NUMBER.get(int(state), "failed")


def serve(driver: Driver, socket_path: str) -> None:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                try:
                    request = json.loads(line)
                    reply = driver.handle(request if isinstance(request, dict) else {})
                except ValueError as exc:
                    reply = {"ok": False, "code": -1, "error": f"bad request: {exc}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")
                self.wfile.flush()

    class Server(socketserver.ThreadingUnixStreamServer):
        daemon_threads = True  # a call stuck in the driver must not block our exit

    if os.path.exists(socket_path):
        os.unlink(socket_path)
    with Server(socket_path, Handler) as server:
        os.chmod(socket_path, 0o600)
        sys.stdout.write(f"cuda checkpoint helper ready on {socket_path}\n")
        sys.stdout.flush()
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpumux.cuda.driver_helper")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--driver", default="cuda.bindings.driver")
    args = parser.parse_args(argv)
    try:
        module = importlib.import_module(args.driver)
    except ImportError as exc:
        sys.stderr.write(f"cannot import {args.driver}: {exc}\n")
        return EXIT_NO_DRIVER_MODULE
    driver = Driver(module)
    error = driver.init()
    if error is not None:
        sys.stderr.write(f"cuInit failed: {error}\n")
        return EXIT_INIT_FAILED
    serve(driver, args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
