"""gpumux reads a form's `model` as vLLM's server does, or refuses the form: a parity test
against Starlette's multipart parser (python-multipart underneath) from the CPU vLLM's own
environment, over hand-picked and generated forms with tricky headers (repeated or
extended `name` parameters, quoted `;`, header-name case and spacing, repeated
Content-Disposition headers, charsets, boundaries quoted or given twice, a preamble).

The property: whenever gpumux accepts a form (`read_form` returns model M), the backend
parses it too and reads exactly one `model`, equal to M, and its `stream` (when it is a
valid bool) equals gpumux's. A form gpumux refuses may be one the backend would take:
gpumux is allowed to be stricter, never to read another field.
"""

from __future__ import annotations

import random

import pytest

from gpumux.core.errors import ClientError
from gpumux.http.multipart import read_form
from tests.support.cpu_vllm import RealVllm
from tests.support.starlette_forms import parse_forms

pytestmark = pytest.mark.real_vllm

DISPOSITIONS = (
    'form-data; name="{name}"',
    "form-data; name={name}",
    'form-data; NAME="{name}"',
    'form-data; name="x"; name="{name}"',
    'form-data; name="{name}"; name="x"',
    "form-data; name*=utf-8''{name}; name=\"x\"",
    "form-data; name=\"x\"; name*=utf-8''{name}",
    'form-data ; name = "{name}"',
    'form-data;name="{name}";filename="a.wav"',
    'form-data; filename="a;b"; name="{name}"',
    'form-data; name="{name}\\"',
    'form-data; name="mo;del"',
    'form-data; name="x;name={name}"',
    'form-data; name="\\"{name}"',
    'form-data; name=\t"{name}"',
)
HEADER_NAMES = ("Content-Disposition", "content-disposition", "CONTENT-DISPOSITION",
                "Content-Disposition ", "X-Other")  # fmt: skip
CONTENT_TYPES = (
    "multipart/form-data; boundary={b}",
    'multipart/form-data; boundary="{b}"',
    "multipart/form-data; boundary={b}; charset=utf-8",
    "multipart/form-data; boundary={b}; charset=UTF8",
    "multipart/form-data; boundary={b}; charset=latin-1",
    "multipart/form-data; boundary={b}; charset=utf-16",
    "multipart/form-data; boundary={b}; charset=bogus",
    "multipart/form-data; boundary=zz; boundary={b}",
    "multipart/form-data; boundary={b}; boundary=zz",
    "Multipart/Form-Data; BOUNDARY={b}",
)
VALUES = ("whisper", "other", "a;b", "", "caf\u00e9", "x" * 3, "true", "0", "yes")


def pick(rng: random.Random, choices: tuple[str, ...]) -> str:
    """The first (plain) choice half the time, else any: most forms have one oddity."""
    return choices[0] if rng.random() < 0.6 else rng.choice(choices)


def random_form(rng: random.Random) -> tuple[bytes, str]:
    boundary = rng.choice(["b0undary", "xyz", "a-b_c.d"])
    parts = []
    for _ in range(rng.randint(1, 4)):
        field = rng.choice(["model", "model", "stream", "file", "prompt", "Model"])
        headers = []
        for _ in range(rng.choice([1, 1, 1, 2])):
            header = pick(rng, HEADER_NAMES)
            headers.append(f"{header}: {pick(rng, DISPOSITIONS).format(name=field)}")
        if rng.random() < 0.2:
            headers.append("Content-Type: text/plain")
        value = pick(rng, VALUES).encode()
        parts.append("\r\n".join(headers).encode() + b"\r\n\r\n" + value)
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    if rng.random() < 0.1:
        body = b"preamble\r\n" + body
    return body, pick(rng, CONTENT_TYPES).format(b=boundary)


def test_gpumux_reads_the_model_the_backend_reads_or_refuses(real_vllm: RealVllm) -> None:
    rng = random.Random(20261204)  # a fixed corpus: the same forms on every run
    forms = [random_form(rng) for _ in range(3000)]
    backend = parse_forms(real_vllm.python, forms)
    accepted = 0
    for (body, content_type), theirs in zip(forms, backend, strict=True):
        try:
            ours = read_form(body, content_type)
        except ClientError:
            continue
        accepted += 1
        case = (body, content_type, theirs)
        assert theirs["ok"], case  # gpumux refuses what the backend would refuse
        assert theirs["models"] == [ours.model], case
        if theirs["stream"] is not None:
            assert ours.stream is theirs["stream"], case
    # The corpus exercises both sides: many forms accepted, many refused.
    assert 300 < accepted < len(forms) - 300, accepted
