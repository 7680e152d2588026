"""The `exchange_rates` asset: the date's USD-based rates, fetched once and frozen."""

import dagster as dg

from scoring_pipeline import snapshots
from scoring_pipeline.assets.active_users import active_users
from scoring_pipeline.assets.common import SnapshotConfig, materialize_snapshot, score_date_of
from scoring_pipeline.partitions import score_date_partitions
from scoring_pipeline.resources import (
    DatabaseResource,
    RatesProviderResource,
    ScoringSettingsResource,
)


@dg.asset(
    partitions_def=score_date_partitions,
    deps=[active_users],
    group_name="snapshots",
    kinds={"postgres"},
)
def exchange_rates(
    context: dg.AssetExecutionContext,
    config: SnapshotConfig,
    database: DatabaseResource,
    rates_provider: RatesProviderResource,
    settings: ScoringSettingsResource,
) -> dg.MaterializeResult[None]:
    """USD→X exchange rates of the score date, fetched once from RATES_PROVIDER and frozen."""
    score_date = score_date_of(context)
    return materialize_snapshot(
        context,
        database,
        step="exchange_rates",
        figure="rates",
        take=lambda conn: snapshots.snapshot_rates(
            conn,
            score_date,
            rates_provider,
            max_age_days=settings.snapshot_max_age_days,
            refresh=config.refresh,
        ),
    )
