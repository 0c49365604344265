"""``stackrec report``: one self-contained HTML page about a model, for people without Grafana.

Everything comes from files the pipeline already keeps: the registry (one ``meta.json`` per
cycle that registered a version: prequential quality, depth, growth and gate decisions, stage
timings, the newest event trained on; ``status.json``: promoted or rejected) and the
interaction log's manifest (one segment per ingested batch: valid rows and the Kafka offsets it
covers, so offsets minus rows are the dead letters). Plots are inline SVG drawn by matplotlib
with text kept as text; the page loads nothing from anywhere, so it can be mailed or archived.
"""

from __future__ import annotations

import html
import io
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.settings import Settings
from stackrec.registry import Registry
from streaming.log import InteractionLog, Segment

STAGES = (
    "consume",
    "validate",
    "log",
    "sequences",
    "evaluate",
    "stack",
    "train",
    "gate",
    "cool_down",
)
FIGURES = ("quality", "depth", "events", "stages", "freshness")


@dataclass(frozen=True)
class VersionRow:
    """One registered version (one cycle that trained), as the report shows it."""

    version: int
    created_s: float
    status: str  # promoted | rejected | rolled_back | candidate
    reason: str
    depth: int
    events_trained: int
    quality: dict[str, float]  # prequential, all items: hr@10, ndcg@10, mrr@10, n
    quality_new: dict[str, float]  # prequential, items first seen in the batch
    growth: str | None  # "stack 2→4 (adjacent)" when this cycle deepened the model
    stages_s: dict[str, float]
    freshness_s: float | None  # age of the newest trained event when the version was made


@dataclass(frozen=True)
class SegmentRow:
    id: int
    created_s: float
    rows: int
    dead_lettered: int


@dataclass(frozen=True)
class ReportData:
    model: str
    topic: str
    generated_s: float
    serving: int | None
    versions: list[VersionRow] = field(default_factory=list)
    segments: list[SegmentRow] = field(default_factory=list)
    trained_through: int = 0

    @property
    def serving_row(self) -> VersionRow | None:
        return next((v for v in self.versions if v.version == self.serving), None)


# --- the command -------------------------------------------------------------------------------
def report(
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write [default: <home>/reports/<model>.html]")
    ] = None,
) -> None:
    """Write one self-contained HTML page: quality, depth, events, stage times, freshness."""
    from flows.cli import settings as cli_settings  # the flags of `stackrec --model ...`

    try:
        import matplotlib  # noqa: F401  (draws the plots)
    except ImportError:
        typer.echo("error: stackrec report draws with matplotlib: pip install matplotlib", err=True)
        raise typer.Exit(1) from None
    s = cli_settings()
    path = out or s.home / "reports" / f"{s.model}.html"
    data = collect(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data), encoding="utf-8")
    typer.echo(f"report on {len(data.versions)} versions, {len(data.segments)} batches: {path}")


# --- data ----------------------------------------------------------------------------------------
def collect(settings: Settings, now_s: float | None = None) -> ReportData:
    """What the page shows, read from the registry and the log of ``settings``."""
    registry = Registry(settings.models_dir)
    manifest = InteractionLog(settings.log_dir).manifest()
    return ReportData(
        model=settings.model,
        topic=settings.topic,
        generated_s=time.time() if now_s is None else now_s,
        serving=registry.current(),
        versions=[version_row(registry.meta(v)) for v in registry.versions()],
        segments=[segment_row(s) for s in manifest.segments],
        trained_through=manifest.trained_through,
    )


def version_row(meta: dict[str, Any]) -> VersionRow:
    """A version's meta.json + status.json; keys a version predates are shown as missing."""
    prequential = meta.get("prequential") or {}
    event = (meta.get("growth") or {}).get("event")
    growth = (
        f"stack {event['from_depth']}→{event['to_depth']} ({event.get('operator', '?')})"
        if event
        else None
    )
    newest_ms = meta.get("newest_event_ms")
    return VersionRow(
        version=int(meta["version"]),
        created_s=float(meta["created_s"]),
        status=meta.get("status", "candidate"),
        reason=meta.get("reason") or (meta.get("gate") or {}).get("reason", ""),
        depth=int(meta.get("depth", 0)),
        events_trained=int(meta.get("events_trained", 0)),
        quality=prequential.get("all", {}),
        quality_new=prequential.get("new", {}),
        growth=growth,
        stages_s=dict(meta.get("stages_s") or {}),
        freshness_s=None if newest_ms is None else max(0.0, meta["created_s"] - newest_ms / 1000),
    )


