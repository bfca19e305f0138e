"""Helpers for tests that run real CRIU against mock backends through the real daemon.

Owns: the prerequisite check (root and a working `criu` >= 4.2; missing ones FAIL the
test with the fix, never skip: `scripts/test` installs CRIU; the `criu` fixture in
tests/conftest.py runs it), the `checkpoint` config section pointing at a test's own
images directory, chat through the OpenAI SDK with one prompt, reading a model's images,
pre-baking an image with `gpumux serve --checkpoint`, and a squatter on a chosen pid.
Does not: read the daemon's log events (`tests.support.daemon.events`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import RunningDaemon
from tests.support.daemon import chat as daemon_chat
from tests.support.waits import wait_until

CRIU_MIN = (4, 2)
CHECKPOINT = {"weights": "discard", "process": "checkpoint"}
#: A pre-bake of a mock backend takes a few seconds; a loaded machine gets room.
PREBAKE_TIMEOUT_SECS = 60


def require_criu() -> str:
    """The path of a usable `criu`, or fail the test saying how to get one."""
    path = shutil.which("criu")
    if path is None:
        pytest.fail("criu is not installed; run scripts/test (it installs CRIU >= 4.2 from sid)")
    if os.geteuid() != 0:
        pytest.fail("the CRIU tests need root (criu dump/restore of the mock backends)")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"Version:\s*(\d+)\.(\d+)", out)
    if match is None or (int(match[1]), int(match[2])) < CRIU_MIN:
        pytest.fail(f"criu >= 4.2 is needed (Linux >= 6.16 breaks older ones); found: {out!r}")
    return path


def checkpoint_section(tmp: Path, **extra: Any) -> dict[str, Any]:
    return {
        "criu_path": require_criu(),
        "images_dir": str(tmp / "images"),
        "cuda_plugin_dir": None,
        **extra,
    }


def image_dirs(images_dir: Path, model: str) -> list[Path]:
    """Valid-looking version dirs (manifest present) of `model`, oldest first."""
    root = images_dir / model
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir()
        and (p / "manifest.json").is_file()
        and ".quarantined-" not in p.name
        and not p.name.startswith(".")
    )


def wait_image(images_dir: Path, model: str, timeout: float = 20.0) -> Path:
    found = wait_until(
        lambda: image_dirs(images_dir, model), f"an image of {model}", timeout=timeout
    )
    return found[-1]


def quarantined(images_dir: Path, model: str) -> list[Path]:
    root = images_dir / model
    return sorted(p for p in root.iterdir() if ".quarantined-" in p.name) if root.is_dir() else []


def settle(seconds: float) -> None:
    """A short pause for background work whose completion has no observable signal."""
    time.sleep(seconds)


def chat(daemon: RunningDaemon, model: str, text: str = "the same prompt") -> str:
    """CRIU tests compare replies to one prompt before and after a restore."""
    return daemon_chat(daemon, model, text, max_tokens=6, timeout=60)


@dataclass(frozen=True)
class Prebake:
    """One `gpumux serve CONFIG --checkpoint a` run: its result and how long it took."""

    result: subprocess.CompletedProcess[str]
    seconds: float

    @property
    def image(self) -> Path | None:
        """The image directory the pre-bake printed (`image: PATH`), if it printed one."""
        return printed_image(self.result.stdout)


def printed_image(stdout: str) -> Path | None:
    """The `image: PATH` line a pre-bake prints, as a path."""
    match = re.search(r"^image: (\S+)", stdout, re.MULTILINE)
    return Path(match[1]) if match else None


def run_prebake(
    tmp: Path, config: dict[str, Any], *extra: str, timeout: float, model: str = "a"
) -> Prebake:
    """Pre-bake `model` of `config` as a real subprocess (bounded by `timeout`)."""
    path = tmp / "prebake.json"
    path.write_text(json.dumps(config))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gpumux", "serve", str(path), "--checkpoint", model, *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Prebake(result, time.monotonic() - started)


def prebake(tmp: Path, config: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    """`run_prebake` of a mock backend within PREBAKE_TIMEOUT_SECS: the finished process."""
    return run_prebake(tmp, config, *extra, timeout=PREBAKE_TIMEOUT_SECS).result


def baked_image(result: subprocess.CompletedProcess[str]) -> Path:
    """The image a successful pre-bake made (asserts that it succeeded)."""
    assert result.returncode == 0, result.stderr[-3000:]
    image = printed_image(result.stdout)
    assert image is not None, result.stdout
    return image


NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def image_snapshot(image: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry of an image directory (itself included) with its (inode, size,
    mtime_ns, ctime_ns): equal snapshots mean nothing was written, created, removed,
    chmodded or replaced in it (reads change only atimes, left out)."""
    entries = [image, *sorted(image.rglob("*"))]
    return {
        str(p.relative_to(image)): (s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
        for p in entries
        for s in [p.lstat()]
    }


@contextmanager
def pid_taken(pid: int, attempts: int = 50) -> Iterator[subprocess.Popen[bytes]]:
    """A `sleep` child of the test holding `pid` (as root, through ns_last_pid).

    The kernel hands out `last + 1` next, so the next fork gets `pid` unless another
    process forks in between: retried. The counter is put back afterwards, so later
    forks do not walk into the pids that follow `pid` (an image's other pids). The
    squatter is killed and reaped on exit."""
    saved = int(NS_LAST_PID.read_text())
    squatter: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(attempts):
            NS_LAST_PID.write_text(str(pid - 1))
            child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
            if child.pid == pid:
                squatter = child
                break
            child.kill()
            child.wait(timeout=10)
        if int(NS_LAST_PID.read_text()) < saved:
            NS_LAST_PID.write_text(str(saved))
        if squatter is None:
            pytest.fail(f"could not get pid {pid} for a squatter (taken, or forks raced)")
        yield squatter
    finally:
        if squatter is not None:
            squatter.kill()
            squatter.wait(timeout=10)
