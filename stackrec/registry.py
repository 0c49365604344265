"""A file registry of immutable model versions, and one pointer to the serving one.

Layout::

    <root>/v000007/checkpoint.pt   weights, optimizer state, config, vocabulary (weights_only)
    <root>/v000007/meta.json       lineage and metrics, written once
    <root>/v000007/status.json     candidate | promoted | rejected (+ reason); may change
    <root>/CURRENT                 the serving version; replaced atomically
    <root>/history.json            promotions in order, so rollback knows what came before

A version directory is assembled under a temporary name and renamed into place, so a crash
never leaves a half-written version; promotion and rollback rewrite one small file.

Several processes change one registry: the scheduled cycle, an on-demand bootstrap or transfer,
a person's ``models rollback``. Each holds ``serving_lock()`` (an flock on ``<root>/.lock``)
while it publishes and promotes, so one never overwrites another's promotion halfway; a cycle
also checks, under the lock, that what serves is still the model it started from.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"


class RegistryError(LookupError):
    """A version is missing, unreadable, or cannot take the requested transition."""


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @contextmanager
    def serving_lock(self) -> Iterator[None]:
        """Hold the registry's serving state exclusively, across processes; re-entrant
        within one process (a flow's tasks may nest it). Blocks while another holds it:
        holders publish and promote, seconds at most."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _held_locks_guard:
            lock = _held_locks.setdefault(self.root.resolve(), _ProcessLock())
        with lock.held(self.root / ".lock"):
            yield

    # --- versions --------------------------------------------------------------------------
    def versions(self) -> list[int]:
        if not self.root.exists():
            return []
        return sorted(int(p.name[1:]) for p in self.root.glob("v[0-9]*") if p.is_dir())

    def save(self, payload: dict[str, Any], meta: dict[str, Any]) -> int:
        """Store a new immutable version (status ``candidate``); returns its number."""
        with self.serving_lock():  # two savers must not pick the same number
            return self._save(payload, meta)

    def _save(self, payload: dict[str, Any], meta: dict[str, Any]) -> int:
        version = (self.versions() or [0])[-1] + 1
        tmp = self.root / f".tmp-v{version:06d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(payload, tmp / CHECKPOINT)
        body = {"version": version, "created_s": time.time(), **meta}
        (tmp / "meta.json").write_text(json.dumps(body, indent=2, default=str))
        (tmp / "status.json").write_text(json.dumps({"status": "candidate"}))
        os.replace(tmp, self._dir(version))
        return version

    def load(self, version: int) -> dict[str, Any]:
        path = self._dir(version) / CHECKPOINT
        if not path.exists():
            raise RegistryError(f"version {version} not found in {self.root}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a corrupt or foreign file
            raise RegistryError(f"version {version} is unreadable: {error}") from None

    def meta(self, version: int) -> dict[str, Any]:
        path = self._dir(version) / "meta.json"
        if not path.exists():
            raise RegistryError(f"version {version} not found in {self.root}")
        status = json.loads((self._dir(version) / "status.json").read_text())
        return {**json.loads(path.read_text()), **status}

    # --- serving pointer -------------------------------------------------------------------
    def current(self) -> int | None:
        path = self.root / "CURRENT"
        return int(path.read_text()) if path.exists() else None

    def promote(self, version: int) -> None:
        """Make ``version`` the serving one."""
        self.meta(version)  # raises if missing
        self._set_status(version, "promoted")
        history = self.history()
        history.append(version)
        _write_atomically(self.root / "history.json", json.dumps(history))
        _write_atomically(self.root / "CURRENT", str(version))

    def reject(self, version: int, reason: str) -> None:
        self._set_status(version, "rejected", reason)

    def rollback_target(self) -> int:
        """The version a rollback would serve: the last one promoted before the current one."""
        current = self.current()
        earlier = [
            v
            for v in self.history()
            if v != current and self.meta(v)["status"] not in ("rolled_back", "rejected")
        ]
        if current is None or not earlier:
            raise RegistryError("nothing to roll back to: fewer than two promoted versions")
        return earlier[-1]

    def rollback(self) -> int:
        """Serve the version promoted before the current one; returns it."""
        target = self.rollback_target()
        self._set_status(self.current(), "rolled_back")
        history = self.history()
        history.append(target)
        _write_atomically(self.root / "history.json", json.dumps(history))
        _write_atomically(self.root / "CURRENT", str(target))
        return target

    def history(self) -> list[int]:
        path = self.root / "history.json"
        return json.loads(path.read_text()) if path.exists() else []

    def _set_status(self, version: int, status: str, reason: str | None = None) -> None:
        body = {"status": status, "status_s": time.time()}
        if reason:
            body["reason"] = reason
        _write_atomically(self._dir(version) / "status.json", json.dumps(body))

    def _dir(self, version: int) -> Path:
        return self.root / f"v{version:06d}"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _ProcessLock:
    """An flock on a file that threads of one process share and may take again: the first
    taker locks the file, the last one out unlocks it."""

    def __init__(self) -> None:
        self._mutex = threading.RLock()
        self._depth = 0
        self._handle = None

    @contextmanager
    def held(self, path: Path) -> Iterator[None]:
        with self._mutex:
            if self._depth == 0:
                self._handle = open(path, "a")  # noqa: SIM115 - closed when the last one leaves
                fcntl.flock(self._handle, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._handle, fcntl.LOCK_UN)
                    self._handle.close()
                    self._handle = None


_held_locks: dict[Path, _ProcessLock] = {}
_held_locks_guard = threading.Lock()
