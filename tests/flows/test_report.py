"""`stackrec report` writes one self-contained page whose plots a real browser renders.

The registry and log are written by hand with known figures (three cycles: a promotion, a
growth 2→4, a rejection; batches with dead letters), so every number on the page is checkable.
Headless Chromium (Debian ``chromium``; CI installs it) renders the page; skipped without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from flows.report import collect, render
from flows.settings import Settings
from stackrec.registry import Registry
from streaming.events import LOG_SCHEMA
from streaming.log import InteractionLog

T0 = 1_700_000_000.0  # the first version's registration time (s)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"
)


def log_batch(log: InteractionLog, first: int, valid: int, invalid: int, ts_ms: int) -> None:
    """A batch of ``valid`` events covering ``valid + invalid`` offsets of partition 0."""
    events = pa.table(
        {
            "user_id": [f"u{i % 7}" for i in range(valid)],
            "item_id": [f"i{i % 11}" for i in range(valid)],
            "ts": [ts_ms + i for i in range(valid)],
            "event_type": pa.nulls(valid, pa.string()),
            "weight": pa.nulls(valid, pa.float64()),
            "partition": pa.array(np.zeros(valid, np.int32)),
            "offset": pa.array(np.arange(first, first + valid)),
        },
        schema=LOG_SCHEMA,
    )
    log.append(events, {0: (first, first + valid + invalid - 1)})


def register(registry: Registry, created_s: float, **meta) -> int:
    version = registry.save({"w": torch.zeros(1)}, meta)
    path = registry.root / f"v{version:06d}" / "meta.json"
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, "created_s": created_s}))
    return version


def quality(hr: float, new_hr: float) -> dict:
    return {
        "all": {"n": 100, "hr@10": hr, "ndcg@10": hr / 2, "mrr@10": hr / 3},
        "new": {"n": 10, "hr@10": new_hr, "ndcg@10": new_hr / 2, "mrr@10": new_hr / 3},
    }


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """Three cycles of model "shop" on topic "clicks", and the log they read."""
    for key in [k for k in os.environ if k.startswith("STACKREC_")]:
        monkeypatch.delenv(key)
    home = tmp_path / "home"
    log = InteractionLog(home / "log" / "clicks")
    log_batch(log, 0, valid=100, invalid=10, ts_ms=int(T0 * 1000) - 600_000)
    log_batch(log, 110, valid=200, invalid=0, ts_ms=int(T0 * 1000) + 1_000)
    log_batch(log, 310, valid=150, invalid=5, ts_ms=int(T0 * 1000) + 1_200_000)
    log.mark_trained(2)
    registry = Registry(home / "models" / "shop")
    stages = {"consume": 1.0, "evaluate": 0.5, "train": 3.0, "register": 0.25}
    stacked = {
        "event": "stack",
        "operator": "adjacent",
        "mode": "function_preserving",
        "from_depth": 2,
        "to_depth": 4,
    }
    rejected = "holdout NDCG@10 fell 0.05 below serving"
    cycles = [  # (seconds after T0, depth, events, HR@10, new-item HR@10, freshness s, extra)
        (0, 2, 100, 0.1, 0.0, 60, {"growth": {"grow": False, "event": None}}),
        (600, 4, 200, 0.2, 0.05, 120, {"growth": {"grow": True, "event": stacked}}),
        (1800, 4, 150, 0.3, 0.1, 30, {"gate": {"promote": False, "reason": rejected}}),
    ]
    for after_s, depth, events, hr, new_hr, fresh_s, extra in cycles:
        created = T0 + after_s
        meta = {
            "depth": depth,
            "events_trained": events,
            "prequential": quality(hr, new_hr),
            "newest_event_ms": int((created - fresh_s) * 1000),
            "stages_s": stages | ({"stack": 0.5} if "growth" in extra and depth == 4 else {}),
            **extra,
        }
        register(registry, created, **meta)
    registry.promote(1)
    registry.promote(2)
    registry.reject(3, rejected)
    monkeypatch.setenv("STACKREC_HOME", str(home))
    monkeypatch.setenv("STACKREC_MODEL", "shop")
    monkeypatch.setenv("STACKREC_TOPIC", "clicks")
    return home


# --- the figures behind the page ------------------------------------------------------------------
def test_collect_reads_versions_and_batches_with_hand_computed_figures(home):
    data = collect(Settings.load(), now_s=T0 + 3600)
    assert data.serving == 2 and data.trained_through == 2
    assert [(s.id, s.rows, s.dead_lettered) for s in data.segments] == [
        (1, 100, 10),
        (2, 200, 0),
        (3, 150, 5),
    ]
    assert [(v.version, v.status, v.depth) for v in data.versions] == [
        (1, "promoted", 2),
        (2, "promoted", 4),
        (3, "rejected", 4),
    ]
    assert [v.growth for v in data.versions] == [None, "stack 2→4 (adjacent)", None]
    assert [v.freshness_s for v in data.versions] == [60.0, 120.0, 30.0]
    assert data.versions[2].reason == "holdout NDCG@10 fell 0.05 below serving"
    assert data.versions[1].stages_s["stack"] == 0.5
    assert data.versions[1].quality["hr@10"] == 0.2


def test_an_empty_run_directory_still_renders(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("STACKREC_")]:
        monkeypatch.delenv(key)
    page = render(collect(Settings(home=tmp_path / "nothing"), now_s=T0))
    assert page.count("<svg") == 0
    assert page.count('class="empty"') == 5
    assert "<th>serving version</th><td>none</td>" in page


def test_the_page_is_self_contained(home):
    page = render(collect(Settings.load(), now_s=T0 + 3600))
    assert page.count("<svg") == 5
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|url\((?!#)|@import", page)
    # the only URLs are SVG's XML namespaces: names of vocabularies, never fetched
    urls = set(re.findall(r"https?://[^\"' )]+", page))
    assert urls == {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls


def test_stackrec_report_writes_the_page(home, tmp_path):
    out = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"report on 3 versions, 3 batches: {out}"
    assert out.read_text().startswith("<!DOCTYPE html>")
    default = CliRunner().invoke(app, ["report"])
    assert default.exit_code == 0, default.output
    assert (home / "reports" / "shop.html").is_file()


# --- in a real browser ----------------------------------------------------------------------------
def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={cwd / 'profile'}", *args],
        cwd=cwd, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


@needs_chromium
def test_chromium_renders_every_plot(home, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render(collect(Settings.load(), now_s=T0 + 3600)))
    result = chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for key in ("quality", "depth", "events", "stages", "freshness"):
        figure = re.search(rf'<figure id="{key}">(.*?)</figure>', dom, re.S)
        assert figure, f"figure {key} missing from the rendered DOM"
        assert "<svg" in figure.group(1) and "<path" in figure.group(1), key
    quality = re.search(r'<figure id="quality">(.*?)</figure>', dom, re.S).group(1)
    assert "stack 2→4 (adjacent)" in quality and "rejected" in quality
    events = re.search(r'<figure id="events">(.*?)</figure>', dom, re.S).group(1)
    assert "dead-lettered" in events
    assert len(re.findall(r'<tr class="(promoted|rejected)">', dom)) == 3


@needs_chromium
def test_chromium_screenshot_shows_drawn_plots(home, tmp_path):
    from matplotlib.image import imread

    page = tmp_path / "report.html"
    page.write_text(render(collect(Settings.load(), now_s=T0 + 3600)))
    shot = tmp_path / "shot.png"
    result = chromium(
        f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri(), cwd=tmp_path
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1400, 1000)
    colored = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.2  # lines and bars, not text or white
    assert colored.mean() > 0.005, colored.mean()
