"""`mock-cuda-checkpoint`: NVIDIA's `cuda-checkpoint` command line over the fake driver.

Owns: the CLI of the real utility (r570 help text): ``--get-state``, ``--toggle``,
``--action lock|checkpoint|restore|unlock [--timeout MS]`` and ``--get-restore-tid``,
each with ``--pid|-p PID``; its output (the state on stdout) and its failures (one line
on stderr, exit status = the CUDA error code, truncated to 8 bits by the OS as the real
one's is).
Does not: hold any state. Everything lives in the fake GPU ledger (see
``mock_vllm.cuda_driver``), so gpumux, the mock server and tests all see the same thing.

Run as ``mock-cuda-checkpoint --toggle --pid 1234`` or
``python -m mock_vllm.cuda_checkpoint --get-state --pid 1234``.

Messages: ``Error toggling CUDA in process ID P: "…"`` and
``Could not restore on process ID P: "…"`` are the real tool's wording (quoted in
NVIDIA/cuda-checkpoint#25 and #47); the other verbs follow the same pattern.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mock_vllm import cuda_driver as drv

HELP = """CUDA checkpoint and restore utility.
Version 570.86.10 (mock_vllm). Acts on the fake GPU ledger, not on a GPU.

Operations:
--get-state --pid <pid>
        Prints the current checkpoint state of the process specified by <pid>

--action lock | checkpoint | restore | unlock --pid <pid> [--timeout <ms>]
        Performs the specified action on <pid>.
        For the lock action a timeout can be provided, the lock operation will wait \
up to <ms> milliseconds for the operation to succeed.

--toggle --pid <pid>
        Toggles the CUDA state in the specified process between the running and \
checkpointed states

--get-restore-tid --pid <pid>
        Retrieves the CUDA restore thread ID of the process specified by <pid>

Options:
--pid|-p <pid>
        The pid upon which to perform the operation

--timeout|-t <timeout>
        Optional timeout that can be specified for the lock action in milliseconds

--help|-h
        Print this help message
"""

ACTIONS = ("lock", "checkpoint", "restore", "unlock")
STATE_NAMES = {
    drv.CUprocessState.CU_PROCESS_STATE_RUNNING: "running",
    drv.CUprocessState.CU_PROCESS_STATE_LOCKED: "locked",
    drv.CUprocessState.CU_PROCESS_STATE_CHECKPOINTED: "checkpointed",
    drv.CUprocessState.CU_PROCESS_STATE_FAILED: "failed",
}


class UsageError(Exception):
    pass


def parse(argv: Sequence[str]) -> tuple[str, int, int]:
    """(operation, pid, timeout_ms) from the real tool's flags; raises UsageError."""
    operation: str | None = None
    pid: int | None = None
    timeout_ms = 0
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag in ("--help", "-h"):
            return "help", 0, 0
        if flag in ("--get-state", "--toggle", "--get-restore-tid"):
            operation = flag[2:]
            continue
        if flag not in ("--action", "--pid", "-p", "--timeout", "-t"):
            raise UsageError(f"unknown option {flag!r}")
        if not args:
            raise UsageError(f"{flag} needs a value")
        value = args.pop(0)
        if flag == "--action":
            if value not in ACTIONS:
                raise UsageError(f"unknown action {value!r}")
            operation = value
        elif flag in ("--pid", "-p"):
            pid = _int(value, flag)
        else:
            timeout_ms = _int(value, flag)
    if operation is None or pid is None:
        raise UsageError("an operation and --pid are required")
    return operation, pid, timeout_ms


def _int(value: str, flag: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{flag} needs a number, got {value!r}") from None
    if number < 0:
        raise UsageError(f"{flag} must not be negative")
    return number


def _message(code: drv.CUresult) -> str:
    return drv.cuGetErrorString(code)[1].decode()


def _fail(text: str, code: drv.CUresult) -> int:
    sys.stderr.write(f'{text}: "{_message(code)}"\n')
    return int(code)


def _action(name: str, pid: int, timeout_ms: int) -> drv.CUresult:
    if name == "lock":
        return drv.cuCheckpointProcessLock(pid, drv.CUcheckpointLockArgs(timeout_ms))[0]
    calls = {
        "checkpoint": drv.cuCheckpointProcessCheckpoint,
        "restore": drv.cuCheckpointProcessRestore,
        "unlock": drv.cuCheckpointProcessUnlock,
    }
    return calls[name](pid, None)[0]


def run(operation: str, pid: int, timeout_ms: int) -> int:
    ok = drv.CUresult.CUDA_SUCCESS
    if operation in ("get-state", "get-restore-tid"):
        code, state = drv.cuCheckpointProcessGetState(pid)
        if code != ok:
            what = "get state of" if operation == "get-state" else "get restore thread ID of"
            return _fail(f"Could not {what} process ID {pid}", code)
        # The fake has no restore thread; the process's main thread stands in for it.
        sys.stdout.write(f"{STATE_NAMES[state] if operation == 'get-state' else pid}\n")
        return 0
    if operation == "toggle":
        code, state = drv.cuCheckpointProcessGetState(pid)
        if code == ok:
            running = state == drv.CUprocessState.CU_PROCESS_STATE_RUNNING
            for name in ("lock", "checkpoint") if running else ("restore", "unlock"):
                code = _action(name, pid, 0)
                if code != ok:
                    break
        if code != ok:
            return _fail(f"Error toggling CUDA in process ID {pid}", code)
        return 0
    code = _action(operation, pid, timeout_ms)
    if code != ok:
        return _fail(f"Could not {operation} on process ID {pid}", code)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        operation, pid, timeout_ms = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n\n{HELP}")
        return 1
    if operation == "help":
        sys.stdout.write(HELP)
        return 0
    return run(operation, pid, timeout_ms)


if __name__ == "__main__":
    sys.exit(main())
