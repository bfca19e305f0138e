"""Fault knobs: misbehaviour a test can switch on at start (flag/env) or mid-run (HTTP).

Owns: the `Faults` record, the parsing of each knob from strings and JSON values, and
the runtime merge used by ``POST /mock/faults``.
Does not: act on the knobs (the engine and routes read them) or parse the command line.

Every knob ``name`` is also the flag ``--mock-<name with dashes>`` and the environment
variable ``MOCK_VLLM_<NAME>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass


def parse_bool(value: object) -> bool:
    """Accept JSON booleans and the usual spellings in flags and env vars."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_opt_int(value: object) -> int | None:
    """An integer, or None for "off" (JSON null, empty string, 'none')."""
    if value is None or str(value).strip().lower() in ("", "none", "null", "off"):
        return None
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str):
        result = int(value.strip())
    else:
        raise ValueError(f"not an integer: {value!r}")
    if result < 0:
        raise ValueError(f"must be >= 0: {value!r}")
    return result


def parse_text(value: object) -> str:
    """A string knob; JSON null reads as "" (off)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"not a string: {value!r}")
    return value


def parse_secs(value: object) -> float:
    """A non-negative duration in seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a number: {value!r}")
    result = float(value)
    if result < 0:
        raise ValueError(f"must be >= 0: {value!r}")
    return result


@dataclass
class Faults:
    """Runtime-mutable misbehaviour; every field defaults to "behave"."""

    # After N chunks of a response (SSE data chunks, or generated tokens when not
    # streaming), SIGKILL the whole process tree, as a CUDA crash would.
    crash_after_chunks: int | None = None
    # After N chunks, stop writing but keep the connection open.
    hang_after_chunks: int | None = None
    # Delay before the response's first byte (headers included).
    slow_first_byte_secs: float = 0.0
    fail_sleep: bool = False
    fail_wake: bool = False
    sleep_delay_secs: float = 0.0
    wake_delay_secs: float = 0.0
    # Listen, but answer /health with 503 forever.
    never_healthy: bool = False
    # Print an error and exit 1 before binding.
    exit_at_start: bool = False
    # Generation routes answer this status with an OpenAI error body.
    http_error_status: int | None = None
    # When set, `http_error_status` applies only to requests whose prompt (messages,
    # input) contains this text: a "poisoned" request that fails while others succeed.
    http_error_marker: str = ""
    # aiohttp's idle keep-alive timeout; read once at start (vLLM's default is 5 s).
    keepalive_timeout_secs: float = 5.0
    # Send ": keep-alive" SSE comments at this period while a stream waits (0 = off).
    sse_keepalive_secs: float = 0.0
    # The next N `/v1/load_lora_adapter` calls fail with 500 (each failure counts one down).
    lora_load_failures: int | None = None
    # How long a LoRA load takes (so concurrent first requests overlap it).
    lora_load_delay_secs: float = 0.0

    def merge(self, updates: Mapping[str, object]) -> None:
        """Apply ``updates`` all or nothing; unknown names or bad values raise ValueError."""
        parsed: dict[str, object] = {}
        for name, raw in updates.items():
            parser = FAULT_PARSERS.get(name)
            if parser is None:
                raise ValueError(f"unknown fault knob {name!r}")
            try:
                parsed[name] = parser(raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}: {exc}") from None
        status = parsed.get("http_error_status")
        if isinstance(status, int) and not 400 <= status <= 599:
            raise ValueError("http_error_status must be between 400 and 599")
        for name, value in parsed.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def error_status_for(self, prompt: str) -> int | None:
        """The status a generation request with this prompt must fail with, if any."""
        if self.http_error_marker and self.http_error_marker not in prompt:
            return None
        return self.http_error_status


FAULT_PARSERS: dict[str, Callable[[object], object]] = {
    "crash_after_chunks": parse_opt_int,
    "hang_after_chunks": parse_opt_int,
    "slow_first_byte_secs": parse_secs,
    "fail_sleep": parse_bool,
    "fail_wake": parse_bool,
    "sleep_delay_secs": parse_secs,
    "wake_delay_secs": parse_secs,
    "never_healthy": parse_bool,
    "exit_at_start": parse_bool,
    "http_error_status": parse_opt_int,
    "http_error_marker": parse_text,
    "keepalive_timeout_secs": parse_secs,
    "sse_keepalive_secs": parse_secs,
    "lora_load_failures": parse_opt_int,
    "lora_load_delay_secs": parse_secs,
}
