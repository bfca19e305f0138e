"""Progress of object-store transfers: one record per model and direction, for logs and status.

Owns: the record of each upload or download (bytes done and total, state, error,
duration), the s3transfer subscriber that counts bytes, and the `s3_transfer_*` log
events. Does not: transfer anything (`s3_store`).

Records are plain dicts so the admin API can serve them as they are; byte counts are
updated from s3transfer's threads (single int additions, fine under the GIL).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from s3transfer.subscribers import BaseSubscriber  # type: ignore[import-untyped]

log = structlog.get_logger(__name__)

Record = dict[str, Any]


class Progress(BaseSubscriber):  # type: ignore[misc]  # s3transfer ships no types
    def __init__(self, record: Record) -> None:
        self._record = record

    def on_progress(self, future: object, bytes_transferred: int, **kwargs: object) -> None:
        self._record["bytes_done"] += bytes_transferred


class Transfers:
    def __init__(self) -> None:
        self._records: dict[str, Record] = {}

    def start(self, op: str, model: str, version: str, total: int) -> Record:
        record: Record = {
            "op": op,
            "model": model,
            "version": version,
            "bytes_done": 0,
            "bytes_total": total,
            "state": "running",
            "error": None,
            "started": time.time(),
        }
        self._records[f"{op}:{model}"] = record
        log.info("s3_transfer_started", op=op, model=model, version=version, bytes_total=total)
        return record

    def finish(self, record: Record | None, state: str, error: str | None) -> None:
        if record is None:
            return
        record.update(state=state, error=error, secs=round(time.time() - record["started"], 3))
        keys = ("op", "model", "version", "bytes_done", "bytes_total", "secs")
        fields = {k: record[k] for k in keys}
        event = f"s3_transfer_{state}"  # done | failed | cancelled
        if error:
            log.warning(event, error=error, **fields)
        else:
            log.info(event, **fields)

    def progress(self, record: Record) -> None:
        keys = ("op", "model", "bytes_done", "bytes_total")
        log.info("s3_transfer_progress", **{k: record[k] for k in keys})

    def snapshot(self) -> dict[str, Record]:
        """The latest record per (direction, model), copied."""
        return {key: dict(record) for key, record in self._records.items()}
