"""Which headers cross the proxy: hop-by-hop ones never, and the request id only once;
and the request ids the proxy makes."""

from __future__ import annotations

import re

from multidict import CIMultiDict

from gpumux.http.forward import end_to_end_headers
from gpumux.http.request_ids import _FreshIds, client_request_id


def test_a_request_id_in_another_letter_case_is_dropped_so_the_proxys_own_is_the_only_one() -> None:
    given = CIMultiDict({"x-request-id": "client-id", "Accept": "text/event-stream"})
    kept = end_to_end_headers(given)
    assert kept == {"Accept": "text/event-stream"}
    kept["X-Request-Id"] = "gpumux-id"  # what the proxy does next, on both legs
    assert [k for k in kept if k.lower() == "x-request-id"] == ["X-Request-Id"]


def test_hop_by_hop_headers_and_those_connection_names_are_dropped() -> None:
    given = CIMultiDict(
        [
            ("Connection", "keep-alive, X-Trace"),
            ("X-Trace", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("X-Request-ID", "other"),
            ("Content-Type", "application/json"),
        ]
    )
    assert end_to_end_headers(given) == {"Content-Type": "application/json"}


def test_fresh_request_ids_are_distinct_hex_tokens_across_pool_refills() -> None:
    unsafe = "not safe\r\nX-Forged: 1"
    count = 3 * _FreshIds.POOL_BYTES // 16 + 5  # three refills of the random pool and more
    ids = [client_request_id(unsafe if i % 2 else None) for i in range(count)]
    assert len(set(ids)) == count
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)
    assert client_request_id("trace-01.A_b") == "trace-01.A_b"  # a safe token is kept
