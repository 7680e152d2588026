"""What the benchmark's processes use: peak memory and CPU time of the services' process trees
and of the PostgreSQL server processes working for the benchmark's database, sampled while the
night runs.
"""

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


class RssSampler:
    """Samples the services' process trees and PostgreSQL's processes.

    Keeps the peak resident memory per process kind, and the CPU time each process used while
    the sampler ran, summed per kind: the last reading per process, less its reading when the
    sampler started, or all of it for a process started since (a PostgreSQL backend opened for a
    connection, a step's helper) — its CPU before it was first seen is the night's too.

    The sampler shares the cores with the night it measures, so it stays cheap: which processes
    to watch (one walk of `/proc` for parents and names, each new process's command line read
    once, PostgreSQL asked for its sessions) is refreshed every `refresh` seconds; in between,
    every `interval`, only the watched processes' memory and CPU are read.
    """

    def __init__(
        self,
        roots: list[int],
        interval: float = 0.2,
        postgres_pids: "Callable[[], set[int]] | None" = None,
        refresh: float = 1.0,
    ) -> None:
        self.roots = roots
        self.interval = interval
        self.refresh = refresh
        # Which PostgreSQL processes are the benchmark's (None: every one on the machine).
        self.postgres_pids = postgres_pids
        self.peaks: dict[str, float] = defaultdict(float)
        self._cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (kind, first, last)
        self._watched: dict[int, tuple[str, Any]] = {}  # pid -> (kind, psutil.Process)
        # When sampling began, as psutil dates processes: those created after it count from zero.
        self._started_at = 0.0
        # The whole machine's busy CPU time over the sampling: also counts what the per-process
        # samples miss, processes that start and end between two refreshes, and anything else
        # running.
        self.machine_cpu_s = 0.0
        self.machine_steal_s = 0.0
        self._machine_start = (0.0, 0.0)
        # How long the sampling lasted: the machine's busy share is its CPU time over this.
        self.wall_s = 0.0
        self._wall_start = 0.0
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

    def _refresh(self) -> None:
        """Which processes to watch now: the roots and their descendants, and the benchmark's
        PostgreSQL processes; a process seen for the first time gets its kind and CPU baseline."""
        import psutil

        parents: dict[int, int] = {}
        postgres: list[int] = []
        for p in psutil.process_iter(["ppid", "name"]):
            parents[p.pid] = p.info["ppid"]
            if p.info["name"] == "postgres":
                postgres.append(p.pid)
        children: dict[int, list[int]] = defaultdict(list)
        for pid, ppid in parents.items():
            children[ppid].append(pid)
        wanted: dict[int, str | None] = {}  # pid -> kind, None: from its command line
        for root in self.roots:
            stack = [root] if root in parents else []
            while stack:
                pid = stack.pop()
                wanted[pid] = None
                stack += children.get(pid, [])
        ours = self.postgres_pids() if self.postgres_pids is not None else None
        wanted.update((pid, "postgres") for pid in postgres if ours is None or pid in ours)
        watched: dict[int, tuple[str, Any]] = {}
        for pid, kind in wanted.items():
            try:
                if pid in self._watched:
                    watched[pid] = self._watched[pid]
                    continue
                proc = psutil.Process(pid)
                if kind is None:
                    kind = self.kind(" ".join(proc.cmdline()), pid in self.roots)
                if pid not in self._cpu and proc.create_time() > self._started_at:
                    self._cpu[pid] = (kind, 0.0, 0.0)  # all of its CPU is the night's
                watched[pid] = (kind, proc)
            except psutil.Error:
                continue
        self._watched = watched

    def _sample(self) -> None:
        import psutil

        for pid, (kind, proc) in list(self._watched.items()):
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss / 2**20
                    times = proc.cpu_times()
            except psutil.Error:
                del self._watched[pid]
                continue
            used = times.user + times.system
            self.peaks[kind] = max(self.peaks[kind], rss)
            _, first, _ = self._cpu.get(pid, (kind, used, used))
            self._cpu[pid] = (kind, first, used)

    def _run(self) -> None:
        next_refresh = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_refresh:
                self._refresh()
                next_refresh = time.monotonic() + self.refresh
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._machine_start = _machine_seconds()
        self._wall_start = time.monotonic()
        self._started_at = _process_clock_now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        busy, steal = _machine_seconds()
        self.machine_cpu_s = busy - self._machine_start[0]
        self.machine_steal_s = steal - self._machine_start[1]
        self.wall_s = time.monotonic() - self._wall_start


def _process_clock_now() -> float:
    """Now, on the clock of psutil's `create_time`, a little early.

    On Linux psutil dates a process from the boot time in whole seconds (`/proc/stat`'s
    `btime`) plus its start in clock ticks since boot: against `time.time()` that puts a
    process up to a second early, so one started just after the sampler looked older than it
    and lost the CPU it used before it was first seen. The time since boot on the same clock
    puts "now" on psutil's scale; two clock ticks (~20 ms) of slack cover the ticks' rounding
    (a process started that shortly before counts its few milliseconds before too)."""
    import psutil

    if hasattr(time, "CLOCK_BOOTTIME"):
        return float(psutil.boot_time()) + time.clock_gettime(time.CLOCK_BOOTTIME) - 0.02
    return time.time()


def _machine_seconds() -> tuple[float, float]:
    """CPU time the machine's cores spent on anything but idling, waiting for I/O or being
    taken by the hypervisor (Linux counts a guest's time in `user` too); and the time the
    hypervisor took (`steal`: the host's other work, which slows everything on this one)."""
    import psutil

    times = psutil.cpu_times()
    other = sum(getattr(times, name, 0.0) for name in ("iowait", "steal", "guest", "guest_nice"))
    return float(sum(times) - times.idle - other), float(getattr(times, "steal", 0.0))


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
