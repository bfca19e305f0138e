"""The `criu` command line: dump a backend tree into a directory, restore it from one.

Owns: the exact `criu dump` / `criu restore` argument lists, running them through
`gpumux.procs.run_command` under named deadlines, reading the restored root's pid, and
turning failures into `CriuError` with the useful lines of CRIU's log.
Does not: decide when to dump, inventory the tree (`criu_inventory`), manage image
directories (`images`), or reap and adopt the restored tree (`backends`).

Flags (reference: vllm-cpu.md §5, llmux.md §5.5):
- no `--shell-job`: backends run in their own session with no terminal;
- `--ext-unix-sk`: vLLM's ZMQ unix sockets between API server and EngineCore;
- `--file-locks`, `--link-remap` (deleted-but-open files such as multiprocessing's
  `sem.mp-*`);
- `--tcp-established --network-lock nftables` only for TP>1, whose workers talk over TCP
  inside the tree. A single-process tree must have no established connection (gpumux
  drops its pools first), and without the flag a stray one fails the dump quickly and
  harmlessly instead of being frozen into the image. nftables because the default
  iptables lock needs an `iptables` binary that hosts often lack;
- `-L DIR` when DIR holds CRIU's `cuda_plugin.so` (GPU hosts);
- `-v4 --log-file` always: the log is the only diagnosis of a failure;
- restore only: `--work-dir` the log's directory, so the image is only read.
The exit code is the verdict: CRIU logs "Error ... RLIMIT_NOFILE" on runs that succeed.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from gpumux.procs import CommandFailedToStart, CommandTimeout, run_command

CUDA_PLUGIN = "cuda_plugin.so"
#: Deadline of `criu --version` / `criu check`.
PROBE_TIMEOUT_SECS = 30.0
#: Log lines quoted in an error.
ERROR_LINES = 4

_COMMON = ("-v4", "--ext-unix-sk", "--file-locks", "--link-remap")
#: How CRIU says a pid the image needs is taken: "Can't fork for 1234: File exists".
PID_TAKEN = re.compile(r"fork for \d+: File exists")
#: How CRIU says a TCP port the image listens on is taken:
#: "inet: Can't bind inet socket (id 166): Address already in use".
PORT_TAKEN = re.compile(r"Can't bind inet socket.*Address already in use")


class CriuError(Exception):
    """A CRIU run failed; `detail` quotes the log's error lines (no secrets there)."""

    def __init__(
        self, op: str, detail: str, *, returncode: int | None = None, timed_out: bool = False
    ) -> None:
        super().__init__(f"criu {op} failed: {detail}")
        self.op = op
        self.detail = detail
        self.returncode = returncode
        self.timed_out = timed_out

    @property
    def pid_collision(self) -> bool:
        """The run failed because a pid it had to recreate belongs to another process."""
        return PID_TAKEN.search(self.detail) is not None

    @property
    def port_busy(self) -> bool:
        """The run failed because a port the tree listened on is bound by another socket."""
        return PORT_TAKEN.search(self.detail) is not None


@dataclass(frozen=True)
class CriuSettings:
    criu_path: str = "criu"
    plugin_dir: str | None = None
    dump_timeout_secs: float = 600.0
    restore_timeout_secs: float = 300.0


def plugin_args(plugin_dir: str | None) -> list[str]:
    """`-L DIR` when the CUDA plugin is installed there; nothing otherwise."""
    if plugin_dir and (Path(plugin_dir) / CUDA_PLUGIN).is_file():
        return ["-L", plugin_dir]
    return []


def _tcp_args(tcp_established: bool) -> list[str]:
    return ["--tcp-established", "--network-lock", "nftables"] if tcp_established else []


def dump_argv(
    settings: CriuSettings, pid: int, images_dir: Path, log_file: Path, *, tcp_established: bool
) -> list[str]:
    return [
        settings.criu_path,
        "dump",
        "-t",
        str(pid),
        "-D",
        str(images_dir),
        "--log-file",
        str(log_file),
        *_COMMON,
        *_tcp_args(tcp_established),
        *plugin_args(settings.plugin_dir),
    ]


