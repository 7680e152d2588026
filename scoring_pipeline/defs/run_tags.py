"""What a run's tags say about its night: its trace context, its market group and when a
schedule meant it to start. The schedule, the batch sensor and the CLI set them; the assets read
them."""

import datetime as dt
from collections.abc import Sequence

import dagster as dg
from sqlalchemy.engine import Engine

from scoring_pipeline import telemetry
from scoring_pipeline.defs.market_groups.group import MarketGroup, group_of_run
from scoring_pipeline.store.night import root_span
from scoring_pipeline.store.night.model import ALL_MARKETS
from scoring_pipeline.telemetry import TRACEPARENT

# A run that has not ended yet: queued, or being started, or running.
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


# A run is created NOT_STARTED and queued at once (milliseconds later); one still NOT_STARTED
# after this was never submitted (its launcher's process died in between, say) and never will
# be: counted in flight, it would skip every later tick of its date, and no night would start.
NEVER_SUBMITTED_AFTER = dt.timedelta(minutes=5)


def runs_in_flight(
    instance: dg.DagsterInstance,
    job_name: str | None,
    tags: dict[str, str] | None = None,
    limit: int | None = None,
) -> list[dg.DagsterRun]:
    """The job's runs (every job's with None) with these tags that are queued or running,
    newest first; not a run left NOT_STARTED for longer than `NEVER_SUBMITTED_AFTER`."""
    filters = dg.RunsFilter(job_name=job_name, tags=tags or {}, statuses=IN_FLIGHT)
    stale_before = dt.datetime.now(dt.UTC) - NEVER_SUBMITTED_AFTER
    runs = [
        record.dagster_run
        for record in instance.get_run_records(filters=filters)
        if record.dagster_run.status != dg.DagsterRunStatus.NOT_STARTED
        or record.create_timestamp.astimezone(dt.UTC) >= stale_before
    ]
    return runs[:limit] if limit is not None else runs


def run_in_flight(
    instance: dg.DagsterInstance, job_name: str, tags: dict[str, str] | None = None
) -> str | None:
    """The id of a run of the job (with these tags) that is queued or running, if any."""
    runs = runs_in_flight(instance, job_name, tags, limit=1)
    return runs[0].run_id if runs else None


# A run of several consecutive `scores` partitions carries Dagster's range tags (the sensor's
# runs of a night, UI backfills); a sensor-launched batch or warm run also says how many
# batches it scores or warms.
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
BATCHES_TAG = "scoring/batches"
BATCH_RANGE_TAG = "scoring/batch_range"  # e.g. `b0000..b0009`, on the night's ranged runs

# Set by a schedule's run request: when the tick was due, how many seconds late it launched.
SCHEDULED_FOR_TAG = "scoring/scheduled_for"
LATE_TAG = "scoring/launched_late_s"


def run_traceparent(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> str | None:
    """The night's trace context carried in the run's tags (schedule, sensor, CLI)."""
    return context.run.tags.get(TRACEPARENT)


def selection_paths(run: dg.DagsterRun) -> list[Sequence[str]]:
    """The key paths of the assets a run was launched to materialise (its asset selection: set
    by the UI's Materialize and by backfills; empty for an in-process `dg.materialize`)."""
    return [key.path for key in run.asset_selection or ()]


def executed_paths(context: dg.AssetExecutionContext) -> list[Sequence[str]]:
    """The key paths of the assets the executing run materialises: its job's selection, which
    is the run's asset selection in a run worker and the assets given to `dg.materialize`."""
    return [key.path for key in context.job_def.asset_layer.selected_asset_keys]


def run_group(
    context: dg.AssetExecutionContext, groups: dict[str, MarketGroup]
) -> MarketGroup | None:
    """The market group whose night the run belongs to (`group_of_run`), or None."""
    return group_of_run(context.run.tags, groups, executed_paths(context))


def night_traceparent(
    context: dg.AssetExecutionContext | dg.OpExecutionContext | dg.OutputContext,
    engine: Engine,
    score_date: dt.date,
    market_group: str = ALL_MARKETS,
) -> str | None:
    """The run's trace context, else the one the date's night recorded when it started (a run
    launched by hand or by a backfill carries none); None when tracing is off (no span to
    open, so no lookup of the night for a run carrying none)."""
    if not telemetry.enabled():
        return None
    if isinstance(context, dg.OutputContext):  # an IO manager's: the run is its step's
        tagged = context.step_context.dagster_run.tags.get(TRACEPARENT)
    else:
        tagged = run_traceparent(context)
    if tagged:
        return tagged
    with engine.connect() as conn:
        return root_span.night_traceparent(conn, score_date, market_group=market_group)
