"""Sensors: launch every batch of a group's date once its snapshots are frozen; warm dashboards;
keep a night truthful when one of its runs fails or is cancelled. One of each for every market
group of the code location (`build_sensors`)."""

import datetime as dt

import dagster as dg
from sqlalchemy.engine import Connection

from scoring_pipeline.defs.batches_in_flight import night_being_started
from scoring_pipeline.defs.cache_warming import (
    CLOSING_LANE,
    LANE_TAG,
    WARM_KEY_TAG,
    WARM_RUNS_AT_CLOSE,
    dashboard_cache_job,
    warm_key,
    warm_run_config,
    warm_run_tokens,
)
from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUPS
from scoring_pipeline.defs.nights import GroupNight, NightDefinitions, build_nights
from scoring_pipeline.defs.partitions import (
    NotABatchPartitionError,
    night_runs,
    parse_scores_partition_key,
    run_partitions,
    scores_partition_key,
)
from scoring_pipeline.defs.resources import DatabaseResource, ScoringSettingsResource
from scoring_pipeline.defs.run_tags import (
    BATCH_RANGE_TAG,
    BATCHES_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    runs_in_flight,
)
from scoring_pipeline.defs.step_errors import last_step_failure
from scoring_pipeline.runtime.run_launcher import executed_by_score
from scoring_pipeline.store.dashboard_cache import pending_batches
from scoring_pipeline.store.membership import load_membership
from scoring_pipeline.store.night.model import NightStatus, find_night, recent_nights
from scoring_pipeline.store.night.opening import fail_night
from scoring_pipeline.store.night.outcomes import (
    batches_landed_by_run,
    record_batch_run_died,
    record_snapshots_run_died,
)
from scoring_pipeline.store.night.root_span import (
    PENDING_KEPT,
    emit_root_span,
    reports_of,
    send_pending_root_spans,
)
from scoring_pipeline.telemetry import RETRY_AFTER_S, TRACEPARENT, enabled


def batch_run_requests(
    instance: dg.DagsterInstance,
    database: DatabaseResource,
    score_date: str,
    origin_run_id: str,
    traceparent: str | None,
    night: GroupNight,
    batches_per_run: int,
) -> list[dg.RunRequest]:
    """The group's night's batch runs for the date: its frozen membership's batches, up to
    `batches_per_run` consecutive partitions a run (`night_runs`); a run of one batch targets
    its partition, a longer one the range of its first and last."""
    with database.engine().connect() as conn:
        keys = load_membership(conn, dt.date.fromisoformat(score_date)).batch_keys
    common = {
        "scoring/score_date": score_date,
        "scoring/origin_run": origin_run_id,
        **({TRACEPARENT: traceparent} if traceparent else {}),
    }
    requests = []
    for run in night_runs(instance, night.group, score_date, keys, batches_per_run):
        first, last = run[0], run[-1]
        _, first_batch = parse_scores_partition_key(first)
        if len(run) == 1:
            requests.append(
                dg.RunRequest(
                    run_key=f"{origin_run_id}:{first_batch}",
                    partition_key=first,
                    job_name=night.batch_job.name,
                    tags=common,
                )
            )
            continue
        _, last_batch = parse_scores_partition_key(last)
        requests.append(
            dg.RunRequest(
                run_key=f"{origin_run_id}:{first_batch}-{last_batch}",
                job_name=night.batch_job.name,
                tags={
                    **common,
                    RANGE_START_TAG: first,
                    RANGE_END_TAG: last,
                    BATCHES_TAG: str(len(run)),
                    # Shown in the runs list (Dagster's range tags are not).
                    BATCH_RANGE_TAG: f"{first_batch}..{last_batch}",
                },
            )
        )
    return requests


