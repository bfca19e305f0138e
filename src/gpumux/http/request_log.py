"""The request log: the latest proxied requests, for `GET /api/requests` and the dashboard.

Owns: one record per request that named a model (time, model and the alias or adapter used,
endpoint, status, queue wait, TTFT, duration, prompt/completion tokens when the backend
reported usage, client address, a short hash of the API key), a bounded ring of them
(`request_log_size`), and reading usage out of a response tail.
Does not: hold any prompt or completion text (a record has no field that could), or the
API key itself: only the first 12 hex digits of its SHA-256, enough to tell callers apart
and useless for authenticating. It never reads the clock: the proxy passes times and its clock in.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from gpumux.core.errors import GpumuxError

#: Usage counts as OpenAI and vLLM write them (`"prompt_tokens": 12`), and as Anthropic's
#: Messages API (and OpenAI's Responses API) do (`"input_tokens": 12, "output_tokens": 3`).
_TOKENS = re.compile(rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens)"\s*:\s*(\d+)')
_USAGE = b'"usage"'
#: A streamed usage chunk is small and comes last; the last reads hold it.
TAIL_READS = 2
#: The status of a request whose client left before its response ended (nginx's 499).
CLIENT_CLOSED = 499


def key_hash(authorization: str | None) -> str | None:
    """A short, one-way tag for the bearer key a request carried (None without one)."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    secret = key.strip() if scheme.lower() == "bearer" else authorization
    return hashlib.sha256(secret.encode()).hexdigest()[:12] if secret else None


def usage_from_tail(tail: bytes) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens from the last `usage` object in `tail`, when there is one.

    Only the bytes after the last `"usage"` are searched, so a large body (embeddings) costs
    one reverse scan, not a JSON parse.
    """
    at = tail.rfind(_USAGE)
    if at < 0:
        return None, None
    found = {name: int(value) for name, value in _TOKENS.findall(tail[at : at + 512])}
    prompt = found.get(b"prompt_tokens", found.get(b"input_tokens"))
    return prompt, found.get(b"completion_tokens", found.get(b"output_tokens"))


@dataclass
class RequestRecord:
    """One proxied request, filled in as it goes; `finish` closes it."""

    started_at: float  # wall-clock seconds (shown to people)
    model: str
    alias: str | None
    endpoint: str
    client: str | None
    key_hash: str | None
    status: int = 0
    queue_secs: float | None = None
    ttft_secs: float | None = None
    duration_secs: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    adapter: str | None = None  # the LoRA adapter the request named (served by `model`)
    tail: deque[bytes] = field(default_factory=lambda: deque(maxlen=TAIL_READS), repr=False)
    #: Every byte of the response had gone out but the end of its framing (a stream's
    #: client that read `[DONE]` and closed): a client leaving now is not a 499.
    delivered: bool = field(default=False, repr=False)

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        del data["tail"]  # response bytes never leave the proxy
        del data["delivered"]
        return data


class RequestLog:
    """A bounded ring of finished records, newest last."""

    def __init__(self, size: int) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=size)

    def tracking(
        self,
        record: RequestRecord,
        clock: Callable[[], float],
        status_of: Callable[[GpumuxError], int] = lambda error: error.http_status,
    ) -> _Tracking:
        """Log `record` when the block ends, however it ends: a gpumux error's status (as
        `status_of` says the client saw it), 499 for a client that left before its response
        was delivered, the duration since the block began."""
        return _Tracking(self, record, clock, status_of)

    def add(self, record: RequestRecord) -> None:
        if record.tail:
            record.prompt_tokens, record.completion_tokens = usage_from_tail(b"".join(record.tail))
            record.tail.clear()
        self._records.append(record)

    def latest(self, limit: int, model: str | None = None) -> list[dict[str, object]]:
        """Up to `limit` records, newest first; only `model`'s (name or alias) when given."""
        out: list[dict[str, object]] = []
        for record in reversed(self._records):
            if len(out) >= limit:
                break
            if model is None or model in (record.model, record.alias, record.adapter):
                out.append(record.as_dict())
        return out


class _Tracking:
    """`RequestLog.tracking`'s block: a class, not a generator, as it runs per request."""

    __slots__ = ("_clock", "_log", "_record", "_started", "_status_of")

    def __init__(
        self,
        log: RequestLog,
        record: RequestRecord,
        clock: Callable[[], float],
        status_of: Callable[[GpumuxError], int],
    ) -> None:
        self._log, self._record, self._clock = log, record, clock
        self._status_of = status_of
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = self._clock()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        record = self._record
        if isinstance(exc, GpumuxError):
            record.status = self._status_of(exc)
        elif isinstance(exc, asyncio.CancelledError) and not record.delivered:
            record.status = CLIENT_CLOSED
        record.duration_secs = round(self._clock() - self._started, 6)
        self._log.add(record)