def restore_argv(
    settings: CriuSettings,
    images_dir: Path,
    log_file: Path,
    pidfile: Path,
    *,
    tcp_established: bool,
) -> list[str]:
    return [
        settings.criu_path,
        "restore",
        "-D",
        str(images_dir),
        "--restore-detached",
        "--restore-sibling",  # root becomes our child: no parent-death signal when criu exits
        "--pidfile",
        str(pidfile),
        "--log-file",
        str(log_file),
        # CRIU writes its stats file into the work dir (default: the image): a restore
        # then never writes into the image, which may be read-only or stamped.
        "--work-dir",
        str(log_file.parent),
        *_COMMON,
        *_tcp_args(tcp_established),
        *plugin_args(settings.plugin_dir),
    ]


async def dump(
    settings: CriuSettings, pid: int, images_dir: Path, log_file: Path, *, tcp_established: bool
) -> None:
    """Dump the tree rooted at `pid` into `images_dir`; CRIU kills the tree on success."""
    argv = dump_argv(settings, pid, images_dir, log_file, tcp_established=tcp_established)
    await _run("dump", argv, settings.dump_timeout_secs, log_file)


async def restore(
    settings: CriuSettings,
    images_dir: Path,
    log_file: Path,
    pidfile: Path,
    *,
    tcp_established: bool,
) -> int:
    """Restore the tree in `images_dir` detached; return its root pid (our child now)."""
    await asyncio.to_thread(pidfile.unlink, missing_ok=True)
    argv = restore_argv(settings, images_dir, log_file, pidfile, tcp_established=tcp_established)
    await _run("restore", argv, settings.restore_timeout_secs, log_file)
    try:
        return int((await asyncio.to_thread(pidfile.read_text)).strip())
    except (OSError, ValueError) as exc:
        raise CriuError("restore", f"no root pid in {pidfile}: {exc}") from exc


async def version(settings: CriuSettings) -> str:
    """`criu --version`'s number, e.g. "4.2.1", or "unknown"."""
    try:
        result = await run_command([settings.criu_path, "--version"], timeout=PROBE_TIMEOUT_SECS)
    except (CommandFailedToStart, CommandTimeout):
        return "unknown"
    match = re.search(r"Version:\s*(\S+)", result.stdout)
    return match.group(1) if match else "unknown"


async def check(settings: CriuSettings) -> str | None:
    """None when `criu check` passes, else why not (missing binary, kernel, privileges)."""
    try:
        result = await run_command([settings.criu_path, "check"], timeout=PROBE_TIMEOUT_SECS)
    except (CommandFailedToStart, CommandTimeout) as exc:
        return str(exc)
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).strip().splitlines()
        return " | ".join(lines[-ERROR_LINES:]) or f"exit {result.returncode}"
    return None


async def _run(op: str, argv: list[str], timeout: float, log_file: Path) -> None:
    try:
        result = await run_command(argv, timeout=timeout)
    except CommandFailedToStart as exc:
        raise CriuError(op, str(exc)) from exc
    except CommandTimeout as exc:
        detail = f"no result within {timeout:g}s; {error_lines(log_file)}"
        raise CriuError(op, detail, timed_out=True) from exc
    if result.returncode != 0:
        detail = error_lines(log_file) or result.stderr.strip()[-500:]
        raise CriuError(op, f"exit {result.returncode}: {detail}", returncode=result.returncode)


def error_lines(log_file: Path) -> str:
    """The last few `Error` lines of a CRIU log, minus the harmless RLIMIT_NOFILE one."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return ""
    errors = [
        line.strip()
        for line in text.splitlines()
        if "Error" in line and "RLIMIT_NOFILE" not in line
    ]
    return " | ".join(errors[-ERROR_LINES:])
