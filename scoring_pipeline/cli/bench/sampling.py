"""What the benchmark's processes use: peak memory and CPU time of the services' process trees
and of the PostgreSQL server processes working for the benchmark's database, sampled while the
night runs.
"""

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


class RssSampler:
    """Samples the services' process trees and PostgreSQL's processes.

    Keeps the peak resident memory per process kind, and the CPU time each process used while
    sampled (the last reading per process, less its first), summed per kind.
    """

    def __init__(
        self,
        roots: list[int],
        interval: float = 0.2,
        postgres_pids: "Callable[[], set[int]] | None" = None,
    ) -> None:
        self.roots = roots
        self.interval = interval
        # Which PostgreSQL processes are the benchmark's (None: every one on the machine).
        self.postgres_pids = postgres_pids
        self.peaks: dict[str, float] = defaultdict(float)
        self._cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (kind, first, last)
        # The whole machine's busy CPU time over the sampling: also counts what the per-process
        # samples miss, processes that start and end between two samples (a new PostgreSQL
        # backend per connection, a step's helper processes), and anything else running.
        self.machine_cpu_s = 0.0
        self._machine_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def kind(cmdline: str, is_root: bool) -> str:
        # Dagster's processes carry the instance config (which names Celery) on their command
        # line, so they are told apart first. Celery's pool children share the main's command.
        for marker, name in (
            ("dagster._daemon", "dagster daemon"),
            ("scoring_pipeline.runtime.daemon", "dagster daemon"),
            ("dagster_webserver", "dagster webserver"),
            ("dagster-webserver", "dagster webserver"),
            ("code-server", "dagster code server"),
            ("api grpc", "dagster code server"),
        ):
            if marker in cmdline:
                return name
        if "celery" in cmdline:
            return "celery worker (main)" if is_root else "celery run worker"
        return "other"

    @property
    def cpu_seconds(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for kind, first, last in self._cpu.values():
            out[kind] += last - first
        return dict(out)

    def _processes(self) -> "list[tuple[str, Any]]":
        import psutil

        found: list[tuple[str, Any]] = []
        for root in self.roots:
            try:
                parent = psutil.Process(root)
                found += [
                    (self.kind(" ".join(p.cmdline()), p.pid == root), p)
                    for p in (parent, *parent.children(recursive=True))
                ]
            except psutil.Error:
                continue
        ours = self.postgres_pids() if self.postgres_pids is not None else None
        found += [
            ("postgres", p)
            for p in psutil.process_iter(["name"])
            if p.info["name"] == "postgres" and (ours is None or p.pid in ours)
        ]
        return found

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for name, proc in self._processes():
                try:
                    rss = proc.memory_info().rss / 2**20
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                used = times.user + times.system
                self.peaks[name] = max(self.peaks[name], rss)
                kind, first, _ = self._cpu.get(proc.pid, (name, used, used))
                self._cpu[proc.pid] = (kind, first, used)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._machine_start = _machine_busy_seconds()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.machine_cpu_s = _machine_busy_seconds() - self._machine_start


def _machine_busy_seconds() -> float:
    """CPU time the machine's cores spent on anything but idling or waiting for I/O."""
    import psutil

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def server_processes(engine: Engine) -> "Callable[[], set[int]]":
    """The server processes working for the benchmark's database: its sessions and the
    server's own (WAL writer, checkpointer, …), not other databases' sessions on a shared
    server, nor other servers on the machine."""

    def pids() -> set[int]:
        with engine.connect() as conn:
            return {
                int(pid)
                for pid in conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity "
                        "WHERE datname = current_database() OR datname IS NULL"
                    )
                ).scalars()
            }

    return pids
