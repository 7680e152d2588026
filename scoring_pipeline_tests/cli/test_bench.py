"""`make bench` on a small universe: three nights through the real services, and a report whose
figures account for every row written (the benchmark's own correctness, not its speed)."""

import datetime as dt
import math
import os

import pytest
import sqlalchemy as sa

from scoring_pipeline.cli.bench.floors import COPY_TABLES, concurrent_copy
from scoring_pipeline.cli.bench.night import progress_line
from scoring_pipeline.cli.bench.runner import bench_dates, run_bench
from scoring_pipeline.cli.bench.sampling import server_processes
from scoring_pipeline.store import db
from scoring_pipeline.store.dashboard_cache import pending_batches, warm_batch
from scoring_pipeline_tests.scenario import (
    DATE,
    batch,
    forget_night_keys,
    snapshots,
    users_in_two_currencies,
)

pytestmark = pytest.mark.db

USERS = 60  # two batches of 50 and 10


def test_bench_night_accounts_for_every_row(server_url):
    said: list[str] = []
    report = run_bench(
        USERS, instruments_per_market=10, server_url=server_url, nights=3, echo=said.append
    )
    f = report.figures
    # What a long benchmark says while it works, before its report.
    assert said[0].startswith("universe: {'users': 60,")
    assert said[1] == "services up; launching the night"
    rows = sum(report.tables[t]["rows"] for t in COPY_TABLES)
    assert said[2] == (
        f"night done in {f['end_to_end_s']:.1f} s; measuring the raw COPY of its {rows:,} "
        "output rows, the cost of COPYing from 2 connections at once and the engine alone"
    )
    assert said[3:] == [f"next night: {night}" for night in bench_dates(dt.date.today(), 3)[1:]]
    tables = report.tables

    assert f["batches"] == math.ceil(USERS / 50)
    assert report.runs["overnight_snapshots_job"] == 1
    # The sensor scores up to SCORING_BATCHES_PER_RUN (10) consecutive batches a run.
    assert report.runs["scoring_batch_job"] == math.ceil(f["batches"] / 10) == 1
    assert report.runs["dashboard_cache_job"] >= 1
    # Every generated user is active and scored: 4 events each, and the night's two job runs
    # (scoring, cache_warm) each opened and closed.
    assert tables["scoring_batches"]["rows"] == USERS
    assert tables["overnight_job_runs"]["rows"] == 2
    assert tables["calculation_events"]["rows"] == 4 * USERS + 2 * 2
    assert tables["dashboard_cache"]["rows"] == USERS
    assert f["assets_scored"] > 0
    assert tables["asset_scores"]["rows"] == tables["score_history"]["rows"] == f["assets_scored"]
    assert f["rule_evaluations"] >= f["assets_scored"]

    assert set(f["raw_copy_s_by_table"]) == set(COPY_TABLES)
    assert f["raw_copy_s"] == pytest.approx(sum(f["raw_copy_s_by_table"].values()))
    assert f["write_to_copy_ratio"] == pytest.approx(f["write_s"] / f["raw_copy_s"])
    # Both batches COPYed again, first by one connection, then one each from two at once: every
    # user's scores, history and four events (the night's two job events have no user).
    together = f["concurrent_copy"]
    assert together["batches"] == f["batches"] and together["connections"] == 2
    assert together["rows"] == 2 * f["assets_scored"] + 4 * USERS
    assert together["one_s"] > 0 and together["together_s"] > 0
    assert together["factor"] == pytest.approx(together["together_s"] / together["one_s"])
    assert f["write_to_concurrent_copy_ratio"] == pytest.approx(
        f["write_s"] / (f["raw_copy_s"] * together["factor"])
    )
    # The write's parts are timed inside it: together they never exceed the whole write.
    parts = f["write_parts_s"]
    assert {"metric_values", "lock", "copy_scores", "copy_history", "copy_events"} <= set(parts)
    assert {"outcome", "commit"} <= set(parts)
    assert 0 < sum(parts.values()) <= f["write_s"] + 0.001 * (len(parts) + 1) * f["batches"]
    # WAL is counted on the server for the night and for the raw COPY.
    assert f["server_during_night"]["wal_bytes"] > 0 and f["raw_copy_wal_bytes"] > 0
    total_bytes = sum(t["bytes"] for t in tables.values())
    assert f["bytes_per_asset"] == pytest.approx(total_bytes / f["assets_scored"])
    assert f["end_to_end_s"] >= f["stages_s"]["batch runs (first start -> last end)"] > 0
    assert f["connections_opened"] > 0
    # Every batch run evaluated the asset checks, in a step of its own that the report times.
    assert f["asset_check_steps"] == report.runs["scoring_batch_job"] and f["asset_check_s"] > 0
    assert f["rule_evaluations_per_cpu_s"] > 0 and f["engine_alone_per_s"] > 0
    assert report.rss_mb["postgres"] > 0 and report.rss_mb["celery run worker"] > 0
    assert report.cpu_seconds_per_1000_users == pytest.approx(
        sum(report.cpu_s.values()) * 1000 / USERS
    )
    # The sampled processes are a part of what the whole machine spent over the same night.
    assert report.machine_cpu_s >= 0.95 * sum(report.cpu_s.values()) > 0
    # ... over the time it was sampled: the busy share of the cores is a share, and the night's
    # own work alone makes it more than nothing.
    assert report.machine_wall_s >= 0.95 * f["end_to_end_s"]
    assert 0 < report.machine_busy_share <= 1.02
    assert 0 <= report.machine_steal_s <= report.machine_wall_s * (os.cpu_count() or 1)

    # The later nights score the same universe on the following dates. The first of them adds
    # a second version of every current score (the replaced rows' space is only free once
    # vacuumed); the next one reuses that space, so only history and events grow.
    second, third = report.later_nights
    assert [n["assets_scored"] for n in (second, third)] == [f["assets_scored"]] * 2
    # All three nights fall in one month, whatever the day the benchmark runs (bench_dates).
    assert [n["night_of_month"] for n in (second, third)] == [2, 3]
    for night in (second, third):
        assert night["write_parts_s"]["delete_scores"] >= 0
        assert night["bytes_added"]["score_history"] > 0
        assert night["bytes_added"]["calculation_events"] > 0
        assert night["bytes_added_per_asset"] == pytest.approx(
            sum(night["bytes_added"].values()) / night["assets_scored"]
        )
    assert second["bytes_added"]["asset_scores"] > 0
    assert third["bytes_added"]["asset_scores"] < second["bytes_added"]["asset_scores"] / 2
    # The nights' totals are not compared: on a universe this small, a night that starts a
    # month's partitions pays their first pages, more than the space the third night reuses.

    text = "\n".join(report.lines())
    assert f"benchmark: {USERS} users, {f['batches']} batches" in text
    assert "write stage / raw COPY" in text
    assert "the whole machine (also short-lived processes, anything else)" in text
    assert f"the cores busy over the night (share of {os.cpu_count()})" in text
    assert "taken by the hypervisor meanwhile (steal: the host busy elsewhere)" in text
    assert (
        f"{third['score_date']} (night 3 of its month): {third['assets_scored']:,} assets scored"
        in text
    )


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


