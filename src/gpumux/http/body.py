"""The request-body reader: what gpumux needs from a client's body, without building it.

Owns: taking a body off the wire (`read_body`: a body that ends early or whose framing is
broken is the client's 400, one over the limit aiohttp's 413), the checks every JSON body
passes before anything acts on it (UTF-8, strict JSON, an object at the top, nesting at
most `MAX_DEPTH` deep), and the two readers built on them: `peek` (`model` and `stream`
of an OpenAI-style body, which the proxy forwards byte for byte) and `json_object` (the
admin API's small bodies, decoded whole). Multipart forms: `http/multipart.py`.
Does not: decide whether a model exists (the scheduler does), render errors (the edges
do), or change a body.

Why msgspec: its typed decoder validates the whole document in C and builds only what a
type asks for — here the top-level object as `{key: Raw}`, a Raw being a zero-copy slice
of the encoded value — so a 16 MiB prompt is scanned once and never becomes a Python
string (measured in `bench/body_peek.py`). It follows the backend on the points that
decide routing: a duplicate key's last value wins, as with Python's `json` (vLLM), and
keys are compared after their escapes are decoded (`"mod\\u0065l"` is `model`). It is
stricter than Python's `json` where strictness only ever turns a request away (NaN,
Infinity, lone surrogates); a body gpumux refuses never reaches a backend.

Depth, without recursion in gpumux: msgspec's C parser guards each level with CPython's
recursion check, so a body nested a million deep is a RecursionError, never a crash,
and it is answered like any other too-deep body. `MAX_DEPTH` itself is checked after
that one C pass, by `_deeper_than_limit`: a body with at most `MAX_DEPTH` opening brackets
anywhere cannot be deeper (one memchr-speed scan: the common case); otherwise containers
are opened level by level from an explicit stack, only those with more brackets than the
levels left, and past a budget of openings or rescanned bytes one linear pass over the
brackets outside strings decides. Measured against `json.loads` (bench/results/
body_peek.md): about half its CPU for prose and images, a seventh for token ids, a bit
less for code; more only for thousands of small messages at 1 MiB (about 1.3x, ~0.5 ms).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate, compress, repeat
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionError, ClientPayloadError
from aiohttp.http_exceptions import HttpProcessingError

from gpumux.core.errors import ClientError, InvalidJson, MissingModel

#: Deepest nesting accepted (the top-level object is level 1). Real requests nest a few
#: dozen levels at most (tools and JSON schemas included); Python's `json` in the backend
#: fails near 1,000, so a limit far below that protects it as well as gpumux.
MAX_DEPTH = 128
#: How much level-by-level work `_deeper_than_limit` may do before it hands over to the
#: linear pass: container openings (each a few microseconds of Python), and bytes
#: re-scanned as a multiple of the body.
_OPENING_BUDGET = 4096
_RESCAN_BUDGET = 8

_UTF8_BOM = b"\xef\xbb\xbf"
_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_Container = dict[str, msgspec.Raw] | list[msgspec.Raw]
_OPEN: dict[int, msgspec.json.Decoder[_Container]] = {
    ord("{"): msgspec.json.Decoder(dict[str, msgspec.Raw]),
    ord("["): msgspec.json.Decoder(list[msgspec.Raw]),
}
_STRING = msgspec.json.Decoder(str)
_ANY = msgspec.json.Decoder()
#: C0 controls, DEL and C1 controls: never part of a model name, and a newline in one
#: would forge lines in a console log.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Everything but the bytes the linear pass keeps: brackets and quotes.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_COUNTED_BELOW = 4096  # bytes: see `_worth_opening`
_NOT_OPENER_OR_NUL = bytes(b for b in range(256) if b not in b"[{\0")
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


@dataclass(frozen=True)
class Peeked:
    """What the proxy routes by: the `model` a backend will read, and whether it streams."""

    model: str
    stream: bool


def peek(body: bytes) -> Peeked:
    """`model` and `stream` of a JSON request body; raises a `ClientError` for a bad one."""
    top = _top_level(body)
    model = _model(top.get("model"))
    stream = top.get("stream")
    # Only the literal `true` streams, as `document.get("stream") is True` did.
    return Peeked(model, stream is not None and bytes(stream) == b"true")


def json_object(body: bytes) -> dict[str, Any]:
    """The whole object of a small JSON body (admin commands), checked like `peek`'s."""
    _top_level(body)
    try:
        document: dict[str, Any] = _ANY.decode(_without_bom(body))
    except msgspec.DecodeError:  # numbers beyond 64-bit integers or doubles
        raise InvalidJson("A number in the JSON body is out of range.") from None
    return document


async def read_body(request: web.BaseRequest) -> bytes:
    """The request's body; a body cut short or wrongly framed is the client's 400.

    `web.HTTPRequestEntityTooLarge` passes through: each edge answers it as its 413.
    """
    try:
        return await request.read()
    except (HttpProcessingError, ClientPayloadError, ClientConnectionError, ConnectionError):
        raise ClientError("The request body ended early or was not framed correctly.") from None