def segment_row(segment: Segment) -> SegmentRow:
    """Offsets are inclusive ranges of every message, valid or not; rows are the valid ones."""
    covered = sum(last - first + 1 for first, last in segment.offsets.values())
    return SegmentRow(segment.id, segment.created_s, segment.rows, covered - segment.rows)


# --- rendering -----------------------------------------------------------------------------------
def render(data: ReportData) -> str:
    """The whole page; every figure is an inline ``<svg>`` inside ``<figure id=...>``."""
    figures = {
        "quality": ("Prequential quality per cycle", _quality_figure),
        "depth": ("Model depth over time", _depth_figure),
        "events": ("Events and dead letters per batch", _events_figure),
        "stages": ("Cycle duration by stage", _stages_figure),
        "freshness": ("Freshness at registration", _freshness_figure),
    }
    body = [_summary(data)]
    for key, (title, draw) in figures.items():
        svg = _svg(draw, data) if _has_data(key, data) else None
        content = svg or f'<p class="empty">No data yet for {html.escape(title.lower())}.</p>'
        body.append(f'<figure id="{key}"><figcaption>{title}</figcaption>{content}</figure>')
    body.append(_version_table(data))
    title = f"stackrec report: {html.escape(data.model)}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_CSS}</style></head>"
        f"<body><h1>{title}</h1>{''.join(body)}</body></html>\n"
    )


def _has_data(key: str, data: ReportData) -> bool:
    if key == "events":
        return bool(data.segments)
    if key == "stages":
        return any(v.stages_s for v in data.versions)
    if key == "freshness":
        return any(v.freshness_s is not None for v in data.versions)
    return bool(data.versions)


def _summary(data: ReportData) -> str:
    serving = data.serving_row
    now = data.generated_s
    last = max((v.created_s for v in data.versions), default=None)
    rows = {
        "model": data.model,
        "topic": data.topic,
        "generated": _when(now),
        "serving version": "none" if data.serving is None else str(data.serving),
        "depth (serving)": "–" if serving is None else str(serving.depth),
        "versions": (
            f"{len(data.versions)} ({sum(v.status == 'promoted' for v in data.versions)} "
            f"promoted, {sum(v.status == 'rejected' for v in data.versions)} rejected)"
        ),
        "last cycle that trained": "never"
        if last is None
        else f"{_when(last)} ({_ago(now - last)})",
        "batches in the log": (
            f"{len(data.segments)} ({sum(s.rows for s in data.segments)} events, "
            f"{sum(s.dead_lettered for s in data.segments)} dead letters); "
            f"trained through batch {data.trained_through}"
        ),
        "freshness (serving)": (
            "–"
            if serving is None or serving.freshness_s is None
            else f"{_ago(serving.freshness_s)} at registration"
        ),
    }
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows.items()
    )
    return f'<table id="summary">{cells}</table>'


def _version_table(data: ReportData) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("version", "created", "status", "depth", "events", "HR@10", "NDCG@10", "growth")
    )
    rows = []
    for v in data.versions:
        cells = (
            str(v.version),
            _when(v.created_s),
            v.status + (f": {v.reason}" if v.reason and v.status != "promoted" else ""),
            str(v.depth),
            str(v.events_trained),
            _fmt(v.quality.get("hr@10")),
            _fmt(v.quality.get("ndcg@10")),
            v.growth or "",
        )
        row = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        rows.append(f'<tr class="{html.escape(v.status)}">{row}</tr>')
    return (
        f'<table id="versions"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _svg(draw, data: ReportData) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with plt.rc_context({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "stackrec"}):
        fig, ax = plt.subplots(figsize=(8, 3.6))
        try:
            draw(ax, data)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # below the plot, clear of the data
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5, fontsize=7)
            fig.tight_layout()
            buffer = io.StringIO()
            fig.savefig(buffer, format="svg")
        finally:
            plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline in HTML
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)  # RDF about matplotlib


