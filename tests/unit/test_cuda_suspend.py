"""cuda_suspend: phase order across pids, verification retries, rollback, pid discovery.

A fake `Checkpointer` keeps each pid's CUDA state in memory with the driver's rules
(an action from the wrong state is refused), so these tests check the adapter's logic
without any tool; discovery runs against a real small process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gpumux.backends.effects import backend_env
from gpumux.core.config_rules import parse_config
from gpumux.cuda.checkpointer import Checkpointer, CheckpointError, CudaState
from gpumux.cuda.suspend import (
    NCCL_SAFE_ENV,
    CudaSuspender,
    CudaSuspendFailed,
    SuspendSettings,
    find_cuda_pids,
    maps_mention_nvidia,
)

pytestmark = pytest.mark.unit

R, L, C = CudaState.RUNNING, CudaState.LOCKED, CudaState.CHECKPOINTED
MOVES = {"lock": (R, L), "checkpoint": (L, C), "restore": (C, L), "unlock": (L, R)}


class FakeCheckpointer:
    """Per-pid CUDA states with the driver's transition rules, and knobs for failures.

    `fail`: (action, pid) pairs that raise. `lag`: pids whose state reads show the
    previous state for that many reads after each action. `ignore`: pids whose actions
    "succeed" without changing anything (a driver that lies).
    """

    name = "fake"

    def __init__(
        self,
        states: dict[int, CudaState | None],
        *,
        fail: frozenset[tuple[str, int]] = frozenset(),
        lag: dict[int, int] | None = None,
        ignore: frozenset[int] = frozenset(),
    ) -> None:
        self.actual = dict(states)
        self.shown = dict(states)
        self.fail = fail
        self.lag = lag or {}
        self.pending: dict[int, int] = {}
        self.ignore = ignore
        self.calls: list[tuple[str, int]] = []
        self.closed = False

    async def get_state(self, pid: int) -> CudaState | None:
        self.calls.append(("get_state", pid))
        if self.pending.get(pid, 0) > 0:
            self.pending[pid] -= 1
        else:
            self.shown[pid] = self.actual.get(pid)
        return self.shown.get(pid)

    async def _act(self, action: str, pid: int) -> None:
        self.calls.append((action, pid))
        await asyncio.sleep(0)  # let the other pids' calls interleave, as real ones do
        source, target = MOVES[action]
        if (action, pid) in self.fail:
            raise CheckpointError(pid, action, "injected failure", 999)
        if pid in self.ignore:
            return
        if self.actual.get(pid) is not source:
            raise CheckpointError(pid, action, f"illegal from {self.actual.get(pid)}", 401)
        self.shown[pid] = self.actual[pid]
        self.actual[pid] = target
        self.pending[pid] = self.lag.get(pid, 0)

    async def lock(self, pid: int, timeout_ms: int) -> None:
        assert timeout_ms == 1500
        await self._act("lock", pid)

    async def checkpoint(self, pid: int) -> None:
        await self._act("checkpoint", pid)

    async def restore(self, pid: int) -> None:
        await self._act("restore", pid)

    async def unlock(self, pid: int) -> None:
        await self._act("unlock", pid)

    async def close(self) -> None:
        self.closed = True

    def actions(self) -> list[tuple[str, int]]:
        return [call for call in self.calls if call[0] != "get_state"]


def suspender(cp: FakeCheckpointer, attempts: int = 3) -> CudaSuspender:
    async def open_() -> Checkpointer:
        return cp

    settings = SuspendSettings(
        lock_timeout_ms=1500, verify_attempts=attempts, verify_interval_secs=0.001
    )
    return CudaSuspender(settings, open_)


# A parent with two sleeping children: a real tree for discovery.
TREE = textwrap.dedent(
    """
    import subprocess, sys, time
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            for _ in range(2)]
    print(" ".join(str(k.pid) for k in kids), flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def tree() -> Iterator[tuple[int, list[int]]]:
    """(root pid, [child pids]) of a live tree, killed afterwards."""
    root = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    assert root.stdout is not None
    children = [int(pid) for pid in root.stdout.readline().split()]
    try:
        yield root.pid, children
    finally:
        for pid in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        root.kill()
        root.wait()
        root.stdout.close()


async def test_suspend_locks_every_pid_before_checkpointing_any(
    tree: tuple[int, list[int]],
) -> None:
    root, (a, b) = tree
    cp = FakeCheckpointer({root: None, a: R, b: R})
    pids = await suspender(cp).suspend("m", root)
    assert pids == [a, b]
    assert cp.actual == {root: None, a: C, b: C}
    actions = cp.actions()
    assert {call[0] for call in actions[:2]} == {"lock"}
    assert {call[0] for call in actions[2:]} == {"checkpoint"}


async def test_resume_restores_every_pid_before_unlocking_any(tree: tuple[int, list[int]]) -> None:
    root, (a, b) = tree
    cp = FakeCheckpointer({root: None, a: C, b: C})
    assert await suspender(cp).resume("m", root, [a, b]) == [a, b]
    assert cp.actual == {root: None, a: R, b: R}
    assert [call[0] for call in cp.actions()] == ["restore", "restore", "unlock", "unlock"]


async def test_operations_are_idempotent_per_pid(tree: tuple[int, list[int]]) -> None:
    """A pid already in the target state is left alone; a locked one only finishes."""
    root, (a, b) = tree
    cp = FakeCheckpointer({root: None, a: C, b: L})
    await suspender(cp).suspend("m", root)
    assert cp.actions() == [("checkpoint", b)]


async def test_verification_retries_until_every_state_shows(tree: tuple[int, list[int]]) -> None:
    root, (a, b) = tree
    cp = FakeCheckpointer({root: None, a: R, b: R}, lag={b: 2})
    await suspender(cp, attempts=3).suspend("m", root)
    assert cp.actual[b] is C
    # The third verification read of b is the first to show the checkpointed state.
    reads_of_b = [call for call in cp.calls if call == ("get_state", b)]
    assert len(reads_of_b) == 2 + 3  # discovery, the start of the move, then 3 checks


async def test_verification_gives_up_after_its_attempts_and_rolls_back(
    tree: tuple[int, list[int]],
) -> None:
    root, (a, b) = tree
    cp = FakeCheckpointer({root: None, a: R, b: R}, ignore=frozenset({b}))
    with pytest.raises(CudaSuspendFailed) as info:
        await suspender(cp, attempts=4).suspend("m", root)
    message = str(info.value)
    assert f"pid {b} is running, not checkpointed, after 4 checks" in message
    assert "rolled back" in message
    assert cp.actual == {root: None, a: R, b: R}


async def test_a_failed_checkpoint_rolls_back_every_pid_it_moved(
    tree: tuple[int, list[int]],
) -> None:
    root, (a, b) = tree
    cp = FakeCheckpointer({root: None, a: R, b: R}, fail=frozenset({("checkpoint", b)}))
    with pytest.raises(CudaSuspendFailed) as info:
        await suspender(cp).suspend("m", root)
    assert f"pid {b}: checkpoint failed: injected failure" in str(info.value)
    assert f"pids [{a}, {b}] rolled back" in str(info.value)
    assert cp.actual == {root: None, a: R, b: R}
    assert ("restore", a) in cp.actions()
    assert ("unlock", b) in cp.actions()


async def test_a_failed_restore_puts_the_restored_pids_back_to_sleep(
    tree: tuple[int, list[int]],
) -> None:
    root, (a, b) = tree
    cp = FakeCheckpointer({root: None, a: C, b: C}, fail=frozenset({("restore", b)}))
    with pytest.raises(CudaSuspendFailed, match="restore failed"):
        await suspender(cp).resume("m", root, [a, b])
    # a was restored, then checkpointed again, so the model is consistently suspended.
    assert cp.actual == {root: None, a: C, b: C}
    assert cp.actions()[-1] == ("checkpoint", a)


async def test_a_failing_rollback_is_reported_too(tree: tuple[int, list[int]]) -> None:
    root, (a, b) = tree
    fail = frozenset({("checkpoint", b), ("restore", a)})
    cp = FakeCheckpointer({root: None, a: R, b: R}, fail=fail)
    with pytest.raises(CudaSuspendFailed, match=r"rollback of pids .* failed"):
        await suspender(cp).suspend("m", root)


async def test_resume_refuses_pids_that_left_the_tree(tree: tuple[int, list[int]]) -> None:
    root, (a, _b) = tree
    cp = FakeCheckpointer({a: C})
    with pytest.raises(CudaSuspendFailed, match="left the tree"):
        await suspender(cp).resume("m", root, [a, 999_999_999])
    assert cp.actions() == []


async def test_a_pid_without_cuda_state_is_named(tree: tuple[int, list[int]]) -> None:
    root, (a, b) = tree
    cp = FakeCheckpointer({a: C, b: None})
    with pytest.raises(CudaSuspendFailed, match=f"cannot act on {b}: no CUDA state"):
        await suspender(cp).resume("m", root, [a, b])
    assert cp.actions() == []


async def test_a_tree_without_cuda_fails_the_suspend(tree: tuple[int, list[int]]) -> None:
    root, _children = tree
    with pytest.raises(CudaSuspendFailed, match="holds CUDA"):
        await suspender(FakeCheckpointer({})).suspend("m", root)


async def test_discovery_keeps_the_pids_the_driver_knows(tree: tuple[int, list[int]]) -> None:
    root, (a, b) = tree
    found = await find_cuda_pids(root, FakeCheckpointer({b: R, a: CudaState.FAILED}))
    assert found == [a, b]  # tree order; a failed pid still holds CUDA state


async def test_discovery_falls_back_to_nvidia_mappings(
    tree: tuple[int, list[int]], tmp_path: Path
) -> None:
    root, (a, b) = tree
    for pid, line in ((root, "7f00 r-xp /usr/lib/libc.so.6"), (b, "7f00 rw-s /dev/nvidia0")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "maps").write_text(line + "\n")
    found = await find_cuda_pids(root, FakeCheckpointer({}), proc_root=tmp_path)
    assert found == [b]
    assert maps_mention_nvidia(b, tmp_path)
    assert not maps_mention_nvidia(a, tmp_path)  # no maps file at all


async def test_discovery_of_a_gone_root_fails() -> None:
    with pytest.raises(CudaSuspendFailed, match="is gone"):
        await find_cuda_pids(999_999_999, FakeCheckpointer({}))


async def test_the_checkpointer_opens_once_and_again_after_a_failure() -> None:
    opened: list[int] = []
    cp = FakeCheckpointer({})

    async def open_() -> Checkpointer:
        opened.append(1)
        await asyncio.sleep(0.01)
        if len(opened) == 1:
            raise CheckpointError(0, "open", "first try fails")
        return cp

    sus = CudaSuspender(SuspendSettings(), open_)
    with pytest.raises(CheckpointError):
        await sus.checkpointer()
    got = await asyncio.gather(sus.checkpointer(), sus.checkpointer())
    assert got == [cp, cp]
    assert len(opened) == 2
    await sus.close()
    assert cp.closed


# --- the NCCL-safe environment --------------------------------------------------------


def config_with(eviction: str, **model: object) -> dict[str, object]:
    weights, process = eviction.split("+")
    entry = {"model_path": "m", "port": 8001, "eviction": {"weights": weights, "process": process}}
    return {"models": {"a": {**entry, **model}}, "checkpoint": {}}


@pytest.mark.parametrize(
    ("eviction", "extra", "expected"),
    [
        ("retain+cuda_suspend", ["-tp", "2"], True),
        ("discard+checkpoint", ["--tensor-parallel-size=2"], True),
        ("retain+cuda_suspend", [], False),  # TP=1: no NCCL at all
        ("offload+keep_running", ["-tp", "2"], False),  # vLLM sleep handles NCCL itself
    ],
)
def test_nccl_safe_env_is_set_for_tp_with_cuda_toggling(
    eviction: str, extra: list[str], expected: bool
) -> None:
    config, _ = parse_config(config_with(eviction, extra_args=extra))
    env = backend_env(config, config.models["a"], {"PATH": "/bin"}, None, alias="a")
    assert (NCCL_SAFE_ENV.items() <= env.items()) is expected


def test_nccl_safe_env_can_be_refused_and_warns() -> None:
    raw = config_with(
        "retain+cuda_suspend",
        extra_args=["-tp", "2", "--enforce-eager", "--disable-custom-all-reduce"],
        nccl_safe_env=False,
    )
    config, warnings = parse_config(raw)
    env = backend_env(config, config.models["a"], {}, None, alias="a")
    assert "NCCL_P2P_DISABLE" not in env
    assert len(warnings) == 1
    assert "nccl_safe_env false (NCCL P2P/SHM)" in warnings[0]


def test_an_operators_nccl_value_wins() -> None:
    raw = config_with("retain+cuda_suspend", extra_args=["-tp", "2"], env={"NCCL_SHM_DISABLE": "0"})
    config, _ = parse_config(raw)
    env = backend_env(config, config.models["a"], {}, None, alias="a")
    assert env["NCCL_SHM_DISABLE"] == "0"
    assert env["NCCL_P2P_DISABLE"] == "1"
