"""The `prices` asset: the date's closing prices of every needed symbol, fetched once and frozen."""

import dagster as dg

from scoring_pipeline import snapshots
from scoring_pipeline.assets.active_users import active_users
from scoring_pipeline.assets.common import SnapshotConfig, materialize_snapshot, score_date_of
from scoring_pipeline.partitions import score_date_partitions
from scoring_pipeline.resources import (
    DatabaseResource,
    PricesProviderResource,
    ScoringSettingsResource,
)


@dg.asset(
    partitions_def=score_date_partitions,
    deps=[active_users],
    group_name="snapshots",
    kinds={"postgres"},
)
def prices(
    context: dg.AssetExecutionContext,
    config: SnapshotConfig,
    database: DatabaseResource,
    prices_provider: PricesProviderResource,
    settings: ScoringSettingsResource,
) -> dg.MaterializeResult[None]:
    """Closing prices of every targeted instrument and held symbol, fetched once and frozen."""
    score_date = score_date_of(context)
    return materialize_snapshot(
        context,
        database,
        step="prices",
        figure="prices",
        take=lambda conn: snapshots.snapshot_prices(
            conn,
            score_date,
            prices_provider,
            max_age_days=settings.snapshot_max_age_days,
            refresh=config.refresh,
        ),
    )
