"""`X-Gpumux-Queue-Seconds` and the request log through the real daemon: the header on
every proxied response, `GET /api/requests` (token, limit, model, usage, never any text),
and the dashboard's live table in headless Chromium (screenshot for a person to look at).
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.admin import Admin
from tests.support.cdp import chromium_page
from tests.support.client import chat_body, post
from tests.support.daemon import mock_model, running_daemon
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard-requests.png"
TOKEN = "req-log-token-9c2d"
API_KEY = "sk-client-key-41"
SECRET_PROMPT = "the-secret-prompt-text"


def rows(admin: Admin, query: str = "") -> list[dict[str, Any]]:
    code, body = admin.get(f"/api/requests{query}")
    assert code == 200, body
    result: list[dict[str, Any]] = body["requests"]
    return result


@pytest.mark.timeout(120)
async def test_queue_header_request_log_and_the_dashboard_table(tmp_path: Path) -> None:
    models = {"a": mock_model(aliases=["gpt-4o-mini"]), "b": mock_model()}
    env = {"REQ_LOG_TOKEN": TOKEN, "REQ_LOG_KEYS": API_KEY}
    with running_daemon(
        tmp_path,
        models,
        env=env,
        admin_port=free_port(),
        admin_token_env="REQ_LOG_TOKEN",
        api_keys_env="REQ_LOG_KEYS",
        request_log_size=5,
    ) as daemon:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        body = chat_body("a", messages=[{"role": "user", "content": SECRET_PROMPT}])
        reply = await asyncio.to_thread(
            partial(post, daemon, "/v1/chat/completions", body, headers=auth)
        )
        status, headers = reply.status, reply.headers
        assert status == 200
        assert float(headers["x-gpumux-queue-seconds"]) > 0  # a cold start was waited for

        with openai.OpenAI(base_url=daemon.url + "/v1", api_key=API_KEY, max_retries=0) as sdk:
            raw = sdk.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": SECRET_PROMPT}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
            assert float(raw.headers["x-gpumux-queue-seconds"]) < 1  # a was ready
            list(raw.parse())
        reply = await asyncio.to_thread(
            partial(post, daemon, "/v1/chat/completions", chat_body("nope"), headers=auth)
        )
        status, headers = reply.status, reply.headers
        assert status == 404
        assert "x-gpumux-queue-seconds" in headers

        admin = Admin(daemon, TOKEN)
        assert Admin(daemon).get("/api/requests")[0] == 401
        latest = rows(admin)
        assert [r["status"] for r in latest] == [404, 200, 200]
        nope, streamed, first = latest
        assert nope["model"] == "nope"
        assert streamed["alias"] == "gpt-4o-mini"
        assert streamed["model"] == "a"
        assert streamed["completion_tokens"] == 4
        assert streamed["prompt_tokens"]
        assert first["completion_tokens"] == 3
        assert first["queue_secs"] > 0
        assert first["ttft_secs"] >= first["queue_secs"]
        assert first["duration_secs"] >= first["ttft_secs"]
        assert first["client"] == "127.0.0.1"
        assert first["key_hash"]
        assert first["key_hash"] == streamed["key_hash"]
        text = json.dumps(latest)
        assert SECRET_PROMPT not in text
        assert API_KEY not in text
        assert rows(admin, "?limit=1") == [nope]
        assert [r["status"] for r in rows(admin, "?model=gpt-4o-mini")] == [200]
        assert admin.get("/api/requests?limit=x")[0] == 400

        for _ in range(5):  # the ring holds request_log_size records
            await asyncio.to_thread(
                partial(post, daemon, "/v1/chat/completions", chat_body("b"), headers=auth)
            )
        assert {r["model"] for r in rows(admin)} == {"b"}

        async with chromium_page(tmp_path / "chromium") as page:
            await page.send("Page.navigate", url=f"{admin.url}/#token={TOKEN}")
            await page.wait_for("document.querySelectorAll('#requests tbody tr').length === 5")
            await asyncio.to_thread(
                partial(
                    post, daemon, "/v1/chat/completions", chat_body("gpt-4o-mini"), headers=auth
                )
            )
            # Live: the next poll shows the new request at the top.
            await page.wait_for(
                "document.querySelector('#requests tbody tr .model')?.textContent"
                " === 'gpt-4o-mini → a'",
                timeout=10,
            )
            tokens = await page.evaluate(
                "document.querySelector('#requests tbody tr .tokens').textContent"
            )
            assert tokens.endswith("/ 3")
            await page.screenshot(ARTIFACT)
            errors = [line for line in page.console if line.startswith("exception")]
            assert not errors, errors
    assert ARTIFACT.stat().st_size > 10_000
