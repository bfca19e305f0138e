"""The request log: a bounded ring, usage read from a response tail, a one-way key tag,
and a status for every way a request ends."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from gpumux.core.errors import QueueFull
from gpumux.http.request_log import (
    CLIENT_CLOSED,
    RequestLog,
    RequestRecord,
    key_hash,
    usage_from_tail,
)

pytestmark = pytest.mark.unit


def record(model: str = "a", alias: str | None = None) -> RequestRecord:
    return RequestRecord(0.0, model, alias, "/v1/chat/completions", "127.0.0.1", None)


def test_the_ring_keeps_the_newest_and_filters_by_model_or_alias() -> None:
    log = RequestLog(3)
    for model, alias in [("a", None), ("b", "gpt"), ("a", None), ("b", None)]:
        log.add(record(model, alias))
    rows = log.latest(10)
    assert [r["model"] for r in rows] == ["b", "a", "b"]
    assert [r["alias"] for r in log.latest(10, "gpt")] == ["gpt"]
    assert len(log.latest(10, "b")) == 2
    assert len(log.latest(1)) == 1
    assert "tail" not in rows[0]


def test_usage_is_read_from_the_last_usage_object_only() -> None:
    text = b'{"choices":[{"text":"\\"usage\\""}],'
    body = text + b'"usage":{"prompt_tokens":12,"completion_tokens":3}}'
    assert usage_from_tail(body) == (12, 3)
    assert usage_from_tail(b'{"data": [1, 2]}') == (None, None)
    stream = [b'data: {"choices":[]}\n\n', b'data: {"usage": {"prompt_tokens": 5,', b""]
    log = RequestLog(1)
    entry = record()
    entry.tail.extend(stream)
    log.add(entry)
    assert log.latest(1)[0]["prompt_tokens"] == 5
    assert log.latest(1)[0]["completion_tokens"] is None


def test_the_key_tag_is_short_stable_and_not_the_key() -> None:
    tag = key_hash("Bearer sk-secret-123")
    assert tag == key_hash("Bearer  sk-secret-123 ")
    assert tag is not None
    assert len(tag) == 12
    assert "secret" not in tag
    assert key_hash(None) is None
    assert key_hash("Bearer sk-other") != tag


def test_tracking_logs_every_ending_with_its_status_and_duration() -> None:
    log = RequestLog(10)
    clock = itertools.count(start=0.0, step=0.5).__next__
    ok = record()
    with log.tracking(ok, clock):
        ok.status = 200
    with pytest.raises(QueueFull), log.tracking(record(), clock):
        raise QueueFull("full")
    with pytest.raises(asyncio.CancelledError), log.tracking(record(), clock):
        raise asyncio.CancelledError
    assert [r["status"] for r in log.latest(10)] == [CLIENT_CLOSED, 429, 200]
    assert all(r["duration_secs"] == 0.5 for r in log.latest(10))


def test_a_client_that_leaves_after_its_whole_stream_is_no_499() -> None:
    # It read `[DONE]` and closed before the backend's end of the body reached the proxy.
    log = RequestLog(10)
    delivered, cut_short = record(), record()
    delivered.status = cut_short.status = 200
    delivered.delivered = True
    for rec in (delivered, cut_short):
        with pytest.raises(asyncio.CancelledError), log.tracking(rec, itertools.count().__next__):
            raise asyncio.CancelledError
    assert [r["status"] for r in log.latest(10)] == [CLIENT_CLOSED, 200]
    assert "delivered" not in log.latest(1)[0]
