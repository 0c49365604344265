"""`stackrec models rollback` when Redis is down: one error line, and both pointers stay put."""

from __future__ import annotations

import os

import torch
from typer.testing import CliRunner

from flows.cli import app
from flows.settings import Settings
from streaming import services


def test_a_rollback_that_cannot_reach_redis_leaves_the_registry_serving_the_same_version(
    tmp_path, monkeypatch
):
    for key in [k for k in os.environ if k.startswith("STACKREC_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("STACKREC_HOME", str(tmp_path))
    monkeypatch.setenv("STACKREC_REDIS_URL", f"redis://127.0.0.1:{services.free_port()}/0")
    registry = Settings.load().registry()
    for value in (1.0, 2.0):
        registry.promote(registry.save({"weights": torch.full((2,), value)}, {}))

    result = CliRunner().invoke(app, ["models", "rollback"])

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Redis" in lines[0], lines
    assert registry.current() == 2 and registry.meta(2)["status"] == "promoted"
