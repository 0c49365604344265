"""`stackrec serve` against a real local Prefect server: deploy from prefect.yaml, trigger the
cycle deployment, the worker runs it, its model is in the registry and Redis; SIGTERM stops
every process serve started. Plus the pieces that need no server: the environment flow runs
get, the worker's two-SIGINT stop, and the errors a user can cause.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from pydantic import SecretStr

from flows import serve
from flows.cli import replay_table
from flows.settings import Settings
from stackrec.registry import Registry
from stackrec.synthetic import StreamConfig, generate
from streaming import services
from streaming.services import ServiceError
from streaming.serving import current_version, read_vectors

ROOT = Path(__file__).resolve().parents[2]
STACKREC = Path(sys.executable).parent / "stackrec"
N_EVENTS = 300
DEPLOYMENT = "continual-cycle/continual-cycle"


# --- pieces -------------------------------------------------------------------------------------
def test_flow_runs_get_the_settings_and_prefect_home_through_the_environment(tmp_path):
    settings = Settings(
        home=tmp_path / "home", topic="clicks", train_steps=7, redis_password=SecretStr("s3")
    )
    env = serve.prefect_env(settings)
    assert env["STACKREC_HOME"] == str((tmp_path / "home").absolute())
    assert env["STACKREC_TOPIC"] == "clicks"
    assert env["STACKREC_TRAIN_STEPS"] == "7"
    assert env["STACKREC_REDIS_PASSWORD"] == "s3"  # revealed for the worker, not '**********'
    assert "STACKREC_BATCH_SIZE" not in env  # defaults stay defaults
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    if "PREFECT_HOME" not in os.environ:
        assert env["PREFECT_HOME"] == str((tmp_path / "home" / "run" / "prefect").absolute())


def test_the_project_is_found_from_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no prefect.yaml here: falls back to the checkout
    assert serve.project_dir() == ROOT


def test_a_busy_server_port_is_refused_with_what_to_do(tmp_path):
    with _listen() as p:
        config = serve.ServeConfig(prefect_port=p)
        with pytest.raises(ServiceError, match=rf"127.0.0.1:{p} is busy: set PREFECT_API_URL"):
            serve.start_server(config, {}, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing started, no log


class _listen:
    """A loopback socket listening on a free port, for the duration of a with block."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def test_the_worker_is_stopped_with_two_sigints(tmp_path):
    """A stand-in process that, like `prefect worker start`, exits only on the second SIGINT."""
    script = textwrap.dedent(
        """
        import signal, sys, time
        seen = []
        def on_int(signum, frame):
            seen.append(signum)
            print(f"sigint {len(seen)}", flush=True)
            if len(seen) == 2:
                sys.exit(0)
        signal.signal(signal.SIGINT, on_int)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """
    )
    child = serve._spawn(
        "two-sigints", [sys.executable, "-c", script], {}, tmp_path, tmp_path, (signal.SIGINT,) * 2
    )
    log = tmp_path / "two-sigints.log"
    deadline = time.monotonic() + 10
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    serve._stop(child, timeout_s=5)
    assert child.process.returncode == 0  # exited by itself, not killed
    assert log.read_text().split() == ["ready", "sigint", "1", "sigint", "2"]
    assert time.monotonic() - started < 4


def test_a_child_that_ignores_signals_is_killed(tmp_path):
    script = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    child = serve._spawn(
        "stubborn", [sys.executable, "-c", script], {}, tmp_path, tmp_path, (signal.SIGINT,)
    )
    time.sleep(0.5)
    serve._stop(child, timeout_s=0.5)
    assert child.process.returncode == -signal.SIGKILL


# --- the real thing -------------------------------------------------------------------------------
def wait_for_line(path: Path, pattern: str, process: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        if process.poll() is not None:
            raise AssertionError(f"stackrec serve exited {process.returncode}:\n{text}")
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} within {timeout_s} s:\n{path.read_text()}")


@pytest.mark.integration
def test_serve_deploys_runs_a_triggered_cycle_and_stops_cleanly(stack, tmp_path):
    table = generate(StreamConfig(N_EVENTS, 40, 120, seed=7))
    replay_table(Settings.load(), table, progress=False)
    prefect_port, metrics_port = services.free_port(), services.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "STACKREC_METRICS_PORT": str(metrics_port),
        "STACKREC_TRAIN_STEPS": "5",
        "STACKREC_DIM": "16",
        "STACKREC_BATCH_MAX_WAIT_S": "5",
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick the run up at once
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    out = tmp_path / "serve.out"
    with open(out, "wb") as sink:
        process = subprocess.Popen(
            [str(STACKREC), "serve", "--prefect-port", str(prefect_port), "--no-schedules"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        text = wait_for_line(out, "serving until Ctrl-C", process, timeout_s=150)
        assert "deployed (paused) continual-cycle/continual-cycle, full-evaluation/" in text
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
        assert len(pids) == 2  # the server and the worker
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            assert b"stackrec_events_logged_total" in response.read()

        api = {
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "PREFECT_HOME": str(stack.home / "run" / "prefect"),
        }
        params = json.dumps({"overrides": {"batch_max_events": 10_000}})
        run = subprocess.run(
            serve.prefect("deployment", "run", DEPLOYMENT, "--params", params, "--watch"),
            env={**env, **api},
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "Completed" in run.stdout

        registry = Registry(stack.home / "models" / stack.model)
        assert registry.current() == 1
        assert registry.meta(1)["events_trained"] == N_EVENTS
        assert current_version(stack.redis) == 1
        version, items = read_vectors(stack.redis, "items")
        assert version == 1
        assert set(items) == set(table.column("item_id").to_pylist())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, out.read_text()
    assert "stopping" in out.read_text()
    for pid in pids:
        assert not _alive(pid)
    assert not services.port_open("127.0.0.1", prefect_port)
    assert not services.port_open("127.0.0.1", metrics_port)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
    except OSError:
        return False
    return state != "Z"
