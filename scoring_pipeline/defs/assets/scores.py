"""The `scores` asset of a market group: one partition per (score date × batch of users).

The default group's asset is `scores`; a configured group's is `<group>/scores`, scoring only
the criteria sets of its markets and replacing only its markets' scores.
"""

import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.storage.tags import ASSET_RESUME_RETRY_TAG
from sqlalchemy.engine import Connection

from scoring_pipeline import telemetry
from scoring_pipeline.defs.assets.active_users import active_users
from scoring_pipeline.defs.assets.exchange_rates import exchange_rates
from scoring_pipeline.defs.assets.prices import prices
from scoring_pipeline.defs.assets.snapshot import BACKFILL_TAG
from scoring_pipeline.defs.batches_in_flight import night_being_started
from scoring_pipeline.defs.job_names import SNAPSHOTS_JOB
from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUP, DEFAULT_GROUPS, MarketGroup
from scoring_pipeline.defs.partitions import (
    NotABatchPartitionError,
    parse_scores_partition_key,
    scores_partition_key,
    scores_partitions_for,
)
from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.defs.run_tags import night_traceparent
from scoring_pipeline.engine.batch import BatchOutput, score_batch
from scoring_pipeline.store import month_partitions
from scoring_pipeline.store import tables as t
from scoring_pipeline.store.batch_inputs import RunInputs, load_batch_inputs
from scoring_pipeline.store.membership import batch_keys_text, has_batch
from scoring_pipeline.store.night.model import Night, find_night, group_option
from scoring_pipeline.store.night.outcomes import LandedOutcome, batches_landed_by_runs
from scoring_pipeline.store.scoring_turn import scoring_turn
from scoring_pipeline.store.snapshots.reuse import has_snapshot

# How many consecutive selected partitions a backfill's run scores (SCORING_BATCHES_PER_RUN's
# default: a backfill is planned from the asset's definition, not from the night's settings).
BACKFILL_BATCHES_PER_RUN = 10


