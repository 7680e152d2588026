"""The partition definitions, one object per dimension, imported everywhere.

Identity mappings between the daily snapshot assets and the scores asset need the very same
daily object. Batch keys (`b0000`, `b0001`, …) are dynamic and shared by every date.
"""

import dagster as dg

SCORE_DATE_START = "2025-01-01"
BATCH_DIMENSION = "batch"
DATE_DIMENSION = "score_date"

# end_offset=1: the night scores the day that is about to open, so today's partition must exist.
score_date_partitions = dg.DailyPartitionsDefinition(
    start_date=SCORE_DATE_START, timezone="UTC", end_offset=1
)

batch_partitions = dg.DynamicPartitionsDefinition(name="scoring_batches")

scores_partitions = dg.MultiPartitionsDefinition(
    {DATE_DIMENSION: score_date_partitions, BATCH_DIMENSION: batch_partitions}
)


def batch_key(index: int) -> str:
    return f"b{index:04d}"


def scores_partition_key(score_date: str, batch: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({DATE_DIMENSION: score_date, BATCH_DIMENSION: batch})


def scores_partition_tags(score_date: str, batch: str) -> dict[str, str]:
    """Run tags for a hand-launched run of one scores partition (SPEC §10: per-dimension tags)."""
    key = scores_partition_key(score_date, batch)
    return {
        "dagster/partition": str(key),
        f"dagster/partition/{DATE_DIMENSION}": score_date,
        f"dagster/partition/{BATCH_DIMENSION}": batch,
    }
