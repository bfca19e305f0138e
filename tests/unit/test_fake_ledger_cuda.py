"""The fake ledger's cuda-checkpoint side: `update`, the saved image, and `CudaBusy`.

The fake driver (`mock_vllm.cuda_driver`) is called in-process on this test's own pid,
which the ledger books like a mock worker.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pytest

from gpumux.gpu.fake_ledger import (
    Allocation,
    CudaBusy,
    LedgerFull,
    allocations,
    book,
    create_ledger,
    update,
    usage,
)
from mock_vllm import cuda_driver as drv

pytestmark = pytest.mark.unit

GIB = 1 << 30
OK = drv.CUresult.CUDA_SUCCESS


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ledger.json"
    create_ledger(path, [10 * GIB])
    monkeypatch.setenv(drv.LEDGER_ENV, str(path))
    monkeypatch.delenv(drv.FAULTS_ENV, raising=False)
    return path


def test_update_writes_what_the_change_returns(ledger: Path) -> None:
    me = os.getpid()
    book(ledger, me, {0: 4 * GIB}, model="m", state="awake")
    seen: list[tuple[Allocation | None, dict[int, int]]] = []

    def change(current: Allocation | None, free: dict[int, int]) -> Allocation | None:
        seen.append((current, free))
        assert current is not None
        return dataclasses.replace(current, gpus={0: 6 * GIB})

    written = update(ledger, me, change)
    assert written is not None
    assert seen[0][1] == {0: 10 * GIB}  # the pid's own booking does not count against it
    assert usage(ledger)[0] == (6 * GIB, 10 * GIB)
    assert update(ledger, me, lambda current, free: None) is None  # writes nothing
    assert allocations(ledger)[me].gpus == {0: 6 * GIB}


def test_update_refuses_what_does_not_fit(ledger: Path) -> None:
    me = os.getpid()
    book(ledger, me, {0: GIB}, model="m", state="awake")
    with pytest.raises(LedgerFull):
        update(
            ledger, me, lambda a, free: dataclasses.replace(a, gpus={0: 11 * GIB}) if a else None
        )
    assert allocations(ledger)[me].gpus == {0: GIB}


def test_checkpoint_saves_an_image_and_restore_puts_it_back(ledger: Path) -> None:
    me = os.getpid()
    book(ledger, me, {0: 4 * GIB}, model="m", state="sleeping", host_bytes=GIB)
    assert drv.cuCheckpointProcessLock(me, drv.CUcheckpointLockArgs(100)) == (OK,)
    with pytest.raises(CudaBusy, match="CUDA is locked"):
        book(ledger, me, {0: GIB}, model="m", state="awake")
    assert drv.cuCheckpointProcessCheckpoint(me) == (OK,)
    parked = allocations(ledger)[me]
    assert (parked.cuda_state, parked.state, parked.gpus) == ("checkpointed", "suspended", {0: 0})
    assert (parked.image, parked.state_before, parked.host_bytes) == (
        {0: 4 * GIB},
        "sleeping",
        5 * GIB,
    )
    state = drv.cuCheckpointProcessGetState(me)
    assert state == (OK, drv.CUprocessState.CU_PROCESS_STATE_CHECKPOINTED)
    assert drv.cuCheckpointProcessRestore(me) == (OK,)
    assert drv.cuCheckpointProcessUnlock(me) == (OK,)
    back = allocations(ledger)[me]
    assert back == Allocation(me, {0: 4 * GIB}, GIB, "m", "sleeping")


def test_faults_fail_only_the_named_action(ledger: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.getpid()
    book(ledger, me, {0: GIB}, model="m", state="awake")
    monkeypatch.setenv(drv.FAULTS_ENV, f"lock:{me + 1}, checkpoint")
    assert drv.cuCheckpointProcessLock(me, None) == (OK,)
    assert drv.cuCheckpointProcessCheckpoint(me) == (drv.CUresult.CUDA_ERROR_UNKNOWN,)
    assert allocations(ledger)[me].cuda_state == "locked"


def test_cuda_busy_survives_pickling() -> None:
    copy = pickle.loads(pickle.dumps(CudaBusy(12, "checkpointed")))
    assert (copy.pid, copy.cuda_state) == (12, "checkpointed")
