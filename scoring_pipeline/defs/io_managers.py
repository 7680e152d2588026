"""The scores IO manager: a batch's output handed to the store's write, its figures attached."""

from typing import Any

import dagster as dg

from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.engine.batch import BatchOutput
from scoring_pipeline.store.batch_write import BatchWrite, failed_user_entries, persist_batch


class ScoresIOManager(dg.ConfigurableIOManager):
    """Writes a batch to asset_scores, score_history and calculation_events atomically."""

    database: dg.ResourceDependency[DatabaseResource]

    def handle_output(self, context: dg.OutputContext, obj: BatchOutput) -> None:
        written = persist_batch(self.database.engine(), obj, run_id=context.run_id)
        metadata = _metadata(obj, written)
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
                metadata=metadata,
                allow_retries=False,
            )
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> Any:
        raise NotImplementedError(
            "scores are read from the asset_scores table, not loaded as an input"
        )


def _metadata(output: BatchOutput, written: BatchWrite) -> dict[str, Any]:
    rows = written.rows
    return {
        "users": len(output.users) + len(output.users_skipped),
        "users_success": len(output.succeeded),
        "users_failed": len(output.failed),
        "users_skipped": len(output.users_skipped),
        "assets_scored": output.assets_scored,
        "rows_asset_scores": rows.asset_scores,
        "rows_score_history": rows.score_history,
        "rows_calculation_events": rows.calculation_events,
        "rows_score_metric_values": written.metric_values,
        "batch_status": rows.batch_status,
        "job_status": str(rows.night_status) if rows.night_status else None,
        "duration_ms": output.duration_ms,
        "write_ms": written.write_ms,
        **output.timings,
        "job_correlation_id": output.job_correlation_id,
    }
