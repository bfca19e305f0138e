"""The multipart form reader (for the audio routes) in process: forms written by
aiohttp's own multipart writer are read back (`model`, `stream`), a second `model` or a
`model` file is refused, an alias rewrite changes only the `model` value's bytes, and
anything malformed — hand-written or cut at random — is a client error.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import FormData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumux.core.errors import ClientError, MissingModel
from gpumux.http.multipart import MAX_MODEL_BYTES, multipart_model, read_form, with_model

pytestmark = pytest.mark.unit

PROPERTY = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
CT = "multipart/form-data; boundary=xyz"


def written(fields: list[tuple[str, str | bytes]]) -> tuple[bytes, str]:
    """A form as aiohttp's client would send it: (body, Content-Type)."""
    form = FormData()
    for name, value in fields:
        if isinstance(value, bytes):
            form.add_field(name, value, filename="audio.wav", content_type="audio/wav")
        else:
            form.add_field(name, value)
    payload = form()

    class Sink:
        def __init__(self) -> None:
            self.data = b""

        async def write(self, chunk: bytes) -> None:
            self.data += chunk

    sink = Sink()
    asyncio.run(payload.write(sink))  # type: ignore[arg-type]
    return sink.data, str(payload.content_type)


model_names = st.text(
    alphabet=st.characters(min_codepoint=0x20, exclude_categories=["Cc", "Cs"]),
    min_size=1,
    max_size=40,
)


@PROPERTY
@given(
    before=st.lists(
        st.tuples(st.sampled_from(["file", "language", "prompt"]), model_names), max_size=3
    ),
    model=model_names,
    alias_of=model_names,
    audio=st.binary(max_size=2000),
)
def test_forms_from_aiohttps_writer_are_read_back_and_rewritten_in_place(
    before: list[tuple[str, str]], model: str, alias_of: str, audio: bytes
) -> None:
    fields: list[tuple[str, str | bytes]] = [*before, ("file", audio), ("model", model)]
    body, content_type = written(fields)
    assert multipart_model(body, content_type) == model
    rewritten = with_model(body, content_type, alias_of)
    assert multipart_model(rewritten, content_type) == alias_of
    # Only the value changed: the same form written with the new name, byte for byte
    # once its (random) boundary is the first one's.
    expected, other_type = written([*before, ("file", audio), ("model", alias_of)])
    assert rewritten == expected.replace(boundary_of(other_type), boundary_of(content_type))


def boundary_of(content_type: str) -> bytes:
    return content_type.split("boundary=", 1)[1].strip('"').encode()


def test_a_second_model_field_or_a_model_file_is_refused() -> None:
    twice, content_type = written([("model", "a"), ("file", b"x"), ("model", "b")])
    with pytest.raises(ClientError, match="more than one `model`"):
        read_form(twice, content_type)
    as_file, content_type = written([("model", b"whisper")])
    with pytest.raises(ClientError, match="not a file"):
        read_form(as_file, content_type)


@pytest.mark.parametrize(
    ("values", "stream"),
    [([], False), (["true"], True), (["True"], True), (["1"], True), (["on"], True),
     (["false"], False), (["no"], False), (["true", "false"], False), (["0", "yes"], True),
     (["true" + " " * 40], False)],
)  # fmt: skip
def test_stream_is_read_as_the_backend_reads_a_bool(values: list[str], stream: bool) -> None:
    fields: list[tuple[str, str | bytes]] = [("model", "w"), ("file", b"x")]
    fields += [("stream", v) for v in values]
    body, content_type = written(fields)
    assert read_form(body, content_type) == read_form(body, content_type)
    assert read_form(body, content_type).stream is stream


def form(*parts: bytes, boundary: bytes = b"xyz") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--xyz--\r\n"


MODEL_PART = b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper'


