"""The code location: the one place `dg.Definitions` is built, from explicit lists."""

import datetime as dt
import os
from collections.abc import Mapping

import dagster as dg
import sqlalchemy as sa

from scoring_pipeline.defs.cache_warming import dashboard_cache_job
from scoring_pipeline.defs.deployment import build_resources, schedule_settings
from scoring_pipeline.defs.market_groups.config import load_groups
from scoring_pipeline.defs.market_groups.group import MarketGroup
from scoring_pipeline.defs.nights import build_nights
from scoring_pipeline.defs.sensors import build_sensors


def _read_markets() -> Mapping[str, tuple[str, dt.time]]:
    """markets.code -> (timezone, opens_at), for a market groups file's defaults and checks."""
    from scoring_pipeline.store.db import create_engine_for, resolve_database_url

    engine = create_engine_for(resolve_database_url())
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT code, timezone, opens_at FROM markets")).all()
    finally:
        engine.dispose()
    return {str(r.code): (str(r.timezone), r.opens_at) for r in rows}


def market_groups(env: Mapping[str, str] | None = None) -> list[MarketGroup]:
    """The configured market groups (the single default group without MARKET_GROUPS_FILE)."""
    env = os.environ if env is None else env
    cron, timezone = schedule_settings(env)
    return load_groups(env, cron, timezone, _read_markets)


@dg.definitions
def defs() -> dg.Definitions:
    """Built when Dagster loads the code location, not at import (env is read here)."""
    nights = build_nights(market_groups())
    groups = list(nights.nights.values())
    return dg.Definitions(
        assets=nights.assets(),
        asset_checks=[n.checks for n in groups],
        jobs=[
            *(job for n in groups for job in (n.snapshots_job, n.batch_job)),
            dashboard_cache_job,
        ],
        schedules=[n.schedule for n in groups],
        sensors=build_sensors(nights),
        resources=build_resources(),
        # Also for the implicit asset job of UI materialisations and backfills: steps are short,
        # and Celery run workers are daemonic processes that may not fork step processes.
        executor=dg.in_process_executor,
    )
