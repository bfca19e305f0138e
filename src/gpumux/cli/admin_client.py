"""The admin API's command-line client: `gpumux status` and `gpumux switch MODEL`.

Owns: finding the admin URL (`--admin-url`, else `http://127.0.0.1:<admin_port>` from
`--config`, else port 3001) and the token (`GPUMUX_ADMIN_TOKEN`, else the variable the
config names in `admin_token_env`), the HTTP calls (stdlib `urllib`, bounded timeouts),
and the text rendering of a status table and of a switch's phases.
Does not: print or exit (the CLI does), or talk to the scheduler other than over HTTP.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpumux.daemon.config_file import load_config

DEFAULT_ADMIN_PORT = 3001
TOKEN_ENV = "GPUMUX_ADMIN_TOKEN"
STATUS_TIMEOUT_SECS = 10.0
#: A forced switch may include a cold start; the server bounds it by the config.
SWITCH_TIMEOUT_SECS = 900.0


class AdminError(Exception):
    """The admin API refused or could not be reached; the message is for the operator."""


@dataclass(frozen=True)
class AdminTarget:
    url: str
    token: str | None


def resolve_target(
    admin_url: str | None, config_path: str | None, environ: Mapping[str, str] | None = None
) -> AdminTarget:
    env = os.environ if environ is None else environ
    port, token_env = DEFAULT_ADMIN_PORT, None
    if config_path:
        config, _ = load_config(config_path)
        port = config.admin_port or DEFAULT_ADMIN_PORT
        token_env = config.admin_token_env
    url = (admin_url or f"http://127.0.0.1:{port}").rstrip("/")
    token = env.get(TOKEN_ENV) or (env.get(token_env) if token_env else None) or None
    return AdminTarget(url, token)


def call(
    target: AdminTarget,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    timeout: float = STATUS_TIMEOUT_SECS,
) -> Any:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    request = urllib.request.Request(target.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise AdminError(f"HTTP {exc.code}: {_error_message(exc.read())}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"cannot reach the admin API at {target.url}: {reason}") from None


def _error_message(payload: bytes) -> str:
    try:
        return str(json.loads(payload)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return payload.decode(errors="replace")[:200]


def format_status(status: Mapping[str, Any]) -> str:
    header = ("MODEL", "STATE", "QUEUE", "IN-FLIGHT", "RESTARTS", "LAST SWITCH")
    rows = [header]
    for alias, model in status["models"].items():
        rows.append(
            (
                alias,
                model["state"] + (" (pinned)" if model.get("pinned") else ""),
                str(model["queue_depth"]),
                str(model["inflight"]),
                str(model["restarts"]),
                _last_switch(model.get("last_switch")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    pinned = f" (pinned: {status['pinned']})" if status.get("pinned") else ""
    lines.append(f"mode: {status['mode']}{pinned}")
    lines.extend(
        f"switching to {s['target']} for {s['age_s']:.1f}s"
        for s in status.get("switches_in_progress", [])
    )
    return "\n".join(lines)


def _last_switch(last: Mapping[str, Any] | None) -> str:
    if not last:
        return "-"
    return f"{last['strategy']} {last['outcome']} {last['duration_s']:.2f}s"


def format_switch(reply: Mapping[str, Any]) -> str:
    lines = [reply.get("detail", "")]
    if "duration_s" in reply:
        victims = ", ".join(reply.get("victims") or []) or "none"
        lines.append(
            f"switch {reply.get('switch_id')}: {reply.get('outcome')} in "
            f"{reply['duration_s']:.3f}s (evicted: {victims})"
        )
    for phase, secs in (reply.get("phases") or {}).items():
        lines.append(f"  {phase:<20} {secs:.3f}s")
    return "\n".join(lines)
