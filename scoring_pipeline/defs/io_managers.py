"""The scores IO manager: a run's batches handed to the store's write one by one, each batch's
figures attached to its partition."""

from collections.abc import Iterator
from typing import Any, NamedTuple

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG, PARTITION_NAME_TAG
from dagster._utils import interrupts

from scoring_pipeline import telemetry
from scoring_pipeline.defs.assets.scores import (
    EarlierBatch,
    RefusedBatch,
    RunBatches,
    no_partition_failure,
)
from scoring_pipeline.defs.checks import batch_check_evaluations
from scoring_pipeline.defs.market_groups.group import GROUP_TAG
from scoring_pipeline.defs.partitions import scores_partition_key
from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.defs.run_tags import night_traceparent
from scoring_pipeline.engine.batch import BatchOutput, gc_paused
from scoring_pipeline.store.batch_write import BatchWrite, failed_user_entries, persist_batch

# The step of the default group's `scores`; a configured group's is `<group>__scores`
# (Dagster's step key of an asset: its key's path joined by "__").
_SCORES_STEP = dg.AssetKey("scores").to_python_identifier()


def _scores_step(key: str) -> bool:
    return key == _SCORES_STEP or key.endswith(f"__{_SCORES_STEP}")


# How many failed batches a ranged run's failure names in its description (all are in metadata).
_NAMED = 5


def _keep_the_interrupt() -> None:
    """Leave the interrupt pending for Dagster's executor: a step with a retry policy turns an
    interrupt into a retry, so the IO manager fails the step without one instead, and the
    executor, finding the interrupt after the step, ends the run canceled (not failed, nor
    SUCCESS over a forced cancellation). Dagster keeps a captured interrupt in this flag
    (`dagster._utils.interrupts`, pinned with dagster): the e2e termination test fails if it
    moves."""
    interrupts._received_interrupt["received"] = True  # noqa: SLF001


class Landed(NamedTuple):
    """A batch of the run written with every user scored: what its events need."""

    partition: str
    market_group: str
    markets: tuple[str, ...] | None
    metadata: dict[str, Any]
    earlier: bool = False  # landed by an earlier attempt, which recorded its events