@pytest.mark.parametrize(
    ("today", "nights", "expected"),
    [
        # Enough days of this month behind today: the nights end today.
        (dt.date(2026, 12, 15), 3, _days(dt.date(2026, 12, 13), dt.date(2026, 12, 15))),
        (dt.date(2026, 12, 3), 3, _days(dt.date(2026, 12, 1), dt.date(2026, 12, 3))),
        # Too few: they end on the last day of the month before (across a year, a leap day).
        (dt.date(2026, 12, 2), 3, _days(dt.date(2026, 11, 28), dt.date(2026, 11, 30))),
        (dt.date(2027, 1, 1), 2, _days(dt.date(2026, 12, 30), dt.date(2026, 12, 31))),
        (dt.date(2028, 3, 1), 3, _days(dt.date(2028, 2, 27), dt.date(2028, 2, 29))),
        (dt.date(2026, 12, 1), 1, [dt.date(2026, 12, 1)]),
        # More nights than a month has days: they end today and span months.
        (dt.date(2026, 12, 1), 30, _days(dt.date(2026, 11, 2), dt.date(2026, 12, 1))),
    ],
)
def test_bench_nights_fall_in_one_month(today, nights, expected):
    assert bench_dates(today, nights) == expected


def test_bench_refuses_no_nights():
    with pytest.raises(ValueError, match="nights must be at least 1"):
        bench_dates(dt.date(2026, 12, 1), 0)


