"""A tiny client for the admin API in tests: JSON calls with a token, and an SSE reader.

Owns: nothing but HTTP plumbing for tests (stdlib only), so a failing test shows the
status and the OpenAI-shaped body the daemon actually sent.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from tests.support.daemon import RunningDaemon


class Admin:
    def __init__(self, daemon: RunningDaemon, token: str | None = None) -> None:
        self.port = int(daemon.config["admin_port"])
        self.token = token

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "default",
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        bearer = self.token if token == "default" else token
        if bearer:
            sent["Authorization"] = f"Bearer {bearer}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            payload = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(payload)
        except ValueError:
            return response.status, payload

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return self.call("POST", path, body if body is not None else {}, **kw)

    def status(self) -> Any:
        code, body = self.get("/api/status")
        assert code == 200, body
        return body


class EventStream:
    """Reads `GET /api/events` frame by frame, with a deadline per wait."""

    def __init__(self, admin: Admin, last_event_id: int | None = None, replay: int = 200) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=15)
        headers = {"Authorization": f"Bearer {admin.token}"} if admin.token else {}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", f"/api/events?replay={replay}", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")

    def frames(self, deadline_secs: float) -> Any:
        """Yield (id, event dict) until the deadline passes or the stream ends."""
        deadline = time.monotonic() + deadline_secs
        lines: list[str] = []
        while time.monotonic() < deadline:
            raw = self.response.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\n")
            if line:
                lines.append(line)
                continue
            fields = dict(item.split(": ", 1) for item in lines if not item.startswith(":"))
            lines = []
            if "data" in fields:
                yield int(fields["id"]), json.loads(fields["data"])

    def wait_for(self, predicate: Any, deadline_secs: float = 20.0) -> tuple[int, Any]:
        for seq, event in self.frames(deadline_secs):
            if predicate(event):
                return seq, event
        raise AssertionError("the awaited event never came")

    def close(self) -> None:
        self.conn.close()
