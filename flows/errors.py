"""The errors a user can cause, and how every command reports them: one line, exit 1."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from flows.settings import SettingsError
from stackrec.checkpoint import CheckpointError
from stackrec.datasets import DatasetError
from stackrec.registry import RegistryError
from stackrec.stacking import StackingError
from streaming.events import InvalidEvent
from streaming.log import LogError
from streaming.redis_store import NotPublished, ServingUnavailable
from streaming.services import ServiceError
from streaming.topics import BrokerUnavailable

USER_ERRORS = (
    SettingsError,
    DatasetError,
    ServiceError,
    BrokerUnavailable,
    ServingUnavailable,
    NotPublished,
    RegistryError,
    CheckpointError,
    StackingError,
    LogError,
    InvalidEvent,
    FileNotFoundError,
)


def user_errors(command: Callable) -> Callable:
    """Turn the errors a user can cause into one line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper
