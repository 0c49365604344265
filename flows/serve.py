"""``stackrec serve``: the Prefect deployments of prefect.yaml, running, until Ctrl-C or SIGTERM.

    Prefect server (a local one unless PREFECT_API_URL names one) -> work pool (process)
    -> `prefect deploy --all` -> `prefect worker start` -> /metrics -> wait -> stop all

Each piece is Prefect's own CLI in a child process, so this file only sequences them, passes
them one environment (the Prefect API, PREFECT_HOME in the run directory, and the stackrec
settings as STACKREC_* variables, so flow runs see the same configuration as this command) and
stops exactly what it started: the worker with two SIGINTs (its documented graceful stop),
then the server; anything still alive after a grace period is killed.

Flow runs execute in subprocesses of the worker, so their metrics reach Prometheus through the
Pushgateway (STACKREC_PUSHGATEWAY); this process serves ``monitoring.metrics.REGISTRY`` on
``metrics_host:metrics_port``, which the image's healthcheck reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr

from flows.settings import Settings
from streaming.services import ServiceError, port_open

PROJECT_FILE = "prefect.yaml"
POOL = "stackrec"
DEFAULT_PREFECT_PORT = 4200


@dataclass(frozen=True)
class ServeConfig:
    pool: str = POOL  # the work_pool of every deployment in prefect.yaml
    prefect_host: str = "127.0.0.1"
    prefect_port: int = DEFAULT_PREFECT_PORT  # of the local server, when none is configured
    schedules: bool = True  # False: deploy paused; runs happen only when triggered
    server_timeout_s: float = 180.0  # a first start migrates the database
    command_timeout_s: float = 300.0  # `prefect deploy` imports every flow
    stop_timeout_s: float = 15.0


def serve(
    prefect_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="port of the local Prefect server")
    ] = None,
    schedules: Annotated[
        bool, typer.Option(help="--no-schedules deploys paused: runs only when triggered")
    ] = True,
) -> None:
    """Run the Prefect deployments: server if none, work pool, deploy, worker, /metrics."""
    from flows.cli import settings as cli_settings  # the flags of `stackrec --home ...`

    s = cli_settings()
    port = prefect_port or s.prefect_port
    config = ServeConfig(prefect_port=port, schedules=schedules)
    run(s, config, project_dir(), echo=lambda line: typer.echo(line, err=True))


def run(settings: Settings, config: ServeConfig, project: Path, echo=print) -> None:
    """Serve until SIGINT or SIGTERM; raises ServiceError when a piece fails or dies."""
    stop = _stop_on_signals()
    env = prefect_env(settings)
    run_dir = settings.run_dir.absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    with _children() as children:
        if "PREFECT_API_URL" not in env:
            server = start_server(config, env, run_dir)
            children.append(server)
            env["PREFECT_API_URL"] = f"http://{config.prefect_host}:{config.prefect_port}/api"
            echo(f"prefect server: {env['PREFECT_API_URL']} (pid {server.process.pid})")
        wait_for_api(env["PREFECT_API_URL"], config.server_timeout_s, children, stop)
        ensure_pool(config, env, project)
        _check_stop(stop)
        deployed = deploy(config, env, project)
        if not config.schedules:
            for name in deployed:
                pause(env["PREFECT_API_URL"], name)
        state = "scheduled" if config.schedules else "paused"
        echo(f"deployed ({state}) {', '.join(deployed)} to pool {config.pool}")
        _check_stop(stop)
        metrics_server = expose_metrics(settings)
        try:
            worker = start_worker(config, env, project, run_dir)
            children.append(worker)
            echo(
                f"worker: pool {config.pool} (pid {worker.process.pid}); /metrics on "
                f"{settings.metrics_host}:{settings.metrics_port}; serving until Ctrl-C"
            )
            _wait(children, stop)
            echo("stopping")
        finally:
            metrics_server.shutdown()


def project_dir() -> Path:
    """Where prefect.yaml is: the working directory (the image's /app), else the checkout."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (candidate / PROJECT_FILE).is_file():
            return candidate
    raise ServiceError(f"no {PROJECT_FILE} in {Path.cwd()}: run `stackrec serve` from the project")


def prefect_env(settings: Settings) -> dict[str, str]:
    """This process's environment plus the Prefect home and the settings as STACKREC_*."""
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str((settings.run_dir / "prefect").absolute()))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    for name, value in settings.model_dump(exclude_defaults=True).items():
        if isinstance(value, SecretStr):  # through the environment, never flow parameters
            value = value.get_secret_value()
        if value is not None:
            env[f"STACKREC_{name.upper()}"] = str(value)
    env["STACKREC_HOME"] = str(settings.home.absolute())
    return env


# --- the pieces ---------------------------------------------------------------------------------
@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: Path
    stop_signals: tuple[int, ...]  # sent one after another, a second apart


def prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def start_server(config: ServeConfig, env: dict[str, str], run_dir: Path) -> Child:
    if port_open(config.prefect_host, config.prefect_port):
        raise ServiceError(
            f"Prefect server port {config.prefect_host}:{config.prefect_port} is busy: set "
            f"PREFECT_API_URL to use the server there, or pass --prefect-port"
        )
    command = prefect(
        "server", "start", "--host", config.prefect_host, "--port", str(config.prefect_port)
    )
    return _spawn("prefect server", command, env, run_dir, run_dir, (signal.SIGINT,))


