"""A fake of the checkpoint part of `cuda.bindings.driver`, acting on the fake GPU ledger.

Owns: the cuda-checkpoint state machine of one process as the NVIDIA driver runs it
(running -lock-> locked -checkpoint-> checkpointed -restore-> locked -unlock-> running),
applied to the pid's booking in gpumux's fake ledger: a checkpoint moves the pid's GPU
bytes to host memory (``state: suspended``), a restore moves them back and fails with
``CUDA_ERROR_OUT_OF_MEMORY`` when they no longer fit. Also the fault knob
``MOCK_VLLM_CUDA_FAULTS``.
Does not: parse a command line (``cuda_checkpoint`` does) or stall the mock server
(``server``/``engine`` watch the ledger and stop generating while a rank is not running).

The call shapes follow ``cuda.bindings.driver``: every function returns a tuple whose
first item is a ``CUresult``, and value-returning calls add the value
(``cuCheckpointProcessGetState(pid) -> (CUresult, CUprocessState)``), so gpumux's driver
helper can load this module in place of the real one (its tests do).

The camelCase names are the driver's. ``lock`` never waits (nothing runs on a fake GPU),
so its timeout is accepted and ignored.

Behaviour kept from the real driver (NVIDIA/cuda-checkpoint README and issues): a pid
with no CUDA state answers ``CUDA_ERROR_NOT_INITIALIZED``; a thread id acts on its
process (#41); an action from the wrong state is refused; a restore that runs out of
memory leaves the process checkpointed for good — later restores fail with
``CUDA_ERROR_OPERATING_SYSTEM`` and unlock with ``CUDA_ERROR_ILLEGAL_STATE`` (#44).
Error strings for codes 1, 2, 3, 304 and 999 are the driver's as quoted in those issues;
the others are close paraphrases.

Which ledger: ``MOCK_VLLM_LEDGER`` in our own environment, else the one in the target
process's environment — the real driver finds the GPUs through the process, the fake
finds the ledger that process books into.

``MOCK_VLLM_CUDA_FAULTS``: comma-separated ``action`` or ``action:pid`` items
(``lock``, ``checkpoint``, ``restore``, ``unlock``); a matching call fails with
``CUDA_ERROR_UNKNOWN`` and changes nothing.
"""

from __future__ import annotations

import dataclasses
import os
from enum import IntEnum
from pathlib import Path

from gpumux.gpu.fake_ledger import Allocation, LedgerFull, allocations, update

LEDGER_ENV = "MOCK_VLLM_LEDGER"
FAULTS_ENV = "MOCK_VLLM_CUDA_FAULTS"


