"""The scores IO manager: writes a batch's scores, history, events and outcome atomically."""

import time
from typing import Any

import dagster as dg

from scoring_pipeline.defs.assets.common import as_metadata
from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.store.batch_scoring import BatchOutput, gc_paused
from scoring_pipeline.store.batch_write import (
    WriteTimer,
    failed_user_entries,
    prepare_batch,
    record_write_time,
    write_batch,
    write_metric_values,
)
from scoring_pipeline.store.night import root_span


class ScoresIOManager(dg.ConfigurableIOManager):
    """Writes a batch to asset_scores, score_history and calculation_events atomically."""

    database: dg.ResourceDependency[DatabaseResource]

    def handle_output(self, context: dg.OutputContext, obj: BatchOutput) -> None:
        started = time.perf_counter()
        with gc_paused():
            prepared = prepare_batch(obj)  # serialised before the transaction: no locks held
        obj.timings["serialize_ms"] = int((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        timer = WriteTimer()
        engine = self.database.engine()
        with timer.part("metric_values"), engine.begin() as conn:
            metric_rows = write_metric_values(conn, obj)
        with engine.connect() as conn:
            with timer.part("begin"):
                transaction = conn.begin()
            try:
                counts = write_batch(
                    conn, obj, run_id=context.run_id, prepared=prepared, timer=timer
                )
            except BaseException:
                transaction.rollback()
                raise
            with timer.part("commit"):
                transaction.commit()
        write_ms = int((time.perf_counter() - started) * 1000)
        with engine.begin() as conn:
            record_write_time(conn, obj, write_ms, timer.timings())
        if counts["job_status"] not in (None, "started"):
            root_span.emit_root_span(
                self.database.engine(), obj.score_date, market_group=obj.market_group
            )
        metadata: dict[str, Any] = {
            "users": len(obj.users) + len(obj.users_skipped),
            "users_success": len(obj.succeeded),
            "users_failed": len(obj.failed),
            "users_skipped": len(obj.users_skipped),
            "assets_scored": obj.assets_scored,
            "rows_asset_scores": counts["asset_scores"],
            "rows_score_history": counts["score_history"],
            "rows_calculation_events": counts["calculation_events"],
            "rows_score_metric_values": metric_rows,
            "batch_status": counts["batch_status"],
            "job_status": counts["job_status"],
            "duration_ms": obj.duration_ms,
            "write_ms": write_ms,
            **{k: v for k, v in obj.timings.items()},
            "job_correlation_id": obj.job_correlation_id,
        }
        if obj.failed:
            # The successful users are committed above; now the partition must show as failed.
            failed = failed_user_entries(obj)
            metadata["failed_users"] = failed
            raise dg.Failure(
                description=(
                    f"{len(obj.failed)} of {len(obj.users)} users of batch {obj.batch_key} "
                    f"({obj.score_date}) failed; the others' results are stored. Failed: "
                    + "; ".join(
                        f"{f['userId']} at {f['stage']}: {f['error']['message']}"
                        for f in failed[:10]
                        if f["error"]
                    )
                ),
                metadata=as_metadata(metadata),
                allow_retries=False,
            )
        context.add_output_metadata(as_metadata(metadata))

    def load_input(self, context: dg.InputContext) -> Any:
        raise NotImplementedError(
            "scores are read from the asset_scores table, not loaded as an input"
        )
