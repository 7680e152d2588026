"""Asset checks on `scores`, per batch partition: the SPEC §5 invariants of its calculations.

One step evaluates all three (one transaction, three small queries over the batch's users), so a
batch pays one step, not three. A violated invariant is an ERROR naming what was wrong; results
show per partition in the UI's Checks tab. The checks run in each batch run after the asset (a
batch whose step failed has its checks skipped until it is re-scored).
"""

import time
import warnings
from collections.abc import Iterator

import dagster as dg

from scoring_pipeline.defs.assets.scores import scores
from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUP, DEFAULT_GROUPS, MarketGroup
from scoring_pipeline.defs.partitions import parse_scores_partition_key
from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.store.batch_invariants import check_batch

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
    """The invariant checks of a group's `scores`, over the group's markets' rows."""

    @dg.multi_asset_check(specs=_specs(scores), name=group.qualified("scores_invariants"))
    def scores_invariants(
        context: dg.AssetCheckExecutionContext, database: DatabaseResource
    ) -> Iterator[dg.AssetCheckResult]:
        """The SPEC §5 invariants of one batch partition of the group's `scores`."""
        score_date, batch = parse_scores_partition_key(context.partition_key)
        started = time.perf_counter()
        with database.engine().connect() as conn:
            reports = check_batch(
                conn, score_date, batch, market_group=group.name, markets=group.markets
            )
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        for report in reports:
            yield dg.AssetCheckResult(
                check_name=CHECK_NAMES[report.name],
                asset_key=scores.key,
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
            )

    return scores_invariants


scores_invariants = build_scores_invariants(DEFAULT_GROUPS[DEFAULT_GROUP], scores)