def _quality_figure(ax, data: ReportData) -> None:
    versions = [v.version for v in data.versions]
    for metric, style in (("hr@10", "-o"), ("ndcg@10", "-s"), ("mrr@10", "-^")):
        ax.plot(versions, [v.quality.get(metric, float("nan")) for v in data.versions], style,
                label=f"{metric.upper()} (all)", markersize=4)  # fmt: skip
    ax.plot(versions, [v.quality_new.get("hr@10", float("nan")) for v in data.versions], "--",
            label="HR@10 (new items)", color="gray")  # fmt: skip
    for v in data.versions:
        if v.growth:
            ax.axvline(v.version, color="tab:purple", linestyle=":")
            ax.annotate(v.growth, (v.version, 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", color="tab:purple")  # fmt: skip
    for status, marker, color in (("promoted", "^", "tab:green"), ("rejected", "x", "tab:red")):
        chosen = [v.version for v in data.versions if v.status == status]
        if chosen:
            ax.plot(chosen, [0] * len(chosen), marker, color=color, linestyle="none",
                    label=status, clip_on=False)  # fmt: skip
    ax.set(xlabel="version (one per cycle that trained)", ylabel="before training on the batch")
    ax.set_ylim(bottom=0)
    _integer_ticks(ax.xaxis)


def _depth_figure(ax, data: ReportData) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    times = [datetime.fromtimestamp(v.created_s, UTC) for v in data.versions]
    ax.step(times, [v.depth for v in data.versions], where="post", marker="o")
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    for v, t in zip(data.versions, times, strict=True):
        if v.growth:
            ax.annotate(v.growth, (t, v.depth), textcoords="offset points", xytext=(4, 4),
                        color="tab:purple")  # fmt: skip
    ax.set(xlabel="registered (UTC)", ylabel="residual blocks")
    ax.set_ylim(0, max(v.depth for v in data.versions) * 1.3 + 0.5)
    _integer_ticks(ax.yaxis)


def _events_figure(ax, data: ReportData) -> None:
    ids = [s.id for s in data.segments]
    rows = [s.rows for s in data.segments]
    ax.bar(ids, rows, label="logged (valid)", color="tab:blue")
    ax.bar(ids, [s.dead_lettered for s in data.segments], bottom=rows, label="dead-lettered",
           color="tab:red")  # fmt: skip
    ax.axvline(data.trained_through + 0.5, color="gray", linestyle="--", label="trained through")
    ax.set(xlabel="log batch (segment)", ylabel="events")
    ax.set_ylim(0, max(s.rows + s.dead_lettered for s in data.segments) * 1.15 + 1)
    _integer_ticks(ax.xaxis)


def _stages_figure(ax, data: ReportData) -> None:
    versions = [v.version for v in data.versions]
    names = [s for s in STAGES if any(s in v.stages_s for v in data.versions)]
    names += sorted({k for v in data.versions for k in v.stages_s} - set(names))
    bottom = [0.0] * len(versions)
    for name in names:
        seconds = [v.stages_s.get(name, 0.0) for v in data.versions]
        ax.bar(versions, seconds, bottom=bottom, label=name)
        bottom = [b + s for b, s in zip(bottom, seconds, strict=True)]
    ax.set(xlabel="version", ylabel="seconds (up to registration)")
    ax.margins(y=0.1)
    _integer_ticks(ax.xaxis)


def _freshness_figure(ax, data: ReportData) -> None:
    shown = [v for v in data.versions if v.freshness_s is not None]
    ax.plot([v.version for v in shown], [v.freshness_s / 60 for v in shown], "-o",
            label="age of the newest trained event")  # fmt: skip
    ax.set(xlabel="version", ylabel="minutes")
    ax.set_ylim(bottom=0)
    _integer_ticks(ax.xaxis)


def _integer_ticks(axis) -> None:
    """Versions and batches are whole numbers: no 1.25 ticks."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.4em; }
figure { margin: 1.5em 0; }
figcaption { font-weight: 600; margin-bottom: .3em; }
figure svg { width: 100%; height: auto; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; font-size: .9em; }
tr.rejected td { color: #a00; }
.empty { color: #888; }
"""
