"""buildah as the container tier drives it: the built image, working containers, and
`gpumux serve` running inside one.

Owns: running `buildah` with a deadline, reading an image's config, one working
container per module (`buildah from` + `buildah mount`, removed at the end), starting
a command in it with `buildah run --isolation chroot --network host`, and finding the
processes whose root is that container's file system (the check that nothing is left).
Does not: build anything (scripts/container-image does) or pick ports (the tests do).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_ENV_VAR = "GPUMUX_CONTAINER_IMAGE"
BUILD_SCRIPT = ROOT / "scripts" / "container-image"
BUILD_TIMEOUT_SECS = 540
BUILDAH_TIMEOUT_SECS = 60


def buildah(*args: str, timeout: float = BUILDAH_TIMEOUT_SECS) -> str:
    """Run `buildah ARGS`; its stdout. A non-zero exit raises with stderr."""
    result = subprocess.run(
        ["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"buildah {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
    return result.stdout


def image_config(image: str) -> dict[str, Any]:
    """The Docker-format config of `image` (Cmd, User, Healthcheck, ...)."""
    inspected = json.loads(buildah("inspect", "--type", "image", image))
    config: dict[str, Any] = inspected["Docker"]["config"]
    return config


def build_image() -> str:
    """Run scripts/container-image (base cached, image rebuilt); the image's name."""
    result = subprocess.run(
        [str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECS,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"scripts/container-image failed:\n{result.stderr[-6000:]}")
    return result.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Container:
    """A working container made from the image, mounted at `root` on this host."""

    name: str
    root: Path

    def run_argv(self, argv: Sequence[str], volumes: dict[Path, str]) -> list[str]:
        mounts = [arg for host, spec in volumes.items() for arg in ("-v", f"{host}:{spec}")]
        return [
            "buildah", "run", "--isolation", "chroot", "--network", "host",
            *mounts, self.name, "--", *argv,
        ]  # fmt: skip

    def run(
        self,
        argv: Sequence[str],
        volumes: dict[Path, str] | None = None,
        timeout: float = BUILDAH_TIMEOUT_SECS,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the container to completion (stdout and stderr captured)."""
        return subprocess.run(
            self.run_argv(argv, volumes or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(
        self, argv: Sequence[str], volumes: dict[Path, str], log: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in the container in the background, output appended to `log`."""
        return subprocess.Popen(
            self.run_argv(argv, volumes),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def processes(self) -> list[psutil.Process]:
        """Live (not zombie) processes on this host whose root is this container's.

        Each `buildah run` chroots into its own bind mount of the container's file system
        (another path), so the root directory is compared by device and inode.
        """
        mine = os.stat(self.root)
        found = []
        for process in psutil.process_iter():
            with suppress(OSError, psutil.Error):
                root = os.stat(f"/proc/{process.pid}/root")
                if (root.st_dev, root.st_ino) != (mine.st_dev, mine.st_ino):
                    continue
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
        return found

    def leftovers(self, timeout: float) -> list[str]:
        """What still runs in the container after `timeout` (empty: nothing)."""
        deadline = time.monotonic() + timeout
        while True:
            described = []
            for process in self.processes():
                with suppress(psutil.Error):
                    described.append(f"{process.pid} {' '.join(process.cmdline())}")
            if not described or time.monotonic() > deadline:
                return described
            time.sleep(0.1)

    def kill_all(self) -> None:
        """SIGKILL whatever still runs in the container (cleanup after a failed test)."""
        for process in self.processes():
            with suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)


def working_container(image: str) -> Iterator[Container]:
    """A mounted working container for the duration of the generator (a fixture body)."""
    name = buildah("from", "--pull=never", "--quiet", image).strip()
    try:
        root = Path(buildah("mount", name).strip()).resolve()
        container = Container(name, root)
        try:
            yield container
        finally:
            container.kill_all()
    finally:
        buildah("rm", name)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(ok: bool, reason: str) -> None:
    """Fail in CI, skip elsewhere, when a prerequisite of the tier is missing."""
    if ok:
        return
    if _in_ci():
        pytest.fail(f"container tier cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)
