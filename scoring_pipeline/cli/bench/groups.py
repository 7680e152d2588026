"""`scoring-pipeline bench --groups us,br,eu`: what per-market nights cost next to one night.

On one generated universe (the benchmark's: 3 markets × N instruments, 12-rule sets, 1–3 sets per
user), through the real webserver, daemon and run workers:
1. a warm-up night of the default single group (the first night on empty tables);
2. the next date as one group (every market): the baseline;
3. services restarted with the groups configured, and a warm-up: the first group re-scores the
   baseline's date (not measured);
4. the date after as the configured groups, one after the other as their opens come in a day
   (each group's snapshots job launched once the previous group's night and cache warming closed).
Each group's figures come from its own night (`overnight_job_runs` of its market group); the
overhead is the groups' summed time and CPU over the single night's, on the same database.
"""

import datetime as dt
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scoring_pipeline.cli.bench.groups_report import GroupsReport, NightFigures
from scoring_pipeline.cli.bench.night import wait_night, wait_runs_ended
from scoring_pipeline.cli.bench.sampling import RssSampler, server_processes
from scoring_pipeline.cli.bench.universe import new_universe
from scoring_pipeline.defs.market_groups.config import GROUPS_FILE_VARIABLE
from scoring_pipeline.runtime.dagster_api import DagsterApi
from scoring_pipeline.runtime.services import free_port, running_services
from scoring_pipeline.store import db

# The generated universe's markets and their exchanges.
GROUP_MARKETS = {
    "us": ("US_TECH", "XNYS"),
    "br": ("BR_BANKS", "BVMF"),
    "eu": ("EU_INDUSTRIALS", "XETR"),
}


def _groups_file(path: Path, names: list[str]) -> Path:
    path.write_text(
        "".join(
            f'[groups.{n}]\nmarkets = ["{GROUP_MARKETS[n][0]}"]\n'
            f'calendar = "{GROUP_MARKETS[n][1]}"\n'
            for n in names
        )
    )
    return path


def _night(
    services: Any,
    env: dict[str, str],
    engine: Engine,
    score_date: dt.date,
    group: str,
    timeout: float,
    echo: Callable[[str], None] | None = None,
) -> NightFigures:
    job = "overnight_snapshots_job" if group == "all" else f"{group}_overnight_snapshots_job"
    roots = [p.pid for p in services.processes.values()]
    started = time.monotonic()
    with RssSampler(roots, postgres_pids=server_processes(engine)) as sampler:
        DagsterApi(services.url).launch_job(job, tags={"dagster/partition": score_date.isoformat()})
        wait_night(engine, score_date, timeout, group, echo)
        wait_runs_ended(env, timeout)
    seconds = time.monotonic() - started
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT status, metrics FROM overnight_job_runs WHERE job_type = 'scoring' "
                "AND score_date = :d AND market_group = :g"
            ),
            {"d": score_date, "g": group},
        ).one()
    return NightFigures(
        name=group,
        seconds=seconds,
        cpu_s=sum(sampler.cpu_seconds.values()),
        users_total=int(row.metrics.get("users_total", 0)),
        assets_scored=int(row.metrics.get("assets_scored", 0)),
        batches=int(row.metrics.get("batches_total", 0)),
        status=str(row.status),
    )


def run_groups_bench(
    users: int,
    groups: list[str],
    *,
    workers: int = 2,
    instruments_per_market: int = 200,
    seed: int = 1,
    timeout: float = 1800.0,
    echo: Any = print,
    server_url: str | None = None,
) -> GroupsReport:
    unknown = [n for n in groups if n not in GROUP_MARKETS]
    if unknown or not groups:
        raise ValueError(
            f"--groups: unknown group {(unknown or [''])[0]!r} "
            f"(the benchmark's: {', '.join(GROUP_MARKETS)})"
        )
    today = dt.datetime.now(dt.UTC).date()
    warm_up, single_date, groups_date = (today - dt.timedelta(days=n) for n in (2, 1, 0))
    url, engine, work, env = new_universe(
        users, seed, instruments_per_market, warm_up, server_url, echo
    )
    try:
        with running_services(port=free_port(), workers=workers, env=env) as services:
            echo(f"warm-up night {warm_up} (one group)")
            _night(services, env, engine, warm_up, "all", timeout, echo)
            echo(f"one-group night {single_date}")
            single = _night(services, env, engine, single_date, "all", timeout, echo)
        report = GroupsReport(users=users, single=single)
        env[GROUPS_FILE_VARIABLE] = str(_groups_file(work / "groups.toml", groups))
        with running_services(port=free_port(), workers=workers, env=env) as services:
            # The new services' first night pays their warm-up: a first group's night of the
            # baseline's date (re-scored, not measured) takes it.
            echo(f"warm-up night {single_date} of group {groups[0]}")
            _night(services, env, engine, single_date, groups[0], timeout, echo)
            for group in groups:
                echo(f"group {group} night {groups_date}")
                report.groups.append(
                    _night(services, env, engine, groups_date, group, timeout, echo)
                )
        return report
    finally:
        engine.dispose()
        db.drop_database(url)
        shutil.rmtree(work, ignore_errors=True)