def test_unquoted_names_and_a_file_before_the_model() -> None:
    file_part = b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + (
        b"--xy\r\n" * 1000  # delimiter-like bytes inside the file are not delimiters
    )
    unquoted = b"Content-Disposition: form-data; name=model\r\n\r\nwhisper"
    body = form(file_part, unquoted)
    assert multipart_model(body, CT) == "whisper"
    with pytest.raises(ClientError, match="start with its boundary"):
        multipart_model(b"preamble\r\n" + body, CT)  # the backend's parser refuses one


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (form(MODEL_PART), "application/json", ClientError),
        (form(MODEL_PART), "multipart/form-data", ClientError),
        (form(MODEL_PART), "multipart/form-data; boundary=" + "b" * 71, ClientError),
        (b"no delimiter at all", CT, ClientError),
        (form(MODEL_PART)[:-9], CT, ClientError),  # no closing delimiter
        (b"--xyz\r\nContent-Disposition: form-data; name=model", CT, ClientError),
        (b"--xyz\r\n" + b"X: " + b"h" * 9000 + b"\r\n\r\nv\r\n--xyz--", CT, ClientError),
        (b"--xyzjunk", CT, ClientError),
        (form(b'Content-Disposition: form-data; name="file"\r\n\r\nx'), CT, MissingModel),
        (form(b'Content-Disposition: form-data; name="model"\r\n\r\n'), CT, MissingModel),
        (form(b'Content-Disposition: form-data; name="model"\r\n\r\n\xff'), CT, ClientError),
        (form(b'Content-Disposition: form-data; name="model"\r\n\r\na\nb'), CT, ClientError),
        (
            form(
                b'Content-Disposition: form-data; name="model"\r\n\r\n'
                + b"m" * (MAX_MODEL_BYTES + 1)
            ),
            CT,
            ClientError,
        ),
    ],
)
def test_malformed_forms_are_client_errors(
    body: bytes, content_type: str, error: type[ClientError]
) -> None:
    with pytest.raises(error):
        multipart_model(body, content_type)


@PROPERTY
@given(data=st.data(), audio=st.binary(max_size=500))
def test_cut_or_corrupted_forms_are_client_errors_or_a_reading(
    data: st.DataObject, audio: bytes
) -> None:
    body, content_type = written([("file", audio), ("model", "whisper")])
    cut = data.draw(st.integers(0, len(body)))
    flip = data.draw(st.integers(0, len(body) - 1))
    for mangled in (body[:cut], body[:flip] + bytes([body[flip] ^ 0x5A]) + body[flip + 1 :]):
        try:
            model = multipart_model(mangled, content_type)
        except ClientError:
            continue
        assert isinstance(model, str)
        assert model


def disposition(value: bytes, header: bytes = b"Content-Disposition") -> bytes:
    return form(header + b": " + value + b"\r\n\r\nwhisper")


@pytest.mark.parametrize(
    ("body", "content_type", "model"),
    [
        # As python-multipart (the backend's parser) reads parameters: the last of a
        # repeated key, `name*=` ignored, `;` inside quotes kept, keys in any case.
        (disposition(b'form-data; name="x"; name="model"'), CT, "whisper"),
        (disposition(b"form-data; name*=utf-8''x; name=\"model\""), CT, "whisper"),
        (disposition(b'form-data; NAME="model"'), CT, "whisper"),
        (disposition(b'form-data ; name = "model"'), CT, "whisper"),
        (disposition(b'form-data; name="model"', b"content-DISPOSITION"), CT, "whisper"),
        (form(b'Content-Disposition: form-data; name="x"\r\n'
              b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper'), CT, "whisper"),
        (form(MODEL_PART), 'multipart/form-data; boundary="xyz"', "whisper"),
        (form(MODEL_PART), "multipart/form-data; boundary=other; boundary=xyz", "whisper"),
        (form(MODEL_PART), "multipart/form-data; boundary=xyz; charset=UTF8", "whisper"),
    ],
)  # fmt: skip
def test_headers_are_read_as_the_backend_reads_them(
    body: bytes, content_type: str, model: str
) -> None:
    assert multipart_model(body, content_type) == model


@pytest.mark.parametrize(
    ("body", "content_type", "why"),
    [
        (disposition(b'form-data; name="model"; name="x"'), CT, "no model"),
        (disposition(b'form-data; name="model"', b"Content-Disposition "), CT, "not `name"),
        (form(MODEL_PART, b"X-Other: form-data\r\n\r\nv"), CT, "no Content-Disposition name"),
        (form(MODEL_PART), CT + "; charset=latin-1", "charset"),
        (form(MODEL_PART), CT + "; charset=bogus", "charset"),
        (form(MODEL_PART), "multipart/form-data; boundary=xyz; boundary=other", "start with"),
    ],
)  # fmt: skip
def test_forms_the_backend_reads_differently_or_refuses_are_refused(
    body: bytes, content_type: str, why: str
) -> None:
    with pytest.raises(ClientError) as refused:
        multipart_model(body, content_type)
    if why != "no model":
        assert why in str(refused.value)
    else:
        assert isinstance(refused.value, MissingModel)
