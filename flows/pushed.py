"""Metrics of short-lived runs (flow runs, CLI commands) on their way to the Pushgateway.

A run restores its group's last pushed values first (see ``monitoring.metrics.restore``), so
the totals keep counting across processes, then pushes on the way out, also when it fails.
An unreachable gateway is a warning, never a failed run: the work itself is done by then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger

from flows.settings import Settings
from monitoring import metrics

JOB = "stackrec"


@contextmanager
def pushed_metrics(settings: Settings) -> Iterator[None]:
    """Run the body with this model's pushed totals loaded, and push them afterwards."""
    restore_metrics(settings)
    try:
        yield
    finally:
        push_metrics(settings)


def restore_metrics(settings: Settings) -> None:
    if not settings.pushgateway:
        return
    try:
        metrics.restore(settings.pushgateway, job=JOB, instance=settings.model)
    except OSError as error:
        _warn(f"pushgateway {settings.pushgateway} unreadable ({error}); counters start at 0")


def push_metrics(settings: Settings) -> None:
    if not settings.pushgateway:
        return
    try:
        metrics.push(settings.pushgateway, job=JOB, instance=settings.model)
    except OSError as error:
        _warn(f"pushgateway {settings.pushgateway} unreachable ({error}); metrics not pushed")


def _warn(message: str) -> None:
    try:
        get_run_logger().warning(message)
    except MissingContextError:
        get_logger("stackrec").warning(message)
