"""The dashboard in headless Chromium: loads, lists models, follows a switch, streams a chat.

Chromium is a prerequisite: without it this test fails (scripts/test installs it).
The screenshot lands in tests/artifacts/dashboard.png for a person to look at.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.admin import Admin
from tests.support.cdp import chromium_page
from tests.support.daemon import mock_model, running_daemon
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard.png"
TOKEN = "dash-token-5e1b"


def state_of(model: str) -> str:
    return f"document.querySelector('tr[data-model=\"{model}\"] .state')?.textContent"


@pytest.mark.timeout(120)
async def test_dashboard_loads_updates_after_a_switch_and_streams_chat(tmp_path: Path) -> None:
    slow = ["--mock-tokens-per-sec", "40"]
    models = {"llama-8b": mock_model(extra_args=slow), "qwen-7b": mock_model(extra_args=slow)}
    with running_daemon(
        tmp_path,
        models,
        env={"GPUMUX_DASH_TOKEN": TOKEN},
        admin_port=free_port(),
        admin_token_env="GPUMUX_DASH_TOKEN",
    ) as daemon:
        admin = Admin(daemon, TOKEN)
        async with chromium_page(tmp_path / "chromium") as page:
            await page.send("Page.navigate", url=f"{admin.url}/#token={TOKEN}")
            await page.wait_for("document.body.dataset.loaded === 'true'")
            listed = await page.evaluate(
                "[...document.querySelectorAll('#models tbody tr')].map(r => r.dataset.model)"
            )
            assert listed == ["llama-8b", "qwen-7b"]
            assert await page.evaluate(state_of("llama-8b")) == "stopped"
            assert await page.evaluate("location.hash") == ""  # the token left the URL

            # A switch made elsewhere (the API) shows up, then one made with the button.
            code, _ = await asyncio.to_thread(admin.post, "/api/switch", {"model": "qwen-7b"})
            assert code == 200
            await page.wait_for(f"{state_of('qwen-7b')} === 'ready'")
            await page.evaluate(
                'document.querySelector(\'tr[data-model="llama-8b"] '
                'button[data-action="switch"]\').click()'
            )
            await page.wait_for(f"{state_of('llama-8b')} === 'ready'", timeout=30)
            await page.wait_for(f"{state_of('qwen-7b')} === 'sleeping'")
            await page.wait_for(
                "document.querySelector('tr[data-model=\"llama-8b\"] .last-switch')"
                ".textContent.includes('ok')"
            )
            await page.wait_for(
                "[...document.querySelectorAll('#events .name')]"
                ".some(e => e.textContent === 'switch_finished')"
            )

            # The chat box streams: partial output is on screen before the reply ends.
            await page.evaluate(
                "document.querySelector('#chat-model').value = 'llama-8b';"
                "document.querySelector('#chat-prompt').value = 'Tell me about GPUs';"
                "document.querySelector('#chat-send').click()"
            )
            await page.wait_for(
                "Number(document.querySelector('#chat-output').dataset.chunks) >= 2 &&"
                " document.querySelector('#chat-output').dataset.done === 'false'"
            )
            await page.wait_for(
                "document.querySelector('#chat-output').dataset.done === 'true'", timeout=30
            )
            stats = await page.evaluate("document.querySelector('#chat-stats').textContent")
            assert "TTFT" in stats
            assert "tokens/s" in stats
            assert await page.evaluate("document.querySelector('#chat-output').textContent")

            await asyncio.sleep(4.5)  # two more status polls, so the charts have lines
            await page.screenshot(ARTIFACT)
            errors = [line for line in page.console if line.startswith("exception")]
            assert not errors, errors
    assert ARTIFACT.stat().st_size > 10_000
