"""The `active_users` asset: the date's active users and their frozen batch membership.

Shared by every market group: the first group's run of a date freezes the membership, the later
groups' runs reuse it. The run's group (see `market_groups.group.group_of_run`) has its night opened
here, first step of its snapshots run, and its `scores` partitions made the date's batches.
"""

import contextlib
import datetime as dt
import logging
import time
from typing import Any

import dagster as dg
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster_shared.check import CheckError
from sqlalchemy.engine import Connection

from scoring_pipeline import telemetry
from scoring_pipeline.defs.assets.snapshot import (
    MembershipConfig,
    in_backfill,
    refuse_a_date_with_no_night,
    score_date_of,
)
from scoring_pipeline.defs.batches_in_flight import night_in_progress
from scoring_pipeline.defs.job_names import SNAPSHOTS_JOB
from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUPS, MarketGroup, selected_groups
from scoring_pipeline.defs.partitions import (
    register_night_batches,
    score_date_partitions_for,
    scores_partition_key,
)
from scoring_pipeline.defs.resources import DatabaseResource, ScoringSettingsResource
from scoring_pipeline.defs.run_tags import (
    LATE_TAG,
    SCHEDULED_FOR_TAG,
    executed_paths,
    night_traceparent,
    run_group,
    run_traceparent,
)
from scoring_pipeline.store.membership import compute_membership, load_membership, store_membership
from scoring_pipeline.store.night.closing import close_night
from scoring_pipeline.store.night.model import find_night, merge_metrics, recent_nights
from scoring_pipeline.store.night.opening import open_night
from scoring_pipeline.store.night.root_span import emit_root_span
from scoring_pipeline.store.snapshots.reuse import lock_snapshot

logger = logging.getLogger("scoring_pipeline.membership")


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _asset_graph(context: dg.AssetExecutionContext) -> "BaseAssetGraph[Any]":
    """The code location's asset graph, which a backfill of `scores` is read against; a run
    made outside a code location (`dg.materialize`) has only its own job's."""
    try:
        return context.repository_def.asset_graph
    except CheckError:  # "No repository definition was set on the step context"
        return context.job_def.asset_layer.asset_graph


def _refuse_a_night_in_progress(
    context: dg.AssetExecutionContext,
    conn: Connection,
    group: MarketGroup,
    batch_keys: list[str],
) -> None:
    """A run does not restart a night that another run is still starting, or whose batches are
    being scored (a second launch from another tab, `score --date` during the night): that would
    score every batch twice and close the night twice. Checked under the date's membership lock,
    so of two runs started at once the second sees the first as the night's starter."""
    score_date = score_date_of(context)
    night = find_night(conn, score_date, market_group=group.name)
    if night is None:
        return
    reason = night_in_progress(
        context.instance,
        group,
        _asset_graph(context),
        owner_run_id=night.snapshot_run_id,
        this_run_id=context.run.run_id,
        keys=[scores_partition_key(score_date, b) for b in batch_keys],
    )
    if reason is not None:
        raise dg.Failure(
            description=(
                f"{night.name} is {night.status.value} and was not restarted: {reason}. Wait "
                "until that ends (or cancel it in the UI's Runs or Backfills), then launch "
                "again; `scoring-pipeline retry-failed` re-scores only failed batches"
            ),
            allow_retries=False,
        )


def _nights_using_membership(
    conn: Connection, score_date: dt.date, group: MarketGroup | None
) -> list[str]:
    """The groups other than `group` with a night of the date: they use its membership."""
    mine = group.name if group is not None else None
    return [
        night.market_group
        for night in recent_nights(conn, 1_000, score_date=score_date)
        if night.market_group != mine
    ]


def _refuse_several_groups(
    context: dg.AssetExecutionContext, groups: dict[str, MarketGroup]
) -> None:
    """A run starts one group's night: one materialising several groups' prices from the asset
    graph (the Catalog's select-all) would start none, and leave them all as they were."""
    several = selected_groups(executed_paths(context), groups)
    if len(several) < 2:
        return
    raise dg.Failure(
        description=(
            f"this run materialises the assets of groups {', '.join(several)}: a run starts the "
            "night of one group. Materialise active_users and exchange_rates with one group's "
            "prices, or launch "
            + " and ".join(groups[name].qualified(SNAPSHOTS_JOB) for name in several)
            + " for the date"
        ),
        allow_retries=False,
    )


