"""`run_bench`: the benchmark's nights on a new universe, through the real services, measured.

The first night runs sampled (memory, CPU, connections, WAL); its figures come from what its
batches and runs recorded, next to the raw COPY floor, the cost of COPYing from the run workers'
connections at once and the engine alone, measured after it.
Later nights on the same database measure what a night adds on disk.
"""

import datetime as dt
import shutil
import time
from dataclasses import asdict
from typing import Any

from sqlalchemy.engine import Engine

from scoring_pipeline.cli.bench.figures import assets_scored, night_figures, write_parts
from scoring_pipeline.cli.bench.floors import (
    COPY_TABLES,
    concurrent_copy,
    engine_alone,
    raw_copy_seconds,
)
from scoring_pipeline.cli.bench.night import launch_night, run_records, run_times
from scoring_pipeline.cli.bench.report import BenchReport
from scoring_pipeline.cli.bench.sampling import RssSampler, server_processes
from scoring_pipeline.cli.bench.server_stats import (
    counters_diff,
    server_counters,
    sessions,
    table_sizes,
    vacuum,
)
from scoring_pipeline.cli.bench.universe import new_universe
from scoring_pipeline.providers.chain import DEFAULT_MAX_DATA_AGE_DAYS
from scoring_pipeline.runtime.services import free_port, running_services
from scoring_pipeline.store import db


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

    With `nights` > 1 the following nights run on the same database, one date after the other,
    to measure what a night adds on disk once the current scores exist (`later_nights`); the
    dates are `bench_dates`. Every other figure is the first night's.
    """
    dates = bench_dates(dt.datetime.now(dt.UTC).date(), nights)
    url, engine, work, env = new_universe(
        users, seed, instruments_per_market, dates[0], server_url, echo
    )
    # One provider file serves every night: its prices and rates are dated the first date.
    env["PROVIDER_MAX_DATA_AGE_DAYS"] = str(max(DEFAULT_MAX_DATA_AGE_DAYS, nights))
    try:
        report = _first_night(users, engine, env, workers, dates[0], timeout, echo)
        if dates[1:]:
            report.later_nights = _later_nights(engine, env, workers, dates, timeout, echo)
        return report
    finally:
        engine.dispose()
        if not keep:
            db.drop_database(url)
            shutil.rmtree(work, ignore_errors=True)


def bench_dates(today: dt.date, nights: int) -> list[dt.date]:
    """`nights` consecutive dates ending today, or, when those would cross into this month, ending
    on the last day of the month before: every night of the benchmark falls in one month.

    So what the later nights add does not depend on the day it is run: it depends on a night's
    place in its month (the index of `score_history` by user and symbol forms its posting lists
    on a month's second night: ~40 B more per scored asset than on its third; see
    docs/design.md, "What a later night adds on disk"). Over 28 nights necessarily span months.
    """
    if nights < 1:
        raise ValueError("nights must be at least 1")
    last = today if today.day >= nights or nights > 28 else today.replace(day=1) - dt.timedelta(1)
    return [last - dt.timedelta(days=nights - 1 - n) for n in range(nights)]


def _night_of_month(night: dt.date, dates: list[dt.date]) -> int:
    """Which of the benchmark's nights in its month `night` is (1 = it opens the partitions)."""
    return sum(1 for d in dates if (d.year, d.month) == (night.year, night.month) and d <= night)


