"""Which headers cross the proxy: hop-by-hop ones never, and the request id only once."""

from __future__ import annotations

from multidict import CIMultiDict

from gpumux.http.proxy import end_to_end_headers


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
