"""Asset jobs of the night: the date's snapshots, then one run per batch partition.

Partitioning is inferred from the selected assets. Both run their steps in-process: steps are
short, and the multiprocess executor costs about a second per step (SPEC §10).
"""

import dagster as dg

from scoring_pipeline.assets.active_users import active_users
from scoring_pipeline.assets.exchange_rates import exchange_rates
from scoring_pipeline.assets.prices import prices
from scoring_pipeline.assets.scores import scores

overnight_snapshots_job = dg.define_asset_job(
    name="overnight_snapshots_job",
    selection=dg.AssetSelection.assets(active_users, exchange_rates, prices),
    executor_def=dg.in_process_executor,
    description="Freeze the score date's inputs: active users and batches, rates, prices.",
)

scoring_batch_job = dg.define_asset_job(
    name="scoring_batch_job",
    selection=dg.AssetSelection.assets(scores),
    executor_def=dg.in_process_executor,
    description="Score one (score date × batch) partition from the date's frozen snapshots.",
)
