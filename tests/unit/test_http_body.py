"""The request-body reader in process: depth without recursion, the backend's reading of
duplicate keys, strictness, and never an exception but a client error.

Hypothesis builds documents of any depth as bytes (so no encoder recursion limits what
it can try) and checks `peek` against a reference: Python's `json`, which is what vLLM
reads bodies with, and the nesting depth the generator itself knows.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumux.core.errors import ClientError, InvalidJson, MissingModel
from gpumux.http import body
from gpumux.http.body import MAX_DEPTH, Peeked, json_object, peek
from tests.support.security_corpus import CORPUS, Case
from tests.support.security_strategies import Doc, documents, shallow

pytestmark = pytest.mark.unit

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(doc=documents())
def test_any_depth_is_read_or_refused_by_the_limit_never_by_recursion(doc: Doc) -> None:
    if doc.depth > MAX_DEPTH:
        with pytest.raises(InvalidJson, match="nested more than"):
            peek(doc.data)
        return
    peeked = peek(doc.data)
    reference = json.loads(doc.data)  # shallow enough for Python's json
    assert peeked == Peeked(reference["model"], reference["stream"] is True)


@PROPERTY
@given(doc=documents())
def test_the_linear_fallback_agrees_with_the_generator(doc: Doc) -> None:
    top = msgspec.json.decode(doc.data, type=dict[str, msgspec.Raw]) if doc.depth < 600 else None
    if top is None:
        return  # msgspec's own guard refuses these before any depth check runs
    assert body._deepest_by_brackets(list(top.values())) == doc.depth
    assert body._deeper_than_limit(list(top.values())) == (doc.depth > MAX_DEPTH)


@PROPERTY
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(["model", "stream", "mod\\u0065l", "x"]), shallow),
        max_size=6,
    )
)
def test_duplicate_keys_resolve_like_the_backends_json(pairs: list[tuple[str, Any]]) -> None:
    """Whatever keys repeat, gpumux reads the `model` and `stream` Python's json reads."""
    data = ("{" + ", ".join(f'"{k}": {json.dumps(v)}' for k, v in pairs) + "}").encode()
    reference = json.loads(data)
    model = reference.get("model")
    if not isinstance(model, str) or not model:
        with pytest.raises(MissingModel):
            peek(data)
    elif any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in model):
        with pytest.raises(ClientError):
            peek(data)
    else:
        assert peek(data) == Peeked(model, reference.get("stream") is True)


@PROPERTY
@given(data=st.binary(max_size=400) | documents().map(lambda d: d.data[: len(d.data) // 2]))
def test_arbitrary_bytes_are_a_client_error_or_a_reading(data: bytes) -> None:
    try:
        peeked = peek(data)
    except ClientError:
        return
    assert isinstance(peeked.model, str)
    assert peeked.model


@PROPERTY
@given(value=st.dictionaries(st.text(max_size=8), shallow, max_size=6))
def test_json_object_matches_pythons_json_on_valid_documents(value: dict[str, Any]) -> None:
    data = json.dumps(value).encode()
    assert json_object(data) == json.loads(data)


@pytest.mark.parametrize(
    "case", [c for c in CORPUS if c.status in (200, 400)], ids=lambda c: c.name
)
def test_corpus_in_process(case: Case) -> None:
    """The corpus cases gpumux refuses (or forwards) by the body alone."""
    if case.refused_by_gpumux:
        with pytest.raises(ClientError) as refused:
            peek(case.body)
        assert refused.value.code == case.code
    else:
        assert peek(case.body).model == "a"


@pytest.mark.parametrize(
    "spent",
    [
        # 5,000 containers, each with more brackets than levels left: too many openings.
        pytest.param(b"[" + b",".join([b"[" + b"[]," * 130 + b"[]]"] * 5000) + b"]", id="openings"),
        # Ten levels around one long string full of brackets: each level rescans it.
        pytest.param(b"[" * 10 + b'"' + b"[{" * 50_000 + b'"' + b"]" * 10, id="rescans"),
    ],
)
def test_the_walks_budgets_hand_over_to_the_linear_pass_with_the_same_answer(
    spent: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_over: list[int] = []
    linear = body._deepest_by_brackets

    def counted(values: list[msgspec.Raw]) -> int:
        handed_over.append(len(values))
        return linear(values)

    monkeypatch.setattr(body, "_deepest_by_brackets", counted)
    assert peek(b'{"model": "a", "x": ' + spent + b"}").model == "a"
    assert handed_over == [2]  # the linear pass decided, over both top-level values
    deeper = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH  # its innermost array is level 129
    with pytest.raises(InvalidJson, match="nested more than"):
        peek(b'{"model": "a", "x": ' + spent + b', "y": ' + deeper + b"}")


def test_json_object_refuses_numbers_beyond_64_bits() -> None:
    with pytest.raises(InvalidJson, match="out of range"):
        json_object(b'{"timeout_secs": ' + b"9" * 5000 + b"}")
