"""Logging for gpumux: structlog configuration, secret/prompt redaction, event catalogue.

Owns: `configure_logging()` (JSON lines or a console renderer on stderr, with `ts` in
ISO-8601 UTC, `level`, `event` and any contextvars bound with
`structlog.contextvars.bind_contextvars`, e.g. `request_id`), which also routes the
standard library's loggers (aiohttp, asyncio, botocore) through the same processors;
`default_format()`; `redact_secrets`, the processor that masks secrets and prompt text;
`EVENTS`, the catalogue of event names used across gpumux; and `log_hot`, the same JSON
line for the one event logged per proxied request, without structlog's per-call work, and
written in batches (`log_writer`, which every line goes through).

Does not: decide what to log (each owner logs its own events, named from `EVENTS`),
re-emit backend output (the process adapter does, as `backend_output`), or rate-limit.

Loggers are not cached on first use, so `configure_logging` and
`structlog.testing.capture_logs` apply to module-level `structlog.get_logger()` loggers
obtained earlier.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Final, Literal, Protocol

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from gpumux.telemetry.log_writer import LineWriter, install

LogFormat = Literal["json", "console"]

#: Event names used across gpumux, with what each means. Log with these names; add new
#: ones here (a test checks the names are snake_case).
EVENT_CATALOGUE: Final[Mapping[str, str]] = {
    # daemon lifecycle
    "daemon_starting": "config loaded, components starting",
    "daemon_ready": "proxy listening; READY=1 sent to systemd",
    "daemon_stopping": "shutdown began (signal or fatal error)",
    "daemon_stopped": "everything drained, stopped and reaped",
    "config_warning": "a validation warning (the config still loads)",
    "listener_started": "a port (proxy, admin, metrics) is bound",
    # model lifecycle and switching
    "state_changed": "a model moved between lifecycle states (from, to)",
    "switch_started": "a switch began (from, to, strategy, switch_id)",
    "switch_phase": "one phase of a switch finished (phase, duration)",
    "switch_finished": "a switch completed (outcome ok or fallback, duration)",
    "switch_failed": "a switch failed; the target is failed or cold-starting",
    "switch_fallback": "a wake failed and a cold start was tried instead",
    "mode_changed": "scheduling mode switched between auto and manual",
    # requests
    "request_queued": "a request waits for its model",
    "request_granted": "a request got a lease",
    "request_rejected": "a request was refused (queue_full, model_unavailable, ...)",
    "request_timed_out": "a request waited past request_timeout_secs",
    "request_cancelled": "the client left while queued",
    "request_finished": "a proxied request completed (status, durations)",
    "upstream_error": "the backend failed a proxied request",
    # processes and backends
    "process_spawned": "a backend process tree started (pid)",
    "process_exited": "a backend process exited (pid, returncode or signal)",
    "process_killed": "a backend tree was killed after the grace period",
    "backend_output": "a line of a backend's stdout/stderr (model, pid)",
    "backend_healthy": "a backend answered /health 200",
    "backend_unhealthy": "a backend failed health checks",
    "backend_restarting": "a backend is restarted after a crash or failed health",
    # checkpoints and images
    "checkpoint_started": "a CRIU dump or cuda-checkpoint toggle began",
    "checkpoint_finished": "a dump/restore/toggle finished",
    "checkpoint_failed": "a dump/restore/toggle failed",
    "image_quarantined": "a restore failed and the image was set aside",
    "transfer_progress": "an image upload/download progressed",
    "transfer_finished": "an image upload/download finished",
    "transfer_failed": "an image upload/download failed",
    # resources and health
    "gpu_probe_selected": "which GPU probe is in use (and why NVML is not)",
    "gpu_probe_failed": "a GPU probe read failed; last values kept",
    "loop_lag_high": "the event loop woke far later than asked",
    "admin_command": "an admin API command was accepted (command, model)",
    # configuration reload (SIGHUP) and systemd
    "config_reloaded": "a SIGHUP reload was applied (added, removed, changed models)",
    "config_reload_failed": "a SIGHUP reload was refused; the running config stays",
    "config_reload_ignored": "reloaded keys other than models, which need a restart",
    "model_removed": "a model removed by a reload has stopped and left the table",
    "model_reconfigured": "a model changed by a reload stopped and takes its new config",
    "sd_notify_failed": "a systemd notify message could not be sent (logged once)",
}
EVENTS: Final = frozenset(EVENT_CATALOGUE)

REDACTED: Final = "[redacted]"

#: Key words (after splitting a key on `_`, `-`, `.` and camelCase) that mark a secret or
#: user content. `api_key`/`apikey`/`x-api-key` are matched as a pair of words too.
_SENSITIVE_WORDS: Final = frozenset(
    {
        "authorization",
        "auth",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "credential",
        "credentials",
        "cookie",
        "prompt",
        "messages",
        "input",
    }
)
#: A sensitive key whose last word is one of these and whose value is a number is a
#: count, not content (`prompt_tokens=12`, `messages_count=3`): it is kept.
_COUNT_WORDS: Final = frozenset(
    {"tokens", "count", "len", "length", "bytes", "chars", "ms", "secs", "seconds"}
)
_WORD_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_MAX_DEPTH: Final = 6
_HANDLER_NAME: Final = "gpumux"
_CHATTY_LIBRARIES: Final = ("botocore", "boto3", "s3transfer", "urllib3")


@functools.lru_cache(maxsize=4096)
def _key_words(key: str) -> tuple[str, ...]:
    # Cached: keys are mostly the same few names on every line (the proxy logs one
    # line per request), and splitting them is most of what redaction costs.
    return tuple(w.lower() for w in _WORD_SPLIT.split(key) if w)


@functools.lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    words = _key_words(key)
    if any(w in _SENSITIVE_WORDS for w in words):
        return True
    return any(a == "api" and b == "key" for a, b in itertools.pairwise(words))


def _is_count(key: str, value: object) -> bool:
    words = _key_words(key)
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return numeric and bool(words) and words[-1] in _COUNT_WORDS


def _scrub(value: object, depth: int) -> object:
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, str):
        return _BEARER.sub(_mask_credential, value)
    if isinstance(value, Mapping):
        return {k: _scrub_item(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub(v, depth + 1) for v in value)
    return value


def _scrub_item(key: str, value: object, depth: int) -> object:
    if is_sensitive_key(key) and not _is_count(key, value) and value is not None:
        return REDACTED
    return _scrub(value, depth)


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Mask secrets and prompt text before anything renders.

    A value is replaced by `[redacted]` when its key names a secret or user content
    (authorization, api_key, token, secret, password, cookie, prompt, messages, input —
    as a word of the key, at any depth of nested dicts), unless it is a number under a
    count-like key (`prompt_tokens=12`). `Bearer …` credentials inside any string are
    masked too. The caller's objects are never mutated. `event` itself is kept.
    """
    # Values of existing keys are replaced while iterating: the dict's size never changes.
    for key, value in event_dict.items():
        if key == "event":
            continue
        if is_sensitive_key(key):
            event_dict[key] = _scrub_item(key, value, 0)
            continue
        # Plain values first, by exact type: most of a line's values, and cheaper than
        # `_scrub`'s ABC checks (this runs for every line: one per proxied request).
        kind = type(value)
        if kind is str:
            # `_BEARER` needs whitespace: a printable string without a space has none
            # (every other whitespace character is unprintable), as ids and names do.
            if " " in value or not value.isprintable():
                event_dict[key] = _BEARER.sub(_mask_credential, value)
        elif kind not in _PLAIN_TYPES:
            event_dict[key] = _scrub(value, 0)
    return event_dict


