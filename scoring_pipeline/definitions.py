"""The code location: the one place `dg.Definitions` is built, from explicit lists."""

import dagster as dg

from scoring_pipeline.assets.active_users import active_users
from scoring_pipeline.assets.exchange_rates import exchange_rates
from scoring_pipeline.assets.prices import prices
from scoring_pipeline.assets.scores import scores
from scoring_pipeline.cache_warming import dashboard_cache_job
from scoring_pipeline.checks import scores_invariants
from scoring_pipeline.deployment import build_resources, schedule_settings
from scoring_pipeline.jobs import overnight_snapshots_job, scoring_batch_job
from scoring_pipeline.schedules import build_overnight_schedule
from scoring_pipeline.sensors import (
    dashboard_cache_sensor,
    scoring_batches_sensor,
    scoring_run_canceled_sensor,
    scoring_run_failure_sensor,
)


@dg.definitions
def defs() -> dg.Definitions:
    """Built when Dagster loads the code location, not at import (env is read here)."""
    cron, timezone = schedule_settings()
    return dg.Definitions(
        assets=[active_users, exchange_rates, prices, scores],
        asset_checks=[scores_invariants],
        jobs=[overnight_snapshots_job, scoring_batch_job, dashboard_cache_job],
        schedules=[build_overnight_schedule(cron, timezone)],
        sensors=[
            scoring_batches_sensor,
            dashboard_cache_sensor,
            scoring_run_failure_sensor,
            scoring_run_canceled_sensor,
        ],
        resources=build_resources(),
        # Also for the implicit asset job of UI materialisations and backfills: steps are short,
        # and Celery run workers are daemonic processes that may not fork step processes.
        executor=dg.in_process_executor,
    )
