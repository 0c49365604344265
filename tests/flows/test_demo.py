"""The README's first command, `stackrec demo`, end to end on its own local stack, twice.

`make demo` runs the demo and then `stackrec down`, and the embedded broker keeps topics in
memory: a second run meets a fresh topic beside the first run's log and registry. It must
start over, not skip the new events as already logged.
"""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from flows.cli import app
from streaming import services

pytestmark = pytest.mark.integration
DEMO = ["demo", "--events", "1200", "--cycles", "2", "--steps", "10", "--json"]


def test_the_demo_runs_again_after_the_stack_went_down(tmp_path, monkeypatch, prefect_harness):
    for key in [k for k in os.environ if k.startswith("STACKREC_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("STACKREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STACKREC_KAFKA_BOOTSTRAP", f"127.0.0.1:{services.free_port()}")
    monkeypatch.setenv("STACKREC_REDIS_URL", f"redis://127.0.0.1:{services.free_port()}/0")
    runner = CliRunner()
    scores: list[list[float]] = []  # each cycle's prequential NDCG@10, per run
    try:
        for _ in range(2):
            result = runner.invoke(app, DEMO)
            assert result.exit_code == 0, result.output
            summary = json.loads(result.stdout)
            scores.append([c["ndcg@10"] for c in summary["cycles"]])
            assert [c["version"] for c in summary["cycles"]] == [1, 2]
            assert [c["events"] for c in summary["cycles"]] == [600, 600]
            assert summary["recommendation"]["version"] == 2
            assert summary["recommendation"]["items"]
            assert runner.invoke(app, ["down"]).exit_code == 0
        assert scores[0] == scores[1]  # the same stream, in any partition interleaving
    finally:
        runner.invoke(app, ["down"])
