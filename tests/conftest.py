"""Fixtures every tier shares (the integration and gpu tiers spawn real children)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gpumux.procs import Reaper


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    """The daemon's single child reaper, installed on the test's loop for its duration."""
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    yield reaper
    reaper.uninstall()
