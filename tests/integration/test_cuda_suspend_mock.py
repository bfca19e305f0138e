"""cuda_suspend against the fake GPU: `mock-cuda-checkpoint`, the driver-API helper, mock_vllm.

The mock CLI and the fake driver move a pid's ledger booking to host memory and back;
a mock_vllm whose worker is suspended stalls its requests until the resume; gpumux's
adapter suspends every worker of a real mock tree (TP=1 and TP=2) through the CLI and
through the driver-API helper (loaded with the fake driver), and rolls back on failure.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from gpumux.cuda.checkpointer import CheckpointError, CliCheckpointer, CudaState
from gpumux.cuda.driver import DriverApiCheckpointer
from gpumux.cuda.suspend import CudaSuspender, CudaSuspendFailed, SuspendSettings
from gpumux.gpu.fake_ledger import Allocation, allocations, book, create_ledger, release
from gpumux.procs import BackendProcess, Reaper, kill_tree, spawn_backend
from tests.support.backend import mock_chat, wait_backend_healthy
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

GIB = 1 << 30
DEADLINE_SECS = 15.0
MOCK_CLI = str(Path(sys.executable).parent / "mock-cuda-checkpoint")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MOCK_CLI, *args], capture_output=True, text=True, timeout=30, env=env, check=False
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.json"
    create_ledger(path, [10 * GIB, 10 * GIB])
    return path


@pytest.fixture
def sleeper(ledger: Path) -> Iterator[int]:
    """A live process booked on GPU 0 whose environment names the ledger."""
    env = {**os.environ, "MOCK_VLLM_LEDGER": str(ledger)}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    book(ledger, proc.pid, {0: 6 * GIB}, model="m", state="sleeping", host_bytes=GIB)
    yield proc.pid
    proc.kill()
    proc.wait()


def test_the_console_script_is_installed() -> None:
    """Missing the script is a failure here, not a skip: the daemon tests need it."""
    assert Path(MOCK_CLI).exists(), "mock-cuda-checkpoint is not installed beside python"
    help_text = cli("--help")
    assert help_text.returncode == 0
    assert "--action lock | checkpoint | restore | unlock" in help_text.stdout


def test_toggle_moves_the_booking_to_host_memory_and_back(ledger: Path, sleeper: int) -> None:
    assert cli("--get-state", "--pid", str(sleeper)).stdout == "running\n"
    assert cli("--toggle", "--pid", str(sleeper)).returncode == 0
    suspended = allocations(ledger)[sleeper]
    assert suspended.cuda_state == "checkpointed"
    assert (suspended.state, suspended.gpus) == ("suspended", {0: 0})
    assert suspended.host_bytes == 7 * GIB
    assert cli("--get-state", "-p", str(sleeper)).stdout == "checkpointed\n"
    assert cli("--toggle", "--pid", str(sleeper)).returncode == 0
    back = allocations(ledger)[sleeper]
    assert (back.cuda_state, back.state, back.gpus, back.host_bytes) == (
        "running",
        "sleeping",
        {0: 6 * GIB},
        GIB,
    )


def test_actions_follow_the_drivers_state_machine(ledger: Path, sleeper: int) -> None:
    pid = str(sleeper)
    checkpoint_first = cli("--action", "checkpoint", "--pid", pid)
    assert checkpoint_first.returncode == 401 % 256  # CUDA_ERROR_ILLEGAL_STATE
    assert checkpoint_first.stderr.startswith(f"Could not checkpoint on process ID {pid}: ")
    for action, state in (("lock", "locked"), ("checkpoint", "checkpointed")):
        assert cli("--action", action, "--pid", pid, "--timeout", "500").returncode == 0
        assert cli("--get-state", "--pid", pid).stdout.strip() == state
    with pytest.raises(Exception, match="CUDA is checkpointed"):
        book(ledger, sleeper, {0: GIB}, model="m", state="awake")  # CUDA calls block
    for action, state in (("restore", "locked"), ("unlock", "running")):
        assert cli("--action", action, "--pid", pid).returncode == 0
        assert cli("--get-state", "--pid", pid).stdout.strip() == state


def test_a_restore_that_does_not_fit_leaves_the_process_stuck(ledger: Path, sleeper: int) -> None:
    """Like the real driver (NVIDIA/cuda-checkpoint#44): OOM, then 304 for good."""
    pid = str(sleeper)
    assert cli("--toggle", "--pid", pid).returncode == 0
    book(ledger, os.getpid(), {0: 8 * GIB}, model="hog", state="awake")
    oom = cli("--action", "restore", "--pid", pid)
    assert (oom.returncode, oom.stderr) == (
        2,
        f'Could not restore on process ID {pid}: "out of memory"\n',
    )
    release(ledger, os.getpid())
    again = cli("--toggle", "--pid", pid)
    assert again.returncode == 304 % 256
    assert again.stderr == (
        f'Error toggling CUDA in process ID {pid}: "OS call failed or operation not supported '
        'on this OS"\n'
    )
    assert cli("--get-state", "--pid", pid).stdout == "checkpointed\n"
    assert allocations(ledger)[sleeper].gpus == {0: 0}


def test_a_process_without_a_booking_answers_like_a_non_cuda_process(ledger: Path) -> None:
    env = {**os.environ, "MOCK_VLLM_LEDGER": str(ledger)}
    mine = cli("--get-state", "--pid", str(os.getpid()), env=env)
    assert (mine.returncode, mine.stdout) == (3, "")  # CUDA_ERROR_NOT_INITIALIZED
    assert '"initialization error"' in mine.stderr
    nobody = cli("--get-state", "--pid", "999999999")
    assert nobody.returncode == 1  # CUDA_ERROR_INVALID_VALUE
    assert cli("--toggle").returncode == 1  # usage error


def test_injected_faults_fail_one_action_of_one_pid(ledger: Path, sleeper: int) -> None:
    env = {**os.environ, "MOCK_VLLM_CUDA_FAULTS": f"checkpoint:{sleeper},unlock:1"}
    failed = cli("--toggle", "--pid", str(sleeper), env=env)
    assert failed.returncode == 999 % 256
    assert '"unknown error"' in failed.stderr
    # The lock went through; the failed checkpoint changed nothing.
    assert allocations(ledger)[sleeper].cuda_state == "locked"


# --- a real mock_vllm tree ---------------------------------------------------------------


@dataclass
class MockTree:
    process: BackendProcess
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def start_mock(
    reaper: Reaper, session: aiohttp.ClientSession, tmp_path: Path, ledger: Path, tp: int
) -> MockTree:
    port = free_port()
    argv = [sys.executable, "-m", "mock_vllm", "serve", "tiny", "--port", str(port)]
    argv += ["--enable-sleep-mode", "--tensor-parallel-size", str(tp), "--mock-model-gib", "0.1"]
    env = {
        **os.environ,
        "MOCK_VLLM_LEDGER": str(ledger),
        "VLLM_SERVER_DEV_MODE": "1",
        "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in range(tp)),
    }
    process = spawn_backend(
        argv, model="tiny", env=env, log_path=tmp_path / f"mock-{port}.log", reaper=reaper
    )
    tree = MockTree(process, port)

    def gone() -> str | None:
        log = tmp_path / f"mock-{port}.log"
        return log.read_text(errors="replace") if process.exited.done() else None

    await wait_backend_healthy(session, tree.base, gone=gone, timeout=DEADLINE_SECS)
    return tree


@pytest.fixture
async def mocks(
    reaper: Reaper, session: aiohttp.ClientSession, tmp_path: Path, ledger: Path
) -> AsyncIterator[list[MockTree]]:
    started: list[MockTree] = []
    yield started
    for tree in started:
        await kill_tree(tree.process, grace_secs=2)


async def state(session: aiohttp.ClientSession, tree: MockTree) -> dict[str, Any]:
    async with session.get(tree.base + "/mock/state") as resp:
        found: dict[str, Any] = await resp.json()
        return found


async def chat(session: aiohttp.ClientSession, tree: MockTree) -> str:
    status, reply = await mock_chat(session, tree.base, max_tokens=4)
    assert status == 200
    return str(reply["choices"][0]["message"]["content"])


def workers(ledger: Path, pids: list[int]) -> list[Allocation]:
    booked = allocations(ledger)
    return [booked[pid] for pid in pids]


def settings() -> SuspendSettings:
    return SuspendSettings(lock_timeout_ms=2000, verify_attempts=5, verify_interval_secs=0.05)


async def test_a_suspended_mock_stalls_requests_until_resumed(
    reaper: Reaper,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    ledger: Path,
    mocks: list[MockTree],
) -> None:
    tree = await start_mock(reaper, session, tmp_path, ledger, tp=1)
    mocks.append(tree)
    before = await chat(session, tree)
    (worker,) = (await state(session, tree))["worker_pids"]
    cp = CliCheckpointer(MOCK_CLI, call_timeout_secs=30)
    await cp.lock(worker, 1000)
    await cp.checkpoint(worker)
    assert workers(ledger, [worker])[0].gpus == {0: 0}
    pending = asyncio.ensure_future(chat(session, tree))
    await asyncio.sleep(0.5)
    assert not pending.done(), "a suspended backend answered"
    assert (await state(session, tree))["cuda_running"] is False
    await cp.restore(worker)
    await cp.unlock(worker)
    assert await asyncio.wait_for(pending, DEADLINE_SECS) == before
    assert workers(ledger, [worker])[0].gpus == {0: int(0.9 * 10 * GIB)}


@pytest.mark.parametrize("tp", [1, 2])
async def test_the_adapter_suspends_every_worker_of_the_tree(
    reaper: Reaper,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    ledger: Path,
    mocks: list[MockTree],
    tp: int,
) -> None:
    tree = await start_mock(reaper, session, tmp_path, ledger, tp=tp)
    mocks.append(tree)
    expected = (await state(session, tree))["worker_pids"]
    suspender = CudaSuspender(settings(), _opener(CliCheckpointer(MOCK_CLI, call_timeout_secs=30)))
    pids = await suspender.suspend("tiny", tree.process.pid)
    assert pids == expected
    assert [w.gpus for w in workers(ledger, pids)] == [{g: 0} for g in range(tp)]
    assert all(w.state == "suspended" for w in workers(ledger, pids))
    await suspender.resume("tiny", tree.process.pid, pids)
    assert [w.state for w in workers(ledger, pids)] == ["awake"] * tp
    assert await chat(session, tree)


async def test_a_failure_on_one_worker_rolls_back_the_other(
    reaper: Reaper,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    ledger: Path,
    mocks: list[MockTree],
) -> None:
    tree = await start_mock(reaper, session, tmp_path, ledger, tp=2)
    mocks.append(tree)
    first, second = (await state(session, tree))["worker_pids"]
    env = {**os.environ, "MOCK_VLLM_CUDA_FAULTS": f"checkpoint:{second}"}
    suspender = CudaSuspender(
        settings(), _opener(CliCheckpointer(MOCK_CLI, call_timeout_secs=30, env=env))
    )
    with pytest.raises(CudaSuspendFailed, match=f"pid {second}: checkpoint failed") as info:
        await suspender.suspend("tiny", tree.process.pid)
    assert "rolled back" in str(info.value)
    assert [w.cuda_state for w in workers(ledger, [first, second])] == ["running", "running"]
    assert [w.state for w in workers(ledger, [first, second])] == ["awake", "awake"]
    assert await chat(session, tree)


async def test_the_driver_api_helper_with_the_fake_driver(
    reaper: Reaper,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    ledger: Path,
    mocks: list[MockTree],
) -> None:
    """The helper process and its protocol, with `mock_vllm.cuda_driver` as the driver."""
    tree = await start_mock(reaper, session, tmp_path, ledger, tp=2)
    mocks.append(tree)
    expected = (await state(session, tree))["worker_pids"]
    driver = DriverApiCheckpointer(
        reaper=reaper,
        log_path=tmp_path / "helper.log",
        call_timeout_secs=30,
        driver_module="mock_vllm.cuda_driver",
    )
    suspender = CudaSuspender(settings(), _opener(driver))
    try:
        pids = await suspender.suspend("tiny", tree.process.pid)
        assert pids == expected
        helper = driver.pid
        assert helper is not None
        assert await driver.get_state(pids[0]) is CudaState.CHECKPOINTED
        with pytest.raises(
            CheckpointError, match=r"not permitted in the current state \(CUDA error 401\)"
        ):
            await driver.unlock(pids[0])
        assert await driver.get_state(os.getpid()) is None  # no booking: no CUDA state
        await suspender.resume("tiny", tree.process.pid, pids)
        assert [w.state for w in workers(ledger, pids)] == ["awake", "awake"]
        assert driver.pid == helper  # one long-lived helper served every call
    finally:
        await suspender.close()
    assert driver.pid is None
    assert not psutil.pid_exists(helper) or psutil.Process(helper).status() == psutil.STATUS_ZOMBIE


async def test_the_driver_api_helper_reports_a_missing_driver(
    reaper: Reaper, tmp_path: Path
) -> None:
    driver = DriverApiCheckpointer(
        reaper=reaper,
        log_path=tmp_path / "helper.log",
        call_timeout_secs=30,
        driver_module="no_such_module.driver",
    )
    with pytest.raises(Exception, match="helper exited with 2: cannot import no_such_module"):
        await driver.start()
    assert driver.pid is None


def _opener(checkpointer: Any) -> Any:
    async def open_() -> Any:
        return checkpointer

    return open_