def _first_night(
    users: int,
    engine: Engine,
    env: dict[str, str],
    workers: int,
    score_date: dt.date,
    timeout: float,
    echo: Any,
) -> BenchReport:
    """The night of `score_date` through new services, its processes sampled, and its report."""
    with running_services(port=free_port(), workers=workers, env=env) as services:
        roots = [p.pid for p in services.processes.values()]
        with RssSampler(roots, postgres_pids=server_processes(engine)) as sampler:
            echo("services up; launching the night")
            sessions_before = sessions(engine)
            counters_before = server_counters(engine)
            launch_night(services.url, env, engine, score_date, timeout, echo)
            server = counters_diff(counters_before, server_counters(engine))
            opened = sessions(engine) - sessions_before
        runs = run_times(env)
        check_steps = run_records(env, check_steps=True)
    report = BenchReport(
        users=users,
        rss_mb=dict(sampler.peaks),
        cpu_s=sampler.cpu_seconds,
        machine_cpu_s=sampler.machine_cpu_s,
        machine_steal_s=sampler.machine_steal_s,
        machine_wall_s=sampler.wall_s,
        runs={job: len(times) for job, times in runs.items()},
    )
    report.figures = night_figures(engine, score_date, runs)
    report.figures["connections_opened"] = opened
    report.figures["server_during_night"] = server
    report.figures["asset_check_steps"] = len(check_steps)
    report.figures["asset_check_s"] = sum(check_steps)
    report.tables = table_sizes(engine)
    echo(
        f"night done in {report.figures['end_to_end_s']:.1f} s; measuring the raw COPY of its "
        f"{sum(report.tables[t]['rows'] for t in COPY_TABLES):,} output rows, "
        + (f"the cost of COPYing from {workers} connections at once " if workers > 1 else "")
        + "and the engine alone"
    )
    _add_floors(report, engine, score_date, workers)
    return report


def _add_floors(report: BenchReport, engine: Engine, score_date: dt.date, workers: int) -> None:
    """The raw COPY floor, what COPYing from `workers` connections at once costs, and the engine
    alone, measured on the night's output, and the figures relative to them (the figures' order
    is the saved JSON's)."""
    raw_copy_wal: dict[str, int] = {}
    raw_copy_by_table = raw_copy_seconds(engine, raw_copy_wal)
    report.figures["raw_copy_wal_bytes"] = sum(raw_copy_wal.values())
    raw_copy = sum(raw_copy_by_table.values())
    together = concurrent_copy(engine, score_date, workers)
    report.figures["concurrent_copy"] = (
        asdict(together) | {"factor": together.factor} if together else None
    )
    report.figures["engine_alone_per_s"] = engine_alone(engine, score_date)
    total_bytes = sum(t["bytes"] for t in report.tables.values())
    assets = max(report.figures["assets_scored"], 1)
    report.figures.update(
        raw_copy_s=raw_copy,
        raw_copy_s_by_table=raw_copy_by_table,
        write_to_copy_ratio=report.figures["write_s"] / max(raw_copy, 1e-9),
        # With one run worker nothing is written at once: the same as the ratio above.
        write_to_concurrent_copy_ratio=(
            report.figures["write_s"] / max(raw_copy * (together.factor if together else 1), 1e-9)
        ),
        bytes_per_asset=total_bytes / assets,
    )


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
    space for reuse, the files keep their size), for every date of `dates` but the first (the
    first night's). Returns what each night added on disk."""
    out: list[dict[str, Any]] = []
    with running_services(port=free_port(), workers=workers, env=env) as services:
        for night in dates[1:]:
            vacuum(engine)
            before = table_sizes(engine)
            echo(f"next night: {night}")
            counters = server_counters(engine)
            started = time.monotonic()
            launch_night(services.url, env, engine, night, timeout, echo)
            seconds = time.monotonic() - started
            server = counters_diff(counters, server_counters(engine))
            after = table_sizes(engine)
            assets = assets_scored(engine, night)
            added = {t: after[t]["bytes"] - before[t]["bytes"] for t in after}
            out.append(
                {
                    "score_date": night.isoformat(),
                    "night_of_month": _night_of_month(night, dates),
                    "assets_scored": assets,
                    "end_to_end_s": seconds,
                    "bytes_added": added,
                    "bytes_added_per_asset": sum(added.values()) / max(assets, 1),
                    "write_parts_s": write_parts(engine, night),
                    "server_during_night": server,
                }
            )
    return out
