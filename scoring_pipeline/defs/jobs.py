"""Asset jobs of a night: the date's snapshots, then one run per batch partition.

Each market group has its pair (the default group's keep their names: `overnight_snapshots_job`,
`scoring_batch_job`; a configured group's are prefixed, `us_overnight_snapshots_job`). Both carry
the group's tag, so every run of them — schedule, sensor, CLI or UI launch — knows its night.
Partitioning is inferred from the selected assets. Both run their steps in-process: steps are
short, and the multiprocess executor costs about a second per step (SPEC §10).
"""

from typing import Any

import dagster as dg

from scoring_pipeline.defs.assets.active_users import active_users
from scoring_pipeline.defs.assets.exchange_rates import exchange_rates
from scoring_pipeline.defs.assets.prices import prices
from scoring_pipeline.defs.assets.scores import scores
from scoring_pipeline.defs.job_names import BATCH_JOB, SNAPSHOTS_JOB
from scoring_pipeline.defs.market_groups.group import (
    DEFAULT_GROUP,
    DEFAULT_GROUPS,
    GROUP_TAG,
    MarketGroup,
)


def build_jobs(
    group: MarketGroup,
    snapshot_assets: list[dg.AssetsDefinition],
    scores_asset: dg.AssetsDefinition,
) -> tuple[Any, Any]:  # Dagster exports no name for an unresolved asset job
    """(snapshots job, batch job) of a group: its snapshots are the shared membership and rates
    and its own prices (the shared ones are reused when another group took them first)."""
    markets = "every market" if group.markets is None else ", ".join(group.markets)
    snapshots = dg.define_asset_job(
        name=group.qualified(SNAPSHOTS_JOB),
        selection=dg.AssetSelection.assets(*snapshot_assets),
        executor_def=dg.in_process_executor,
        tags={GROUP_TAG: group.name},
        description=(
            f"Freeze the score date's inputs for group {group.name} ({markets}): active users "
            "and batches, rates, prices."
        ),
    )
    batches = dg.define_asset_job(
        name=group.qualified(BATCH_JOB),
        selection=dg.AssetSelection.assets(scores_asset),
        executor_def=dg.in_process_executor,
        tags={GROUP_TAG: group.name},
        description=(
            f"Score one (score date × batch) partition of group {group.name} ({markets}) from "
            "the date's frozen snapshots."
        ),
    )
    return snapshots, batches


overnight_snapshots_job, scoring_batch_job = build_jobs(
    DEFAULT_GROUPS[DEFAULT_GROUP], [active_users, exchange_rates, prices], scores
)
