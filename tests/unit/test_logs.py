"""Log configuration, redaction of secrets and prompt text, and the event catalogue."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import structlog
from structlog.testing import capture_logs

from gpumux.telemetry.logs import (
    EVENT_CATALOGUE,
    EVENTS,
    REDACTED,
    configure_logging,
    default_format,
    is_sensitive_key,
    log_hot,
    redact_secrets,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    chatty = {
        name: logging.getLogger(name).level
        for name in ("botocore", "boto3", "s3transfer", "urllib3")
    }
    yield
    for name, old in chatty.items():
        logging.getLogger(name).setLevel(old)
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def redact(**event: object) -> dict[str, object]:
    return dict(redact_secrets(None, "info", dict(event)))


@pytest.mark.parametrize(
    "key",
    [
        "authorization",
        "Authorization",
        "api_key",
        "x-api-key",
        "apiKey",
        "OPENAI_API_KEY",
        "token",
        "admin_token",
        "secret",
        "secret_key",
        "aws_secret_access_key",
        "password",
        "prompt",
        "messages",
        "input",
        "cookie",
    ],
)
def test_sensitive_keys_are_masked(key: str) -> None:
    assert redact(event="x", **{key: "sk-very-secret"})[key] == REDACTED


@pytest.mark.parametrize(
    "key", ["model", "max_tokens", "status", "endpoint", "request_id", "duration_ms", "keys"]
)
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_sensitive_key(key)
    assert redact(event="x", **{key: "v"})[key] == "v"


def test_counts_under_sensitive_words_are_kept_but_text_is_not() -> None:
    out = redact(event="x", prompt_tokens=12, messages_count=3, prompt_len="long text")
    assert out["prompt_tokens"] == 12
    assert out["messages_count"] == 3
    assert out["prompt_len"] == REDACTED
    assert redact(event="x", password=1234)["password"] == REDACTED
    assert redact(event="x", token=None)["token"] is None


@pytest.mark.parametrize("gap", [" ", "\t", "\n", "\u00a0", "\u2003", " \t "])
def test_a_credential_after_any_whitespace_is_masked(gap: str) -> None:
    # Plain strings skip the regex only when they hold no whitespace at all.
    assert redact(note=f"Bearer{gap}sk-abc")["note"] == f"Bearer {REDACTED}"
    assert redact(note=f"basic{gap}dXNlcjpwYXNz")["note"] == f"basic {REDACTED}"


def test_strings_without_whitespace_are_kept_as_they_are() -> None:
    kept = ["0123abcd", "Bearer", "Bearer:sk-abc", "m\u00e9-7b", ""]
    assert [redact(note=value)["note"] for value in kept] == kept


def test_nested_values_and_bearer_strings_are_masked_without_mutating() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = [("Authorization", "Bearer sk-abc"), {"X-Api-Key": "k"}]
    out = redact(event="x", body=body, headers=headers, note="got Bearer sk-abc.def from env")
    assert out["body"] == {"model": "m", "messages": REDACTED, "stream": True}
    assert out["headers"] == [("Authorization", f"Bearer {REDACTED}"), {"X-Api-Key": REDACTED}]
    assert out["note"] == f"got Bearer {REDACTED} from env"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert headers[1] == {"X-Api-Key": "k"}


def test_redaction_through_capture_logs() -> None:
    log = structlog.get_logger("test")
    with capture_logs(processors=[redact_secrets]) as logs:
        log.info("request_queued", model="m", api_key="sk-1", prompt="tell me a secret")
    assert logs == [
        {
            "event": "request_queued",
            "model": "m",
            "api_key": REDACTED,
            "prompt": REDACTED,
            "log_level": "info",
        }
    ]


def test_json_lines_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    structlog.contextvars.bind_contextvars(request_id="req-1")
    structlog.get_logger("gpumux.test").info("state_changed", model="m", token="t0ken")
    logging.getLogger("aiohttp.access").warning("GET %s", "/health")
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [json.loads(line) for line in captured.err.splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["event"] == "state_changed"
    assert first["level"] == "info"
    assert first["model"] == "m"
    assert first["request_id"] == "req-1"
    assert first["token"] == REDACTED
    ts = datetime.fromisoformat(first["ts"])
    assert ts.utcoffset() == timedelta(0)
    assert second["event"] == "GET /health"
    assert second["level"] == "warning"
    assert second["logger"] == "aiohttp.access"
    assert second["request_id"] == "req-1"
    assert "t0ken" not in captured.err


def test_json_exceptions_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger().exception("switch_failed", model="m")
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["level"] == "error"
    assert "RuntimeError: boom" in record["exception"]


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", level="warning")
    log = structlog.get_logger()
    log.info("request_queued")
    log.warning("request_rejected", reason="queue_full")
    logging.getLogger("asyncio").info("quiet")
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["request_rejected"]
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", level="loud")


def test_console_format_and_reconfiguration(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    configure_logging("console", level="debug")
    structlog.get_logger().debug("daemon_ready", port=3000, password="hunter2")
    logging.getLogger("aiohttp.server").debug("stdlib line")
    logging.getLogger("botocore.endpoint").debug("wire traffic")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert "daemon_ready" in lines[0]
    assert "port=3000" in lines[0]
    assert "hunter2" not in err
    assert "wire traffic" not in err
    assert "stdlib line" in lines[1]
    assert not lines[0].startswith("{")
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "gpumux"]
    assert len(ours) == 1


def test_default_format_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    assert default_format() == "console"
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert default_format() == "json"


def test_event_catalogue() -> None:
    assert frozenset(EVENT_CATALOGUE) == EVENTS
    for name in [
        "state_changed",
        "switch_started",
        "switch_finished",
        "switch_failed",
        "request_queued",
        "request_rejected",
        "process_spawned",
        "process_exited",
        "backend_output",
        "daemon_ready",
        "daemon_stopping",
    ]:
        assert name in EVENTS
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)+", name) for name in EVENTS)
    assert all(EVENT_CATALOGUE.values())


_TS = re.compile(r'"ts": "[^"]*"')


def test_hot_line_is_the_chains_line_byte_for_byte(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    structlog.contextvars.bind_contextvars(
        request_id="req-1", model="Bearer sk-secret m\u00e9", alias="fast", api_key="k"
    )
    fields: dict[str, object] = {
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "prompt": "hello",
        "prompt_tokens": 3,
        "note": 'quote " and basic dXNlcjpwYXNz',
        "ratio": 0.5,
        "nested": {"authorization": "x", "ok": [1, None, True]},
    }
    structlog.get_logger("gpumux.http.proxy").info("request_finished", **fields)
    log_hot(structlog.get_logger(), "request_finished", **fields)
    chain, hot = capsys.readouterr().err.splitlines()
    # Only the time differs (microseconds apart); every other byte, key order included.
    assert _TS.sub('"ts": "T"', hot) == _TS.sub('"ts": "T"', chain)
    record = json.loads(hot)
    assert list(record)[-2:] == ["level", "ts"]
    assert datetime.fromisoformat(record["ts"]).utcoffset() == timedelta(0)
    assert record["model"] == f"Bearer {REDACTED} m\u00e9"
    assert record["api_key"] == record["prompt"] == record["nested"]["authorization"] == REDACTED
    assert record["prompt_tokens"] == 3
    assert "sk-secret" not in hot
    assert "dXNlcjpwYXNz" not in hot


def test_hot_line_follows_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", level="warning")
    log_hot(structlog.get_logger(), "request_finished", endpoint="/v1/completions", status=200)
    assert capsys.readouterr().err == ""


def test_hot_line_is_captured_like_any_line() -> None:
    configure_logging("json")
    structlog.contextvars.bind_contextvars(request_id="req-2")
    with capture_logs() as captured:
        log_hot(structlog.get_logger(), "request_finished", endpoint="/v1/completions", status=503)
    assert captured == [
        {
            "event": "request_finished",
            "endpoint": "/v1/completions",
            "status": 503,
            "log_level": "info",
        }
    ]


def test_hot_line_renders_for_the_console_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console")
    log_hot(structlog.get_logger(), "request_finished", endpoint="/v1/completions", status=200)
    err = capsys.readouterr().err
    assert "request_finished" in err
    assert "/v1/completions" in err


def test_hot_line_after_another_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    structlog.configure(processors=[structlog.processors.JSONRenderer(sort_keys=True)])
    log_hot(structlog.get_logger(), "request_finished", endpoint="/v1/completions", status=200)
    (line,) = capsys.readouterr().err.splitlines()
    assert line == '{"endpoint": "/v1/completions", "event": "request_finished", "status": 200}'
