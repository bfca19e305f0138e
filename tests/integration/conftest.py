"""Fixtures for integration tests: the real daemon and mock backends as subprocesses."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
