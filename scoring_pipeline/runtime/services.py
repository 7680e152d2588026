"""Start the services of a deployment on this machine: Dagster webserver + daemon, run workers.

`scoring-pipeline services` (and `make ui`) uses it; so do the end-to-end tests and the
benchmark, which need the real daemon launching real runs.
"""

import contextlib
import errno
import fcntl
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from scoring_pipeline.errors import ScoringPipelineError
from scoring_pipeline.runtime.dagster_api import LOCATION
from scoring_pipeline.store.db import PROJECT_ROOT, prepare_dagster_environment

if TYPE_CHECKING:
    from dagster._grpc.client import DagsterGrpcClient

BIN = Path(sys.executable).parent


@dataclass
class Services:
    url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    code_port: int | None = None  # the code server's gRPC port, once it is started

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.processes.items()}


# A private deployment's schedule: 04:00 on January 1st, so it never ticks in a run of its own.
PRIVATE_CRON = "0 4 1 1 *"


def private_deployment_env(
    database_url: str,
    home: Path,
    provider_files: Path,
    base: Mapping[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a deployment of its own: a fresh DAGSTER_HOME (the project's
    dagster.yaml copied in), the given database, and the `file` rate and price providers
    reading `provider_files`/rates.json and prices.csv. Settings of another deployment
    inherited from `base` (Dagster's, the providers', OpenTelemetry's) are dropped.

    The benchmark and the end-to-end tests run their nights in such deployments. Their
    schedules tick once a year (`PRIVATE_CRON`) unless `extra` sets `OVERNIGHT_JOB_CRON`: with
    the default 04:00 UTC, a test suite or a benchmark running across that hour had the daemon
    start the day's night beside its own (every user scored twice, two nights where one was
    launched).
    """
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    inherited = ("DAGSTER_", "RATES_", "PRICES_", "OTEL_", "DATABASE_URL")
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith(inherited)
    }
    env.update(
        DATABASE_URL=database_url,
        DAGSTER_HOME=str(home),
        PGTZ="UTC",
        RATES_PROVIDER="file",
        RATES_FILE=str(provider_files / "rates.json"),
        PRICES_PROVIDER="file",
        PRICES_FILE=str(provider_files / "prices.csv"),
    )
    env.update({"OVERNIGHT_JOB_CRON": PRIVATE_CRON, **extra})
    return env


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Run before a service's own program, in a Python of its own: ask the kernel (prctl(2)'s
# PR_SET_PDEATHSIG, option 1, kept across exec) to send SIGTERM once the parent is gone, then
# become the program. A `preexec_fn` did this in the forked child before: Python warns it is not
# safe with threads, and a test's `services` hung for good in fork, its webserver never started.
_STOP_WITH_PARENT = """
import ctypes, os, signal, sys
parent, program = int(sys.argv[1]), sys.argv[2:]
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != parent:
    sys.exit(128 + signal.SIGTERM)
os.execvp(program[0], program)
"""


def _stopping_with_this_process(args: list[str]) -> list[str]:
    """`args` run so that the service gets SIGTERM, its own way of stopping, once this process
    (the `services` command) is gone, however it ended (Linux; elsewhere `args` as they are).
    Killed with SIGKILL (an OOM kill, a forced stop), the command stops nothing itself, and its
    services ran on without it: the webserver holding its port, the daemon ticking beside the
    next `services`' own."""
    if not sys.platform.startswith("linux"):
        return args
    return [sys.executable, "-I", "-c", _STOP_WITH_PARENT, str(os.getpid()), *args]


def _spawn(
    name: str, args: list[str], env: dict[str, str], log_dir: Path
) -> subprocess.Popen[bytes]:
    with (log_dir / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            _stopping_with_this_process(args),
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )


# dagster-celery's launcher registers its task again on every launch, and Celery warns once per
# process (ten lines: "Task name 'execute_job' is already registered to a different callable
# … calls under this name reach the callable registered first"): the callables are the same
# function of dagster-celery's, so the first one is the right one. As a -W / PYTHONWARNINGS
# filter for the processes that launch runs (the daemon sets it in `runtime/daemon`), by its
# message: Python reads PYTHONWARNINGS before it can import Celery's warning class.
LAUNCHER_NOTICE_MESSAGE = "Task name 'execute_job' is already registered"
LAUNCHER_NOTICE = f"ignore:{LAUNCHER_NOTICE_MESSAGE}"


# A Dagster console script started through `runtime/plain_logs`: its log lines without colour
# codes when they go to a file.
PLAIN_LOGS = [sys.executable, "-m", "scoring_pipeline.runtime.plain_logs"]


def worker_command(concurrency: int) -> list[str]:
    return [
        str(BIN / "celery"),
        "-A",
        "scoring_pipeline.runtime.celery_app",
        "worker",
        "-Q",
        "dagster",
        "-c",
        str(concurrency),
        "--loglevel",
        "info",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def daemon_command(workspace: Path | None = None) -> list[str]:
    """`dagster-daemon run` on a workspace (default: the project's), with the sensor loop of
    `runtime/daemon`."""
    workspace = workspace or PROJECT_ROOT / "workspace.yaml"
    return [sys.executable, "-m", "scoring_pipeline.runtime.daemon", "run", "-w", str(workspace)]


def code_server_command(port: int) -> list[str]:
    """The code location served over gRPC on the loopback `port` (`dagster code-server start`:
    its UI "Reload" restarts the code it serves)."""
    return [
        *PLAIN_LOGS,
        "dagster",
        "code-server",
        "start",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-m",
        "scoring_pipeline.definitions",
        "-a",
        "defs",
        "--location-name",
        LOCATION,
    ]


def grpc_workspace(path: Path, port: int) -> Path:
    """A workspace file naming the code server on `port`: what the webserver and the daemon load."""
    path.write_text(
        "load_from:\n"
        "  - grpc_server:\n"
        "      host: 127.0.0.1\n"
        f"      port: {port}\n"
        f"      location_name: {LOCATION}\n"
    )
    return path


def _wait_until(
    ready: Callable[[], bool],
    processes: dict[str, subprocess.Popen[bytes]],
    timeout: float,
    what: str,
) -> None:
    """Poll `ready` until it holds; a started process that exits meanwhile is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} while starting")
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout:.0f} s")


def _code_server_client(port: int) -> "DagsterGrpcClient":
    from dagster._grpc.client import DagsterGrpcClient

    return DagsterGrpcClient(port=port, host="127.0.0.1")


@contextlib.contextmanager
def _quiet_grpc() -> Iterator[None]:
    """A call to the code server that may fail (not listening yet, or gone): Dagster's client
    prints the connection error, which nobody needs; the caller tells failure by its result."""
    with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
        yield


def _code_server_serves(port: int) -> Callable[[], bool]:
    client = _code_server_client(port)

    def serves() -> bool:
        with _quiet_grpc():
            return bool(client.health_check_query() == "SERVING")  # type: ignore[no-untyped-call]
        return False

    return serves


def _webserver_answers(url: str) -> Callable[[], bool]:
    def answers() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/server_info", timeout=2).status_code == 200
        return False

    return answers


def _shutdown_code_server(port: int) -> None:
    """Ask the code server to stop through its own API: `dagster code-server start` ignores
    SIGTERM and SIGINT (each stop waited out the grace period, then killed it)."""
    with _quiet_grpc():
        _code_server_client(port).shutdown_server(timeout=5)


def stop(services: Services, grace: float = 15.0) -> None:
    """Stop every service, each its own way first, then whatever is left of its process group.

    A Celery worker gets SIGTERM on its main process alone, which stops its pool and exits:
    signalled as a whole group, its pool processes died under it and the main process hung
    until killed. The code server is asked to stop through its gRPC API. What a service left
    behind in its process group, or a service still running at the deadline, is killed."""
    code_server = services.processes.get("code-server")
    if services.code_port is not None and code_server is not None and code_server.poll() is None:
        _shutdown_code_server(services.code_port)
    for proc in services.processes.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in services.processes.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# PostgreSQL sessions at the peak of a night of single-batch runs (4 run workers, 300 users):
# each run worker process 5 (the app's pool 2, Dagster's storage 2, Celery's result backend 1),
# pools that keep them open between its runs; the webserver 2, the daemon 3 and the code server
# 2; a worker's main process 1 (the broker). A figure measured, not a bound (docs/hardening.md).
SESSIONS_PER_RUN_WORKER = 5
SESSIONS_OF_WORKER_MAIN = 1
SESSIONS_OF_DAGSTER_SERVICES = 7


def check_connection_room(workers: int, option: str, *, with_dagster_services: bool) -> None:
    """Refuse to start `workers` run workers (and the webserver, daemon and code server) that
    the database server could not give their sessions: else each run past the limit failed
    its batches with "too many connections" and the rest of the night queued behind runs stuck
    starting. Counted when Dagster's storage and Celery share the app's server and role (the
    default); another server's limits are its own."""
    from scoring_pipeline.store.db import connection_room

    app_url = prepare_dagster_environment()
    if not _same_server_and_role(app_url, os.environ["DAGSTER_PG_URL"]):
        return
    fixed = SESSIONS_OF_WORKER_MAIN + (SESSIONS_OF_DAGSTER_SERVICES if with_dagster_services else 0)
    needed = fixed + SESSIONS_PER_RUN_WORKER * workers
    room = connection_room(app_url)
    if needed <= room.free:
        return
    fitting = (room.free - fixed) // SESSIONS_PER_RUN_WORKER
    what_to_do = (
        f"run at most {option} {fitting}, or raise that limit"
        if fitting >= 1
        else "not one run worker fits: end idle sessions or raise that limit"
    )
    raise ScoringPipelineError(
        f"{option} {workers} needs up to {needed} PostgreSQL sessions "
        f"({SESSIONS_PER_RUN_WORKER} a run worker, {fixed} for the "
        + ("webserver, daemon, code server and " if with_dagster_services else "")
        + f"worker's main process), but only {room.free} more can open ({room.limit}): "
        f'runs past it would fail their batches with "too many connections"; {what_to_do}'
    )


def _same_server_and_role(app_url: str, storage_url: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        app, storage = make_url(app_url), make_url(storage_url)
    except Exception:  # a bad DAGSTER_PG_URL is refused, naming it, before this
        return False
    return (app.host, app.port, app.username, app.database, app.query.get("host")) == (
        storage.host,
        storage.port,
        storage.username,
        storage.database,
        storage.query.get("host"),
    )


@contextlib.contextmanager
def _sole_services(log_dir: Path) -> Iterator[None]:
    """Hold `log_dir/services.lock` while the services run: a second `services` on the same
    DAGSTER_HOME would rewrite the workspace file the first's webserver and daemon reload (its
    sensors then stop for good once the second's code server is gone) and run a second daemon
    on the same instance. The lock goes with this process, however it ends."""
    path = log_dir / "services.lock"
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise ScoringPipelineError(
                f"scoring-pipeline services already runs with DAGSTER_HOME={log_dir.parent} "
                f"(pid {holder}): stop it first, or give this one a DAGSTER_HOME of its own"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def _require_free_port(port: int) -> None:
    """The webserver's port must be free before anything starts: else the webserver alone
    dies, after the other services started (and another webserver answers on that port)."""
    with socket.socket() as s:
        # As the webserver binds: a port whose last connections are only closing is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ScoringPipelineError(
                f"port {port} is already in use on 127.0.0.1 (another webserver?): "
                "choose another with --port"
            ) from None


@contextlib.contextmanager
def running_services(
    *,
    port: int = 3000,
    workers: int = 2,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[Services]:
    """A code server, the Dagster webserver and daemon (`runtime/daemon`: sensors every
    second) loading the code location from it, and a Celery run worker; stopped on exit.

    One code server for both, as deployments run them: a daemon loading a `python_module`
    workspace starts a code server of its own and replaces it every minute (Dagster reloads the
    daemon's workspace that often), each time importing the code location anew."""
    env = dict(os.environ if env is None else env)
    prepare_dagster_environment(env)
    log_dir = log_dir or Path(env["DAGSTER_HOME"]) / "service-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    services = Services(url=url)
    with _sole_services(log_dir):
        _require_free_port(port)
        yield from _started(services, port, workers, log_dir, env, timeout)


def _started(
    services: Services,
    port: int,
    workers: int,
    log_dir: Path,
    env: dict[str, str],
    timeout: float,
) -> Iterator[Services]:
    """Start every service of `running_services`, yield them, stop them whatever happens."""
    url = services.url
    try:
        # Each service's PostgreSQL sessions carry its name (pg_stat_activity.application_name)
        # unless the operator named them; the app's own sessions name themselves.
        worker_env = {"PGAPPNAME": "scoring-pipeline-worker", **env}
        dagster_env = {"PGAPPNAME": "scoring-pipeline-dagster", **env}
        # The webserver launches runs too (the UI's Launchpad): see LAUNCHER_NOTICE.
        dagster_env["PYTHONWARNINGS"] = ",".join(
            w for w in (env.get("PYTHONWARNINGS"), LAUNCHER_NOTICE) if w
        )
        services.processes["worker"] = _spawn(
            "worker", worker_command(workers), worker_env, log_dir
        )
        code_port = services.code_port = free_port()
        services.processes["code-server"] = _spawn(
            "code-server", code_server_command(code_port), dagster_env, log_dir
        )
        _wait_until(
            _code_server_serves(code_port),
            services.processes,
            timeout,
            f"the code server did not serve on port {code_port}",
        )
        workspace = grpc_workspace(log_dir / "workspace.yaml", code_port)
        services.processes["webserver"] = _spawn(
            "webserver",
            [
                *PLAIN_LOGS,
                "dagster-webserver",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                str(workspace),
            ],
            dagster_env,
            log_dir,
        )
        services.processes["daemon"] = _spawn(
            "daemon", daemon_command(workspace), dagster_env, log_dir
        )
        _wait_until(
            _webserver_answers(url),
            services.processes,
            timeout,
            f"the Dagster webserver did not answer at {url}",
        )
        yield services
    finally:
        stop(services)
