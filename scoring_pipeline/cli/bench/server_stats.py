"""What PostgreSQL counts for the benchmark: connections opened, the server's WAL and
checkpoints, and the output tables' rows and bytes on disk (and their VACUUM between nights).
"""

import sqlalchemy as sa
from sqlalchemy.engine import Engine

OUTPUT_TABLES = (
    "asset_scores",
    "score_history",
    "score_metric_values",
    "calculation_events",
    "dashboard_cache",
    "scoring_batches",
    "scoring_batch_results",
    "price_snapshots",
    "exchange_rate_snapshots",
    "overnight_job_runs",
)


def vacuum(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in OUTPUT_TABLES:
            conn.execute(sa.text(f"VACUUM {table}"))


def sessions(engine: Engine) -> int:
    """Connections ever opened to the benchmark database (PostgreSQL counts them)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def server_counters(engine: Engine) -> dict[str, int]:
    """The server's WAL and checkpoint counters (server-wide: every database on it counts)."""
    with engine.connect() as conn:
        version = int(conn.execute(sa.text("SHOW server_version_num")).scalar_one())
        wal = conn.execute(
            sa.text(
                "SELECT wal_records, wal_fpi, wal_bytes, wal_buffers_full, "
                "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0') AS lsn FROM pg_stat_wal"
            )
        ).one()
        checkpoints = conn.execute(
            sa.text(
                "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
                if version >= 170000
                else "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
            )
        ).scalar_one()
    return {
        "wal_bytes": int(wal.lsn),
        "wal_records": int(wal.wal_records),
        "wal_full_page_images": int(wal.wal_fpi),
        "wal_buffers_full": int(wal.wal_buffers_full),
        "checkpoints": int(checkpoints),
    }


def counters_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before}


def table_sizes(engine: Engine) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for table in OUTPUT_TABLES:
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            # A partitioned table's own size is 0: its partitions hold the rows.
            size = conn.execute(
                sa.text(
                    "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) "
                    "FROM pg_partition_tree(CAST(:t AS regclass))), "
                    "pg_total_relation_size(CAST(:t AS regclass)))"
                ),
                {"t": table},
            ).scalar_one()
            out[table] = {"rows": int(rows), "bytes": int(size)}
    return out