def night_started_by(
    database: DatabaseResource, nights: NightDefinitions, score_date: str, run_id: str
) -> GroupNight | None:
    """The group night of the date this run last (re)started (its `active_users` records the
    run on the night it opens), or None: a backfill's run starts none, nor the asset graph's
    prices alone, nor a run another has restarted the night after. A night of a group the code
    location no longer configures (removed while its snapshots ran) has no batch job to launch:
    it fails, saying so, rather than stay `started`."""
    day = dt.date.fromisoformat(score_date)
    removed: list[str] = []
    with database.engine().begin() as conn:
        started = [
            n for n in recent_nights(conn, 1_000, score_date=day) if n.snapshot_run_id == run_id
        ]
        for night in started:
            if night.market_group in nights.nights:
                return nights.nights[night.market_group]
            if night.status is NightStatus.STARTED:
                removed.append(night.market_group)
                fail_night(
                    conn,
                    day,
                    stage="batch",
                    error=(
                        f"group {night.market_group} is no longer configured (now: "
                        f"{', '.join(nights.nights)}): its batches cannot be launched; score "
                        f"{day} with the configured groups (`scoring-pipeline score --date "
                        f"{day}`)"
                    ),
                    market_group=night.market_group,
                )
    for group in removed:
        emit_root_span(database.engine(), day, market_group=group)
    return None


def _failure_message(context: dg.RunStatusSensorContext) -> str:
    run = context.dagster_run
    # The step's own error when a step failed (a database error in the write, say): "Steps
    # failed: ['scores']" told an operator nothing. Else the run's failure, its first line:
    # run monitoring appends the launcher's debug information (a dict of task ids) on the next
    # lines, which every failed member of the batch would repeat.
    step = last_step_failure(context.instance, run.run_id)
    event = context.dagster_event
    message = event.message if event is not None and event.message else ""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"run {run.run_id} {run.status.value}: {step or first}"[:2000]


def _is_date(value: str | None) -> bool:
    try:
        dt.date.fromisoformat(value or "")
    except ValueError:
        return False
    return True


def _launched_while_starting(
    instance: dg.DagsterInstance,
    conn: Connection,
    day: dt.date,
    group: str,
    created: dt.datetime | None,
) -> bool:
    """The batch run was created while the run starting its night had not ended: it scored
    nothing of that night (`scores` refuses it), so its end says nothing of the night's users
    (counted failed, they closed the night `failed` before its own batches ran)."""
    night = find_night(conn, day, market_group=group)
    if night is None:
        return False
    when = created.timestamp() if created is not None else None
    return night_being_started(instance, night, created=when) is not None


def close_night_after_run_ended(
    context: dg.RunStatusSensorContext, database: DatabaseResource, nights: NightDefinitions
) -> None:
    """Shared by the failure and cancellation sensors: keep `overnight_job_runs` truthful.

    Runs are told apart by their partition tags and their group (see `night_of_run`), not their
    job: UI materialisations and backfills run the implicit asset job.
    """
    run = context.dagster_run
    night = nights.night_of_run(run)
    if run.job_name == dashboard_cache_job.name or night is None or executed_by_score(run):
        return  # `scoring-pipeline score` records its own runs' ends
    partitions = run_partitions(context.instance, run, night.group)
    if not partitions:
        return
    group = night.group.name
    message = _failure_message(context)
    record = context.instance.get_run_record_by_id(run.run_id)
    created = record.create_timestamp if record is not None else None
    closed_dates = set()
    batches: dict[dt.date, list[str]] = {}
    with database.engine().begin() as conn:
        for partition in partitions:
            if _is_date(partition):
                closed = dt.date.fromisoformat(partition)
                record_snapshots_run_died(
                    conn, closed, message, run_id=run.run_id, market_group=group
                )
            else:
                try:
                    closed, batch = parse_scores_partition_key(partition)
                except NotABatchPartitionError:
                    continue  # not a partition of ours (a key added by hand): no night
                if _launched_while_starting(context.instance, conn, closed, group, created):
                    # Refused (`scores`): the night's own batch runs follow its snapshots run.
                    continue
                # Each batch the run wrote keeps its outcome; the others count as failed.
                record_batch_run_died(
                    conn,
                    closed,
                    batch,
                    run.run_id,
                    message,
                    market_group=group,
                    run_created=created,
                )
                batches.setdefault(closed, []).append(batch)
            closed_dates.add(closed)
        # The batches a ranged run landed with every user scored: one query a date.
        ranged = len(partitions) > 1
        landed = {
            scores_partition_key(day, key): figures
            for day, keys in (batches.items() if ranged else ())
            for key, figures in batches_landed_by_run(
                conn, day, keys, run.run_id, market_group=group
            ).items()
        }
    for closed in sorted(closed_dates):
        emit_root_span(database.engine(), closed, market_group=group)
    _report_landed(context.instance, run, night, landed)


