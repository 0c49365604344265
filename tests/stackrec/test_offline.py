"""`stackrec train` / `stackrec evaluate` end to end on a small file (flows/offline.py)."""

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flows import offline

app = typer.Typer()
app.command("train")(offline.train)
app.command("evaluate")(offline.evaluate)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """60 users walking a cycle of 15 items from different starts: learnable in one epoch."""
    path = tmp_path_factory.mktemp("data") / "events.csv"
    rows = ["user_id,item_id,timestamp"]
    for user in range(60):
        for step in range(8):
            rows.append(f"u{user},i{(user + step) % 15},{1_600_000_000 + user * 100 + step}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("model"))
    common = ["--data", data, "--out", out, "--model", "sasrec", "--dim", "16", "--max-len", "8"]
    result = invoke("train", *common, "--epochs", "3", "--stack-at", "2", "--lr", "0.01",
                    "--lr-schedule", "cosine", "--device", "cpu", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout[result.stdout.index("{") :])


def test_train_reports_metrics_speed_and_growth(trained):
    _, summary = trained
    assert summary["epochs"] == 3 and len(summary["history"]) == 3
    assert [h["depth"] for h in summary["history"]] == [2, 2, 4]
    assert summary["training"]["lr"] == 0.01 and summary["training"]["lr_schedule"] == "cosine"
    assert summary["test"]["n"] == 60 and summary["test"]["history_masked"] is True
    for key in ("wall_s", "s_per_epoch", "sequences_per_s", "targets_per_s", "peak_memory_mb"):
        assert summary[key], key
    assert summary["test"]["hr@10"] > 0.5  # the cycle is easy


def test_evaluate_reproduces_the_test_figures(trained, data):
    out, summary = trained
    result = invoke("evaluate", "--model", out, "--data", data, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["test"]
    assert metrics["n"] == 60
    assert metrics["hr@10"] == pytest.approx(summary["test"]["hr@10"])


def test_evaluate_with_sampled_negatives(trained, data):
    out, _ = trained
    result = invoke("evaluate", "--model", out, "--data", data, "--protocol", "sampled100",
                    "--sampling", "uniform", "--device", "cpu", "--json")  # fmt: skip
    assert result.exit_code != 0  # 15 items cannot give 100 negatives
    assert "error:" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent.csv"], "no such file"),
        (["--stack-at", "x"], "--stack-at"),
        (["--stack-at", "9"], "stack_at"),
        (["--stack-operator", "zigzag", "--stack-at", "1"], "zigzag"),
        (["--lr-schedule", "linear"], "linear"),
        (["--stride", "60"], "stride=60"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_1(data, tmp_path, args, message):
    base = {"--data": data, "--out": str(tmp_path), "--epochs": "2"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = invoke("train", *np.array(list(base.items())).ravel().tolist(), "--device", "cpu")
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_evaluating_a_missing_model_is_an_error(data, tmp_path):
    result = invoke("evaluate", "--model", str(tmp_path), "--data", data)
    assert result.exit_code == 1 and "no checkpoint" in result.output


def test_time_split_training(data, tmp_path):
    result = invoke("train", "--data", data, "--out", str(tmp_path), "--split", "time",
                    "--epochs", "1", "--dim", "8", "--device", "cpu", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["split"] == "time" and summary["test"]["n"] > 0


def test_overlapping_windows_train_on_the_same_targets(data, tmp_path):
    summaries = []
    for extra in ([], ["--stride", "1"]):
        result = invoke("train", "--data", data, "--out", str(tmp_path), "--max-len", "3",
                        "--epochs", "1", "--dim", "8", "--device", "cpu", "--json",
                        *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        summaries.append(json.loads(result.stdout[result.stdout.index("{") :]))
    disjoint, overlapping = summaries
    assert overlapping["train_windows"] > disjoint["train_windows"]
    assert overlapping["history"][0]["targets"] == disjoint["history"][0]["targets"]
