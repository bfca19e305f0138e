"""Loading feedback's wire pieces: the backend-refusal event after 200, and config."""

from __future__ import annotations

import json

import pytest

from gpumux.core.config_rules import ConfigProblems, parse_config
from gpumux.http.feedback import backend_error_event

pytestmark = pytest.mark.unit


def events(data: bytes) -> list[str]:
    return [line.removeprefix("data: ") for line in data.decode().split("\n\n") if line]


def test_a_backend_refusal_after_200_keeps_its_message_and_ends_the_stream() -> None:
    payload = json.dumps({"error": {"message": "too many tokens", "code": 400}}).encode()
    first, done = events(backend_error_event(400, payload))
    assert json.loads(first)["error"]["message"] == "too many tokens"
    assert json.loads(first)["error"]["type"] == "invalid_request_error"
    assert done == "[DONE]"
    first, _ = events(backend_error_event(503, b"not json"))
    assert json.loads(first)["error"]["message"] == "The backend answered 503."


def test_feedback_settings_are_validated() -> None:
    base = {"models": {"a": {"model_path": "m", "port": 8001}}}
    config, _ = parse_config(base)
    assert config.loading_feedback == "off"
    assert config.loading_feedback_after_secs == 2
    with pytest.raises(ConfigProblems) as caught:
        parse_config({**base, "loading_feedback": "loud", "loading_feedback_after_secs": -1})
    assert sorted(e.split(":")[0] for e in caught.value.errors) == [
        "loading_feedback",
        "loading_feedback_after_secs",
    ]
