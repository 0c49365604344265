"""Local services: start a real Redis, know it is ours, stop exactly it, explain failures."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from streaming import services
from streaming.services import ServiceError, ServiceRecord

HOST = "127.0.0.1"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
    except OSError:
        return False
    return state != "Z"


def wait_dead(pid: int, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


def start_redis(name: str, run_dir: Path) -> ServiceRecord:
    port = services.free_port()
    return services.start(name, services.redis_command(HOST, port, run_dir), HOST, port, run_dir)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory whose recorded services are stopped after the test, whatever happens."""
    yield tmp_path
    for record in tmp_path.glob("*.json"):
        services.stop(tmp_path, record.stem)


def test_start_records_a_running_service_and_stop_removes_it(run_dir):
    record = start_redis("cache", run_dir)
    assert services.port_open(HOST, record.port)
    assert services.is_running(record)
    assert services.read_record(run_dir, "cache") == record
    assert record.command[0] == services.redis_binary()
    assert Path(record.log) == run_dir / "cache.log"

    assert services.stop(run_dir, "cache") is True
    assert wait_dead(record.pid)
    assert not services.port_open(HOST, record.port)
    assert not services.is_running(record)
    assert services.read_record(run_dir, "cache") is None
    assert not (run_dir / "cache.json").exists()
    assert services.stop(run_dir, "cache") is False


def test_starting_a_running_service_again_returns_the_same_process(run_dir):
    first = start_redis("cache", run_dir)
    again = services.start("cache", ["/bin/false"], HOST, services.free_port(), run_dir)
    assert again == first


def test_stop_kills_only_the_recorded_process(run_dir):
    kept = start_redis("kept", run_dir)
    stopped = start_redis("stopped", run_dir)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        assert services.stop(run_dir, "stopped") is True
        assert wait_dead(stopped.pid)
        assert services.is_running(kept) and services.port_open(HOST, kept.port)
        assert bystander.poll() is None
        assert services.read_record(run_dir, "kept") == kept
    finally:
        bystander.kill()
        bystander.wait()


def test_busy_port_is_a_service_error_naming_it(run_dir):
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        command = services.redis_command(HOST, port, run_dir)
        with pytest.raises(
            ServiceError,
            match=rf"cache: port {HOST}:{port} is busy; stop what "
            r"uses it or choose another port",
        ):
            services.start("cache", command, HOST, port, run_dir)
    assert services.read_record(run_dir, "cache") is None
    assert not (run_dir / "cache.log").exists()


def test_a_service_that_exits_at_start_reports_its_last_log_line(run_dir):
    port = services.free_port()
    command = [*services.redis_command(HOST, port, run_dir), "--no-such-option", "1"]
    with pytest.raises(ServiceError, match=rf"cache did not start on {HOST}:{port}: \S"):
        services.start("cache", command, HOST, port, run_dir, timeout_s=10)
    assert services.read_record(run_dir, "cache") is None


def silent_shell(shell: str, run_dir: Path, sleep_s: int) -> list[str]:
    """A service that never listens: a shell waiting on a child, both pids written down."""
    return [shell, "-c", f"sleep {sleep_s} & echo $$ $! > {run_dir}/pids; wait"]


def recorded_pids(run_dir: Path) -> list[int]:
    return [int(p) for p in (run_dir / "pids").read_text().split()]


def test_a_service_that_never_listens_is_stopped_with_its_children(run_dir):
    port = services.free_port()
    with pytest.raises(ServiceError, match=f"mute did not start on {HOST}:{port}"):
        services.start(
            "mute", silent_shell("/bin/sh", run_dir, 30), HOST, port, run_dir, timeout_s=0.5
        )
    shell, child = recorded_pids(run_dir)
    assert wait_dead(shell) and wait_dead(child)
    assert services.read_record(run_dir, "mute") is None


def test_a_command_given_by_name_is_still_stopped(run_dir):
    port = services.free_port()
    with pytest.raises(ServiceError):
        services.start("mute", silent_shell("sh", run_dir, 5), HOST, port, run_dir, timeout_s=0.5)
    pids = recorded_pids(run_dir)
    try:
        assert all(wait_dead(pid, timeout_s=1.0) for pid in pids)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_reused_pid_is_not_taken_for_our_service(run_dir):
    binary = services.redis_binary()
    mine = ServiceRecord("cache", os.getpid(), HOST, 1, [binary], "log")  # pid of pytest
    assert not services.is_running(mine)
    (run_dir / "cache.json").write_text(json.dumps(asdict(mine)))
    assert services.stop(run_dir, "cache") is False  # and pytest is still alive to say so
    assert not (run_dir / "cache.json").exists()


def test_an_unreadable_record_is_no_record(run_dir):
    (run_dir / "cache.json").write_text("{broken")
    assert services.read_record(run_dir, "cache") is None
    (run_dir / "cache.json").write_text('{"name": "cache"}')
    assert services.read_record(run_dir, "cache") is None


def test_free_port_is_bindable_and_closed():
    port = services.free_port()
    assert not services.port_open(HOST, port)
    with socket.socket() as probe:
        probe.bind((HOST, port))


def test_free_ports_are_never_handed_out_twice(monkeypatch):
    """The OS may offer a closed probe's port again; a test's three services once got two
    identical ports that way (the Pushgateway's and the exporter's)."""
    offered = iter([41000, 41000, 41001])

    class Probe:
        def __init__(self, *args) -> None:
            self.port = next(offered)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def bind(self, address) -> None:
            pass

        def getsockname(self):
            return (HOST, self.port)

    monkeypatch.setattr(services, "_HANDED_OUT", set())
    monkeypatch.setattr(services.socket, "socket", Probe)
    assert [services.free_port(), services.free_port()] == [41000, 41001]
