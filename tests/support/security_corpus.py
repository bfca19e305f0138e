"""Hand-written pathological request bodies, each named after what it attacks.

Owns: the corpus and, for each case, what gpumux must answer on `POST
/v1/chat/completions` — the status, the OpenAI error `code` when gpumux refuses it, and
whether the body reaches a backend at all. Bodies that gpumux must refuse name the model
`c`, which the test daemon never starts: a refusal that leaked through would start it.
Bodies that must be served name `a`, which is awake.
Does not: send anything (tests/security/test_security_deep_json.py does) or generate
cases (the hypothesis strategies there do).

Each case stays under the fuzz daemon's 256 KiB body limit unless it tests that limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: The model a refused body names (configured, never started) and the one served bodies use.
REFUSED_MODEL = "c"
SERVED_MODEL = "a"
BODY_LIMIT = 256 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    status: int
    code: str | None = None  # gpumux's error code; None when a backend answers
    reaches_backend: bool = False

    @property
    def refused_by_gpumux(self) -> bool:
        return not self.reaches_backend


def _refused(name: str, body: bytes, code: str, status: int = 400) -> Case:
    return Case(name, body, status, code)


#: Put first in every body that must be served: the backend needs something to answer.
_ASK = b'"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, '


def _served(name: str, body: bytes, status: int = 200) -> Case:
    at = body.index(b"{") + 1
    return Case(name, body[:at] + _ASK + body[at:], status, None, reaches_backend=True)


def _chat(model: str = SERVED_MODEL, **extra: object) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    ).encode()


def _nested(depth: int, model: str, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    """`{"model": M, "x": V}` where V nests `depth - 1` more levels (the object is 1)."""
    inner = depth - 1
    return b'{"model": "%s", "x": ' % model.encode() + opener * inner + closer * inner + b"}"


def _nested_objects(depth: int, model: str) -> bytes:
    inner = depth - 1
    return (
        b'{"model": "%s", "x": ' % model.encode() + b'{"k": ' * inner + b"1" + b"}" * inner + b"}"
    )


def _many_keys(count: int) -> bytes:
    keys = b", ".join(b'"k%d": %d' % (i, i) for i in range(count))
    return b'{"model": "a", "max_tokens": 2, ' + keys + b"}"


R, S = REFUSED_MODEL, SERVED_MODEL

CORPUS: tuple[Case, ...] = (
    # ---- nesting depth -------------------------------------------------------------------
    _refused("nesting_1000_arrays_the_reported_500", _nested(1000, R), "invalid_json"),
    _refused("nesting_1000_objects", _nested_objects(1000, R), "invalid_json"),
    _refused("nesting_100k_arrays_past_any_recursion_limit", _nested(100_000, R), "invalid_json"),
    _refused("nesting_one_past_the_limit_129", _nested(129, R), "invalid_json"),
    _served("nesting_at_the_limit_128", _nested(128, S)),
    _refused(
        "nesting_100k_unclosed_brackets",
        b'{"model": "c", "x": ' + b"[" * 100_000,
        "invalid_json",
    ),
    _refused(
        "nesting_inside_the_model_value",
        b'{"model": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "invalid_json",
    ),
    _served(
        "brackets_inside_a_string_are_not_nesting",
        b'{"model": "a", "max_tokens": 2, "x": "' + b"[{" * 50_000 + b'"}',
    ),
    _refused(
        "many_shallow_containers_then_one_deep",
        b'{"model": "c", "x": [' + b"[]," * 20_000 + b"[" * 200 + b"]" * 200 + b"]}",
        "invalid_json",
    ),
    # ---- non-object tops and broken syntax ------------------------------------------------
    _refused("top_level_array", b'["model", "c"]', "invalid_json"),
    _refused("top_level_string", b'"model"', "invalid_json"),
    _refused("top_level_number", b"42", "invalid_json"),
    _refused("top_level_null", b"null", "invalid_json"),
    _refused("empty_body", b"", "invalid_json"),
    _refused("whitespace_only_body", b" \r\n\t ", "invalid_json"),
    _refused("truncated_object", b'{"model": "c", "messages": [', "invalid_json"),
    _refused("trailing_garbage", b'{"model": "c"} {"model": "c"}', "invalid_json"),
    _refused("trailing_comma", b'{"model": "c",}', "invalid_json"),
    _refused("single_quotes", b"{'model': 'c'}", "invalid_json"),
    _refused("nan_is_not_json", b'{"model": "c", "temperature": NaN}', "invalid_json"),
    _refused("infinity_is_not_json", b'{"model": "c", "temperature": -Infinity}', "invalid_json"),
    _refused("leading_zero_number", b'{"model": "c", "max_tokens": 01}', "invalid_json"),
    _refused("invalid_escape", b'{"model": "c", "x": "\\q"}', "invalid_json"),
    # ---- encodings ---------------------------------------------------------------------------
    _served("utf8_bom_is_tolerated_like_the_backend", b"\xef\xbb\xbf" + _chat(S)),
    _refused("utf16_le_with_bom", '{"model": "c"}'.encode("utf-16"), "invalid_json"),
    _refused("utf16_be_without_bom", '{"model": "c"}'.encode("utf-16-be"), "invalid_json"),
    _refused("utf32_body", '{"model": "c"}'.encode("utf-32"), "invalid_json"),
    _refused("invalid_utf8_in_a_prompt", b'{"model": "c", "x": "\xff\xfe"}', "invalid_json"),
    _refused("overlong_utf8_slash", b'{"model": "c", "x": "\xc0\xaf"}', "invalid_json"),
    _refused("utf8_encoded_surrogate", b'{"model": "c", "x": "\xed\xa0\x80"}', "invalid_json"),
    _refused("lone_surrogate_escape", b'{"model": "c", "x": "\\ud800"}', "invalid_json"),
    _refused("raw_control_character_in_a_string", b'{"model": "c", "x": "a\x01b"}', "invalid_json"),
    _refused("raw_nul_byte_between_tokens", b'{"model": "c",\x00 "x": 1}', "invalid_json"),
    # ---- the model field ---------------------------------------------------------------------
    _refused("model_missing", b'{"messages": []}', "missing_model"),
    _refused("model_empty", b'{"model": ""}', "missing_model"),
    _refused("model_number", b'{"model": 1}', "missing_model"),
    _refused("model_null", b'{"model": null}', "missing_model"),
    _refused("model_bool", b'{"model": true}', "missing_model"),
    _refused("model_array", b'{"model": ["c"]}', "missing_model"),
    _refused("model_object", b'{"model": {"name": "c"}}', "missing_model"),
    _refused("model_only_nested_not_top", b'{"x": {"model": "c"}}', "missing_model"),
    _refused("model_with_nul_escape", b'{"model": "c\\u0000"}', "invalid_request"),
    _refused(
        "model_with_newline_log_forgery",
        b'{"model": "c\\n{\\"event\\": \\"x\\"}"}',
        "invalid_request",
    ),
    _refused("model_with_escape_sequence", b'{"model": "\\u001b[31mc"}', "invalid_request"),
    _refused("model_with_del", b'{"model": "c\\u007f"}', "invalid_request"),
    _refused("model_with_c1_control", b'{"model": "c\\u0085"}', "invalid_request"),
    _refused(
        "model_200k_characters", b'{"model": "' + b"c" * 200_000 + b'"}', "model_not_found", 404
    ),
    _served("model_key_escaped_is_the_same_key", b'{"mod\\u0065l": "a", "max_tokens": 2}'),
    _served("model_value_escaped_is_the_same_name", b'{"model": "\\u0061", "max_tokens": 2}'),
    # ---- duplicate keys: the last one wins, as in the backend's json.loads -----------------
    _served("duplicate_model_last_wins_served", b'{"model": "c", "model": "a", "max_tokens": 2}'),
    _refused(
        "duplicate_model_last_wins_unknown",
        b'{"model": "a", "model": "nope"}',
        "model_not_found",
        404,
    ),
    _served("duplicate_model_first_not_a_string", b'{"model": 1, "model": "a", "max_tokens": 2}'),
    _refused("duplicate_model_last_not_a_string", b'{"model": "a", "model": 1}', "missing_model"),
    _served(
        "duplicate_stream_last_wins",
        b'{"model": "a", "stream": true, "stream": false, "max_tokens": 2}',
    ),
    # ---- numbers and sizes -------------------------------------------------------------------
    Case(
        "integer_of_5000_digits_is_the_backends_to_judge",
        b'{"model": "a", "seed": ' + b"9" * 5000 + b"}",
        400,
        reaches_backend=True,
    ),
    _served(
        "float_overflow_is_infinity_to_the_backend", b'{"model": "a", "max_tokens": 2, "x": 1e999}'
    ),
    _served("stream_as_the_string_true_does_not_stream", _chat(S, stream="true")),
    _served("ten_thousand_keys", _many_keys(10_000)),
    _served("prompt_just_under_the_limit", _chat(S, pad="x" * (BODY_LIMIT - 400))),
    _refused("body_just_over_the_limit", _chat(R, pad="x" * BODY_LIMIT), "request_too_large", 413),
)


def by_name() -> dict[str, Case]:
    found = {case.name: case for case in CORPUS}
    assert len(found) == len(CORPUS), "corpus names must be unique"
    return found