def start_worker(config: ServeConfig, env: dict[str, str], project: Path, run_dir: Path) -> Child:
    command = prefect("worker", "start", "--pool", config.pool, "--type", "process")
    return _spawn("prefect worker", command, env, project, run_dir, (signal.SIGINT,) * 2)


def wait_for_api(
    api_url: str, timeout_s: float, children: list[Child], stop: threading.Event
) -> None:
    deadline = time.monotonic() + timeout_s
    while not _api_healthy(api_url):
        _check_alive(children)
        _check_stop(stop)
        if time.monotonic() > deadline:
            raise ServiceError(f"Prefect API at {api_url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.5)


def ensure_pool(config: ServeConfig, env: dict[str, str], project: Path) -> None:
    """Create the process work pool unless it exists (keeping an existing pool's settings)."""
    found = _prefect_cli(config, env, project, "work-pool", "inspect", config.pool)
    if found.returncode != 0:
        create = ("work-pool", "create", config.pool, "--type", "process")
        _prefect_cli(config, env, project, *create, check=True)


def deploy(config: ServeConfig, env: dict[str, str], project: Path) -> list[str]:
    """`prefect deploy --all` from the project; returns the deployments' full names."""
    _prefect_cli(config, env, project, "--no-prompt", "deploy", "--all", check=True)
    import yaml  # Prefect's own dependency, like prefect.yaml itself

    spec = yaml.safe_load((project / PROJECT_FILE).read_text())
    names = []
    for deployment in spec["deployments"]:
        flow_name = _flow_name(project, deployment["entrypoint"])
        names.append(f"{flow_name}/{deployment['name']}")
    return names


def pause(api_url: str, full_name: str) -> None:
    """Pause a deployment: its scheduled runs are deleted, triggered runs still run."""
    quoted = "/".join(urllib.parse.quote(part, safe="") for part in full_name.split("/"))
    deployment = _api(api_url, f"deployments/name/{quoted}")
    _api(api_url, f"deployments/{deployment['id']}/pause_deployment", method="POST")


def expose_metrics(settings: Settings):
    """``/metrics`` of this process; returns the HTTP server (``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    from monitoring.metrics import REGISTRY

    try:
        server, _ = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=REGISTRY
        )
    except OSError as error:
        raise ServiceError(
            f"cannot serve /metrics on {settings.metrics_host}:{settings.metrics_port}: "
            f"{error.strerror} (STACKREC_METRICS_PORT)"
        ) from None
    return server


# --- helpers ------------------------------------------------------------------------------------
def _spawn(
    name: str,
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    run_dir: Path,
    stop_signals: tuple[int, ...],
) -> Child:
    log = run_dir / f"{name.replace(' ', '-')}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches serve only; serve stops its children
        )
    return Child(name, process, log, stop_signals)


def _prefect_cli(
    config: ServeConfig, env: dict[str, str], project: Path, *args: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        prefect(*args),
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=config.command_timeout_s,
        check=False,
    )
    if check and result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise ServiceError(f"prefect {' '.join(args)} failed: {' | '.join(tail)}")
    return result


def _flow_name(project: Path, entrypoint: str) -> str:
    from prefect.flows import load_flow_from_entrypoint

    path, _, function = entrypoint.partition(":")
    return load_flow_from_entrypoint(f"{project / path}:{function}").name


def _api(api_url: str, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(f"{api_url.rstrip('/')}/{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
    except (urllib.error.URLError, OSError) as error:
        raise ServiceError(f"Prefect API {method} {path} failed: {error}") from None
    return json.loads(body) if body else None


def _api_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _check_alive(children: list[Child]) -> None:
    for child in children:
        code = child.process.poll()
        if code is not None:
            tail = child.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ServiceError(f"{child.name} exited with {code}: {tail[0]} (log: {child.log})")


def _check_stop(stop: threading.Event) -> None:
    """A signal during start-up: stop what has started (the CLI reports "interrupted")."""
    if stop.is_set():
        raise KeyboardInterrupt


def _wait(children: list[Child], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        _check_alive(children)


def _stop_on_signals() -> threading.Event:
    """SIGINT and SIGTERM set the returned event (main thread only), so serving ends cleanly."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
    return stop


@contextmanager
def _children() -> Iterator[list[Child]]:
    """The child processes started inside; on exit they are stopped, newest first."""
    children: list[Child] = []
    try:
        yield children
    finally:
        for child in reversed(children):
            _stop(child, ServeConfig.stop_timeout_s)


def _stop(child: Child, timeout_s: float) -> None:
    """The child's own signals (a second apart), then SIGKILL for its whole process group."""
    process = child.process
    for signum in child.stop_signals:
        if process.poll() is not None:
            break
        with suppress(ProcessLookupError):
            os.kill(process.pid, signum)
        with suppress(subprocess.TimeoutExpired):
            process.wait(1.0)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout_s)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the group: uvicorn, flow-run subprocesses
    process.wait()
