"""The one writer every log line goes through: structlog's lines, the standard library's
(aiohttp, asyncio, botocore) and the access line logged for every proxied request.

Owns: the writes to the log stream and the order of lines in it. The access line
(`request_finished`, `logs.log_hot`) is held, not written at once: held lines go out in
one write when `ACCESS_FLUSH_SECS` has passed since the first of them, when
`ACCESS_HELD_LINES` are held, or before any other line. So a busy proxy makes one write
per batch instead of one per request (as nginx's `access_log ... buffer= flush=`), while
every other line still leaves at once and behind every access line logged before it:
the stream keeps the order lines were logged in, and a warning is never late.
Held lines are written at exit too (`atexit`), and when logging is configured again.
A process killed with SIGKILL loses at most the last `ACCESS_FLUSH_SECS` of access lines;
nothing else is ever held.
Does not: render lines or filter levels (`logs` does).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import threading
from typing import Final, TextIO

#: The longest an access line waits for the write that carries it.
ACCESS_FLUSH_SECS: Final = 0.05
#: Held access lines that are written at once, without waiting for the timer.
ACCESS_HELD_LINES: Final = 256


class LineWriter:
    """Writes whole lines to `stream`; structlog's logger (its level methods) and the
    standard library handler's stream (`write`, `flush`) at once."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        # Lines may come from worker threads (`asyncio.to_thread` jobs log too).
        self._lock = threading.Lock()
        self._held: list[str] = []
        # The loop whose timer will write the held lines (None: no timer is set).
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def msg(self, message: str) -> None:
        """One line, written now (after any held ones)."""
        with self._lock:
            self._write(message + "\n")

    # structlog calls the logger's method named after the level.
    log = debug = info = warn = warning = err = error = critical = exception = msg
    fatal = failure = msg

    def hold(self, message: str) -> None:
        """An access line: written with the next batch, within `ACCESS_FLUSH_SECS`."""
        with self._lock:
            held = self._held
            held.append(message)
            if len(held) >= ACCESS_HELD_LINES:
                self._write("")
                return
            armed = self._timer_loop
            if armed is not None and not armed.is_closed():
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to flush it later (a script, a test): now
                self._write("")
                return
            self._timer_loop = loop
        # A fresh context: the timer must not keep a request's bound ids alive.
        loop.call_later(ACCESS_FLUSH_SECS, self._timer_fired, context=contextvars.Context())

    def write(self, text: str) -> None:
        """The standard library handler's write: `text` ends with its own newline."""
        with self._lock:
            self._write(text)

    def flush(self) -> None:
        """Everything held, written now."""
        with self._lock:
            self._write("")

    def _timer_fired(self) -> None:
        with self._lock:
            self._timer_loop = None
            self._write("")

    def _write(self, text: str) -> None:
        # The lock is held. One write for the held lines and the new text together.
        held = self._held
        if held:
            text = "\n".join(held) + "\n" + text
            held.clear()
        if text:
            self._stream.write(text)
            self._stream.flush()


_CURRENT: list[LineWriter] = []


def install(writer: LineWriter) -> None:
    """`writer` is now the process's log writer; the one before it is flushed."""
    for old in _CURRENT:
        old.flush()
    _CURRENT[:] = [writer]


@atexit.register
def _flush_at_exit() -> None:
    for writer in _CURRENT:
        writer.flush()