def build_scores(group: MarketGroup, upstream: list[dg.AssetsDefinition]) -> dg.AssetsDefinition:
    """The group's batch-partitioned scores, downstream of the date's snapshot assets."""
    snapshot_keys = {asset.key for asset in upstream}

    @dg.asset(
        key=group.asset_key("scores"),
        partitions_def=scores_partitions_for(group),
        # Dagster has no built-in mapping from a (date, batch) key to its date (custom mappings
        # are deprecated), so the edge is asset-level: the batch reads only its date's snapshots.
        deps=[dg.AssetDep(asset, partition_mapping=dg.AllPartitionMapping()) for asset in upstream],
        io_manager_key="scores_io_manager",
        # A lost database connection (server restart, failover) retries the whole step: each
        # batch's write is one transaction, so a retry scores again the batches that had not
        # landed, and keeps those that had (`_landed_earlier`). Failed users are a final
        # `Failure`.
        retry_policy=dg.RetryPolicy(max_retries=3, delay=2.0, backoff=dg.Backoff.EXPONENTIAL),
        # UI backfills and `retry-failed`: consecutive selected partitions in runs of up to
        # BACKFILL_BATCHES_PER_RUN, as the night's sensor runs them.
        backfill_policy=dg.BackfillPolicy.multi_run(
            max_partitions_per_run=BACKFILL_BATCHES_PER_RUN
        ),
        group_name="scoring" if group.is_default else f"{group.name}_night",
        kinds={"postgres"},
    )
    def scores(context: dg.AssetExecutionContext, database: DatabaseResource) -> RunBatches:
        """Scores of the run's batches of users (one partition, or a range of a night's), from
        their date's frozen snapshots: each batch is scored as the IO manager writes it."""
        keys = list(context.partition_keys)
        batches, refused, nights = _night_batches(database, keys, group, context.instance)
        if len(keys) == 1 and refused:
            raise dg.Failure(description=refused[0].description, allow_retries=False)
        earlier = _landed_earlier(context, database, batches, group.name)
        lineage = _lineage(context) if earlier else []
        for (score_date, batch), outcome in earlier.items():
            kept_from = (
                "an earlier attempt of this step"
                if outcome.run_id in lineage
                else "another re-execution of the same run"
            )
            context.log.info(
                f"batch {batch} of {score_date} ({group.name}) landed in run {outcome.run_id} "
                f"({kept_from}): not scored again"
            )
        with_snapshots = _backfill_with_snapshots(context, snapshot_keys)
        wiped = _landed_but_wiped(
            context, database, batches, group.name, set(earlier), every=with_snapshots is not None
        )
        for (score_date, batch), outcome in wiped.items():
            why = (
                f"and backfill {with_snapshots} also materialises the snapshot assets, which "
                "never re-score a night: recorded from its outcome, not scored again "
                f"(materialise {context.asset_key.to_user_string()} alone to re-score it)"
                if with_snapshots
                else "and its materialisation was wiped: recorded again from its outcome, not "
                "scored again (materialise it once more to re-score it)"
            )
            context.log.info(
                f"batch {batch} of {score_date} ({group.name}) landed in run {outcome.run_id} "
                f"with every user scored, {why}"
            )

        shared: dict[dt.date, RunInputs] = {}  # what the run's batches of a date share

        def kept(key: tuple[dt.date, str], outcome: LandedOutcome, recorded: bool) -> EarlierBatch:
            """A batch that landed before, not scored again (`recorded`: this run holds its
            materialisation; otherwise it records the batch again)."""
            return EarlierBatch(
                scores_partition_key(*key), outcome, group.name, nights[key[0]].markets, recorded
            )

        this_run = context.run.run_id

        def score(score_date: dt.date, batch: str) -> BatchOutput | EarlierBatch:
            landed = _landed_meanwhile(context, database, score_date, batch, group.name)
            if landed is not None:
                return kept((score_date, batch), landed, landed.run_id == this_run)
            inputs = shared.setdefault(score_date, RunInputs())
            return _score_batch(context, database, nights[score_date], score_date, batch, inputs)

        def turn(score_date: dt.date, batch: str) -> AbstractContextManager[None]:
            return scoring_turn(database.engine(), score_date, group.name, batch)

        return RunBatches(
            batches=[b for b in batches if b not in earlier and b not in wiped],
            refused=refused,
            score=score,
            turn=turn,
            ranged=len(keys) > 1,
            earlier=[kept(key, o, o.run_id == this_run) for key, o in earlier.items()]
            + [kept(key, o, False) for key, o in wiped.items()],
        )

    return scores


@dataclass(frozen=True)
class RefusedBatch:
    """A partition of a ranged run that is not a batch of a night: nothing was scored."""

    partition_key: str
    description: str


@dataclass(frozen=True)
class EarlierBatch:
    """A batch of the run that an earlier attempt of its step landed with every user scored:
    kept as it is, not scored again."""

    partition_key: str
    outcome: LandedOutcome
    market_group: str
    markets: tuple[str, ...] | None
    # False for a batch this run must record again: its materialisation was wiped, or another
    # run landed it (a re-execution plans its whole range anew, and a failing one's partitions
    # that it does not materialise read Failed, "Failed and missing" then re-scoring them).
    recorded: bool = True


@dataclass(frozen=True)
class RunBatches:
    """The `scores` output of one run: its batches, each scored only when the IO manager asks
    for it (so a batch is written, committed and visible before the next is scored, and a run
    holds one batch in memory), and the partitions it refused."""

    batches: list[tuple[dt.date, str]]  # date, batch
    refused: list[RefusedBatch]
    score: Callable[[dt.date, str], BatchOutput | EarlierBatch]
    ranged: bool
    # The batch's scoring turn (`scoring_turn`), held while it is scored and written.
    turn: Callable[[dt.date, str], AbstractContextManager[None]]
    earlier: list[EarlierBatch] = field(default_factory=list)

    def __iter__(self) -> Iterator[BatchOutput | RefusedBatch | EarlierBatch]:
        yield from self.refused
        yield from self.earlier
        for score_date, batch in self.batches:
            with self.turn(score_date, batch):
                yield self.score(score_date, batch)  # the IO manager writes it before resuming