def build_active_users(groups: dict[str, MarketGroup]) -> dg.AssetsDefinition:
    """The shared membership asset of a code location whose groups are `groups`."""

    @dg.asset(
        name="active_users",
        partitions_def=score_date_partitions_for(groups.values()),
        group_name="snapshots",
        kinds={"postgres"},
    )
    def active_users(
        context: dg.AssetExecutionContext,
        config: MembershipConfig,
        database: DatabaseResource,
        settings: ScoringSettingsResource,
    ) -> dg.MaterializeResult[None]:
        """Active users of the score date in deterministic batches; starts the run's night."""
        score_date = score_date_of(context)
        started = time.perf_counter()
        group = run_group(context, groups)
        backfill = in_backfill(context)
        if group is None and not backfill:
            _refuse_several_groups(context, groups)
        step_started_ns = time.time_ns()
        if backfill:
            # A backfill never starts or restarts a night: no batch run follows it. Its span
            # joins the trace of the date's night of every market, if there is one.
            refuse_a_date_with_no_night(database, score_date)
            group = None
            traceparent = night_traceparent(context, database.engine(), score_date)
        else:
            # The night's trace: from the launching run's tags, or a new one for a night
            # started by hand.
            traceparent = run_traceparent(context) or telemetry.new_traceparent()
        correlation_id = None
        with database.engine().begin() as conn, contextlib.ExitStack() as step:
            # One membership per date, however many groups' runs start at once.
            lock_snapshot(conn, score_date, "membership")
            membership = load_membership(conn, score_date)
            if group is not None:
                _refuse_a_night_in_progress(context, conn, group, membership.batch_keys)
            # The span opens once the night is this run's, dated from the step's start: a
            # refused restart's would be the only span of a trace whose root is never emitted.
            step.enter_context(
                telemetry.step_span(
                    "active_users",
                    traceparent,
                    {"score_date": str(score_date)},
                    start_ns=step_started_ns,
                )
            )
            others = _nights_using_membership(conn, score_date, group)
            # Frozen once another group's night uses it, even empty: recomputed, a user made
            # active since would be batched under that group's closed night with no outcome.
            reused = bool(membership.members or others) and not config.refresh
            kept_for = others if config.refresh and not config.replace_membership else []
            if kept_for:
                # Shared by the date's groups: recomputed, it would delete their batch outcomes
                # and re-batch their users under their nights. The inputs are still refreshed.
                # The project's logger: in the run's log, and on `score --refresh`'s stderr.
                logger.warning(
                    "refresh: the membership of %s is kept, not recomputed: the nights of %s of "
                    "that date use it (their batch outcomes would be lost); users added since "
                    "are scored from the next date",
                    score_date,
                    ", ".join(kept_for),
                )
                reused = True
            if not reused and config.replace_membership:
                if others:
                    logger.warning(
                        "refresh: the membership of %s is recomputed; the nights of %s of that "
                        "date used it: their batch outcomes are dropped until they are re-scored",
                        score_date,
                        ", ".join(others),
                    )
            if not reused:
                membership = compute_membership(conn, settings.batch_size)
                store_membership(conn, score_date, membership)
            if group is not None:
                correlation_id = open_night(
                    conn, score_date, market_group=group.name, markets=group.markets, restart=True
                )
                merge_metrics(
                    conn,
                    score_date,
                    {
                        "users_skipped_no_criteria": membership.users_skipped,
                        "batches_total": len(membership.batch_keys),
                        "score_date": score_date.isoformat(),
                        "traceparent": traceparent,
                        "dagster_snapshot_run_id": context.run.run_id,
                        # Set by the schedule: when the tick was due, how late it launched.
                        "scheduled_for": context.run.tags.get(SCHEDULED_FOR_TAG),
                        "launched_late_s": _int(context.run.tags.get(LATE_TAG)),
                    },
                    market_group=group.name,
                )
                if not membership.members:  # nothing to score: the night is done
                    close_night(conn, score_date, market_group=group.name)
        added: list[str] = []
        removed: list[str] = []
        if group is not None:
            emit_root_span(database.engine(), score_date, market_group=group.name)
            added, removed = register_night_batches(
                context.instance, score_date, membership.batch_keys, group
            )
        context.log.info(
            f"{len(membership.members)} active users in {len(membership.batch_keys)} batches "
            f"for {score_date} (membership {'reused' if reused else 'computed'})"
            + (f"; night of group {group.name} started" if group is not None else "")
            + (
                f"; a backfill: the night of {score_date} is kept as it is, not re-scored (to "
                "re-score the date, launch its group's snapshots job for it alone, or "
                f"`scoring-pipeline score --date {score_date}`)"
                if backfill
                else ""
            )
        )
        return dg.MaterializeResult(
            metadata=(
                {
                    "users": len(membership.members),
                    "batches": len(membership.batch_keys),
                    "batch_keys": membership.batch_keys,
                    "users_skipped_no_criteria": membership.users_skipped,
                    "market_group": group.name if group is not None else None,
                    "scores_partitions_added": len(added),
                    "scores_partitions_removed": removed,
                    "membership_reused": reused,
                    "membership_kept_for": kept_for,
                    "job_correlation_id": correlation_id,
                    "duration_ms": int((time.perf_counter() - started) * 1000),
                }
            )
        )

    return active_users


active_users = build_active_users(DEFAULT_GROUPS)
