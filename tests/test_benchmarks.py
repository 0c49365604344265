"""Every benchmark script runs end to end at its smallest size and prints sound JSON.

The benchmarks are how the README's performance and quality figures are produced; nothing
else runs them, so without this a refactor could break one unnoticed until the next
measurement. These runs check that each script completes and that its own correctness checks
hold (same results on both paths, a published version, metrics in range), never its timings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from stackrec.nextitnet import NextItNetConfig
from tests.shared_data import dataset

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


def benchmark_json(*args: str) -> dict:
    """The JSON document a benchmark prints first on stdout (some print a table after it)."""
    done = run_benchmark(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    document, _ = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("{") :])
    return document


def test_publish_benchmark_publishes_every_path():
    result = benchmark_json(
        "benchmarks/publish.py", "--items", "2000", "--users", "300", "--repeat", "1"
    )
    assert {r["path"] for r in result["runs"]} == {"raw_set", "raw_hset", "publish"}
    assert all(r["vectors_per_s"] > 0 for r in result["runs"])
    assert result["summary"]["publish_over_raw_hset"] > 0


def test_ingest_benchmark_times_only_events_after_the_join():
    result = benchmark_json(
        "benchmarks/ingest.py", "--events", "30000", "--partitions", "2", "--repeat", "1",
        "--clients", "kafka-python",
    )  # fmt: skip
    for run in result["runs"]:
        assert 0 < run["events_timed"] <= 30_000
        assert run["events_per_s"] > 0
    assert result["summary"]["kafka-python"]["ours_over_raw"] > 0


def test_cycle_benchmark_publishes_a_version():
    result = benchmark_json(
        "benchmarks/cycle.py", "--events", "400", "--steps", "3", "--repeat", "1"
    )
    (cycle,) = result["cycles"]
    assert cycle["outcome"] == "published"
    assert cycle["events"] == 400


def test_serving_benchmark_gives_the_baseline_s_results():
    dataset("ml-1m/ratings_users1-2999.dat.gz")
    result = benchmark_json(
        "benchmarks/serving.py", "--datasets", "ml-1m", "--events", "300", "--repeat", "1",
        "--blocks", "2", "--dim", "16",
    )  # fmt: skip
    ml = result["datasets"]["ml-1m"]
    assert ml["top_k_same_lists"] == 1.0
    assert ml["rank_same"] is True


def test_loss_benchmark_times_both_paths_at_every_shape():
    dataset("beauty/beauty.txt.gz")
    result = benchmark_json(
        "benchmarks/loss.py", "--threads", "1", "--repeat", "1", "--train-steps", "1"
    )
    for shape in result["loss"].values():
        assert shape["ms"]["materialised"] > 0 and shape["ms"]["tiled"] > 0


def test_quality_benchmark_scores_our_side(tmp_path):
    dataset("ml-100k/ml-100k.inter")
    result = benchmark_json(
        "benchmarks/quality.py", "--datasets", "ml-100k", "--models", "sasrec",
        "--implementations", "ours", "--epochs", "1", "--seed", "0", "1", "--out", str(tmp_path),
    )  # fmt: skip
    assert [row["recipe"]["seed"] for row in result["rows"]] == [0, 1]
    for row in result["rows"]:
        assert row["implementation"] == "stackrec" and row["test"]["history_masked"] is True
        assert 0 < row["test"]["ndcg@10"] <= row["test"]["hr@10"] <= 1
    (table,) = tmp_path.glob("quality-*.md")
    (line,) = [line for line in table.read_text().splitlines() if "mean of 2 seeds" in line]
    mean = sum(row["test"]["ndcg@10"] for row in result["rows"]) / 2
    assert line.split(" | ")[4].startswith(f"{mean:.4f} ± ")  # the NDCG@10 column


def test_recbole_nextitnet_gets_our_depth_and_dilations(monkeypatch):
    """RecBole builds ``dilations * block_num`` residual blocks; the comparison needs ours."""
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "quality", quality)  # its dataclass looks itself up there
    spec.loader.exec_module(quality)
    for blocks in (1, 2, 3, 4):
        given = quality.RECBOLE_CONFIG["nextitnet"](quality.Recipe("nextitnet", blocks=blocks))
        ours = NextItNetConfig(n_items=2, n_blocks=blocks).dilations
        assert given["dilations"] * given["block_num"] == list(ours)


def test_continual_benchmark_replays_every_arm_and_writes_its_plot(tmp_path):
    dataset("ml-1m/ratings_users1-2999.dat.gz")
    data = "ml-1m"
    result = benchmark_json(
        "benchmarks/continual.py", "--quick", "--datasets", data, "--events", "6000",
        "--out", str(tmp_path),
    )  # fmt: skip
    windows = result["datasets"][data]["windows"]
    assert [w["window"] for w in windows] == [1, 2, 3]
    assert all(w["c"]["measured"] for w in windows[-1:])
    assert result["cycle_10k"]["events"] > 0
    assert set(result["goals"][data]) >= {
        "a_within_2pct_of_c_last_windows",
        "forgetting_under_5pct",
    }
    paired = result["datasets"][data]["summary"]["a_minus_b_second_half"]
    assert paired["events"] > 0 and paired["se"] >= 0  # windows 2, 3: (a) vs (b), per event
    last = windows[-1]  # by user: two partitions of the same events, the same for every arm
    for arm in "abc":
        groups = {name: g["events"] for name, g in last[arm]["by_user"].items()}
        by_tenure = groups["new_users"] + groups["returning_users"]
        assert by_tenure == groups["before_1-4"] + groups["before_5-19"] + groups["before_20+"]
        assert groups == {name: g["events"] for name, g in last["a"]["by_user"].items()}
    assert (tmp_path / "continual-quick.png").stat().st_size > 0


def test_continual_benchmark_reuses_the_retrains_only_when_they_would_be_the_same(tmp_path):
    dataset("ml-1m/ratings_users1-2999.dat.gz")
    quick = ("benchmarks/continual.py", "--quick", "--datasets", "ml-1m", "--events", "6000")
    first = benchmark_json(*quick, "--out", str(tmp_path), "--name", "first")
    earlier = str(tmp_path / "first.json")

    probe = benchmark_json(*quick, "--epochs", "2", "--c-from", earlier, "--out", str(tmp_path))
    before, after = (r["datasets"]["ml-1m"]["windows"] for r in (first, probe))
    assert [w["c"].get("ndcg@10") for w in after] == [w["c"].get("ndcg@10") for w in before]
    assert all(w["c"].get("reused") for w in after)
    assert probe["c_from"] == earlier

    other = run_benchmark(*quick, "--lr", "0.003", "--c-from", earlier, "--out", str(tmp_path))
    assert other.returncode != 0
    assert other.stderr.strip().splitlines() == [
        f"--c-from {earlier}: (c) was trained with other settings: lr"
    ]


def test_continual_seeds_sums_runs_up_as_the_table_and_its_figure(tmp_path):
    dataset("ml-1m/ratings_users1-2999.dat.gz")
    quick = ("benchmarks/continual.py", "--quick", "--datasets", "ml-1m", "--events", "6000")
    runs = [
        benchmark_json(*quick, "--seed", seed, "--out", str(tmp_path), "--name", f"s{seed}")
        for seed in ("0", "1")
    ]
    seeds = run_benchmark(
        "benchmarks/continual_seeds.py", *(str(tmp_path / f"s{s}.json") for s in (1, 0)),
        "--markdown", "--plot", str(tmp_path / "seeds.png"),
    )  # fmt: skip
    assert seeds.returncode == 0, seeds.stderr[-3000:]
    table = seeds.stdout.splitlines()
    assert [line.split(" | ")[0] for line in table[2:4]] == ["| 0", "| 1"]  # in seed order
    ratios = [r["datasets"]["ml-1m"]["summary"]["ndcg@10_last"]["a_over_c"] for r in runs]
    assert f"over 2 seeds: **{sum(ratios) / 2:.1%} ± " in table[-1]
    assert (tmp_path / "seeds.png").stat().st_size > 0

    wrong = run_benchmark("benchmarks/continual_seeds.py", str(tmp_path / "seeds.png"))
    assert wrong.returncode != 0
    assert wrong.stderr.strip().startswith(f"error: {tmp_path / 'seeds.png'}: not a ")