def _night_batches(
    database: DatabaseResource, keys: list[str], group: MarketGroup, instance: dg.DagsterInstance
) -> tuple[list[tuple[dt.date, str]], list[RefusedBatch], dict[dt.date, "_NightScope"]]:
    """(date, batch) of every key that is a batch of a night, the others refused with the
    reason, and the night each date's batches are scored for."""
    batches: list[tuple[dt.date, str]] = []
    refused: list[RefusedBatch] = []
    nights: dict[dt.date, _NightScope] = {}
    with database.engine().begin() as conn:
        for key in keys:
            try:
                score_date, batch = _night_batch(key)
                if score_date not in nights:
                    night = _night_of_date(conn, score_date, batch, group.name, instance)
                    nights[score_date] = _NightScope(
                        group.name, night.correlation_id, night.markets_or(group.markets)
                    )
                _check_batch(conn, score_date, batch, group.name)
            except dg.Failure as exc:
                refused.append(RefusedBatch(key, exc.description or str(exc)))
                continue
            batches.append((score_date, batch))
    return batches, refused, nights


def _landed_earlier(
    context: dg.AssetExecutionContext,
    database: DatabaseResource,
    batches: list[tuple[dt.date, str]],
    group: str,
) -> dict[tuple[dt.date, str], LandedOutcome]:
    """The run's batches that an earlier attempt landed with every user scored: this run's
    step before a retry (a transient error after some batches had landed), or the runs that
    this one re-executes from failure. Scoring them again would add a second calculation of
    the same results; a re-execution of all steps, or a new run, scores every batch."""
    runs = _earlier_attempts(context)
    return _landed_by(database, batches, runs, group) if runs else {}


def _landed_meanwhile(
    context: dg.AssetExecutionContext,
    database: DatabaseResource,
    score_date: dt.date,
    batch: str,
    group: str,
) -> LandedOutcome | None:
    """The batch's outcome if, since the step started, a run whose landed batches this step
    keeps (`_earlier_attempts`: for a re-execution from failure, every run of its run group)
    landed it with every user scored, the log saying so; else None (score it). Asked in the
    batch's scoring turn, so a re-execution that waited for another to score the batch keeps
    what that one landed."""
    runs = _earlier_attempts(context)
    if not runs:
        return None
    outcome = _landed_by(database, [(score_date, batch)], runs, group).get((score_date, batch))
    if outcome is not None:
        context.log.info(
            f"batch {batch} of {score_date} ({group}) landed in run {outcome.run_id} (a run "
            "re-executing the same failed run) since this run started: not scored again"
        )
    return outcome


def _landed_by(
    database: DatabaseResource,
    batches: list[tuple[dt.date, str]],
    runs: list[str] | None,
    group: str,
) -> dict[tuple[dt.date, str], LandedOutcome]:
    """Of `batches`, those whose outcome one of `runs` (None: any run) wrote with every user
    scored, date by date."""
    by_date: dict[dt.date, list[str]] = {}
    for score_date, batch in batches:
        by_date.setdefault(score_date, []).append(batch)
    if not by_date:
        return {}
    with database.engine().connect() as conn:
        return {
            (score_date, key): outcome
            for score_date, keys in by_date.items()
            for key, outcome in batches_landed_by_runs(
                conn, score_date, keys, runs, market_group=group
            ).items()
        }


def _backfill_with_snapshots(
    context: dg.AssetExecutionContext, snapshot_keys: set[dg.AssetKey]
) -> str | None:
    """The run's backfill when it also materialises this asset's snapshot assets: the asset
    graph's *Materialize all*, even with one date typed, plans every `scores` partition of every
    night downstream of that date (`AllPartitionMapping`), which re-scored every night of every
    date (an operator review). Such a backfill keeps the nights as they are."""
    backfill_id = context.run.tags.get(BACKFILL_TAG)
    if backfill_id is None:
        return None
    backfill = context.instance.get_backfill(backfill_id)
    selection = set(backfill.asset_selection or ()) if backfill is not None else set()
    return backfill_id if selection & snapshot_keys else None


