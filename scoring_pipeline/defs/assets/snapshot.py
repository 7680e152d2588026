"""The body the daily snapshot assets share (exchange rates, prices): take the date's snapshot,
record its figures on the group's night, or fail that night clearly; and their run config."""

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import dagster as dg
from dagster._core.storage.tags import ROOT_RUN_ID_TAG
from sqlalchemy.engine import Connection

from scoring_pipeline import telemetry
from scoring_pipeline.defs.job_names import SNAPSHOTS_JOB
from scoring_pipeline.defs.market_groups.group import GROUP_TAG, MarketGroup
from scoring_pipeline.defs.partitions import unregister_night_batches
from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.defs.run_tags import night_traceparent
from scoring_pipeline.errors import SnapshotUnavailableError
from scoring_pipeline.store.night.model import (
    ALL_MARKETS,
    find_night,
    group_option,
    has_a_night,
    merge_metrics,
)
from scoring_pipeline.store.night.opening import fail_night
from scoring_pipeline.store.night.outcomes import failed_before_scoring
from scoring_pipeline.store.night.root_span import emit_root_span


class SnapshotConfig(dg.Config):
    """`refresh: true` re-fetches a date that already has its snapshot (a deliberate act)."""

    refresh: bool = False


class MembershipConfig(SnapshotConfig):
    """`refresh: true` recomputes the date's membership, unless another market group has a night
    of the date (it uses it); `replace_membership: true` recomputes it even then, dropping those
    nights' batch outcomes (`score --refresh` over every group, which re-scores them all)."""

    replace_membership: bool = False


def score_date_of(context: dg.AssetExecutionContext) -> dt.date:
    """The run's score date; a run launched with no partition (the launchpad's *Launch run*
    with none selected) fails saying how to start a night, not with Dagster's "Cannot access
    partition_key for a non-partitioned run"."""
    if not context.has_partition_key:
        # A configured group's job carries its group: `score --date D` alone starts every
        # group's night of the date.
        option = group_option(context.run.tags.get(GROUP_TAG))
        raise dg.Failure(
            description=(
                f"{context.job_name} was launched with no partition: its snapshots are frozen "
                "for one score date. Launch it with the date as its partition (e.g. "
                f"2026-11-27), or run `scoring-pipeline score --date 2026-11-27{option}`"
            ),
            allow_retries=False,
        )
    return dt.date.fromisoformat(context.partition_key)


# Set by Dagster on every run of a backfill (a UI "Materialize all" over dates, among others).
BACKFILL_TAG = "dagster/backfill"


def in_backfill(context: dg.AssetExecutionContext) -> bool:
    """A run of a backfill, or a re-execution of one (its run page's Re-execute: Dagster drops
    the backfill's tag from the new run, which then started or restarted the date's night, an
    operator review found)."""
    run = context.run
    if BACKFILL_TAG in run.tags:
        return True
    root = run.root_run_id or run.tags.get(ROOT_RUN_ID_TAG)
    original = context.instance.get_run_by_id(root) if root else None
    return original is not None and BACKFILL_TAG in original.tags


def refuse_a_date_with_no_night(
    database: DatabaseResource,
    score_date: dt.date,
    group: MarketGroup | None = None,
    *,
    of_group: bool = False,
) -> None:
    """Refuse a date no night was ever started for (of `group`, when `of_group`: a group's
    prices are its night's): a backfill of the snapshot assets over dates (the UI's
    "Materialize all" with every partition, say), or the rates or prices alone, only re-freeze
    the inputs of started nights. A date never scored would get today's prices and rates as its
    own, and no batch run would follow."""
    own = group if of_group else None
    with database.engine().connect() as conn:
        if own is not None:
            started = find_night(conn, score_date, market_group=own.name) is not None
        else:
            started = has_a_night(conn, score_date)
    if started:
        return
    job = group.qualified(SNAPSHOTS_JOB) if group is not None else f"its group's {SNAPSHOTS_JOB}"
    option = group_option(group.name if group is not None else None)
    of = f" of group {own.name}" if own is not None else ""
    raise dg.Failure(
        description=(
            f"{score_date} has no night{of}: a backfill of the snapshot assets, or the rates or "
            "prices alone, do not start nights (they would freeze today's values as that "
            f"date's, and no batch would follow). Start the date's night by launching {job} "
            "for that one date (a launch, not a backfill over dates), or `scoring-pipeline "
            f"score --date {score_date}{option}`."
        ),
        allow_retries=False,
    )


