"""The Dagster objects, thin: assets, partitions, jobs, schedules, sensors, checks, resources and
the IO manager, built per market group by `nights`. Logic lives in the engine and the store."""

import warnings

import dagster as dg

# Dagster warns of beta parameters in every process that loads the code location (its code
# server, each run worker process, the CLI), in their service logs: `backfill_policy` of `scores`
# (used deliberately: a backfill's runs take up to ten batches each) and `owners` of
# `SensorDefinition`, which Dagster passes itself when it attaches resources to sensors (ours set
# no owners). Both were reviewed against the pinned Dagster; any other warning still shows.
for _parameter in ("backfill_policy", "owners"):
    warnings.filterwarnings(
        "ignore", message=rf"Parameter `{_parameter}` of ", category=dg.BetaWarning
    )