def _landed_but_wiped(
    context: dg.AssetExecutionContext,
    database: DatabaseResource,
    batches: list[tuple[dt.date, str]],
    group: str,
    kept: set[tuple[dt.date, str]],
    *,
    every: bool = False,
) -> dict[tuple[dt.date, str], LandedOutcome]:
    """A backfill's batches that landed with every user scored but whose partition Dagster no
    longer holds a materialisation of (the asset's *Wipe materializations*): a "Failed and
    missing" backfill then selects every batch of every night, and scoring them again would
    re-score each night with today's criteria. They are recorded again instead; with `every`
    (a backfill of the snapshot assets too, `_backfill_with_snapshots`), every batch that
    landed with every user scored is."""
    if context.run.tags.get(BACKFILL_TAG) is None:
        return {}  # a run of the night, or one launched by hand for its partitions
    landed = _landed_by(database, [b for b in batches if b not in kept], None, group)
    if every:
        return landed
    return {
        key: outcome
        for key, outcome in landed.items()
        if not context.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=context.asset_key, asset_partitions=[scores_partition_key(*key)]
            ),
            limit=1,
        ).records
    }


def _earlier_attempts(context: dg.AssetExecutionContext) -> list[str]:
    """The runs whose landed batches this step keeps: its own run when the step is retried,
    and, for a re-execution from failure, every run of its run group (the runs it descends
    from, and the other re-executions of them: the Runs page's bulk *Re-execute … from
    failure* re-executes a failed run and its failed re-executions alike, and clicked twice,
    the same failed run twice)."""
    runs = [context.run.run_id] if context.retry_number > 0 else []
    if not _from_failure(context.run):
        return runs
    this = context.run.run_id
    runs += _lineage(context)[1:]
    # The run group is kept in tags, which the UI's and the retry daemon's re-executions set.
    group = context.instance.get_run_group(this)
    family = [r.run_id for r in group[1]] if group is not None else []
    return runs + [run_id for run_id in family if run_id not in runs and run_id != this]


def _lineage(context: dg.AssetExecutionContext) -> list[str]:
    """The run, then the runs it re-executes, nearest first (up to one deleted since)."""
    runs = [context.run.run_id]
    run: dg.DagsterRun | None = context.run
    while run is not None and run.parent_run_id is not None:
        runs.append(run.parent_run_id)
        run = context.instance.get_run_by_id(run.parent_run_id)
    return runs


def _from_failure(run: dg.DagsterRun) -> bool:
    """A re-execution from failure, or from asset failure (the run page's re-execute menu, or
    the run retry daemon): Dagster tags the run it creates so."""
    return run.is_resume_retry or run.tags.get(ASSET_RESUME_RETRY_TAG) == "true"


@dataclass(frozen=True)
class _NightScope:
    """The night a batch is scored for: its group, correlation id, and the markets it opened
    with (`Night.markets_or`)."""

    group: str
    correlation_id: str
    markets: tuple[str, ...] | None


def _score_batch(
    context: dg.AssetExecutionContext,
    database: DatabaseResource,
    night: _NightScope,
    score_date: dt.date,
    batch: str,
    shared: RunInputs,
) -> BatchOutput:
    """Score one batch of the run, in its own span, and log what became of its users."""
    traceparent = night_traceparent(context, database.engine(), score_date, night.group)
    with (
        telemetry.step_span(
            "score-batch",
            traceparent,
            {"score_date": str(score_date), "batch": batch, "market_group": night.group},
        ) as span,
        database.engine().connect() as conn,
    ):
        started = time.perf_counter()
        inputs = load_batch_inputs(conn, score_date, batch, night.markets, shared)
        output = score_batch(
            inputs,
            load_seconds=time.perf_counter() - started,
            score_date=score_date,
            batch=batch,
            job_correlation_id=night.correlation_id,
            market_group=night.group,
            markets=night.markets,
        )
        if span is not None:
            span.set_attributes(
                {
                    "users_success": len(output.succeeded),
                    "users_failed": len(output.failed),
                    "assets_scored": output.assets_scored,
                }
            )
        if output.failed:
            # The batch fails in Dagster: its span says so too, where a trace shows the night.
            telemetry.set_error(
                span,
                f"{len(output.failed)} of {len(output.succeeded) + len(output.failed)} users "
                f"failed (first: user {output.failed[0].user_id} at stage "
                f"{output.failed[0].stage})",
            )
    for user in output.failed:
        error = user.error or {}
        context.log.error(
            f"user {user.user_id} of batch {batch} failed at stage {user.stage}: "
            f"{error.get('type')}: {error.get('message')}"
        )
    context.log.info(
        f"batch {batch} of {score_date} ({night.group}): {len(output.succeeded)} users "
        f"scored, {len(output.failed)} failed, {len(output.users_skipped)} skipped, "
        f"{output.assets_scored} assets in {output.duration_ms} ms"
    )
    return output