def test_nothing_written_at_once_is_not_measured(clean_db):
    """One run worker, or a night of fewer than two batches, writes nothing at once: no figure,
    and no look-alike table left behind. (On the emptied database: another test's night of
    that date made it measure two batches.)"""
    engine = clean_db
    assert concurrent_copy(engine, DATE, connections=1) is None
    assert concurrent_copy(engine, DATE, connections=2) is None  # no batch on that date
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'bench_copy_%'")
        ).scalar_one()
    assert left == 0


def test_cpu_counts_only_the_benchmark_databases_server_processes(engine, databases):
    """A shared server's sessions of other databases are not the benchmark's CPU."""
    other = sa.create_engine(db.with_driver(databases.create(), db.APP_DRIVER))
    try:
        with engine.connect() as ours, other.connect() as theirs:
            ours_pid = ours.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            theirs_pid = theirs.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            counted = server_processes(engine)()
        assert ours_pid in counted and theirs_pid not in counted
        assert len(counted) > 1  # the server's own processes (WAL writer, checkpointer, …)
    finally:
        other.dispose()


@pytest.mark.slow
def test_groups_bench_scores_the_same_assets_as_one_night(server_url):
    from scoring_pipeline.cli.bench.groups import run_groups_bench

    report = run_groups_bench(
        USERS,
        ["us", "br", "eu"],
        instruments_per_market=10,
        server_url=server_url,
        echo=lambda _: None,
    )
    assert report.single.status == "completed" and report.single.users_total == USERS
    assert [g.name for g in report.groups] == ["us", "br", "eu"]
    assert all(g.status == "completed" for g in report.groups)
    # Each user is in the groups of its criteria sets' markets; together they score it all.
    assert sum(g.assets_scored for g in report.groups) == report.single.assets_scored > 0
    assert all(0 < g.users_total <= USERS for g in report.groups)
    assert sum(g.users_total for g in report.groups) >= USERS
    assert "per-group overhead vs one night" in report.lines()[-1]


def test_groups_bench_refuses_an_unknown_group():
    from scoring_pipeline.cli.bench.groups import run_groups_bench

    with pytest.raises(ValueError, match="unknown group 'xx'"):
        run_groups_bench(USERS, ["us", "xx"])


def test_a_night_in_progress_says_how_far_it_is(world, dagster_instance):
    """The line a long benchmark prints every 30 s while its night runs (batches of 2 users)."""
    users_in_two_currencies(world, 4)
    forget_night_keys(dagster_instance)
    assert snapshots(dagster_instance).success
    day = dt.date.fromisoformat(DATE)
    assert progress_line(world, day, "all", 12.4) == (
        "      12 s: 0 of 2 batches written (0 users scored, 0 failed), 0 dashboards warm"
    )
    assert batch(dagster_instance, "b0000").success
    assert progress_line(world, day, "all", 30.0) == (
        "      30 s: 1 of 2 batches written (2 users scored, 0 failed), 0 dashboards warm"
    )
    with world.begin() as conn:
        (landed,) = pending_batches(conn, 10).batches
        warm_batch(conn, landed)
    assert progress_line(world, day, "all", 60.0).endswith("2 dashboards warm")
    # Another group's night of the same date counts nothing of this one's.
    assert progress_line(world, day, "us", 60.0).startswith("      60 s: 0 of 2 batches written")
