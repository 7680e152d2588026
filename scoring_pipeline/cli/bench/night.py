"""Launching a night through the running services as the schedule does, and waiting until it
has closed and its runs have ended; the runs' records from the deployment's Dagster instance.
"""

import datetime as dt
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scoring_pipeline.runtime.dagster_api import DagsterApi

# How often a night in progress says how far it is (a 100,000-user night runs ~15 minutes).
PROGRESS_SECONDS = 30.0


def wait_night(
    engine: Engine,
    score_date: dt.date,
    timeout: float,
    market_group: str = "all",
    echo: Callable[[str], None] | None = None,
    every: float = PROGRESS_SECONDS,
) -> None:
    """Until the group's scoring and cache-warming nights of the date have closed; every `every`
    seconds, `echo` gets a line of the night's progress."""
    started = time.monotonic()
    deadline = started + timeout
    next_progress = started + every
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
        if echo is not None and time.monotonic() >= next_progress:
            echo(progress_line(engine, score_date, market_group, time.monotonic() - started))
            next_progress += every
        time.sleep(0.25)
    raise TimeoutError(
        f"the night of {score_date} ({market_group}) did not finish within {timeout:.0f} s"
    )


def progress_line(engine: Engine, score_date: dt.date, market_group: str, seconds: float) -> str:
    """How far the group's night of the date is: batches written of the date's, users scored
    and failed, dashboards warmed."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT (SELECT count(DISTINCT batch_key) FROM scoring_batches "
                "WHERE score_date = :d) AS batches, count(*) AS written, "
                "coalesce(sum(users_success), 0) AS scored, "
                "coalesce(sum(users_failed), 0) AS failed, "
                "coalesce(sum(users_warm), 0) AS warm "
                "FROM scoring_batch_results WHERE score_date = :d AND market_group = :g"
            ),
            {"d": score_date, "g": market_group},
        ).one()
    return (
        f"  {seconds:6.0f} s: {row.written:,} of {row.batches:,} batches written "
        f"({row.scored:,} users scored, {row.failed:,} failed), {row.warm:,} dashboards warm"
    )


def run_records(env: dict[str, str], *, check_steps: bool = False) -> list[Any]:
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
    while any(not r.dagster_run.is_finished for r in run_records(env)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs still going {timeout:.0f} s after the night closed")
        time.sleep(0.25)


def run_times(env: dict[str, str]) -> dict[str, list[tuple[float, float]]]:
    """(start, end) of every finished run, by job name, from the Dagster instance."""
    records = run_records(env)
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r.start_time and r.end_time:
            out[r.dagster_run.job_name].append((r.start_time, r.end_time))
    return out


def launch_night(
    services_url: str,
    env: dict[str, str],
    engine: Engine,
    night: dt.date,
    timeout: float,
    echo: Callable[[str], None] | None = None,
) -> None:
    """Launch a date's night as the schedule does; wait until it has closed and its runs ended
    (`echo` gets its progress every 30 s)."""
    DagsterApi(services_url).launch_job(
        "overnight_snapshots_job", tags={"dagster/partition": night.isoformat()}
    )
    wait_night(engine, night, timeout, echo=echo)
    wait_runs_ended(env, timeout)