def no_partition_failure(job_name: str, group: str | None) -> dg.Failure:
    """Why a run of the batches launched with no partition (the launchpad's *Launch run* of
    the batch job with none selected) cannot score, and how to score batches; it failed with
    Dagster's "Cannot access partition_key for a non-partitioned run", retried 3 times."""
    option = group_option(group)
    return dg.Failure(
        description=(
            f"{job_name} was launched with no partition: it scores batches of a night, one "
            "(score date × batch) partition each (e.g. 2026-11-27/b0001). Select the batches "
            "to score as its partitions, re-score a night's failed batches from the asset's "
            "Partitions tab (Failed and missing), or run `scoring-pipeline retry-failed "
            f"--date 2026-11-27{option}`"
        ),
        allow_retries=False,
    )


def _night_batch(partition_key: str) -> tuple[dt.date, str]:
    try:
        return parse_scores_partition_key(partition_key)
    except NotABatchPartitionError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def _night_of_date(
    conn: Connection, score_date: dt.date, batch: str, group: str, instance: dg.DagsterInstance
) -> Night:
    """The date's night of the group, with its inputs frozen; a clear
    failure when there is none (never opens a night: only the date's snapshots run does), or
    while the run starting it has not frozen them yet."""
    night = find_night(conn, score_date, market_group=group)
    if night is None:
        raise dg.Failure(
            description=(
                f"{score_date}/{batch} belongs to no night: {score_date} has no night of group "
                f"{group} (run the group's snapshots job for it first); nothing was scored"
            ),
            allow_retries=False,
        )
    starting = night_being_started(instance, night)
    if starting is not None:
        # A retry or a backfill launched while the night starts: the run starting it has not
        # frozen the date's inputs yet (another group's prices of the date may be there), and
        # the night's own batch runs follow its end.
        raise dg.Failure(
            description=(
                f"the night of {score_date} (group {group}) is still being started by "
                f"{starting}: its batches are launched when that run ends; nothing was scored"
            ),
            allow_retries=False,
        )
    month_partitions.ensure_partitions(conn, score_date)  # a retry after `prune` writes again
    for table, what in (
        (t.exchange_rate_snapshots, "exchange-rate"),
        (t.price_snapshots, "price"),
    ):
        if not has_snapshot(conn, table, score_date):
            # Final: a retry of the step finds no snapshot either (it spent 22 s on three).
            raise dg.Failure(
                description=(
                    f"no {what} snapshot for {score_date}: materialise the date's snapshots "
                    f"(the {_snapshots_job(group)}) before its batches"
                ),
                allow_retries=False,
            )
    return night


def _snapshots_job(group: str) -> str:
    return SNAPSHOTS_JOB if group == DEFAULT_GROUP else f"{group}_{SNAPSHOTS_JOB}"


def _check_batch(conn: Connection, score_date: dt.date, batch: str, group: str) -> None:
    """A clear failure when the batch key is not one of its night's (never scores it)."""
    if not has_batch(conn, score_date, batch):
        raise dg.Failure(
            description=(
                f"{score_date}/{batch} belongs to no night: the night of {score_date} has "
                f"batches {batch_keys_text(conn, score_date)}; nothing was scored"
            ),
            allow_retries=False,
        )


scores = build_scores(DEFAULT_GROUPS[DEFAULT_GROUP], [active_users, exchange_rates, prices])
