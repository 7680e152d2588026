"""The `scores` asset of a market group: one partition per (score date × batch of users).

The default group's asset is `scores`; a configured group's is `<group>/scores`, scoring only
the criteria sets of its markets and replacing only its markets' scores.
"""

import datetime as dt
import time

import dagster as dg
from sqlalchemy.engine import Connection

from scoring_pipeline import telemetry
from scoring_pipeline.defs.assets.active_users import active_users
from scoring_pipeline.defs.assets.exchange_rates import exchange_rates
from scoring_pipeline.defs.assets.prices import prices
from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUP, DEFAULT_GROUPS, MarketGroup
from scoring_pipeline.defs.partitions import (
    NotABatchPartitionError,
    parse_scores_partition_key,
    scores_partitions_for,
)
from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.defs.run_tags import night_traceparent
from scoring_pipeline.engine.batch import BatchOutput, score_batch
from scoring_pipeline.errors import SnapshotUnavailableError
from scoring_pipeline.store import month_partitions
from scoring_pipeline.store import tables as t
from scoring_pipeline.store.batch_inputs import load_batch_inputs
from scoring_pipeline.store.membership import batch_keys_text, has_batch
from scoring_pipeline.store.night.model import find_night
from scoring_pipeline.store.snapshots.reuse import has_snapshot


def build_scores(group: MarketGroup, upstream: list[dg.AssetsDefinition]) -> dg.AssetsDefinition:
    """The group's batch-partitioned scores, downstream of the date's snapshot assets."""

    @dg.asset(
        key=group.asset_key("scores"),
        partitions_def=scores_partitions_for(group),
        # Dagster has no built-in mapping from a (date, batch) key to its date (custom mappings
        # are deprecated), so the edge is asset-level: the batch reads only its date's snapshots.
        deps=[dg.AssetDep(asset, partition_mapping=dg.AllPartitionMapping()) for asset in upstream],
        io_manager_key="scores_io_manager",
        # A lost database connection (server restart, failover) retries the whole step: the
        # write is one transaction, so a retry starts clean. Failed users are a final `Failure`.
        retry_policy=dg.RetryPolicy(max_retries=3, delay=2.0, backoff=dg.Backoff.EXPONENTIAL),
        group_name="scoring" if group.is_default else f"{group.name}_night",
        kinds={"postgres"},
    )
    def scores(context: dg.AssetExecutionContext, database: DatabaseResource) -> BatchOutput:
        """Scores of one batch of users for the score date, from the date's frozen snapshots."""
        score_date, batch = _night_batch(context.partition_key)
        with database.engine().begin() as conn:
            correlation_id = _night_of_batch(conn, score_date, batch, group.name)
        traceparent = night_traceparent(context, database.engine(), score_date, group.name)
        with (
            telemetry.step_span(
                "score-batch",
                traceparent,
                {"score_date": str(score_date), "batch": batch, "market_group": group.name},
            ) as span,
            database.engine().connect() as conn,
        ):
            started = time.perf_counter()
            inputs = load_batch_inputs(conn, score_date, batch, group.markets)
            output = score_batch(
                inputs,
                load_seconds=time.perf_counter() - started,
                score_date=score_date,
                batch=batch,
                job_correlation_id=correlation_id,
                market_group=group.name,
                markets=group.markets,
            )
            if span is not None:
                span.set_attributes(
                    {
                        "users_success": len(output.succeeded),
                        "users_failed": len(output.failed),
                        "assets_scored": output.assets_scored,
                    }
                )
        for user in output.failed:
            error = user.error or {}
            context.log.error(
                f"user {user.user_id} failed at stage {user.stage}: "
                f"{error.get('type')}: {error.get('message')}"
            )
        context.log.info(
            f"batch {batch} of {score_date} ({group.name}): {len(output.succeeded)} users "
            f"scored, {len(output.failed)} failed, {len(output.users_skipped)} skipped, "
            f"{output.assets_scored} assets in {output.duration_ms} ms"
        )
        return output

    return scores


def _night_batch(partition_key: str) -> tuple[dt.date, str]:
    try:
        return parse_scores_partition_key(partition_key)
    except NotABatchPartitionError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def _night_of_batch(conn: Connection, score_date: dt.date, batch: str, group: str) -> str:
    """The correlation id of the night this batch belongs to; a clear failure when it belongs to
    none (never opens a night: only the date's snapshots run does)."""
    night = find_night(conn, score_date, market_group=group)
    if night is not None:  # a retry after `prune` dropped the night's month writes again
        month_partitions.ensure_partitions(conn, score_date)
    if night is None or not has_batch(conn, score_date, batch):
        used = batch_keys_text(conn, score_date)
        raise dg.Failure(
            description=(
                f"{score_date}/{batch} belongs to no night: "
                + (
                    f"{score_date} has no night of group {group} "
                    "(run the group's snapshots job for it first)"
                    if night is None
                    else f"the night of {score_date} has batches {used}"
                )
                + "; nothing was scored"
            ),
            allow_retries=False,
        )
    for table, what in (
        (t.exchange_rate_snapshots, "exchange-rate"),
        (t.price_snapshots, "price"),
    ):
        if not has_snapshot(conn, table, score_date):
            raise SnapshotUnavailableError(
                f"no {what} snapshot for {score_date}: materialise the date's "
                "snapshots (the overnight_snapshots_job) before its batches"
            )
    return night.correlation_id


scores = build_scores(DEFAULT_GROUPS[DEFAULT_GROUP], [active_users, exchange_rates, prices])
