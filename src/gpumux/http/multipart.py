"""The `model` (and `stream`) fields of a `multipart/form-data` body, for the audio routes
(`/v1/audio/transcriptions`, `/v1/audio/translations`), read without parsing the file.

Owns: finding the boundary in the Content-Type, walking the parts by their delimiters
(memchr-speed `find`, so a 25 MiB audio file is skipped, not copied), reading each part's
headers (bounded), the `model` value and where it lies in the body, the `stream` flag,
and `with_model`: the body with only the `model` value's bytes replaced (for an alias).
Does not: read any other field or file, re-encode anything (every other byte is forwarded
as sent), or decide whether the model exists.

A `model` field given twice is refused rather than resolved: the backend's form parser
(Starlette's, in vLLM) keeps the last one, and a proxy that routes by one copy while the
backend reads another is how a request reaches a model it was not queued for. A `model`
sent as a file part (with a `filename`) is refused too: the backend would not read it as
text.

Headers are read exactly as the backend's parser (python-multipart, through Starlette)
reads them — its parameter splitting, the last Content-Disposition of a part — and what
it refuses is refused here too (a preamble, a header name that is not a token, a part
without a `name`), so gpumux never queues a form for one model that the backend reads as
another or turns away; `tests/real_vllm/test_real_form_parity.py` checks this against
the real parser. A charset other than UTF-8 is refused: the backend would decode names
and values in it.

Anything malformed is the client's 400 (`ClientError`'s message says what): no
boundary or one longer than RFC 2046's 70 characters, no closing delimiter, a part
without a header block, headers past `MAX_PART_HEAD` bytes, a `model` value that is not
UTF-8, empty, longer than `MAX_MODEL_BYTES` or holding control characters.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass

from gpumux.core.errors import ClientError, MissingModel
from gpumux.http.body import CONTROL_CHARACTERS

MAX_PART_HEAD = 8192
MAX_MODEL_BYTES = 1024
_MAX_BOUNDARY = 70
#: Pydantic's spellings of a true bool (the backend's form model reads `stream` with it).
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_MAX_FLAG_BYTES = 16
#: RFC 9110 token characters, the only ones a header name may hold.
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Form:
    """What the proxy routes a form by: `model`, its byte span in the body, and `stream`."""

    model: str
    model_start: int
    model_end: int
    stream: bool


@dataclass(frozen=True)
class _Part:
    name: str
    is_file: bool
    start: int  # the value's first byte
    end: int  # one past its last byte


def read_form(body: bytes, content_type: str) -> Form:
    """The routing fields of a multipart body; raises a `ClientError` for a bad one."""
    model: _Part | None = None
    stream = False
    for part in _parts(body, content_type):
        if part.name == "model":
            if model is not None:
                raise ClientError("The form has more than one `model` field.", param="model")
            if part.is_file:
                raise ClientError("`model` must be a form field, not a file.", param="model")
            model = part
        elif part.name == "stream":  # the last one counts, as in the backend's parser
            stream = _flag(body[part.start : part.end])
    if model is None:
        raise MissingModel("You must provide a model form field.", param="model")
    name = _model(body[model.start : model.end])
    return Form(model=name, model_start=model.start, model_end=model.end, stream=stream)


def multipart_model(body: bytes, content_type: str) -> str:
    """The `model` form field of a multipart body; raises a `ClientError` for a bad one."""
    return read_form(body, content_type).model


def with_model(body: bytes, content_type: str, model: str) -> bytes:
    """`body` with its `model` value replaced by `model`; every other byte is kept."""
    form = read_form(body, content_type)
    # One copy of the body (slicing bytes and concatenating would make three).
    view = memoryview(body)
    return b"".join((view[: form.model_start], model.encode(), view[form.model_end :]))


def _parts(body: bytes, content_type: str) -> Iterator[_Part]:
    delimiter = b"--" + _boundary(content_type)
    if not body.startswith(delimiter):
        # RFC 2046 allows a preamble; the backend's parser (python-multipart) does not.
        raise _malformed("the body does not start with its boundary")
    at = 0
    while True:
        after = at + len(delimiter)
        if body.startswith(b"--", after):
            return  # the close delimiter: no more parts
        if not body.startswith(b"\r\n", after):
            raise _malformed("a delimiter is not followed by a line break")
        head_end = body.find(b"\r\n\r\n", after + 2, after + 2 + MAX_PART_HEAD)
        if head_end == -1:
            raise _malformed("a part has no header block, or one too long")
        next_at = body.find(b"\r\n" + delimiter, head_end + 4)
        if next_at == -1:
            raise _malformed("the body has no closing delimiter")
        name, is_file = _disposition(body[after + 2 : head_end])
        yield _Part(name, is_file, head_end + 4, next_at)
        at = next_at + 2


def _boundary(content_type: str) -> bytes:
    media_type, params = _parameters(content_type)
    boundary = params.get("boundary")
    if media_type != "multipart/form-data" or boundary is None:
        raise _malformed("the Content-Type must be multipart/form-data with a boundary")
    if not 0 < len(boundary) <= _MAX_BOUNDARY or not boundary.isascii():
        raise _malformed("the boundary must be 1 to 70 ASCII characters")
    charset = params.get("charset", "utf-8")
    # The backend decodes field names and values in this charset: any other than UTF-8
    # could make it read another `model` than the one gpumux routed by.
    try:
        utf8 = codecs.lookup(charset).name == "utf-8"
    except LookupError:
        utf8 = False
    if not utf8:
        raise _malformed("the form's charset must be UTF-8")
    return boundary.encode()


def _disposition(head: bytes) -> tuple[str, bool]:
    """The `name` parameter of a part's Content-Disposition, and whether the part is a
    file (it has a `filename`). Read as the backend reads it: each header name must be a
    token (python-multipart refuses the whole form otherwise), the last Content-Disposition
    counts, leading spaces of its value are skipped; a part without a `name` is refused,
    as the backend refuses it."""
    value: bytes | None = None
    for line in head.split(b"\r\n"):
        name, colon, rest = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN):
            raise _malformed("a part header is not `name: value`")
        if name.lower() == b"content-disposition":
            value = rest.lstrip(b" ")
    params = {} if value is None else _parameters(value.decode("latin-1"))[1]
    if "name" not in params:
        raise _malformed("a part has no Content-Disposition name")
    return params["name"], "filename" in params


def _parameters(value: str) -> tuple[str, dict[str, str]]:
    """A header value's lower-cased type and its parameters, as python-multipart's
    `parse_options_header` (the backend's, through Starlette) reads them: `;` outside
    double quotes splits, keys are lower-cased, extended `key*` forms are ignored, a
    repeated key keeps its last value, one pair of quotes is removed with `\\\\` and `\\"`
    unescaped. Reading exactly as the backend does is what keeps a crafted header (two
    `name`s, a quoted `;`) from routing by one field while the backend reads another."""
    if ";" not in value:
        return value.lower().strip(" \t"), {}
    media_type, *segments = _split_parameters(value)
    params: dict[str, str] = {}
    for segment in segments:
        key, _, found = segment.partition("=")
        if "*" in key:
            continue
        if len(found) >= 2 and found[0] == '"' and found[-1] == '"':
            found = found[1:-1].replace("\\\\", "\\").replace('\\"', '"')
        params[key] = found
    return media_type.lower(), params


def _split_parameters(value: str) -> list[str]:
    """`value` split at each `;` outside double quotes, keys lower-cased: the standard
    library's `email.message._parseparam` as python-multipart 0.0.34 vendors it (it
    strips only spaces and tabs), kept step for step so both split alike."""
    s = ";" + value
    parts: list[str] = []
    start = 0
    while s.find(";", start) == start:
        start += 1
        end = s.find(";", start)
        ind, diff = start, 0
        while end > 0:
            diff += s.count('"', ind, end) - s.count('\\"', ind, end)
            if diff % 2 == 0:
                break
            end, ind = ind, s.find(";", end + 1)
        if end < 0:
            end = len(s)
        i = s.find("=", start, end)
        if i == -1:
            part = s[start:end]
        else:
            part = s[start:i].rstrip(" \t").lower() + "=" + s[i + 1 : end].lstrip(" \t")
        parts.append(part.strip(" \t"))
        start = end
    return parts


def _flag(value: bytes) -> bool:
    return len(value) <= _MAX_FLAG_BYTES and value.decode("latin-1").strip().lower() in _TRUE


def _model(value: bytes) -> str:
    if not value:
        raise MissingModel("You must provide a model form field.", param="model")
    if len(value) > MAX_MODEL_BYTES:
        raise ClientError(f"`model` is longer than {MAX_MODEL_BYTES} bytes.", param="model")
    try:
        model = value.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError("`model` must be UTF-8.", param="model") from None
    if CONTROL_CHARACTERS.search(model):
        raise ClientError("`model` must not contain control characters.", param="model")
    return model


def _malformed(why: str) -> ClientError:
    return ClientError(f"The multipart body is malformed: {why}.")
