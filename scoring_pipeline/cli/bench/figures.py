"""The night's figures from what its batches recorded in the application database: the stages'
times (from the runs' start and end), the work inside the batches, the write's parts, the
assets scored.
"""

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def write_parts(engine: Engine, score_date: dt.date) -> dict[str, float]:
    """The write's parts (`writes.WriteTimer`) in seconds, summed over the night's batches."""
    with engine.connect() as conn:
        parts = conn.execute(
            sa.text(
                "SELECT key, sum(CAST(value AS bigint)) AS ms FROM scoring_batch_results, "
                "jsonb_each_text(timings) WHERE score_date = :d AND key LIKE 'write\\_%\\_ms' "
                "AND key <> 'write_ms' GROUP BY key ORDER BY key"
            ),
            {"d": score_date},
        ).all()
    return {str(r.key)[6:-3]: float(r.ms) / 1000 for r in parts}


def night_figures(
    engine: Engine, score_date: dt.date, runs: dict[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    snap = runs["overnight_snapshots_job"]
    batches = runs["scoring_batch_job"]
    warm = runs["dashboard_cache_job"]
    first_start = min(s for s, _ in snap)
    snap_end = max(e for _, e in snap)
    batch_start = min(s for s, _ in batches)
    batch_end = max(e for _, e in batches)
    warm_end = max(e for _, e in warm)
    with engine.connect() as conn:
        sums = conn.execute(
            sa.text(
                "SELECT count(*) AS batches, sum(assets_scored) AS assets, "
                "sum((timings->>'load_ms')::bigint) AS load_ms, "
                "sum((timings->>'engine_ms')::bigint) AS engine_ms, "
                "sum((timings->>'engine_cpu_ms')::bigint) AS engine_cpu_ms, "
                "sum((timings->>'build_ms')::bigint) AS build_ms, "
                "sum((timings->>'serialize_ms')::bigint) AS serialize_ms, "
                "sum((timings->>'write_ms')::bigint) AS write_ms, "
                "sum((timings->>'rule_evaluations')::bigint) AS evaluations "
                "FROM scoring_batch_results WHERE score_date = :d"
            ),
            {"d": score_date},
        ).one()
    engine_s = max(float(sums.engine_ms or 0) / 1000, 1e-9)
    engine_cpu_s = max(float(sums.engine_cpu_ms or 0) / 1000, 1e-9)
    return {
        "batches": int(sums.batches),
        "assets_scored": int(sums.assets or 0),
        "rule_evaluations": int(sums.evaluations or 0),
        "end_to_end_s": max(batch_end, warm_end) - first_start,
        "stages_s": {
            "snapshots run (users, rates, prices)": snap_end - first_start,
            "snapshots done -> first batch run starts (sensor, queue)": batch_start - snap_end,
            "batch runs (first start -> last end)": batch_end - batch_start,
            "last batch -> last dashboard warm": max(0.0, warm_end - batch_end),
        },
        "batch_sums_s": {
            "load inputs": float(sums.load_ms or 0) / 1000,
            "scoring engine": float(sums.engine_ms or 0) / 1000,
            "events and results built": float(sums.build_ms or 0) / 1000,
            "rows serialised for COPY": float(sums.serialize_ms or 0) / 1000,
            "write (COPY + upserts, commit included)": float(sums.write_ms or 0) / 1000,
        },
        # Time a run worker spends on runs, by job: what the scoring itself does not explain
        # in the batch runs is Dagster's own cost per run (start, events, resources, end).
        "run_seconds_by_job": {
            job: sum(end - start for start, end in times) for job, times in runs.items()
        },
        "write_s": float(sums.write_ms or 0) / 1000,
        "write_parts_s": write_parts(engine, score_date),
        "rule_evaluations_per_s": int(sums.evaluations or 0) / engine_s,
        # The wall figure above includes time the engine waited for a core (2 cores shared with
        # PostgreSQL and the other worker); this one is the engine's own speed in the night.
        "rule_evaluations_per_cpu_s": int(sums.evaluations or 0) / engine_cpu_s,
    }


def assets_scored(engine: Engine, score_date: dt.date) -> int:
    """The assets the date's batches scored."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT coalesce(sum(assets_scored), 0) FROM scoring_batch_results "
                    "WHERE score_date = :d"
                ),
                {"d": score_date},
            ).scalar_one()
        )
