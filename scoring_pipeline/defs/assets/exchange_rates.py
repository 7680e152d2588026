"""The `exchange_rates` asset: the date's USD-based rates, fetched once and frozen.

Shared by every market group: whichever group's run comes first fetches them; the others reuse
the date's snapshot (the fetch is serialised, so overlapping runs still fetch once).
"""

from typing import Any

import dagster as dg
from sqlalchemy.engine import Connection

from scoring_pipeline.defs.assets.active_users import active_users
from scoring_pipeline.defs.assets.snapshot import (
    SnapshotConfig,
    materialize_snapshot,
    score_date_of,
)
from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUPS, MarketGroup
from scoring_pipeline.defs.resources import (
    DatabaseResource,
    RatesProviderResource,
    ScoringSettingsResource,
)
from scoring_pipeline.defs.run_tags import run_group
from scoring_pipeline.store.snapshots.rates import snapshot_rates
from scoring_pipeline.store.snapshots.reuse import lock_snapshot


def build_exchange_rates(
    groups: dict[str, MarketGroup], active_users: dg.AssetsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        name="exchange_rates",
        partitions_def=active_users.partitions_def,  # the membership's dates
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
        """USD→X exchange rates of the score date, fetched once from RATES_PROVIDER and frozen
        for every market group."""
        score_date = score_date_of(context)

        def take(conn: Connection) -> dict[str, Any]:
            lock_snapshot(conn, score_date, "rates")
            return snapshot_rates(
                conn,
                score_date,
                rates_provider,
                max_age_days=settings.snapshot_max_age_days,
                refresh=config.refresh,
            )

        return materialize_snapshot(
            context,
            database,
            step="exchange_rates",
            figure="rates",
            take=take,
            group=run_group(context, groups),
        )

    return exchange_rates


exchange_rates = build_exchange_rates(DEFAULT_GROUPS, active_users)