def _report_landed(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    night: GroupNight,
    landed: dict[str, dict[str, int]],
) -> None:
    """The batches a dead ranged run landed with every user scored, as materialisations of
    their partitions when the run recorded none (its process was killed: Dagster records a
    range's materialisations only as its write ends), so the partitions UI shows them
    materialised, not failed, and "backfill failed" does not re-score them."""
    started = _run_start_time(instance, run.run_id)
    for key, figures in landed.items():
        latest = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=night.scores.key, asset_partitions=[key]), limit=1
        ).records
        if latest and (
            latest[0].event_log_entry.run_id == run.run_id
            or (started is not None and latest[0].timestamp >= started)
        ):
            continue  # the run recorded it, or a later run has materialised it since
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=night.scores.key,
                partition=key,
                description=(
                    f"landed by run {run.run_id}, which then died; reported by "
                    "scoring_run_failure_sensor"
                ),
                metadata={
                    **figures,
                    "batch_status": "success",
                    "run_id": run.run_id,
                    "reported_by": "scoring_run_failure_sensor",
                },
            )
        )


def _run_start_time(instance: dg.DagsterInstance, run_id: str) -> float | None:
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=[run_id]), limit=1)
    return records[0].start_time if records else None


def build_sensors(nights: NightDefinitions) -> list[dg.SensorDefinition]:
    """The code location's sensors for its groups' nights."""
    groups = list(nights.nights.values())

    @dg.run_status_sensor(
        name="scoring_batches_sensor",
        description=(
            "When a group's snapshots run of a date succeeds (its job, or the snapshot assets "
            "materialised from the asset graph, which start the night the same way), launches "
            "that date's batches in the group's batch job (SCORING_BATCHES_PER_RUN a run)."
        ),
        run_status=dg.DagsterRunStatus.SUCCESS,
        # Every job of the code location: a night is also started by materialising the snapshot
        # assets from the asset graph (Dagster's implicit asset job), not only by its job.
        request_jobs=[n.batch_job for n in groups],
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=1,
    )
    def scoring_batches_sensor(
        context: dg.RunStatusSensorContext,
        database: DatabaseResource,
        settings: ScoringSettingsResource,
    ) -> list[dg.RunRequest]:
        """When a group's snapshots run of a date succeeds, launch that date's batches in the
        group's batch job, `SCORING_BATCHES_PER_RUN` consecutive batches a run. A run counts
        only if its `active_users` last (re)started the night (the night's
        `dagster_snapshot_run_id`): a backfill's never does, nor one superseded by a later
        start of the same night."""
        run = context.dagster_run
        if executed_by_score(run):
            return []  # `scoring-pipeline score` scores the night's batches itself
        score_date = run.tags.get(PARTITION_TAG)
        if score_date is None or not _is_date(score_date):
            return []  # a batch run, a warm run: no date's snapshots
        night = night_started_by(database, nights, score_date, run.run_id)
        if night is None:
            return []
        return batch_run_requests(
            context.instance,
            database,
            score_date,
            run.run_id,
            run.tags.get(TRACEPARENT),
            night,
            settings.batches_per_run,
        )

    @dg.run_failure_sensor(
        name="scoring_run_failure_sensor",
        description=(
            "When a night's run fails (a step error, a killed worker), records its batches' "
            "outcomes so the night closes instead of staying started."
        ),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=1,
    )
    def scoring_run_failure_sensor(
        context: dg.RunFailureSensorContext, database: DatabaseResource
    ) -> None:
        """A night's run failed (step error, killed worker): record it so the night closes."""
        close_night_after_run_ended(context, database, nights)

    @dg.run_status_sensor(
        name="scoring_run_canceled_sensor",
        description=(
            "When a night's run is cancelled, records its batches' outcomes so the night "
            "closes instead of staying started."
        ),
        run_status=dg.DagsterRunStatus.CANCELED,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=1,
    )
    def scoring_run_canceled_sensor(
        context: dg.RunStatusSensorContext, database: DatabaseResource
    ) -> None:
        """A night's run was cancelled: record it so the night closes."""
        close_night_after_run_ended(context, database, nights)

    return [
        scoring_batches_sensor,
        dashboard_cache_sensor,
        scoring_run_failure_sensor,
        scoring_run_canceled_sensor,
        night_report_sensor,
    ]


