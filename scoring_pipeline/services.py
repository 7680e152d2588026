"""Start the services of a deployment on this machine: Dagster webserver + daemon, run workers.

`scoring-pipeline services` (and `make ui`) uses it; so do the end-to-end tests and the
benchmark, which need the real daemon launching real runs.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scoring_pipeline.db import PROJECT_ROOT, prepare_dagster_environment

BIN = Path(sys.executable).parent


@dataclass
class Services:
    url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.processes.items()}


def _spawn(
    name: str, args: list[str], env: dict[str, str], log_dir: Path
) -> subprocess.Popen[bytes]:
    with (log_dir / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            args,
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )


def worker_command(concurrency: int) -> list[str]:
    return [
        str(BIN / "celery"),
        "-A",
        "scoring_pipeline.celery_app",
        "worker",
        "-Q",
        "dagster",
        "-c",
        str(concurrency),
        "--loglevel",
        "warning",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def _wait_http(url: str, processes: dict[str, subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} while starting")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Dagster webserver did not answer at {url} within {timeout:.0f} s")


def stop(services: Services, grace: float = 15.0) -> None:
    for proc in services.processes.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in services.processes.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def running_services(
    *,
    port: int = 3000,
    workers: int = 2,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[Services]:
    """Webserver + daemon (`dagster dev`) and a Celery run worker, stopped on exit."""
    env = dict(os.environ if env is None else env)
    prepare_dagster_environment(env)
    log_dir = log_dir or Path(env["DAGSTER_HOME"]) / "service-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    services = Services(url=url)
    try:
        services.processes["worker"] = _spawn("worker", worker_command(workers), env, log_dir)
        services.processes["dagster"] = _spawn(
            "dagster",
            [
                str(BIN / "dagster"),
                "dev",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                str(PROJECT_ROOT / "workspace.yaml"),
            ],
            env,
            log_dir,
        )
        _wait_http(url, services.processes, timeout)
        yield services
    finally:
        stop(services)
