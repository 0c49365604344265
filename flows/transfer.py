"""Transfer, as a flow and as ``stackrec transfer``: StackRec's cross-domain scenario.

    read the source file -> pretrain a shallow model on it
    -> map target items to source items (an id map, identical ids, or titles)
    -> a target model: the source's blocks, source vectors for mapped items, fresh ones else
    -> fine-tune and stack on the target (the log, or a file) -> register -> publish -> promote

The target's stages follow the same depth schedule as ``stackrec bootstrap``; the source is
trained at the schedule's first (shallow) depth only, since depth is what the target's data
pays for.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import bootstrap as scratch
from flows.cycle import publish_version
from flows.pushed import pushed_metrics
from flows.settings import Settings
from monitoring import metrics
from stackrec.continual import Learner
from stackrec.datasets import read_interactions
from stackrec.progressive import ProgressiveConfig
from stackrec.splits import leave_one_out
from stackrec.transfer import (
    ItemMapping,
    TransferError,
    map_by_ids,
    map_by_titles,
    read_id_map,
    read_titles,
    transplant,
)

_LOCAL = {"cache_policy": NO_CACHE}
CATALOGUES = ("movies.dat", "u.item")  # looked for beside a data file when --map titles


@flow(name="transfer")
def transfer(
    source: str,
    overrides: dict[str, Any] | None = None,
    source_format: str = "auto",
    mapping: str = "titles",
    source_items: str | None = None,
    target: str | None = None,
    target_format: str = "auto",
    target_items: str | None = None,
    schedule: str = "2,4,8",
    epochs_per_stage: float = 2.0,
    source_epochs: float = 2.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Pretrain on ``source``, map items, fine-tune and stack on the target, serve the result.

    ``mapping`` is ``titles``, ``ids`` or the path of a ``source_id,target_id`` CSV. The
    target is the interaction log unless ``target`` names a file.
    """
    settings = Settings.load(**(overrides or {}))
    with pushed_metrics(settings):
        started = time.perf_counter()
        config = scratch.stage_config(settings, schedule, epochs_per_stage)
        source_table = read_interactions(source, source_format)
        target_table, through = read_target(settings, target, target_format)

        pretrained = scratch.fresh_learner(settings, config.schedule[0])
        source_data = scratch.prepare(pretrained, source_table)
        source_split = leave_one_out(source_data.train_sequences, settings.max_len)
        first = (config.schedule[0],)
        shallow = ProgressiveConfig(first, source_epochs, config.operator, config.mode)
        source_result = scratch.train(settings, pretrained, source_split, shallow, progress)

        items = target_table.column("item_id").unique().to_pylist()
        item_map = map_items(pretrained, items, mapping, source, source_items, target, target_items)
        learner = scratch.fresh_learner(settings, config.schedule[0])
        data = scratch.prepare(learner, target_table)
        learner.model = transplant(pretrained.model, pretrained.vocab, learner.vocab, item_map)
        split = leave_one_out(data.train_sequences, settings.max_len)
        result = scratch.train(settings, learner, split, config, progress)

        report = scratch.summarise(settings, learner, split, result, "transfer", target_table)
        report["source"] = {
            "file": str(source),
            "events": source_table.num_rows,
            "items": len(pretrained.vocab) - 1,
            "depth": source_result.model.depth,
            "stages": source_result.as_dicts(),
            "training": {"seconds": round(source_result.train_seconds, 3),
                         "targets": source_result.targets},
        }  # fmt: skip
        report["mapping"] = {"how": mapping, **item_map.summary()}
        report["target"] = str(target) if target else "log"
        version = scratch.register(settings, learner, report, through)
        with settings.registry().serving_lock():  # not halfway through a cycle's promotion
            report["published"] = publish_version(settings, learner, data, version)
            promote_target(settings, version, through, from_log=target is None)
        report |= {"version": version, "outcome": "published"}
        report["wall_s"] = round(time.perf_counter() - started, 3)
    return report


