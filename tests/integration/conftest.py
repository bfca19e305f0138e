"""Fixtures for integration tests: the real daemon and mock backends as subprocesses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gpumux.procs import Reaper


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    """The daemon's single child reaper, installed on the test's loop for its duration."""
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    yield reaper
    reaper.uninstall()