_PLAIN_TYPES: Final = frozenset({int, float, bool, type(None)})


def _mask_credential(match: re.Match[str]) -> str:
    return f"{match.group(1)} {REDACTED}"


def default_format() -> LogFormat:
    """`console` when stderr is a terminal, else `json` (journald, files, pipes)."""
    stream = sys.stderr
    return "console" if stream is not None and stream.isatty() else "json"


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


def configure_logging(fmt: LogFormat, level: str = "info") -> None:
    """Configure structlog and the stdlib root logger to write `fmt` lines to stderr.

    Idempotent: a second call replaces the first (only gpumux's own root handler is
    replaced; handlers others installed stay).
    """
    threshold = _level_number(level)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        redact_secrets,
    ]
    renderer: Processor
    if fmt == "json":
        shared += [structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info]
        renderer = structlog.processors.JSONRenderer(_encode_json)
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=_stderr_isatty(), timestamp_key="ts")
    else:
        raise ValueError(f"unknown log format {fmt!r}")

    processors = [*shared, renderer]
    writer = LineWriter(sys.stderr)
    install(writer)  # the one before it writes what it holds
    factory = _SharedWriter(writer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        # One write per line (print() makes two: the line, then its newline). One writer
        # for every line: loggers are not cached, so a factory that made a writer would
        # make one per line.
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    global _HOT
    _HOT = _HotPath(processors, factory, writer, threshold) if fmt == "json" else None

    # The same writer, so the stdlib's lines keep their place among gpumux's own.
    handler = logging.StreamHandler(writer)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(threshold)
    for name in _CHATTY_LIBRARIES:  # their DEBUG is wire traffic, not gpumux's story
        logging.getLogger(name).setLevel(max(threshold, logging.INFO))


class _SharedWriter:
    """A logger factory that hands out the same writer every time."""

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def __call__(self, *_args: object) -> LineWriter:
        return self._writer


#: Built once: `json.dumps` with a `default` builds an encoder for every line.
_JSON_ENCODERS: dict[object, json.JSONEncoder] = {}


def _encode_json(obj: object, **kwargs: object) -> str:
    """`json.dumps(obj, **kwargs)` with the encoder built once per set of options."""
    key = tuple(kwargs.items())  # only `default` (a function) is passed: hashable
    encoder = _JSON_ENCODERS.get(key)
    if encoder is None:
        encoder = _JSON_ENCODERS[key] = json.JSONEncoder(**kwargs)  # type: ignore[arg-type]
    return encoder.encode(obj)


def _stderr_isatty() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


class _HotPath:
    """What `log_hot` needs from the configuration `configure_logging` installed, and
    whether that configuration is still the one in force."""

    def __init__(
        self,
        processors: list[Processor],
        factory: _SharedWriter,
        writer: LineWriter,
        threshold: int,
    ) -> None:
        self.processors = processors
        self.renderer = processors[-1]
        self.length = len(processors)
        self.factory = factory
        self.writer = writer
        self.enabled = threshold <= logging.INFO

    def in_force(self) -> bool:
        # `capture_logs` edits the same list in place (its capture becomes the last
        # processor); `structlog.configure` elsewhere installs another list or factory.
        config = structlog.get_config()
        processors = config["processors"]
        return (
            processors is self.processors
            and len(processors) == self.length
            and processors[-1] is self.renderer
            and config["logger_factory"] is self.factory
        )


_HOT: _HotPath | None = None


class _Logs(Protocol):
    """What `log_hot` needs of the caller's logger: its `info`."""

    def info(self, event: str, /, **fields: object) -> object: ...


def log_hot(logger: _Logs, event: str, /, **fields: object) -> None:
    """`logger.info(event, **fields)`, byte for byte, for an event logged on every proxied
    request (`request_finished`, the access log).

    Under the JSON configuration of `configure_logging` the line is built here: the same
    dict in the same key order (fields, `event`, the bound context vars, `level`, `ts`),
    the same redaction (`redact_secrets` itself), the same encoder and writer, which holds
    the line for its next batch (`LineWriter.hold`, at most `ACCESS_FLUSH_SECS`). What it
    skips is structlog's per-call work, most of the line's cost: a bound logger built for
    every call (loggers are not cached, see the module's docstring), the level method's
    indirection, and two processors that only act on keys this event never has. Under
    any other configuration (console, `capture_logs`, a test's own) it is `logger.info()`.
    """
    hot = _HOT
    if hot is None or not hot.in_force():
        logger.info(event, **fields)
        return
    if not hot.enabled:
        return
    line: EventDict = {**fields, "event": event}
    structlog.contextvars.merge_contextvars(hot.writer, "info", line)
    if "stack_info" in line or "exc_info" in line:  # a bound context var asked for them
        logger.info(event, **fields)
        return
    # Redacted before `level` and `ts` join: both are gpumux's own text, which redaction
    # leaves as it is, and keys are added at the end in the chain's order all the same.
    redact_secrets(hot.writer, "info", line)
    line["level"] = "info"
    line["ts"] = utc_now_iso()
    rendered = hot.renderer(hot.writer, "info", line)
    assert isinstance(rendered, str)  # the JSON renderer over `_encode_json`
    hot.writer.hold(rendered)  # written with the next batch (`log_writer`)


#: The last second `utc_now_iso` formatted, and its text up to the seconds.
_LAST_SECOND: tuple[int, str] = (-1, "")


def utc_now_iso() -> str:
    """Now, as the chain's `TimeStamper(fmt="iso", utc=True)` writes it
    (`datetime.now(UTC).isoformat()` with `Z`: microseconds, left out when zero), with
    the date and time of day formatted once a second instead of on every line."""
    global _LAST_SECOND
    second, micros = divmod(time.time_ns() // 1000, 1_000_000)
    last, text = _LAST_SECOND
    if second != last:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _LAST_SECOND = (second, text)
    return f"{text}.{micros:06d}Z" if micros else f"{text}Z"