@task(**_LOCAL)
def read_target(settings: Settings, target: str | None, fmt: str) -> tuple[pa.Table, int]:
    """The target events: a file (trained-through 0: the log is not involved) or the log."""
    if target is not None:
        return read_interactions(target, fmt), 0
    return scratch.read_whole_log.fn(settings)


@task(**_LOCAL)
def map_items(
    pretrained: Learner,
    target_items: list[str],
    how: str,
    source: str,
    source_catalogue: str | None,
    target: str | None,
    target_catalogue: str | None,
) -> ItemMapping:
    """Target item id -> source item id, by ``how`` (titles, ids or a CSV path)."""
    source_ids = pretrained.vocab.ids[1:]
    if how == "ids":
        return map_by_ids(source_ids, target_items)
    if how != "titles":
        return read_id_map(how, source_ids, target_items)
    source_titles = read_titles(source_catalogue or _catalogue_beside(source, "--source-items"))
    known = set(source_ids)
    source_titles = {i: t for i, t in source_titles.items() if i in known}
    if target_catalogue is None and target is None:
        raise TransferError("--map titles with the log as target needs --target-items FILE")
    titles = read_titles(target_catalogue or _catalogue_beside(target, "--target-items"))
    return map_by_titles(source_titles, titles, target_items)


@task(**_LOCAL)
def promote_target(settings: Settings, version: int, through: int, from_log: bool) -> None:
    """Serve ``version``; move the log's trained-through cursor only if it trained on the log."""
    if from_log:
        scratch.promote.fn(settings, version, through)
    else:
        settings.registry().promote(version)
        metrics.PUBLISHED_VERSION.labels(settings.model).set(version)


def _catalogue_beside(data: str | None, flag: str) -> Path:
    """The MovieLens catalogue next to a ratings file: movies.dat, u.item or <stem>.item."""
    folder = Path(str(data)).parent
    stem = Path(str(data)).name.split(".")[0]
    candidates = [folder / name for name in CATALOGUES] + [folder / f"{stem}.item"]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise TransferError(f"--map titles: no catalogue beside {data} ({CATALOGUES}); pass {flag}")
    return found


def transfer_command(
    source: Annotated[Path, typer.Option(help="source-domain interactions file")],
    source_format: Annotated[
        str, typer.Option(help="auto|movielens|inter|csv|parquet|lines")
    ] = "auto",
    map_: Annotated[
        str, typer.Option("--map", help="titles | ids | PATH of a source_id,target_id CSV")
    ] = "titles",
    source_items: Annotated[
        Path | None, typer.Option(help="source catalogue with titles (default: beside --source)")
    ] = None,
    target: Annotated[
        Path | None, typer.Option(help="target interactions file (default: the log)")
    ] = None,
    target_format: Annotated[str, typer.Option(help="format of --target")] = "auto",
    target_items: Annotated[
        Path | None, typer.Option(help="target catalogue with titles (default: beside --target)")
    ] = None,
    schedule: Annotated[str, typer.Option(help="target stage depths, e.g. 2,4,8")] = "2,4,8",
    epochs_per_stage: Annotated[float, typer.Option(min=0.01, help="target passes/stage")] = 2.0,
    source_epochs: Annotated[float, typer.Option(min=0.01, help="source passes")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Pretrain on a source domain, map its items to the target's, fine-tune and stack there."""
    from flows.cli import _flow_overrides, settings

    def run() -> dict[str, Any]:
        s = settings()
        scratch.stage_config(s, schedule, epochs_per_stage)  # a bad schedule fails first
        if target is None:
            scratch.read_whole_log.fn(s)  # so does an empty log, before Prefect starts
        return transfer(
            source=str(source),
            overrides=_flow_overrides(s),
            source_format=source_format,
            mapping=map_,
            source_items=None if source_items is None else str(source_items),
            target=None if target is None else str(target),
            target_format=target_format,
            target_items=None if target_items is None else str(target_items),
            schedule=schedule,
            epochs_per_stage=epochs_per_stage,
            source_epochs=source_epochs,
            progress=True,
        )

    scratch.run_command(run, as_json)
