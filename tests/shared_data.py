"""Where the shared real datasets live, and a skip when they are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def dataset(relative: str) -> Path:
    """A file under ../shared/datasets, or skip the test with the reason."""
    path = DATASETS / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared datasets live beside the repository")
    return path
