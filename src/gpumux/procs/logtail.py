"""Following a backend's log file.

Owns: reading a per-model log file as it grows, re-emitting each line into structlog
(`backend_output` with `model`, `pid`, `line`) under a per-model rate limit, and
keeping the last lines for the dashboard.
Does not: write the file (the backend does, through the descriptor `spawn_backend`
gave it), rotate it, or serve it over HTTP.

Polling rather than inotify: it needs nothing beyond the standard library, copes
with a file that does not exist yet or is truncated or replaced, and the 200 ms delay
is invisible in logs. Reads happen on the event-loop thread: the file is a regular
local file whose recent pages are in the page cache, and each poll reads a bounded
amount.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

POLL_INTERVAL_SECS = 0.2
KEEP_LINES = 500
MAX_LINES_PER_SEC = 100
# A writer that never prints a newline must not grow our buffer without bound.
MAX_LINE_BYTES = 16 * 1024
# Bounds one poll's work; a burst larger than this is caught up over several polls.
MAX_READ_BYTES = 1024 * 1024
_RATE_WINDOW_SECS = 1.0


class LogTail:
    """Follows `path` from `start_offset` until `run()` is cancelled.

    `pid` is only attached to emitted events; update it when the model's process is
    replaced. Lines beyond `max_lines_per_sec` are not logged (they still reach
    `recent_lines()`); each second that drops some logs one `backend_output_dropped`
    summary, and `lines_dropped` counts them all.
    """

    def __init__(
        self,
        path: Path,
        *,
        model: str,
        pid: int | None = None,
        start_offset: int = 0,
        keep_lines: int = KEEP_LINES,
        max_lines_per_sec: int = MAX_LINES_PER_SEC,
        poll_interval_secs: float = POLL_INTERVAL_SECS,
        max_line_bytes: int = MAX_LINE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.model = model
        self.pid = pid
        self.poll_interval_secs = poll_interval_secs
        self.max_lines_per_sec = max_lines_per_sec
        self.max_line_bytes = max_line_bytes
        self.lines_dropped = 0
        self._recent: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._clock = clock
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._pos = start_offset
        self._partial = b""
        self._window_start = clock()
        self._emitted_in_window = 0
        self._dropped_in_window = 0
        self._failing = False

    def recent_lines(self) -> list[str]:
        """The last `keep_lines` lines, oldest first, including rate-limited ones."""
        return list(self._recent)

    async def run(self) -> None:
        """Poll until cancelled; the last lines are read once more on the way out."""
        try:
            while True:
                self.poll()
                await asyncio.sleep(self.poll_interval_secs)
        finally:
            # A crashed backend's last words matter most: pick them up, including a
            # final line without a newline.
            self.poll()
            self._flush_partial()
            self._roll_window(force=True)
            self._close()

    def poll(self) -> int:
        """Read whatever was appended since the last call; return the number of lines."""
        self._roll_window()
        try:
            count = self._poll()
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "log_tail_failed", model=self.model, path=str(self.path), error=str(exc)
                )
                self._failing = True
            self._close()
            return 0
        self._failing = False
        return count

    def _poll(self) -> int:
        try:
            current = os.stat(self.path)
            identity: tuple[int, int] | None = (current.st_dev, current.st_ino)
        except FileNotFoundError:
            identity = None
        count = 0
        if self._fd is not None and identity != self._identity:
            # Replaced or removed: finish the old file before switching.
            count += self._read_available()
            self._flush_partial()
            self._close()
            self._pos = 0
        if self._fd is None:
            if identity is None:
                return count
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self._identity = identity
        size = os.fstat(self._fd).st_size
        if size < self._pos:
            # Truncated (or shorter than the offset we were told to start at).
            self._pos = 0
            self._partial = b""
        return count + self._read_available()

    def _read_available(self) -> int:
        assert self._fd is not None
        data = os.pread(self._fd, MAX_READ_BYTES, self._pos)
        if not data:
            return 0
        self._pos += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        while len(self._partial) > self.max_line_bytes:
            lines.append(self._partial[: self.max_line_bytes])
            self._partial = self._partial[self.max_line_bytes :]
        for raw in lines:
            self._emit(raw)
        return len(lines)

    def _flush_partial(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = b""

    def _emit(self, raw: bytes) -> None:
        # Progress bars redraw with carriage returns; the last redraw is the state.
        line = raw.decode("utf-8", errors="replace").rstrip("\r").rsplit("\r", 1)[-1]
        self._recent.append(line)
        if not line.strip():
            return
        self._roll_window()
        if self._emitted_in_window >= self.max_lines_per_sec:
            self._dropped_in_window += 1
            self.lines_dropped += 1
            return
        self._emitted_in_window += 1
        log.info("backend_output", model=self.model, pid=self.pid, line=line)

    def _roll_window(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._window_start < _RATE_WINDOW_SECS:
            return
        if self._dropped_in_window:
            log.warning(
                "backend_output_dropped",
                model=self.model,
                pid=self.pid,
                lines_dropped=self._dropped_in_window,
                max_lines_per_sec=self.max_lines_per_sec,
            )
        self._window_start = now
        self._emitted_in_window = 0
        self._dropped_in_window = 0

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._identity = None