def _model(raw: msgspec.Raw | None) -> str:
    if raw is None:
        raise _missing_model()
    try:
        model = _STRING.decode(raw)
    except msgspec.DecodeError:
        raise _missing_model() from None
    if not model:
        raise _missing_model()
    if CONTROL_CHARACTERS.search(model):
        raise ClientError("`model` must not contain control characters.", param="model")
    return model


def _missing_model() -> MissingModel:
    # Built only when raised: an error is costly to build, and nearly every body has one.
    return MissingModel("You must provide a model parameter (a string).", param="model")


def _top_level(body: bytes) -> dict[str, msgspec.Raw]:
    """Every check of a JSON body; its top-level object as `{key: Raw}` (last key wins)."""
    if not body.isascii():
        try:
            body.decode("utf-8")  # strict: no invalid sequences, no encoded surrogates
        except UnicodeDecodeError:
            raise InvalidJson("The request body must be UTF-8 (RFC 8259).") from None
    try:
        top = _TOP.decode(_without_bom(body))
    except RecursionError:
        raise _too_deep() from None
    except msgspec.ValidationError:
        raise InvalidJson("The request body must be a JSON object.") from None
    except msgspec.DecodeError:
        raise InvalidJson("We could not parse the JSON body of your request.") from None
    if not _few_openers(body, MAX_DEPTH) and _deeper_than_limit(list(top.values())):
        raise _too_deep()
    return top


def _without_bom(body: bytes) -> bytes | memoryview:
    # RFC 8259 lets a parser ignore a UTF-8 BOM, and the backend's `json.loads` does.
    return memoryview(body)[len(_UTF8_BOM) :] if body.startswith(_UTF8_BOM) else body


def _too_deep() -> InvalidJson:
    return InvalidJson(f"The JSON body is nested more than {MAX_DEPTH} levels deep.")


def _few_openers(body: bytes, limit: int) -> bool:
    """At most `limit` opening brackets anywhere (strings included): then no deeper.
    Two counting passes in C: cheaper, for the bodies of every request, than stopping
    early at the limit from a Python loop."""
    return body.count(b"[") + body.count(b"{") <= limit


def _deeper_than_limit(values: list[msgspec.Raw]) -> bool:
    """Whether a valid document whose top-level values are `values` nests past
    `MAX_DEPTH`: containers opened level by level from an explicit stack, within a budget
    of openings and of bytes re-scanned (a chain of containers around one long string
    rescans it at every level), past which the linear pass decides."""
    pending = [(raw, 2) for raw in _worth_opening(values, 1)]  # the top object is level 1
    openings, scanned, scan_budget = 0, 0, _RESCAN_BUDGET * sum(map(len, values))
    while pending:
        raw, level = pending.pop()
        decoder = _OPEN.get(memoryview(raw)[0])
        if decoder is None:
            continue  # a scalar
        if level > MAX_DEPTH:
            return True
        openings += 1
        scanned += len(raw)
        if openings > _OPENING_BUDGET or scanned > scan_budget:
            return _deepest_by_brackets(values) > MAX_DEPTH
        children = decoder.decode(raw)
        inner = list(children.values()) if isinstance(children, dict) else children
        pending.extend(zip(_worth_opening(inner, level), repeat(level + 1)))
    return False


def _worth_opening(children: list[msgspec.Raw], level: int) -> list[msgspec.Raw]:
    """The children (of a container at `level`) that might nest past the limit: those
    with more opening brackets than the levels left. In C-level passes, since a list may
    hold millions: a child too short to hold that many brackets is dropped by its length;
    the short ones are counted together (joined on NUL, which valid JSON never holds
    raw); a long one is kept, as opening it costs about what counting would."""
    allowed = MAX_DEPTH - level
    long_enough = list(compress(children, map((2 * allowed + 2).__le__, map(len, children))))
    lengths = list(map(len, long_enough))
    big = compress(long_enough, map(_COUNTED_BELOW.__le__, lengths))
    small = list(compress(long_enough, map(_COUNTED_BELOW.__gt__, lengths)))
    openers = b"\0".join(small).translate(None, _NOT_OPENER_OR_NUL).split(b"\0")
    return [*big, *compress(small, map(allowed.__lt__, map(len, openers)))]


def _deepest_by_brackets(values: list[msgspec.Raw]) -> int:
    """The deepest level, in linear time whatever the shape: the running count of
    brackets outside strings. Valid JSON is assumed (msgspec checked it), so a backslash
    always starts a two-byte escape and an unescaped quote opens or closes a string."""
    deepest = 1
    for raw in values:
        text = bytes(raw)
        if b"\\" in text:  # escaped backslashes first, then escaped quotes: pairs left to right
            text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
        outside_strings = b"".join(text.translate(None, _NOT_STRUCTURE).split(b'"')[0::2])
        steps = map(_STEP.__getitem__, outside_strings)
        deepest = max(deepest, 1 + max(accumulate(steps), default=0))
    return deepest