def materialize_snapshot(
    context: dg.AssetExecutionContext,
    database: DatabaseResource,
    *,
    step: str,
    figure: str,
    take: Callable[[Connection], dict[str, Any]],
    group: MarketGroup | None,
    of_group: bool = False,
) -> dg.MaterializeResult[None]:
    """The body shared by the rates and prices assets: take the date's snapshot in one
    transaction, record the fetch time and staleness on the group's night, or fail that night
    clearly (with no group, the snapshot is taken and no night is touched)."""
    score_date = score_date_of(context)
    # The night's start (`active_users`, first in the same run) comes first; a run of the rates
    # or prices alone, or a backfill's, only re-freezes those of a night that was started.
    refuse_a_date_with_no_night(database, score_date, group, of_group=of_group)
    started = time.perf_counter()
    name = group.name if group is not None else ALL_MARKETS
    traceparent = night_traceparent(context, database.engine(), score_date, name)
    timing = f"fetch_{figure}_ms"
    try:
        with (
            telemetry.step_span(step, traceparent, {"score_date": str(score_date)}),
            database.engine().begin() as conn,
        ):
            summary = take(conn)
            summary[timing] = int((time.perf_counter() - started) * 1000)
            if group is not None:
                _merge_figures(conn, score_date, group.name, figure, summary)
    except SnapshotUnavailableError as exc:
        if group is not None:
            with database.engine().begin() as conn:
                # How long the providers took to fail (timeouts, retries): the failed night's
                # root span reports it.
                elapsed = int((time.perf_counter() - started) * 1000)
                merge_metrics(conn, score_date, {timing: elapsed}, market_group=group.name)
                fail_night(conn, score_date, stage=step, error=exc, market_group=group.name)
                night = find_night(conn, score_date, market_group=group.name)
            emit_root_span(database.engine(), score_date, market_group=group.name)
            if night is not None and failed_before_scoring(night):
                # Its batches cannot score without the inputs: unregistered, they no longer
                # read Missing for "Failed and missing" to launch (each failed at once, "no
                # exchange-rate snapshot"); starting the night again registers them anew.
                removed = unregister_night_batches(context.instance, score_date, group)
                if removed:
                    context.log.info(
                        f"the night of {score_date} (group {group.name}) failed before its "
                        f"batches: its {len(removed)} scores partitions are unregistered until "
                        "it is started again"
                    )
        raise
    if group is not None:
        # The night may have failed at the other snapshot step meanwhile: its root span, emitted
        # then, gets this step's figure (a no-op for a night still open).
        emit_root_span(database.engine(), score_date, market_group=group.name)
    if summary["is_stale"]:
        origin = summary.get("stale_from")
        context.log.warning(
            f"{step} for {score_date} are STALE: "
            + (
                f"every provider failed ({summary.get('provider_error')}); the snapshot of "
                f"{origin} is reused"
                if origin
                else "the date's snapshot, kept, was reused from an earlier date"
            )
        )
    return dg.MaterializeResult(metadata=summary)


def _merge_figures(
    conn: Connection, score_date: dt.date, group: str, figure: str, summary: dict[str, Any]
) -> None:
    timing = f"fetch_{figure}_ms"
    merge_metrics(
        conn,
        score_date,
        {
            timing: summary[timing],
            f"{figure}_stale": summary["is_stale"],
            # Values rejected one by one (SPEC §8): how many, and the first by name.
            f"{figure}_rejected": summary.get("rejected", 0),
            f"{figure}_rejected_values": summary.get("rejected_values", {}),
            # Needed symbols stored with no price (prices only): their assets are skipped.
            **(
                {
                    f"{figure}_symbols": summary.get("symbols", 0),
                    f"{figure}_unpriced": summary["unpriced"],
                    f"{figure}_unpriced_symbols": summary.get("unpriced_symbols", []),
                    f"{figure}_unpriced_rejected": summary.get("unpriced_rejected", 0),
                }
                if "unpriced" in summary
                else {}
            ),
        },
        market_group=group,
    )
