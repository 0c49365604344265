"""`stackrec dlq inspect|replay`: look at dead letters, and re-drive them after a fix.

``inspect`` reads ``<topic>.dlq`` without joining a group (it changes nothing) and shows counts
by reason with the latest samples and where each came from (partition@offset). ``replay``
sends letters back to the main topic as they were first produced; the next cycle logs the ones
the fixed validation accepts and dead-letters the rest again, counting their replays. How far
each reason has been replayed is kept in a consumer group per reason, so a letter is re-driven
once: see ``streaming.deadletters``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from flows.errors import user_errors
from flows.pushed import pushed_metrics
from flows.settings import Settings
from monitoring import metrics
from streaming import deadletters
from streaming.topics import dead_letter_topic

app = typer.Typer(no_args_is_help=True, help="Inspect and replay dead-lettered messages.")


def _settings() -> Settings:
    from flows.cli import settings

    return settings()


def _print(payload: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else text)


@app.command()
@user_errors
def inspect(
    limit: Annotated[int, typer.Option(min=0, help="samples shown per reason")] = 5,
    reason: Annotated[str | None, typer.Option(help="only this reason")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Dead letters by reason, with samples and their source partition and offset."""
    s = _settings()
    letters = deadletters.read_dead_letters(s.kafka(), s.topic)
    if reason is not None:
        letters = [x for x in letters if x.reason == reason]
    summary = {"topic": dead_letter_topic(s.topic), **deadletters.summarize(letters, limit)}
    _print(summary, as_json, _describe(summary))


@app.command()
@user_errors
def replay(
    reason: Annotated[str | None, typer.Option(help="only letters with this reason")] = None,
    max_replays: Annotated[
        int, typer.Option(min=1, help="pass over letters that came back this many times")
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Re-drive dead letters to the main topic (after a fix); each letter at most once."""
    s = _settings()
    with pushed_metrics(s):
        result = deadletters.replay(s.kafka(), s.topic, s.group_id, reason, max_replays)
        metrics.DEAD_LETTERS_REPLAYED.labels(s.topic).inc(result.replayed)
    payload = {"topic": s.topic, **result.__dict__}
    text = (
        f"replayed {result.replayed} dead letters to {s.topic}"
        + "".join(f"\n  {r}: {n}" for r, n in sorted(result.by_reason.items()))
        + f"\nskipped: {result.already} replayed before, {result.given_up} replayed "
        f"{max_replays} times already, {result.truncated} truncated"
    )
    _print(payload, as_json, text)


def _describe(summary: dict[str, Any]) -> str:
    lines = [f"{summary['topic']}: {summary['messages']} messages ({summary['letters']} letters)"]
    for reason, group in summary["reasons"].items():
        lines.append(f"{reason}: {group['count']}")
        for sample in group["samples"]:
            lines.append(f"  {sample['source']}  {sample['detail'][:80]}  {sample['value']!r:.80}")
    return "\n".join(lines)