@dg.sensor(
    name="dashboard_cache_sensor",
    description=(
        "As batches of any group land or are re-scored, warms their successful users' "
        "dashboard caches, a few batches a run, within seconds of landing."
    ),
    job=dashboard_cache_job,
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def dashboard_cache_sensor(
    context: dg.SensorEvaluationContext, database: DatabaseResource
) -> dg.SensorResult | dg.SkipReason:
    """As batches of any group land (or are re-scored), warm their successful users'
    dashboards (each combines every group's current scores): a few batches a run, within
    seconds of landing (`PendingWarm.due`)."""
    active = runs_in_flight(context.instance, dashboard_cache_job.name)
    taken = frozenset(token for run in active for token in warm_run_tokens(run))
    with database.engine().connect() as conn:
        pending = pending_batches(conn, taken=taken)
    tags: dict[str, str] = {}
    if active:
        # It warms what was pending when it was requested; what lands meanwhile waits for the
        # next run (a run per tick would queue overlapping runs faster than one can finish).
        # Once a night has no batch left to land, its last batches are warmed at once beside
        # it, on a run worker the night no longer needs (outside the one-at-a-time lane).
        if len(active) >= WARM_RUNS_AT_CLOSE or not (pending.batches and pending.night_closed):
            return dg.SkipReason(f"warm run {active[0].run_id} is queued or running")
        tags[LANE_TAG] = CLOSING_LANE
    if not pending.due:
        return dg.SkipReason(pending.wait_reason())
    tokens = [p.token for p in pending.batches]
    warm = warm_key(context.instance, tokens)
    if warm.exhausted:
        return dg.SkipReason(
            f"the warm runs of {len(tokens)} landed batch(es) failed {len(warm.failed_runs)} "
            f"times (the last: run {warm.failed_runs[0]}, whose log says why); they are "
            "requested again once another batch lands or one of them is re-scored"
        )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=warm.run_key,
                run_config=warm_run_config(tokens),
                tags={BATCHES_TAG: str(len(tokens)), WARM_KEY_TAG: warm.key, **tags},
            )
        ]
    )


@dg.sensor(
    name="night_report_sensor",
    description=(
        "Sends again the OpenTelemetry report (root span) of a night closed in the last "
        f"{PENDING_KEPT.days} days that the collector did not take when it closed (down, "
        f"refusing, silent), every {RETRY_AFTER_S:.0f} s until it does; idle when tracing is off."
    ),
    minimum_interval_seconds=int(RETRY_AFTER_S),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def night_report_sensor(
    context: dg.SensorEvaluationContext, database: DatabaseResource
) -> dg.SkipReason:
    """A night's report is sent as it closes; one the collector did not take was lost (the
    trace had its steps and no root). It waits in the night's metrics, and this sends it."""
    if not enabled():
        return dg.SkipReason("tracing is off: no night report to send")
    reports = send_pending_root_spans(database.engine())
    said = []
    if reports.sent:
        said.append(f"sent {reports_of(reports.sent)}")
        context.log.info(said[-1])
    if reports.pending:
        said.append(
            f"the collector did not take {reports_of(reports.pending)}; tried again in "
            f"{RETRY_AFTER_S:.0f} s"
        )
    return dg.SkipReason("; ".join(said) or "no night's report is waiting to be sent")


# The default configuration's sensors, as the tests and tools import them.
(
    scoring_batches_sensor,
    _,
    scoring_run_failure_sensor,
    scoring_run_canceled_sensor,
    _,
) = build_sensors(build_nights(list(DEFAULT_GROUPS.values())))
