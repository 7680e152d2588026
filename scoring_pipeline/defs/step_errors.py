"""What a failed step raised, in one line: the error itself, not Dagster's wrapper of it.

The `score` command's summary and the failure sensor's record of a batch whose run died both
say it, so that an operator reads the cause (a provider down, a database error) rather than
"Error occurred while executing op" or "Steps failed: ['scores']"."""

import re
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from dagster_shared.error import SerializableErrorInfo


def error_cause(error: "SerializableErrorInfo") -> str:
    """The error a step raised, not Dagster's wrapper of it ("Error occurred while executing
    op …"): the project's own errors by their message, as the night records it; any other as
    `ClassName: message`. Its first line only."""
    retries = ""
    while error.cls_name in _WRAPPERS and error.cause is not None:
        tries = re.search(r"max_retries of (\d+)", error.message)
        if tries:  # RetryRequestedFromPolicy's "Exceeded max_retries of 3"
            retries = f" (tried {int(tries.group(1)) + 1} times)"
        error = error.cause
    message = (error.message.strip().splitlines() or [""])[0]
    # SerializableErrorInfo names the class with its module: "a.b.ProviderUnavailable: …".
    qualified, sep, rest = message.partition(": ")
    if sep and error.cls_name and qualified.endswith("." + error.cls_name):
        message = rest if qualified.startswith("scoring_pipeline.") else f"{error.cls_name}: {rest}"
    return message + retries + _what_to_do(message)


# Dagster's wrappers of what a step raised: its execution error, and the error of a step that
# failed every try of its retry policy ("Exceeded max_retries of 3", the cause under it: every
# batch whose write the database kept refusing read only that).
_WRAPPERS = ("DagsterExecutionStepExecutionError", "RetryRequestedFromPolicy")


def _what_to_do(message: str) -> str:
    """What to do about a database error whose cause is a setting of the server's."""
    if "canceling statement due to statement timeout" in message:
        return (
            "; the server's statement_timeout for this role or database is shorter than the "
            "batch's write: raise it (ALTER ROLE … SET statement_timeout) or lower "
            "SCORING_BATCH_SIZE"
        )
    if "canceling statement due to lock timeout" in message:
        return (
            "; the server's lock_timeout for this role or database ended the write's wait for "
            "another session's lock: see who holds it (pg_locks), or raise lock_timeout"
        )
    return ""


def step_failure(event: dg.DagsterEvent, *, stage: bool = True) -> str | None:
    """`stage STEP: cause` of a STEP_FAILURE event (the cause alone unless `stage`), or None
    for another event."""
    if not event.is_step_failure or event.step_failure_data is None:
        return None
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        cause = data.user_failure_data.description.strip()
    else:
        cause = error_cause(data.error) if data.error else "failed"
    return f"stage {event.step_key}: {cause}" if stage and event.step_key else cause


def last_step_failure(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The run's last step failure, as `step_failure` says it (None when no step failed: a
    worker killed, a run cancelled)."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.STEP_FAILURE, ascending=False, limit=1
    ).records
    event = records[0].event_log_entry.dagster_event if records else None
    return step_failure(event) if event is not None else None