class ScoresIOManager(dg.ConfigurableIOManager):
    """Writes each batch of a run to asset_scores, score_history and calculation_events
    atomically, in its own transaction, before the next batch is scored."""

    database: dg.ResourceDependency[DatabaseResource]

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse a run of the batches with no partition before any step: Dagster reads the
        upstream snapshots' versions for the batch's partitions before the asset's code runs,
        and raised its "Cannot access partition_key for a non-partitioned run" there. A run of
        the checks alone is left to them: they say how to check a batch (`checks`)."""
        run = context.dagster_run
        if run is None or {PARTITION_NAME_TAG, ASSET_PARTITION_RANGE_START_TAG} & set(run.tags):
            return
        steps = run.step_keys_to_execute
        if steps is None or any(_scores_step(key) for key in steps):
            raise no_partition_failure(run.job_name, run.tags.get(GROUP_TAG))

    # A generator: Dagster stores the events it yields as they come (declared `-> None` by
    # `IOManager`, but a generator `handle_output` is how an IO manager yields events).
    def handle_output(  # type: ignore[override]
        self, context: dg.OutputContext, obj: RunBatches
    ) -> Iterator[dg.DagsterEvent]:
        # Only each batch's figures are kept: its output (every score) is freed once written.
        landed: list[Landed] = []  # every user scored
        failed: list[tuple[str, str, dict[str, Any]]] = []  # partition, why, metadata
        batches = iter(obj)
        try:
            while True:
                # Scoring a batch and writing it allocate hundreds of thousands of objects, freed
                # by reference counting: the cyclic collector stays paused over both, and resumes
                # only once the batch's output is released (each collection it would otherwise
                # run walks the whole live output, ~15 ms a batch).
                with gc_paused():
                    item = next(batches, None)
                    if item is None:
                        break
                    self._write(context, item, landed, failed)
                    del item
        except DagsterExecutionInterruptedError:
            # The run was terminated (its worker interrupts it): no retry of the step, which
            # Dagster's retry policy would otherwise make of an interrupt; what landed stays,
            # and the run ends canceled (`_keep_the_interrupt`).
            if obj.ranged:
                yield from self._landed_events(context, landed)
            _keep_the_interrupt()
            raise dg.Failure(
                description=(
                    f"the run was terminated while its batches were being scored: {len(landed)} "
                    "landed, the others are left unscored (`scoring-pipeline retry-failed`)"
                ),
                allow_retries=False,
            ) from None
        except Exception:
            # A run of several batches fails here as a whole (it may be retried): the batches
            # already committed keep their partitions materialised and checked.
            if obj.ranged:
                yield from self._landed_events(context, landed)
            raise
        finally:
            # A batch that failed to write lets go of its scoring turn (`RunBatches.__iter__`).
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        if not obj.ranged:
            if failed:
                key, description, metadata = failed[0]
                raise dg.Failure(description=description, metadata=metadata, allow_retries=False)
            context.add_output_metadata(landed[0].metadata)
            return
        if failed:
            yield from self._landed_events(context, landed)
            raise dg.Failure(
                description=(
                    f"{len(failed)} of {len(failed) + len(landed)} batches of this run failed "
                    f"(the other {len(landed)} are stored, materialised and checked): "
                    + " | ".join(f"{key}: {why}" for key, why, _ in failed[:_NAMED])
                    + (f" | and {len(failed) - _NAMED} more" if len(failed) > _NAMED else "")
                ),
                metadata={
                    "batches_failed": dg.MetadataValue.json(
                        {key: {"reason": why, **metadata} for key, why, metadata in failed}
                    ),
                    "batches_landed": [batch.partition for batch in landed],
                },
                allow_retries=False,
            )
        # Dagster gives every partition of the range this one materialisation metadata: the
        # run's totals, and each batch's own figures under its key.
        context.add_output_metadata(_run_metadata(landed))

    def _write(
        self,
        context: dg.OutputContext,
        item: BatchOutput | RefusedBatch | EarlierBatch,
        landed: list[Landed],
        failed: list[tuple[str, str, dict[str, Any]]],
    ) -> None:
        """Write one batch of the run; keep only its figures, in `landed` or `failed`."""
        if isinstance(item, RefusedBatch):
            failed.append((item.partition_key, item.description, {}))
            return
        if isinstance(item, EarlierBatch):
            metadata = _earlier_metadata(item)
            landed.append(
                Landed(item.partition_key, item.market_group, item.markets, metadata, item.recorded)
            )
            return
        written = self._persist(context, item)
        metadata = _metadata(item, written)
        if item.failed:
            # The successful users are committed above; the partition must show failed.
            metadata["failed_users"] = failed_user_entries(item)
            failed.append((_partition(item), _failed_users_text(item, metadata), metadata))
        else:
            landed.append(Landed(_partition(item), item.market_group, item.markets, metadata))

    def _persist(self, context: dg.OutputContext, item: BatchOutput) -> BatchWrite:
        """Write the batch in its `write-batch` span, beside its `score-batch` one: the write
        is most of a batch's time, and a write that fails or is rolled back (its run
        terminated) is an ERROR there, where the scoring's span said its users succeeded."""
        engine = self.database.engine()
        traceparent = night_traceparent(context, engine, item.score_date, item.market_group)
        attributes = {
            "score_date": str(item.score_date),
            "batch": item.batch_key,
            "market_group": item.market_group,
        }
        with telemetry.step_span("write-batch", traceparent, attributes) as span:
            try:
                written = persist_batch(engine, item, run_id=context.run_id)
            except DagsterExecutionInterruptedError:
                # Not an `Exception`: the span would end unset (an error is made ERROR with
                # its message by the span itself).
                telemetry.set_error(span, "the run was terminated: the batch's write rolled back")
                raise
            if span is not None:
                span.set_attributes(
                    {
                        "write_ms": written.write_ms,
                        "asset_scores": written.rows.asset_scores,
                        "score_history": written.rows.score_history,
                        "calculation_events": written.rows.calculation_events,
                    }
                )
        return written

    def _landed_events(
        self, context: dg.OutputContext, landed: list[Landed]
    ) -> Iterator[dg.DagsterEvent]:
        """A failing run's landed batches: a materialisation of each partition with its own
        figures, then its asset checks (Dagster skips the check step of a failed step)."""
        step = context.step_context
        landed = [batch for batch in landed if not batch.earlier]
        for batch in landed:
            yield dg.DagsterEvent.asset_materialization(
                step,
                dg.AssetMaterialization(
                    asset_key=context.asset_key, partition=batch.partition, metadata=batch.metadata
                ),
            )
        for batch in landed:
            for evaluation in batch_check_evaluations(
                step.instance,
                self.database.engine(),
                context.asset_key,
                [batch.partition],
                market_group=batch.market_group,
                markets=batch.markets,
            ):
                yield dg.DagsterEvent.asset_check_evaluation(step, evaluation)

    def load_input(self, context: dg.InputContext) -> Any:
        raise NotImplementedError(
            "scores are read from the asset_scores table, not loaded as an input"
        )


def _partition(output: BatchOutput) -> str:
    return scores_partition_key(output.score_date, output.batch_key)


def _failed_users_text(output: BatchOutput, metadata: dict[str, Any]) -> str:
    failed = metadata["failed_users"]
    return (
        f"{len(output.failed)} of {len(output.users)} users of batch {output.batch_key} "
        f"({output.score_date}) failed; the others' results are stored. Failed: "
        + "; ".join(
            f"{f['userId']} at {f['stage']}: {f['error']['message']}"
            for f in failed[:10]
            if f["error"]
        )
    )


_TOTALS = ("users", "users_success", "users_failed", "users_skipped", "assets_scored")


def _run_metadata(landed: list[Landed]) -> dict[str, Any]:
    return {
        "batches_in_run": len(landed),
        **{f"run_{name}": sum(batch.metadata[name] for batch in landed) for name in _TOTALS},
        "batches": dg.MetadataValue.json({batch.partition: batch.metadata for batch in landed}),
    }


def _earlier_metadata(batch: EarlierBatch) -> dict[str, Any]:
    """A batch an earlier attempt landed: its stored figures, and the run that wrote it."""
    outcome = batch.outcome
    return {
        "users": outcome.users_total,
        "users_success": outcome.users_success,
        "users_failed": 0,
        "users_skipped": outcome.users_skipped,
        "assets_scored": outcome.assets_scored,
        "duration_ms": outcome.duration_ms,
        "landed_by_run": outcome.run_id,
    }


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
