"""The fake GPU ledger: booking, refusal, dead-pid pruning, and cross-process exclusion."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
from multiprocessing.synchronize import Barrier as BarrierType
from pathlib import Path

import pytest

from gpumux.gpu.fake_ledger import (
    LedgerFull,
    allocations,
    book,
    create_ledger,
    pid_is_dead,
    release,
    usage,
)

pytestmark = pytest.mark.unit

GIB = 1 << 30


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.json"
    create_ledger(path, [10 * GIB, 20 * GIB])
    return path


@pytest.fixture
def live_pid() -> int:
    # Our own pid is alive for the whole test, unlike a made-up number.
    return os.getpid()


def test_create_reports_capacities_and_nothing_used(ledger: Path) -> None:
    assert usage(ledger) == {0: (0, 10 * GIB), 1: (0, 20 * GIB)}
    assert allocations(ledger) == {}


def test_book_then_rebook_replaces_the_allocation(ledger: Path, live_pid: int) -> None:
    book(ledger, live_pid, {0: 9 * GIB}, model="a", state="awake")
    assert usage(ledger)[0] == (9 * GIB, 10 * GIB)
    # The pid's own booking does not count against its rebook, so 10 GiB fits.
    book(ledger, live_pid, {0: 10 * GIB, 1: GIB}, model="a", state="awake")
    book(ledger, live_pid, {0: GIB // 2}, model="a", state="sleeping", host_bytes=3 * GIB)
    alloc = allocations(ledger)[live_pid]
    assert alloc.gpus == {0: GIB // 2}
    assert (alloc.state, alloc.host_bytes, alloc.model) == ("sleeping", 3 * GIB, "a")
    assert usage(ledger) == {0: (GIB // 2, 10 * GIB), 1: (0, 20 * GIB)}


def test_over_commit_is_refused_and_writes_nothing(ledger: Path, live_pid: int) -> None:
    parent = os.getppid()
    book(ledger, parent, {0: 6 * GIB}, model="a", state="awake")
    before = ledger.read_bytes()
    with pytest.raises(LedgerFull) as info:
        book(ledger, live_pid, {1: GIB, 0: 5 * GIB}, model="b", state="awake")
    assert (info.value.gpu, info.value.free, info.value.wanted) == (0, 4 * GIB, 5 * GIB)
    assert ledger.read_bytes() == before
    assert set(allocations(ledger)) == {parent}


def test_ledger_full_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(LedgerFull(1, 2, 3)))
    assert (err.gpu, err.free, err.wanted) == (1, 2, 3)


def test_zero_booking_and_release(ledger: Path, live_pid: int) -> None:
    book(ledger, live_pid, {}, model="a", state="suspended", host_bytes=GIB)
    assert allocations(ledger)[live_pid].gpus == {}
    release(ledger, live_pid)
    release(ledger, live_pid)  # releasing twice is harmless
    assert allocations(ledger) == {}


def test_unknown_gpu_and_bad_values_are_errors(ledger: Path, live_pid: int) -> None:
    with pytest.raises(ValueError, match="GPU 7"):
        book(ledger, live_pid, {7: 1}, model="a", state="awake")
    with pytest.raises(ValueError, match="non-negative"):
        book(ledger, live_pid, {0: -1}, model="a", state="awake")
    with pytest.raises(ValueError, match="state"):
        book(ledger, live_pid, {0: 1}, model="a", state="bogus")  # type: ignore[arg-type]


def test_dead_and_zombie_pids_are_pruned(ledger: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        book(ledger, child.pid, {0: 10 * GIB}, model="a", state="awake")
        # Wait for exit without reaping: the child is a zombie, which frees GPU memory.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert pid_is_dead(child.pid)
        assert usage(ledger)[0] == (0, 10 * GIB)
        assert allocations(ledger) == {}
    finally:
        child.wait()
    assert pid_is_dead(child.pid)
    book(ledger, os.getpid(), {0: 10 * GIB}, model="b", state="awake")
    assert set(allocations(ledger)) == {os.getpid()}


def _contend(
    path: str,
    rounds: int,
    barrier: BarrierType,
    results: multiprocessing.Queue[tuple[int, bool]],
) -> None:
    barrier.wait()
    ok = 0
    for i in range(rounds):
        try:
            book(path, os.getpid(), {0: (1 + i % 3) * GIB}, model="m", state="awake")
            ok += 1
        except LedgerFull:
            pass
        used, cap = usage(path)[0]
        assert used <= cap
        if i % 4 == 3:
            release(path, os.getpid())
    release(path, os.getpid())
    barrier.wait()
    # Final round: everyone asks for half the GPU at once and holds it while the others
    # try, so exactly two of the four must win whatever the interleaving.
    try:
        book(path, os.getpid(), {0: 2 * GIB}, model="m", state="awake")
        won = True
    except LedgerFull:
        won = False
    results.put((ok, won))
    barrier.wait()


def test_concurrent_booking_never_exceeds_capacity(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    create_ledger(path, [4 * GIB])
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[int, bool]] = ctx.Queue()
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_contend, args=(str(path), 40, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    results.close()
    results.join_thread()
    assert sum(ok for ok, _ in outcomes) > 0
    assert sum(won for _, won in outcomes) == 2
    # Every process has exited, so nothing is left booked.
    assert usage(path)[0] == (0, 4 * GIB)
