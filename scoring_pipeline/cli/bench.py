"""`scoring-pipeline bench`: a whole night through the real path, measured.

A fresh database gets a benchmark universe (3 markets × 200 instruments in 3 currencies, ~12 rules
per criteria set, 1–3 sets per user, 5–20 holdings); the Dagster webserver, daemon and Celery run
workers start on a temporary DAGSTER_HOME with PostgreSQL storage; the night is launched like the
schedule launches it, and the table printed at the end says where the time and the bytes went,
next to a raw PostgreSQL COPY of the same output rows measured in the same run.
"""

import datetime as dt
import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scoring_pipeline.cli.demo_data import generate
from scoring_pipeline.runtime.dagster_api import DagsterApi
from scoring_pipeline.runtime.services import free_port, private_deployment_env, running_services
from scoring_pipeline.store import db

OUTPUT_TABLES = (
    "asset_scores",
    "score_history",
    "score_metric_values",
    "calculation_events",
    "dashboard_cache",
    "scoring_batches",
    "scoring_batch_results",
    "price_snapshots",
    "exchange_rate_snapshots",
    "overnight_job_runs",
)
COPY_TABLES = ("asset_scores", "score_history", "score_metric_values", "calculation_events")


@dataclass
class BenchReport:
    users: int
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    # Nights after the first, on the same database: what each added on disk.
    later_nights: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cpu_seconds_per_1000_users(self) -> float:
        """Every sampled process's CPU time during the night, per 1,000 users."""
        return sum(self.cpu_s.values()) * 1000 / max(self.users, 1)

    def lines(self) -> list[str]:
        f = self.figures
        out = [
            f"benchmark: {self.users} users, {f['batches']} batches, "
            f"{f['assets_scored']:,} assets scored, {f['rule_evaluations']:,} rule evaluations",
            f"{'end to end (first run start -> all batches terminal, caches warm)':<66}"
            f"{f['end_to_end_s']:>8.1f} s",
        ]
        for name, seconds in f["stages_s"].items():
            out.append(f"  {name:<64}{seconds:>8.1f} s")
        out.append("inside the batches (summed over batches, serial-equivalent):")
        for name, seconds in f["batch_sums_s"].items():
            out.append(f"  {name:<64}{seconds:>8.1f} s")
        work = sum(f["batch_sums_s"].values())
        run_seconds = f["run_seconds_by_job"]
        out.append("run time summed over runs, by job (what the run workers spent):")
        for job, seconds in sorted(run_seconds.items()):
            out.append(f"  {job:<64}{seconds:>8.1f} s")
        batch_runs = max(f["batches"], 1)
        overhead = (run_seconds.get("scoring_batch_job", 0.0) - work) / batch_runs
        checks = f.get("asset_check_s", 0.0) / max(f.get("asset_check_steps", 0), 1)
        out += [
            f"{'Dagster per batch run (run time - scoring work), average':<66}{overhead:>8.2f} s",
            f"{'  of which the asset-check step (3 invariants), average':<66}{checks:>8.3f} s",
            f"{'scoring engine rule evaluations per second (in the night)':<66}"
            f"{f['rule_evaluations_per_s']:>10,.0f}",
            f"{'  per second of the engine thread on a core (CPU time, no waiting)':<66}"
            f"{f['rule_evaluations_per_cpu_s']:>10,.0f}",
            f"{'  the same engine alone after the night (batch b0000, best of 5)':<66}"
            f"{f['engine_alone_per_s']:>10,.0f}",
            f"{'raw COPY of the same output rows (' + ', '.join(COPY_TABLES) + ')':<66}"
            f"{f['raw_copy_s']:>8.1f} s",
            *(
                f"  {table:<64}{seconds:>8.1f} s"
                for table, seconds in f["raw_copy_s_by_table"].items()
            ),
            f"{'write stage / raw COPY':<66}{f['write_to_copy_ratio']:>8.2f} x",
            "the write stage's parts (summed over batches):",
            *(
                f"  {part:<64}{seconds:>8.1f} s"
                for part, seconds in f.get("write_parts_s", {}).items()
            ),
            *self._server_lines(),
            f"{'PostgreSQL connections opened during the night (all processes)':<66}"
            f"{f['connections_opened']:>8,}",
            f"{'bytes on disk per scored asset (all output tables)':<66}"
            f"{f['bytes_per_asset']:>8.0f} B",
            "table                        rows          bytes on disk",
        ]
        for table, t in self.tables.items():
            out.append(f"  {table:<24}{t['rows']:>12,}{t['bytes']:>18,}")
        out.append("peak RSS by process kind:")
        for kind, mb in sorted(self.rss_mb.items()):
            out.append(f"  {kind:<64}{mb:>8.0f} MB")
        out.append("CPU time during the night by process kind:")
        for kind, seconds in sorted(self.cpu_s.items(), key=lambda kv: -kv[1]):
            out.append(f"  {kind:<64}{seconds:>8.1f} s")
        out.append(
            f"{'CPU seconds per 1,000 users, all processes':<66}"
            f"{self.cpu_seconds_per_1000_users:>8.1f} s"
        )
        out.append("runs by job:")
        for job, count in sorted(self.runs.items()):
            out.append(f"  {job:<64}{count:>8}")
        if self.later_nights:
            out.append(
                "later nights on the same database (each after a plain VACUUM of the output "
                "tables, the day's autovacuum):"
            )
        for night in self.later_nights:
            out.append(
                f"  {night['score_date']}: {night['assets_scored']:,} assets scored, "
                f"{night['end_to_end_s']:.1f} s, bytes added per scored asset"
                f"{night['bytes_added_per_asset']:>8.0f} B"
            )
            for table, added in night["bytes_added"].items():
                if added:
                    out.append(f"    {table:<62}{added:>+18,}")
            parts = night.get("write_parts_s", {})
            server = night.get("server_during_night", {})
            if parts:
                out.append(
                    "    write parts: "
                    + ", ".join(f"{part} {seconds:.1f} s" for part, seconds in parts.items())
                )
            if server:
                out.append(
                    f"    WAL {server['wal_bytes'] / 2**20:.0f} MB "
                    f"({server['wal_full_page_images']:,} full-page images), "
                    f"{server['checkpoints']} checkpoints"
                )
        return out

    def _server_lines(self) -> list[str]:
        f = self.figures
        server = f.get("server_during_night")
        if not server:
            return []
        return [
            f"{'WAL written during the night (whole server) / by the raw COPY':<66}"
            f"{server['wal_bytes'] / 2**20:>8.0f} MB / {f['raw_copy_wal_bytes'] / 2**20:.0f} MB",
            f"{'  WAL records / full-page images / writes with WAL buffers full':<66}"
            f"{server['wal_records']:>8,} / {server['wal_full_page_images']:,} / "
            f"{server['wal_buffers_full']:,}",
            f"{'checkpoints during the night':<66}{server['checkpoints']:>8}",
        ]


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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def kind(cmdline: str, is_root: bool) -> str:
        # Dagster's processes carry the instance config (which names Celery) on their command
        # line, so they are told apart first. Celery's pool children share the main's command.
        for marker, name in (
            ("dagster._daemon", "dagster daemon"),
            ("dagster_webserver", "dagster webserver"),
            ("code-server", "dagster code server"),
            ("api grpc", "dagster code server"),
            ("dagster dev", "dagster dev (supervisor)"),
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
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _server_processes(engine: Engine) -> "Callable[[], set[int]]":
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


def wait_night(
    engine: Engine, score_date: dt.date, timeout: float, market_group: str = "all"
) -> None:
    """Until the group's scoring and cache-warming nights of the date have closed."""
    deadline = time.monotonic() + timeout
    query = sa.text(
        "SELECT job_type, status FROM overnight_job_runs WHERE score_date = :d "
        "AND market_group = :g"
    )
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            status = {
                str(r.job_type): str(r.status)
                for r in conn.execute(query, {"d": score_date, "g": market_group})
            }
        done = ("completed", "partial", "failed")
        if status.get("scoring") in done and status.get("cache_warm") in done:
            return
        time.sleep(0.25)
    raise TimeoutError(
        f"the night of {score_date} ({market_group}) did not finish within {timeout:.0f} s"
    )


def _run_records(env: dict[str, str], *, check_steps: bool = False) -> list[Any]:
    """Every run of the deployment of `env`, from its Dagster instance (with `check_steps`: the
    duration of each batch run's asset-check step instead)."""
    import dagster as dg

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        with dg.DagsterInstance.get() as instance:
            records = list(instance.get_run_records(limit=100_000))
            if not check_steps:
                return records
            return [
                (stat.end_time or 0.0) - (stat.start_time or 0.0)
                for r in records
                if r.dagster_run.job_name == "scoring_batch_job"
                for stat in instance.get_run_step_stats(r.dagster_run.run_id)
                if stat.step_key == "scores_invariants"
            ]
    finally:
        os.environ.clear()
        os.environ.update(saved)


def wait_runs_ended(env: dict[str, str], timeout: float) -> None:
    """The night closes from inside its last runs: wait until those runs have ended too, so
    that their end times are recorded before anything is measured or the services stop."""
    deadline = time.monotonic() + timeout
    while any(not r.dagster_run.is_finished for r in _run_records(env)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs still going {timeout:.0f} s after the night closed")
        time.sleep(0.25)


def _run_times(env: dict[str, str]) -> dict[str, list[tuple[float, float]]]:
    """(start, end) of every finished run, by job name, from the Dagster instance."""
    records = _run_records(env)
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r.start_time and r.end_time:
            out[r.dagster_run.job_name].append((r.start_time, r.end_time))
    return out


def _raw_copy_seconds(engine: Engine, wal: dict[str, int] | None = None) -> dict[str, float]:
    """COPY the night's output rows into empty look-alike tables; the floor of the write.
    `wal` gets the WAL bytes those COPYs wrote, by table."""
    seconds: dict[str, float] = {}
    for table in COPY_TABLES:
        buffer = io.BytesIO()
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            query = f"COPY (SELECT * FROM {table}) TO STDOUT"  # partitioned tables too
            with raw.cursor() as cur, cur.copy(query) as copy:
                for chunk in copy:
                    buffer.write(chunk)
            conn.execute(sa.text(f"CREATE TABLE bench_copy_{table} (LIKE {table} INCLUDING ALL)"))
            conn.commit()
        data = buffer.getvalue()
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            lsn = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')"
            lsn_before = conn.execute(sa.text(lsn)).scalar_one()
            conn.commit()
            started = time.perf_counter()
            with raw.cursor() as cur, cur.copy(f"COPY bench_copy_{table} FROM STDIN") as copy:
                for start in range(0, len(data), 1 << 20):
                    copy.write(data[start : start + (1 << 20)])
            # The driver's own commit: the COPY went around SQLAlchemy, whose commit() would be
            # a no-op here (the floor then left its commit, the WAL flush, out of its time).
            raw.commit()
            seconds[table] = time.perf_counter() - started
            if wal is not None:
                wal[table] = int(conn.execute(sa.text(lsn)).scalar_one() - lsn_before)
                conn.commit()
            conn.execute(sa.text(f"DROP TABLE bench_copy_{table}"))
            conn.commit()
    return seconds


def _figures_write_parts(engine: Engine, score_date: dt.date) -> dict[str, float]:
    """The write's parts (`writes.WriteTimer`) in seconds, summed over the night's batches."""
    with engine.connect() as conn:
        parts = conn.execute(
            sa.text(
                "SELECT key, sum(CAST(value AS bigint)) AS ms FROM scoring_batch_results, "
                "jsonb_each_text(timings) WHERE score_date = :d AND key LIKE 'write\\_%\\_ms' "
                "AND key <> 'write_ms' GROUP BY key ORDER BY key"
            ),
            {"d": score_date},
        ).all()
    return {str(r.key)[6:-3]: float(r.ms) / 1000 for r in parts}


def _figures(
    engine: Engine, score_date: dt.date, runs: dict[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    snap = runs["overnight_snapshots_job"]
    batches = runs["scoring_batch_job"]
    warm = runs["dashboard_cache_job"]
    first_start = min(s for s, _ in snap)
    snap_end = max(e for _, e in snap)
    batch_start = min(s for s, _ in batches)
    batch_end = max(e for _, e in batches)
    warm_end = max(e for _, e in warm)
    with engine.connect() as conn:
        sums = conn.execute(
            sa.text(
                "SELECT count(*) AS batches, sum(assets_scored) AS assets, "
                "sum((timings->>'load_ms')::bigint) AS load_ms, "
                "sum((timings->>'engine_ms')::bigint) AS engine_ms, "
                "sum((timings->>'engine_cpu_ms')::bigint) AS engine_cpu_ms, "
                "sum((timings->>'build_ms')::bigint) AS build_ms, "
                "sum((timings->>'serialize_ms')::bigint) AS serialize_ms, "
                "sum((timings->>'write_ms')::bigint) AS write_ms, "
                "sum((timings->>'rule_evaluations')::bigint) AS evaluations "
                "FROM scoring_batch_results WHERE score_date = :d"
            ),
            {"d": score_date},
        ).one()
    engine_s = max(float(sums.engine_ms or 0) / 1000, 1e-9)
    engine_cpu_s = max(float(sums.engine_cpu_ms or 0) / 1000, 1e-9)
    return {
        "batches": int(sums.batches),
        "assets_scored": int(sums.assets or 0),
        "rule_evaluations": int(sums.evaluations or 0),
        "end_to_end_s": max(batch_end, warm_end) - first_start,
        "stages_s": {
            "snapshots run (users, rates, prices)": snap_end - first_start,
            "snapshots done -> first batch run starts (sensor, queue)": batch_start - snap_end,
            "batch runs (first start -> last end)": batch_end - batch_start,
            "last batch -> last dashboard warm": max(0.0, warm_end - batch_end),
        },
        "batch_sums_s": {
            "load inputs": float(sums.load_ms or 0) / 1000,
            "scoring engine": float(sums.engine_ms or 0) / 1000,
            "events and results built": float(sums.build_ms or 0) / 1000,
            "rows serialised for COPY": float(sums.serialize_ms or 0) / 1000,
            "write (COPY + upserts, commit included)": float(sums.write_ms or 0) / 1000,
        },
        # Time a run worker spends on runs, by job: what the scoring itself does not explain
        # in the batch runs is Dagster's own cost per run (start, events, resources, end).
        "run_seconds_by_job": {
            job: sum(end - start for start, end in times) for job, times in runs.items()
        },
        "write_s": float(sums.write_ms or 0) / 1000,
        "write_parts_s": _figures_write_parts(engine, score_date),
        "rule_evaluations_per_s": int(sums.evaluations or 0) / engine_s,
        # The wall figure above includes time the engine waited for a core (2 cores shared with
        # PostgreSQL and the other worker); this one is the engine's own speed in the night.
        "rule_evaluations_per_cpu_s": int(sums.evaluations or 0) / engine_cpu_s,
    }


def engine_alone(engine: Engine, score_date: dt.date, batch: str = "b0000") -> float:
    """Rule evaluations per second of the engine on one batch's inputs, nothing else running:
    best of 5, each with a fresh batch cache (as a batch run starts)."""
    from scoring_pipeline.engine.columns import MetricsCache
    from scoring_pipeline.engine.payloads import universe_key
    from scoring_pipeline.engine.scoring import score_criteria_set
    from scoring_pipeline.store.batch_inputs import load_batch_inputs

    with engine.connect() as conn:
        inputs = load_batch_inputs(conn, score_date, batch)
    usd_rates = inputs.usd_rates
    work = []
    for user in inputs.users:
        for c in inputs.criteria.get(user.user_id, []):
            cs = c.parse()
            work.append((cs, inputs.universes.get(universe_key(cs), []), user.base_currency))
    evaluations = sum(len(cs.rules) * len(universe) for cs, universe, _ in work)
    best = float("inf")
    for _ in range(5):
        cache = MetricsCache()
        started = time.perf_counter()
        for cs, universe, base in work:
            score_criteria_set(
                cs, universe, base_currency=base, usd_rates=usd_rates, metrics_cache=cache
            )
        best = min(best, time.perf_counter() - started)
    return evaluations / best if best > 0 else 0.0


def _run_night(
    services_url: str, env: dict[str, str], engine: Engine, night: dt.date, timeout: float
) -> None:
    """Launch a date's night as the schedule does; wait until it has closed and its runs ended."""
    DagsterApi(services_url).launch_job(
        "overnight_snapshots_job", tags={"dagster/partition": night.isoformat()}
    )
    wait_night(engine, night, timeout)
    wait_runs_ended(env, timeout)


def _vacuum(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in OUTPUT_TABLES:
            conn.execute(sa.text(f"VACUUM {table}"))


def _later_nights(
    engine: Engine,
    env: dict[str, str],
    workers: int,
    dates: list[dt.date],
    timeout: float,
    echo: Any,
) -> list[dict[str, Any]]:
    """Run one night per date on the same database, each after a plain VACUUM of the output
    tables (what autovacuum does in the day between two nights: it frees the replaced rows'
    space for reuse, the files keep their size). Returns what each night added on disk."""
    out: list[dict[str, Any]] = []
    with running_services(port=free_port(), workers=workers, env=env) as services:
        for night in dates:
            _vacuum(engine)
            before = _tables(engine)
            echo(f"next night: {night}")
            counters = _server_counters(engine)
            started = time.monotonic()
            _run_night(services.url, env, engine, night, timeout)
            seconds = time.monotonic() - started
            server = _counters_diff(counters, _server_counters(engine))
            after = _tables(engine)
            with engine.connect() as conn:
                assets = int(
                    conn.execute(
                        sa.text(
                            "SELECT coalesce(sum(assets_scored), 0) FROM scoring_batch_results "
                            "WHERE score_date = :d"
                        ),
                        {"d": night},
                    ).scalar_one()
                )
            added = {t: after[t]["bytes"] - before[t]["bytes"] for t in after}
            out.append(
                {
                    "score_date": night.isoformat(),
                    "assets_scored": assets,
                    "end_to_end_s": seconds,
                    "bytes_added": added,
                    "bytes_added_per_asset": sum(added.values()) / max(assets, 1),
                    "write_parts_s": _figures_write_parts(engine, night),
                    "server_during_night": server,
                }
            )
    return out


def _sessions(engine: Engine) -> int:
    """Connections ever opened to the benchmark database (PostgreSQL counts them)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def _server_counters(engine: Engine) -> dict[str, int]:
    """The server's WAL and checkpoint counters (server-wide: every database on it counts)."""
    with engine.connect() as conn:
        version = int(conn.execute(sa.text("SHOW server_version_num")).scalar_one())
        wal = conn.execute(
            sa.text(
                "SELECT wal_records, wal_fpi, wal_bytes, wal_buffers_full, "
                "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0') AS lsn FROM pg_stat_wal"
            )
        ).one()
        checkpoints = conn.execute(
            sa.text(
                "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
                if version >= 170000
                else "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
            )
        ).scalar_one()
    return {
        "wal_bytes": int(wal.lsn),
        "wal_records": int(wal.wal_records),
        "wal_full_page_images": int(wal.wal_fpi),
        "wal_buffers_full": int(wal.wal_buffers_full),
        "checkpoints": int(checkpoints),
    }


def _counters_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before}


def _tables(engine: Engine) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for table in OUTPUT_TABLES:
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            # A partitioned table's own size is 0: its partitions hold the rows.
            size = conn.execute(
                sa.text(
                    "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) "
                    "FROM pg_partition_tree(CAST(:t AS regclass))), "
                    "pg_total_relation_size(CAST(:t AS regclass)))"
                ),
                {"t": table},
            ).scalar_one()
            out[table] = {"rows": int(rows), "bytes": int(size)}
    return out


def new_universe(
    users: int,
    seed: int,
    instruments_per_market: int,
    first_date: dt.date,
    server_url: str | None,
    echo: Any,
) -> tuple[str, Engine, Path, dict[str, str]]:
    """A new database on the server of `server_url` (by default the one `DATABASE_URL` or the
    embedded default names), migrated and filled with a generated universe whose fundamentals
    date from before `first_date`; with its work folder (provider files, DAGSTER_HOME) and the
    environment of a deployment of its own. Returns (url, engine, work folder, environment)."""
    url = db.create_database(server_url or db.resolve_database_url(), "scoring_bench")
    engine = db.create_engine_for(url)
    work = Path(tempfile.mkdtemp(prefix="scoring-bench-"))
    try:
        db.migrate(engine)
        with engine.begin() as conn:
            counts = generate(
                conn,
                users=users,
                seed=seed,
                out_dir=work / "provider_files",
                instruments_per_market=instruments_per_market,
                rules_per_set=12,
                today=first_date,
            )
        echo(f"universe: {counts}")
        env = private_deployment_env(url, work / "dagster_home", work / "provider_files")
        db.prepare_dagster_environment(env)
    except BaseException:
        engine.dispose()
        db.drop_database(url)
        shutil.rmtree(work, ignore_errors=True)
        raise
    return url, engine, work, env


def run_bench(
    users: int,
    *,
    workers: int = 2,
    instruments_per_market: int = 200,
    seed: int = 1,
    timeout: float = 1800.0,
    keep: bool = False,
    echo: Any = print,
    server_url: str | None = None,
    nights: int = 1,
) -> BenchReport:
    """A night of `users` generated users through the real services, in a new database on the
    server of `server_url` (by default the one `DATABASE_URL` or the embedded default names).

    With `nights` > 1 the first night is that many days back, and the following nights run on
    the same database, one date after the other, to measure what a night adds on disk once the
    current scores exist (`later_nights`). Every other figure is the first night's.
    """
    if nights < 1:
        raise ValueError("nights must be at least 1")
    today = dt.datetime.now(dt.UTC).date()
    dates = [today - dt.timedelta(days=nights - 1 - n) for n in range(nights)]
    score_date = dates[0]
    url, engine, work, env = new_universe(
        users, seed, instruments_per_market, score_date, server_url, echo
    )
    try:
        with running_services(port=free_port(), workers=workers, env=env) as services:
            roots = [p.pid for p in services.processes.values()]
            with RssSampler(roots, postgres_pids=_server_processes(engine)) as sampler:
                echo("services up; launching the night")
                sessions_before = _sessions(engine)
                counters_before = _server_counters(engine)
                _run_night(services.url, env, engine, score_date, timeout)
                server = _counters_diff(counters_before, _server_counters(engine))
                sessions = _sessions(engine) - sessions_before
            runs = _run_times(env)
            check_steps = _run_records(env, check_steps=True)
        report = BenchReport(
            users=users,
            rss_mb=dict(sampler.peaks),
            cpu_s=sampler.cpu_seconds,
            runs={job: len(times) for job, times in runs.items()},
        )
        report.figures = _figures(engine, score_date, runs)
        report.figures["connections_opened"] = sessions
        report.figures["server_during_night"] = server
        report.figures["asset_check_steps"] = len(check_steps)
        report.figures["asset_check_s"] = sum(check_steps)
        report.tables = _tables(engine)
        raw_copy_wal: dict[str, int] = {}
        raw_copy_by_table = _raw_copy_seconds(engine, raw_copy_wal)
        report.figures["raw_copy_wal_bytes"] = sum(raw_copy_wal.values())
        raw_copy = sum(raw_copy_by_table.values())
        report.figures["engine_alone_per_s"] = engine_alone(engine, score_date)
        total_bytes = sum(t["bytes"] for t in report.tables.values())
        assets = max(report.figures["assets_scored"], 1)
        report.figures.update(
            raw_copy_s=raw_copy,
            raw_copy_s_by_table=raw_copy_by_table,
            write_to_copy_ratio=report.figures["write_s"] / max(raw_copy, 1e-9),
            bytes_per_asset=total_bytes / assets,
        )
        if dates[1:]:
            report.later_nights = _later_nights(engine, env, workers, dates[1:], timeout, echo)
        return report
    finally:
        engine.dispose()
        if not keep:
            db.drop_database(url)
            shutil.rmtree(work, ignore_errors=True)


def save(report: BenchReport, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{report.users}.json"
    path.write_text(
        json.dumps(
            {
                "users": report.users,
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": f"{os.cpu_count()} cores",
                "figures": report.figures,
                "tables": report.tables,
                "rss_mb": report.rss_mb,
                "cpu_s": report.cpu_s,
                "cpu_seconds_per_1000_users": report.cpu_seconds_per_1000_users,
                "runs": report.runs,
                "later_nights": report.later_nights,
            },
            indent=2,
        )
    )
    return path
