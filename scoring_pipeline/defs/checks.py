"""Asset checks on `scores`, per batch partition: the SPEC §5 invariants of its calculations.

One step evaluates all three for each batch of the run (three small queries over the batch's
users), so a run pays one step, not three per batch. A violated invariant is an ERROR naming what
was wrong; results show per partition in the UI's Checks tab. The checks run in each batch run
after the asset. When one batch of a run of several fails, the run's step fails and Dagster skips
this step, so the IO manager evaluates the run's landed batches itself before failing (a batch
that failed has its checks skipped until it is re-scored).
"""

import time
import warnings
from collections.abc import Iterator

import dagster as dg

# Not exported by `dagster`: the target an evaluation names, as `AssetCheckResult` builds it.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from sqlalchemy.engine import Engine

from scoring_pipeline.defs.assets.scores import scores
from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUP, DEFAULT_GROUPS, MarketGroup
from scoring_pipeline.defs.partitions import parse_scores_partition_key
from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.store.batch_invariants import check_batch
from scoring_pipeline.store.night.model import find_night

_DESCRIPTIONS = {
    "events": "Each calculation of the batch has one complete (or failed) event set, in order.",
    "history": "score_history has exactly one row per (user, symbol, date), equal to the "
    "user's successful calculation.",
    "current": "The users' current scores equal their latest successful calculation.",
}
CHECK_NAMES = {name: f"{name}_invariant" for name in _DESCRIPTIONS}


def _specs(scores: dg.AssetsDefinition) -> list[dg.AssetCheckSpec]:
    # Partitioned checks are a preview feature of Dagster 1.13, used deliberately: its warning
    # would otherwise reach every process that imports the code location (and the CLI's stderr).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                CHECK_NAMES[name],
                asset=scores,
                description=description,
                partitions_def=scores.partitions_def,
            )
            for name, description in _DESCRIPTIONS.items()
        ]


def build_scores_invariants(
    group: MarketGroup, scores: dg.AssetsDefinition
) -> dg.AssetChecksDefinition:
    """The invariant checks of a group's `scores`, over the rows of the markets its night of
    the batch's date scores."""

    # can_subset: a ranged run's step evaluates every partition of its range itself (an
    # `AssetCheckResult` names only a single-partition step's key), as evaluations per key.
    @dg.multi_asset_check(
        specs=_specs(scores), name=group.qualified("scores_invariants"), can_subset=True
    )
    def scores_invariants(
        context: dg.AssetCheckExecutionContext, database: DatabaseResource
    ) -> Iterator[dg.AssetCheckEvaluation]:
        """The SPEC §5 invariants of each batch partition of the run (one, or a range)."""
        if not context.has_partition_key and not context.has_partition_key_range:
            # The Checks tab's "Execute all" launches the checks alone, with no partition
            # (Dagster's "Execute" of one partition's checks is not available for them).
            raise dg.Failure(
                description=(
                    "the checks of scores run per batch partition, and this run has none: "
                    "re-materialise the batch (asset scores → Partitions → the batch → "
                    "Materialize) to score and check it again; every batch run checks its "
                    "batches"
                ),
                allow_retries=False,
            )
        yield from batch_check_evaluations(
            context.instance,
            database.engine(),
            scores.key,
            list(context.partition_keys),
            market_group=group.name,
            markets=group.markets,
        )

    return scores_invariants


def batch_check_evaluations(
    instance: dg.DagsterInstance,
    engine: Engine,
    asset_key: dg.AssetKey,
    partition_keys: list[str],
    *,
    market_group: str,
    markets: tuple[str, ...] | None,
) -> Iterator[dg.AssetCheckEvaluation]:
    """The three invariants of each batch partition, as evaluations of that partition, each
    naming the partition's latest materialisation as its target (what `AssetCheckResult` does
    for a single-partition step)."""
    for key in partition_keys:
        score_date, batch = parse_scores_partition_key(key)
        started = time.perf_counter()
        with engine.connect() as conn:
            night = find_night(conn, score_date, market_group=market_group)
            scored = night.markets_or(markets) if night is not None else markets
            reports = check_batch(
                conn, score_date, batch, market_group=market_group, markets=scored
            )
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        target = _latest_materialization(instance, asset_key, key)
        for report in reports:
            yield dg.AssetCheckEvaluation(
                asset_key=asset_key,
                check_name=CHECK_NAMES[report.name],
                passed=report.holds,
                severity=dg.AssetCheckSeverity.ERROR,
                description=(
                    f"{report.calculations} calculations checked"
                    if report.holds
                    else f"{len(report.violations)} violations of the {report.name} invariant"
                ),
                metadata={
                    "calculations": report.calculations,
                    "violations": dg.MetadataValue.json(report.violations),
                    "check_ms": elapsed_ms,
                },
                partition=key,
                target_materialization_data=target,
            )


def _latest_materialization(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_key: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition_key]), limit=1
    ).records
    if not records:
        return None
    latest = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        run_id=latest.event_log_entry.run_id,
        storage_id=latest.storage_id,
        timestamp=latest.timestamp,
    )


scores_invariants = build_scores_invariants(DEFAULT_GROUPS[DEFAULT_GROUP], scores)
