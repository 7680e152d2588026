"""The `prices` asset of a market group: the date's closing prices of the symbols it needs.

The default group's `prices` freezes every needed symbol of the date at once. A configured
group's `<group>/prices` freezes its markets' instruments and its users' held symbols, fetching
only those the date does not have yet (a held symbol another group already priced is reused),
so each group requests its prices once and the date's snapshot is never fetched twice.
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
from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUP, DEFAULT_GROUPS, MarketGroup
from scoring_pipeline.defs.resources import (
    DatabaseResource,
    PricesProviderResource,
    ScoringSettingsResource,
)
from scoring_pipeline.store.snapshots.prices import snapshot_prices
from scoring_pipeline.store.snapshots.reuse import lock_snapshot


def build_prices(group: MarketGroup, active_users: dg.AssetsDefinition) -> dg.AssetsDefinition:
    markets = group.markets

    @dg.asset(
        key=group.asset_key("prices"),
        partitions_def=active_users.partitions_def,  # the membership's dates
        deps=[active_users],
        group_name="snapshots" if group.is_default else f"{group.name}_night",
        kinds={"postgres"},
    )
    def prices(
        context: dg.AssetExecutionContext,
        config: SnapshotConfig,
        database: DatabaseResource,
        prices_provider: PricesProviderResource,
        settings: ScoringSettingsResource,
    ) -> dg.MaterializeResult[None]:
        """Closing prices of the group's targeted instruments and held symbols, fetched once
        and frozen."""
        score_date = score_date_of(context)

        def take(conn: Connection) -> dict[str, Any]:
            lock_snapshot(conn, score_date, "prices")
            return snapshot_prices(
                conn,
                score_date,
                prices_provider,
                max_age_days=settings.snapshot_max_age_days,
                refresh=config.refresh,
                markets=markets,
            )

        # A group's prices are its night's: refused on a date only other groups have one of.
        return materialize_snapshot(
            context, database, step="prices", figure="prices", take=take, group=group, of_group=True
        )

    return prices


prices = build_prices(DEFAULT_GROUPS[DEFAULT_GROUP], active_users)
