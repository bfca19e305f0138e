"""Read multipart forms the way vLLM's server does, for a parity test with gpumux's reader.

Owns: running Starlette's `MultiPartParser` (python-multipart underneath, as vLLM's
FastAPI app uses it) over a batch of forms and reporting, per form, whether it parsed and
the values of its `model` and `stream` fields (and whether `stream` is a valid pydantic
bool, and which).
Does not: import gpumux; it runs under the CPU vLLM's interpreter (`RealVllm.python`),
where Starlette and pydantic are installed, via `parse_forms`.

Protocol (as a script): stdin is a JSON list of `{"body": base64, "content_type": str}`;
stdout is a JSON list of `{"ok": bool, "models": [str | null], "streams": [...],
"stream": bool | null, "error": str | null}` in the same order (`models` holds null for a
`model` part that is a file).
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

#: A batch of forms is parsed in one process; this is its deadline.
PARSE_TIMEOUT_SECS = 120.0


def parse_forms(python: Path, forms: list[tuple[bytes, str]]) -> list[dict[str, Any]]:
    """Each (body, Content-Type) as the backend's form parser reads it (see the protocol)."""
    batch = [{"body": base64.b64encode(b).decode(), "content_type": ct} for b, ct in forms]
    done = subprocess.run(
        [str(python), str(Path(__file__).resolve())],
        input=json.dumps(batch).encode(),
        capture_output=True,
        timeout=PARSE_TIMEOUT_SECS,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


async def _parse_one(body: bytes, content_type: str) -> dict[str, Any]:
    formparsers = importlib.import_module("starlette.formparsers")
    datastructures = importlib.import_module("starlette.datastructures")
    pydantic = importlib.import_module("pydantic")

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = formparsers.MultiPartParser(
        datastructures.Headers({"content-type": content_type}), stream()
    )
    try:
        form = await parser.parse()
    except Exception as exc:  # any refusal (a MultiPartException, ...) is an answer here
        return {"ok": False, "models": [], "streams": [], "stream": None, "error": repr(exc)}
    models = [m if isinstance(m, str) else None for m in form.getlist("model")]
    streams = [s if isinstance(s, str) else None for s in form.getlist("stream")]
    stream_value = None
    if streams and streams[-1] is not None:
        try:
            stream_value = pydantic.TypeAdapter(bool).validate_python(streams[-1])
        except pydantic.ValidationError:
            stream_value = None
    return {"ok": True, "models": models, "streams": streams, "stream": stream_value,
            "error": None}  # fmt: skip


async def _main() -> None:
    batch = json.load(sys.stdin)
    results = [
        await _parse_one(base64.b64decode(item["body"]), item["content_type"]) for item in batch
    ]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    asyncio.run(_main())
