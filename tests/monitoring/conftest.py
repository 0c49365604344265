"""Shared fixtures of the monitoring tests: the promtool binary and the repository paths."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def promtool() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``promtool`` with the given arguments; skips when it is not installed.

    CI installs it (Debian ``prometheus``), so these tests run there.
    """
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [path, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )

    return run
