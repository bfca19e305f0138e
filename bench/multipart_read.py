"""What reading an audio form's `model` costs gpumux: `http/multipart.read_form` against
aiohttp's own `MultipartReader` (the streaming reader gpumux could have used) and one
copy of the body (the floor any reader that looks at every byte pays), in one run.

CPU time per call (`time.process_time`), on forms as the openai SDK sends them (httpx:
a 32-hex-character boundary, the fields first, then the file) and with the file first,
for files of 1 MiB and 25 MiB (OpenAI's upload limit) of random bytes. Calls rotate
between the readers so drift falls on all alike; each reader must return the same model.
Also the alias rewrite (`with_model`: a second read plus one copy).

Run from the repository root: `.venv/bin/python -m bench.multipart_read [--quick]`.
Writes bench/results/multipart_read.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, StreamReader
from aiohttp.base_protocol import BaseProtocol

from bench.common import environment, environment_lines, markdown_table, ratio, write_results
from gpumux.http.multipart import read_form, with_model

NAME = "multipart_read"
MIB = 1024 * 1024
MODEL = "whisper-large-v3"


def form(audio: bytes, boundary: str, *, file_first: bool) -> bytes:
    fields = [
        f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
        for name, value in (("model", MODEL), ("response_format", "json"))
    ]
    file_part = (
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio
    )
    parts = [file_part, *fields] if file_first else [*fields, file_part]
    delimiter = b"--" + boundary.encode()
    return b"".join(delimiter + b"\r\n" + p + b"\r\n" for p in parts) + delimiter + b"--\r\n"


async def _aiohttp_model(body: bytes, content_type: str) -> str:
    loop = asyncio.get_running_loop()
    # A limit above the body: the whole form is fed at once, never paused.
    stream = StreamReader(BaseProtocol(loop), len(body) + 1, loop=loop)
    stream.feed_data(body)
    stream.feed_eof()
    reader = MultipartReader({"Content-Type": content_type}, stream)
    model = ""
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        if part.name == "model":
            model = await part.text()
        else:
            await part.release()
    return model


def measure(body: bytes, content_type: str, rounds: int) -> dict[str, list[float]]:
    loop = asyncio.new_event_loop()
    readers: dict[str, Callable[[], object]] = {
        "read_form": lambda: read_form(body, content_type).model,
        "aiohttp MultipartReader": lambda: loop.run_until_complete(
            _aiohttp_model(body, content_type)
        ),
        "one copy (bytearray)": lambda: bytearray(body),
        "with_model (alias)": lambda: with_model(body, content_type, "whisper"),
    }
    assert readers["read_form"]() == readers["aiohttp MultipartReader"]() == MODEL
    times: dict[str, list[float]] = {name: [] for name in readers}
    try:
        for i in range(rounds):
            order = list(readers)
            order = order[i % len(order) :] + order[: i % len(order)]
            for name in order:
                started = time.process_time()
                readers[name]()
                times[name].append(time.process_time() - started)
    finally:
        loop.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 5 if args.quick else 20
    boundary = os.urandom(16).hex()
    content_type = f"multipart/form-data; boundary={boundary}"
    rows: list[list[object]] = []
    results: list[dict[str, Any]] = []
    for mib in (1, 25):
        audio = os.urandom(mib * MIB)
        for file_first in (False, True):
            body = form(audio, boundary, file_first=file_first)
            times = measure(body, content_type, rounds)
            medians = {name: statistics.median(t) for name, t in times.items()}
            floor = medians["one copy (bytearray)"]
            shape = f"{mib} MiB, {'file first' if file_first else 'fields first'}"
            results.append({"shape": shape, "bytes": len(body), "median_cpu_secs": medians})
            for name, median in medians.items():
                rows.append([shape, name, f"{median * 1e3:.2f}", f"{ratio(median, floor):.2f}"])
    payload = {"name": NAME, "rounds": rounds, "results": results, "environment": environment()}
    lines = [
        f"# {NAME}",
        "",
        "CPU time per call, median of "
        f"{rounds} rotated rounds; `x copy` is the ratio to one copy of the body.",
        "",
        markdown_table(["form", "reader", "ms", "x copy"], rows),
        "",
        *environment_lines(payload["environment"]),
    ]
    json_path, md_path = write_results(NAME, payload, "\n".join(lines))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
