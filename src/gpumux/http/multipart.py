"""The `model` field of a `multipart/form-data` body, for the audio routes
(`/v1/audio/transcriptions`, `/v1/audio/translations`), read without parsing the file.

Owns: finding the boundary in the Content-Type, walking the parts by their delimiters
(memchr-speed `find`, so a 25 MiB audio file is skipped, not copied), reading each part's
headers (bounded) and returning the value of the last part named `model` — the one the
backend's form parser (Starlette's, in vLLM) keeps when a name repeats.
Does not: read any other field or file, change the body (it is forwarded as sent), or
decide whether the model exists.

Anything malformed is the client's 400 (`invalid_multipart`'s message says what): no
boundary or one longer than RFC 2046's 70 characters, no closing delimiter, a part
without a header block, headers past `MAX_PART_HEAD` bytes, a `model` value that is not
UTF-8, empty, longer than `MAX_MODEL_BYTES` or holding control characters.
"""

from __future__ import annotations

from email.message import Message

from gpumux.core.errors import ClientError, MissingModel
from gpumux.http.body import CONTROL_CHARACTERS

MAX_PART_HEAD = 8192
MAX_MODEL_BYTES = 1024
_MAX_BOUNDARY = 70


def multipart_model(body: bytes, content_type: str) -> str:
    """The `model` form field of a multipart body; raises a `ClientError` for a bad one."""
    delimiter = b"--" + _boundary(content_type)
    found: bytes | None = None
    at = _first_delimiter(body, delimiter)
    while True:
        after = at + len(delimiter)
        if body.startswith(b"--", after):
            break  # the close delimiter: no more parts
        if not body.startswith(b"\r\n", after):
            raise _malformed("a delimiter is not followed by a line break")
        head_end = body.find(b"\r\n\r\n", after + 2, after + 2 + MAX_PART_HEAD)
        if head_end == -1:
            raise _malformed("a part has no header block, or one too long")
        next_at = body.find(b"\r\n" + delimiter, head_end + 4)
        if next_at == -1:
            raise _malformed("the body has no closing delimiter")
        if _field_name(body[after + 2 : head_end]) == "model":
            found = body[head_end + 4 : next_at]
        at = next_at + 2
    return _model(found)


def _boundary(content_type: str) -> bytes:
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise _malformed("the Content-Type must be multipart/form-data with a boundary")
    if not 0 < len(boundary) <= _MAX_BOUNDARY or not boundary.isascii():
        raise _malformed("the boundary must be 1 to 70 ASCII characters")
    return boundary.encode()


def _first_delimiter(body: bytes, delimiter: bytes) -> int:
    if body.startswith(delimiter):
        return 0
    at = body.find(b"\r\n" + delimiter)  # after a preamble
    if at == -1:
        raise _malformed("the body has no delimiter")
    return at + 2


def _field_name(head: bytes) -> str | None:
    """The `name` parameter of a part's Content-Disposition, if it has one."""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            header = Message()
            header["content-disposition"] = value.decode("latin-1").strip()
            field = header.get_param("name", header="content-disposition")
            return field if isinstance(field, str) else None
    return None


def _model(value: bytes | None) -> str:
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
