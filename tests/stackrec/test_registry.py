"""The file registry: immutable versions, one serving pointer, promotion and rollback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from stackrec.registry import Registry, RegistryError


def payload(value: float) -> dict:
    return {"weights": torch.full((2, 3), value), "config": {"dim": 3}}


def test_versions_are_numbered_and_load_with_weights_only(tmp_path):
    registry = Registry(tmp_path)
    first = registry.save(payload(1.0), {"trained_through": 3})
    second = registry.save(payload(2.0), {"trained_through": 5})
    assert (first, second) == (1, 2)
    assert registry.versions() == [1, 2]
    assert torch.equal(registry.load(2)["weights"], torch.full((2, 3), 2.0))
    assert registry.meta(1)["trained_through"] == 3
    assert registry.meta(1)["status"] == "candidate"
    assert registry.current() is None


def test_promote_then_rollback_moves_only_the_pointer(tmp_path):
    registry = Registry(tmp_path)
    for value in (1.0, 2.0, 3.0):
        registry.promote(registry.save(payload(value), {}))
    assert registry.current() == 3
    assert registry.rollback() == 2
    assert registry.current() == 2
    assert registry.meta(3)["status"] == "rolled_back"
    assert registry.rollback() == 1  # never back to a rolled-back version
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()


def test_rejected_versions_are_kept_with_their_reason(tmp_path):
    registry = Registry(tmp_path)
    version = registry.save(payload(1.0), {})
    registry.reject(version, "NDCG@10 fell 30%")
    meta = registry.meta(version)
    assert (meta["status"], meta["reason"]) == ("rejected", "NDCG@10 fell 30%")


def test_missing_or_tampered_versions_raise_registry_error(tmp_path):
    registry = Registry(tmp_path)
    with pytest.raises(RegistryError, match="version 7 not found"):
        registry.load(7)
    version = registry.save(payload(1.0), {})
    (tmp_path / f"v{version:06d}" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RegistryError, match="unreadable"):
        registry.load(version)


def test_an_interrupted_save_leaves_no_visible_version(tmp_path):
    registry = Registry(tmp_path)
    (tmp_path / ".tmp-v000001-999").mkdir(parents=True)  # what a crash mid-save leaves
    assert registry.versions() == []
    assert registry.save(payload(1.0), {}) == 1


def test_the_serving_lock_excludes_other_processes_and_nests_within_one(tmp_path):
    """A second process waits for the holder (here ~1 s); inside one process the lock nests,
    so a flow's task may save while the flow holds it."""
    registry = Registry(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from stackrec.registry import Registry\n"
            f"with Registry({str(tmp_path)!r}).serving_lock():\n"
            "    print('held', flush=True); time.sleep(1.5)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    began = time.monotonic()
    with registry.serving_lock(), registry.serving_lock():
        waited = time.monotonic() - began
        version = registry.save({"w": torch.zeros(1)}, {})
    holder.wait(timeout=30)
    assert waited > 0.5 and version == 1