class CUresult(IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_OUT_OF_MEMORY = 2
    CUDA_ERROR_NOT_INITIALIZED = 3
    CUDA_ERROR_OPERATING_SYSTEM = 304
    CUDA_ERROR_ILLEGAL_STATE = 401
    CUDA_ERROR_TIMEOUT = 909
    CUDA_ERROR_UNKNOWN = 999


class CUprocessState(IntEnum):
    CU_PROCESS_STATE_RUNNING = 0
    CU_PROCESS_STATE_LOCKED = 1
    CU_PROCESS_STATE_CHECKPOINTED = 2
    CU_PROCESS_STATE_FAILED = 3


_ERROR_STRINGS = {
    CUresult.CUDA_SUCCESS: "no error",
    CUresult.CUDA_ERROR_INVALID_VALUE: "invalid argument",
    CUresult.CUDA_ERROR_OUT_OF_MEMORY: "out of memory",
    CUresult.CUDA_ERROR_NOT_INITIALIZED: "initialization error",
    CUresult.CUDA_ERROR_OPERATING_SYSTEM: "OS call failed or operation not supported on this OS",
    CUresult.CUDA_ERROR_ILLEGAL_STATE: "the operation is not permitted in the current state",
    CUresult.CUDA_ERROR_TIMEOUT: "the wait operation timed out",
    CUresult.CUDA_ERROR_UNKNOWN: "unknown error",
}

_STATE_OF = {
    "running": CUprocessState.CU_PROCESS_STATE_RUNNING,
    "locked": CUprocessState.CU_PROCESS_STATE_LOCKED,
    "checkpointed": CUprocessState.CU_PROCESS_STATE_CHECKPOINTED,
    "failed": CUprocessState.CU_PROCESS_STATE_FAILED,
}


@dataclasses.dataclass
class CUcheckpointLockArgs:
    timeoutMs: int = 0  # the driver's field name


class _Refused(Exception):
    def __init__(self, code: CUresult) -> None:
        super().__init__(code.name)
        self.code = code


def cuInit(flags: int) -> tuple[CUresult]:
    return (CUresult.CUDA_SUCCESS,)


def cuGetErrorString(error: CUresult) -> tuple[CUresult, bytes]:
    text = _ERROR_STRINGS.get(CUresult(error), "unrecognized error code")
    return (CUresult.CUDA_SUCCESS, text.encode())


def cuCheckpointProcessGetState(pid: int) -> tuple[CUresult, CUprocessState]:
    try:
        alloc = _current(pid)
    except _Refused as exc:
        return (exc.code, CUprocessState.CU_PROCESS_STATE_FAILED)
    except (OSError, ValueError):
        return (CUresult.CUDA_ERROR_UNKNOWN, CUprocessState.CU_PROCESS_STATE_FAILED)
    return (CUresult.CUDA_SUCCESS, _STATE_OF[alloc.cuda_state])


def cuCheckpointProcessLock(pid: int, args: CUcheckpointLockArgs | None) -> tuple[CUresult]:
    return (_act(pid, "lock"),)


def cuCheckpointProcessCheckpoint(pid: int, args: object = None) -> tuple[CUresult]:
    return (_act(pid, "checkpoint"),)


def cuCheckpointProcessRestore(pid: int, args: object = None) -> tuple[CUresult]:
    return (_act(pid, "restore"),)


def cuCheckpointProcessUnlock(pid: int, args: object = None) -> tuple[CUresult]:
    return (_act(pid, "unlock"),)


# --- the state machine ----------------------------------------------------------------


def _act(pid: int, action: str) -> CUresult:
    try:
        target = _process_of(pid)
        path = _ledger_for(target)
        if _faulted(action, target):
            return CUresult.CUDA_ERROR_UNKNOWN
        outcome: list[CUresult] = [CUresult.CUDA_SUCCESS]

        def change(current: Allocation | None, free: dict[int, int]) -> Allocation | None:
            if current is None:
                raise _Refused(CUresult.CUDA_ERROR_NOT_INITIALIZED)
            new, outcome[0] = _STEPS[action](current, free)
            return new

        update(path, target, change)
        return outcome[0]
    except _Refused as exc:
        return exc.code
    except (OSError, ValueError, LedgerFull):
        return CUresult.CUDA_ERROR_UNKNOWN


Step = tuple[Allocation | None, CUresult]


def _lock(a: Allocation, free: dict[int, int]) -> Step:
    if a.cuda_state != "running":
        return None, CUresult.CUDA_ERROR_ILLEGAL_STATE
    return dataclasses.replace(a, cuda_state="locked"), CUresult.CUDA_SUCCESS


def _checkpoint(a: Allocation, free: dict[int, int]) -> Step:
    if a.cuda_state != "locked":
        return None, CUresult.CUDA_ERROR_ILLEGAL_STATE
    image = {gpu: nbytes for gpu, nbytes in a.gpus.items() if nbytes}
    return dataclasses.replace(
        a,
        cuda_state="checkpointed",
        gpus=dict.fromkeys(a.gpus, 0),
        host_bytes=a.host_bytes + sum(image.values()),
        image=image,
        state="suspended",
        state_before=a.state,
    ), CUresult.CUDA_SUCCESS


def _restore(a: Allocation, free: dict[int, int]) -> Step:
    if a.cuda_state != "checkpointed":
        return None, CUresult.CUDA_ERROR_ILLEGAL_STATE
    if a.restore_failed:
        return None, CUresult.CUDA_ERROR_OPERATING_SYSTEM
    if any(nbytes > free.get(gpu, 0) for gpu, nbytes in a.image.items()):
        # The real driver keeps part of its restore state after an OOM (NVIDIA/cuda-checkpoint#44).
        return dataclasses.replace(a, restore_failed=True), CUresult.CUDA_ERROR_OUT_OF_MEMORY
    gpus = {**a.gpus, **a.image}
    return dataclasses.replace(
        a,
        cuda_state="locked",
        gpus=gpus,
        host_bytes=max(a.host_bytes - sum(a.image.values()), 0),
        image={},
        state=a.state_before or "awake",
        state_before=None,
    ), CUresult.CUDA_SUCCESS


def _unlock(a: Allocation, free: dict[int, int]) -> Step:
    if a.cuda_state != "locked":
        return None, CUresult.CUDA_ERROR_ILLEGAL_STATE
    return dataclasses.replace(a, cuda_state="running"), CUresult.CUDA_SUCCESS


_STEPS = {"lock": _lock, "checkpoint": _checkpoint, "restore": _restore, "unlock": _unlock}


# --- where the process and its ledger are ----------------------------------------------


def _current(pid: int) -> Allocation:
    target = _process_of(pid)
    alloc = allocations(_ledger_for(target)).get(target)
    if alloc is None:
        raise _Refused(CUresult.CUDA_ERROR_NOT_INITIALIZED)
    return alloc


def _process_of(pid: int) -> int:
    """The process (thread group) `pid` belongs to; a thread id acts on its process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        raise _Refused(CUresult.CUDA_ERROR_INVALID_VALUE) from None
    for line in status.splitlines():
        if line.startswith("Tgid:"):
            return int(line.split()[1])
    return pid


def _ledger_for(pid: int) -> str:
    own = os.environ.get(LEDGER_ENV)
    if own:
        return own
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        raise _Refused(CUresult.CUDA_ERROR_NOT_INITIALIZED) from None
    for item in raw.split(b"\0"):
        name, _, value = item.partition(b"=")
        if name == LEDGER_ENV.encode() and value:
            return os.fsdecode(value)
    # No ledger: the process never booked fake GPU memory, so it has no CUDA state.
    raise _Refused(CUresult.CUDA_ERROR_NOT_INITIALIZED)


def _faulted(action: str, pid: int) -> bool:
    for item in os.environ.get(FAULTS_ENV, "").split(","):
        name, _, only = item.strip().partition(":")
        if name == action and (not only or only == str(pid)):
            return True
    return False
