"""The dashboard cache job: warms the users of the batch outcomes a sensor hands it."""

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import dagster as dg

from scoring_pipeline import telemetry
from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.store.dashboard_cache import PendingBatch, warm_batch
from scoring_pipeline.store.night.cache_warming import record_cache_warming
from scoring_pipeline.store.night.root_span import night_traceparent


class WarmCacheConfig(dg.Config):
    """Batch outcomes to warm, as `score_date|market_group|batch_key|outcome_seq` tokens."""

    batches: list[str]


def warm_run_config(tokens: list[str]) -> dict[str, Any]:
    """The run config of a warm run of these batch outcomes."""
    return {"ops": {warm_dashboard_cache.name: {"config": {"batches": tokens}}}}


def warm_run_tokens(run: dg.DagsterRun) -> list[str]:
    """The batch outcomes a warm run was asked to warm (what `warm_run_config` wrote)."""
    config: dict[str, Any] = dict(run.run_config)
    ops = config.get("ops") or {}
    return list(ops.get(warm_dashboard_cache.name, {}).get("config", {}).get("batches", []))


@dg.op
def warm_dashboard_cache(
    context: dg.OpExecutionContext, config: WarmCacheConfig, database: DatabaseResource
) -> dg.Output[int]:
    """Upserts `dashboard_cache` for every successfully scored user of the given batches, each
    batch in a transaction of its own. A batch that cannot be warmed (an error that is not one
    user's) does not hold back the others: they are warmed, then the run fails with the first
    such error, and the sensor asks again for that batch alone."""
    started = time.perf_counter()
    warmed = 0
    failed: list[dict[str, str]] = []
    broken: list[tuple[str, Exception]] = []
    for token in config.batches:
        batch = PendingBatch.from_token(token)
        try:
            with database.engine().connect() as conn:
                traceparent = night_traceparent(
                    conn, batch.score_date, market_group=batch.market_group
                )
            with (
                telemetry.step_span(
                    "cache-warm",
                    traceparent,
                    {"score_date": str(batch.score_date), "batch": batch.batch_key},
                ),
                database.engine().begin() as conn,
            ):
                result = warm_batch(conn, batch)
                record_cache_warming(conn, batch.score_date, market_group=batch.market_group)
        except Exception as error:
            name = f"batch {batch.batch_key} of {batch.score_date} ({batch.market_group})"
            context.log.error(f"{name} not warmed: {type(error).__name__}: {error}")
            broken.append((name, error))
            continue
        warmed += result.warmed
        failed.extend(result.failed)
        context.log.info(f"warmed {result.warmed} dashboards of {token}")
    for failure in failed:
        context.log.error(f"dashboard of user {failure['userId']} not warmed: {failure['error']}")
    if broken:
        context.log.error(
            f"{len(broken)} of {len(config.batches)} batch(es) not warmed, the others were "
            f"({warmed} dashboards): {', '.join(name for name, _ in broken)}"
        )
        raise broken[0][1]
    return dg.Output(
        warmed,
        metadata={
            "batches": len(config.batches),
            "users_warmed": warmed,
            "users_failed": len(failed),
            "failed_users": dg.MetadataValue.json(failed),
            "duration_ms": int((time.perf_counter() - started) * 1000),
        },
    )


# Dequeued before batch runs (priority), one at a time (`scoring/lane` is limited to 1 run in
# dagster.yaml) so that warming never takes every run worker from the night's batches. The
# sensor moves the warm run of a night's last batches, requested while another still runs, to
# a lane of its own: the night has no batch left for the worker it takes.
LANE_TAG = "scoring/lane"
WARM_LANE = "dashboard"
CLOSING_LANE = "dashboard_closing"
WARM_RUNS_AT_CLOSE = 2  # warm runs at once at most: the lane's one and a closing one


@dg.job(
    executor_def=dg.in_process_executor,
    tags={"dagster/priority": "10", LANE_TAG: WARM_LANE},
)
def dashboard_cache_job() -> None:
    """Warm the dashboard cache of the users of newly landed (or re-scored) batches."""
    warm_dashboard_cache()


# Every warm run of the same batch outcomes carries their hash in this tag; the daemon sets
# Dagster's run key tag on a sensor's run.
WARM_KEY_TAG = "scoring/warm_key"
RUN_KEY_TAG = "dagster/run_key"
# Dagster skips a sensor's request whose run key an earlier run used, whatever became of that
# run: a warm run that failed or was cancelled (a lost database, a terminated run) is requested
# again under a new run key, up to this many runs of the same batch outcomes in all.
WARM_ATTEMPTS = 3


@dataclass(frozen=True)
class WarmKey:
    """The run key of the next warm run of some batch outcomes, and their failed warm runs."""

    key: str
    run_key: str
    failed_runs: list[str]  # newest first

    @property
    def exhausted(self) -> bool:
        return len(self.failed_runs) >= WARM_ATTEMPTS


def warm_key(instance: dg.DagsterInstance, tokens: list[str]) -> WarmKey:
    """The run key that names exactly these outcomes (a re-scored batch has a new sequence
    number), with the number of their failed or cancelled warm runs after it, if any."""
    key = hashlib.sha1("\n".join(tokens).encode()).hexdigest()
    first = f"warm:{key}"
    # The first run's key finds a run requested before `WARM_KEY_TAG` was set, too.
    records = [
        record
        for tags in ({WARM_KEY_TAG: key}, {RUN_KEY_TAG: first})
        for record in instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=dashboard_cache_job.name,
                tags=tags,
                statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED],
            )
        )
    ]
    ended = {r.dagster_run.run_id: r.create_timestamp for r in records}
    failed = sorted(ended, key=lambda run_id: ended[run_id], reverse=True)
    return WarmKey(key, first + (f":{len(failed)}" if failed else ""), failed)
