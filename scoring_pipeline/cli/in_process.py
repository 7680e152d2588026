"""The `score` command's in-process runner: a score date's whole night through the Dagster
definitions, launched from this process.

`scoring-pipeline score` uses it: the same jobs the schedule and sensor launch (snapshots, then
one run per batch partition), executed in-process on the configured Dagster instance so every run
shows in the UI with its partition. Batches run one after another; a batch whose step died
without writing an outcome is recorded as failed so the night never stays `started`.
"""

import datetime as dt
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster._core.errors import DagsterExecutionInterruptedError

from scoring_pipeline import telemetry
from scoring_pipeline.cli.status import failed_user_line
from scoring_pipeline.defs.partitions import scores_partition_key
from scoring_pipeline.defs.step_errors import step_failure
from scoring_pipeline.errors import ConfigurationError, NightInProgressError
from scoring_pipeline.runtime.run_launcher import (
    CLI_TRIGGER,
    TRIGGER_TAG,
    WORKER_TAG,
    executed_by_score,
    record_code_location_origin,
    worker_gone,
    worker_identity,
)
from scoring_pipeline.store.db import create_engine_for, prepare_dagster_environment
from scoring_pipeline.store.membership import load_membership
from scoring_pipeline.store.night.closing import close_night, failed_users
from scoring_pipeline.store.night.model import (
    ALL_MARKETS,
    Night,
    NightStatus,
    find_night,
    group_option,
)
from scoring_pipeline.store.night.outcomes import record_batch_run_died, record_snapshots_run_died
from scoring_pipeline.store.night.root_span import (
    emit_root_span,
    reports_of,
    send_pending_root_spans,
)

SNAPSHOT_ASSETS = ("active_users", "exchange_rates", "prices")


def _op_name(asset: str, group: str) -> str:
    """The op of a snapshot asset in a group's job (`us__prices` for `us/prices`)."""
    return asset if group == ALL_MARKETS or asset != "prices" else f"{group}__{asset}"


@dataclass
class NightSummary:
    score_date: dt.date
    status: str
    market_group: str = ALL_MARKETS
    users_total: int = 0
    users_success: int = 0
    users_failed: int = 0
    users_skipped: int = 0
    assets_scored: int = 0
    batches_total: int = 0
    batches_failed: int = 0
    stages_ms: dict[str, int] = field(default_factory=dict)
    duration_ms: int = 0
    failed_users: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    run_ids: list[str] = field(default_factory=list)
    # Stopped by Ctrl-C or SIGTERM: the batch in flight was rolled back and no later one ran.
    interrupted: bool = False

    def lines(self) -> list[str]:
        out = [
            f"score date      {self.score_date}",
            f"market group    {self.market_group}",
            f"job status      {self.status}",
            f"users total     {self.users_total}",
            f"users success   {self.users_success}",
            f"users failed    {self.users_failed}",
            f"users skipped   {self.users_skipped}",
            f"assets scored   {self.assets_scored}",
            f"batches         {self._batches()}",
            f"duration        {self.duration_ms / 1000:.1f} s ("
            + ", ".join(f"{k} {v / 1000:.1f} s" for k, v in self.stages_ms.items())
            + ")",
        ]
        if self.error:
            out.append(f"error           {self.error}")
        out.extend(failed_user_line(failure) for failure in self.failed_users[:20])
        if self.users_failed > 20:
            # Only the first 20 are listed: an interrupted 20,000-user night has thousands.
            only = group_option(self.market_group)
            out.append(
                f"  … and {self.users_failed - 20:,} more failed users (`scoring-pipeline status "
                f"--date {self.score_date}{only}`)"
            )
        return out

    def _batches(self) -> str:
        if self.error and not (self.users_success or self.users_failed):
            return f"{self.batches_total} (none scored: the night failed before its batches)"
        return f"{self.batches_total} ({self.batches_failed} failed)"


INTERRUPTED = "interrupted: scoring-pipeline score was stopped (Ctrl-C or SIGTERM)"


class _StopRequests:
    """Ctrl-C and SIGTERM received while a night runs in this process.

    Dagster takes SIGINT (and SIGTERM) over while it executes a run: a signal during a step
    interrupts the step, and one outside the step's own code (its IO manager's write, the
    run's own events) is noted, then forgotten when the run ends. The command went on with the
    next batch either way, so Ctrl-C never stopped it. Here every such signal is seen: the
    interpreter writes each signal's number to the wakeup socket whatever Python handler is
    installed, and between runs this handler notes it."""

    def __init__(self) -> None:
        self.received = False
        self._active = threading.current_thread() is threading.main_thread()
        self._reader, self._writer = socket.socketpair()
        for end in (self._reader, self._writer):
            end.setblocking(False)
        self._handlers: dict[int, Any] = {}
        self._wakeup = -1
        self._unraisable = sys.unraisablehook

    def __enter__(self) -> "_StopRequests":
        if self._active:  # signal handlers belong to the main thread
            self._wakeup = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._handlers[signum] = signal.signal(signum, self._note)
        self._unraisable = sys.unraisablehook
        sys.unraisablehook = self._unraisable_interrupt
        return self

    def _unraisable_interrupt(self, unraisable: Any) -> None:
        """Dagster's handler raises its interrupt wherever the signal lands; inside a weakref
        callback or a finaliser Python cannot raise it and prints "Exception ignored in …" with
        a traceback. The signal is seen anyway (the wakeup socket): not printed."""
        if isinstance(unraisable.exc_value, KeyboardInterrupt | DagsterExecutionInterruptedError):
            self.received = True
            return
        self._unraisable(unraisable)

    def _note(self, signum: int, frame: object) -> None:
        self.received = True

    def requested(self) -> bool:
        """Whether Ctrl-C or SIGTERM has come since the night started."""
        try:
            while data := self._reader.recv(256):
                self.received |= signal.SIGINT in data or signal.SIGTERM in data
        except BlockingIOError:
            pass
        return self.received

    def __exit__(self, *exc: object) -> None:
        sys.unraisablehook = self._unraisable
        if self._active:
            for signum, handler in self._handlers.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(self._wakeup)
        self._reader.close()
        self._writer.close()


def earlier_night_line(night: Night) -> str:
    """What `score --date D` found of the date's night before it scores it again: a second run
    after a stopped or failed one said nothing of it, and re-scored every batch."""
    m = night.metrics or {}
    scored = f"{int(m.get('users_success') or 0):,} of {int(m.get('users_total') or 0):,} users"
    batches = f"{int(m.get('batches_failed') or 0):,} of {int(m.get('batches_total') or 0):,}"
    started = f"{night.started_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
    only = group_option(night.market_group)
    found = f"found the night of {night.score_date} ({night.market_group}), started {started}: "
    if night.status is NightStatus.STARTED:
        return found + f"not closed, {scored} scored so far; scoring it again"
    line = found + f"{night.status.value}, {scored} scored, {batches} batches failed; "
    if night.status is NightStatus.COMPLETED:
        return line + "scoring every batch again"
    return line + (
        "scoring every batch again (`scoring-pipeline retry-failed --date "
        f"{night.score_date}{only}` re-scores only the failed ones, through the services)"
    )


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run stopped because this process was interrupted: Dagster turns Ctrl-C in
    a step into a failed step (DagsterExecutionInterruptedError) and returns, so a loop of runs
    would go on with the next one."""
    for event in result.all_events:
        data = event.step_failure_data if event.is_step_failure else None
        error = data.error if data is not None else None
        while error is not None:
            if error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                return True
            error = error.cause
    return False


def _step_errors(result: dg.ExecuteInProcessResult, *, stage: bool = True) -> str:
    """Each failed step's error: a `dg.Failure`'s own description, else the error's cause;
    `stage STEP: ` before each unless `stage` is False."""
    messages = [m for e in result.all_events if (m := step_failure(e, stage=stage)) is not None]
    return "; ".join(messages) or "the run failed"


# The CLI prints its own progress and summary, the steps' errors included (`_step_errors`):
# Dagster's console logger prints only what would stop the process. At ERROR it printed each
# failed step and run again with their stack traces (~65 lines for one refused step).
_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class Refresh:
    """What a night's snapshots run fetches again (`score --refresh`): its group's prices, and
    the date's shared rates and membership unless not `shared` (a later group of one command);
    `every_group`: the membership is recomputed though other groups' nights of the date use it,
    since the command re-scores every group's night after it."""

    shared: bool = True
    every_group: bool = False


def refresh_plan(refresh: bool, groups: int, every_group: bool) -> list[Refresh | None]:
    """Each group's `Refresh` of one `score` command over `groups` groups (every configured
    group when `every_group`): the shared inputs are fetched again once, by the first."""
    if not refresh:
        return [None] * groups
    return [Refresh(shared=i == 0, every_group=every_group and i == 0) for i in range(groups)]


def snapshot_run_config(refresh: Refresh | None, group: str) -> dict[str, Any]:
    if refresh is None:
        return dict(_QUIET)
    assets = SNAPSHOT_ASSETS if refresh.shared else ("prices",)
    ops: dict[str, Any] = {_op_name(name, group): {"config": {"refresh": True}} for name in assets}
    if refresh.every_group:
        ops["active_users"]["config"]["replace_membership"] = True
    return {**_QUIET, "ops": ops}


def own_by_code_location(instance: dg.DagsterInstance, run_id: str) -> None:
    """Record the code location as the origin of a run this process executed, once the run
    has ended (`run_launcher.record_code_location_origin`: so the UI can re-execute it)."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.is_finished:
        record_code_location_origin(instance, run)


def fail_runs_of_killed_commands(instance: dg.DagsterInstance) -> None:
    """Fail the runs an earlier `score` left STARTED when it was killed (SIGKILL, a lost
    session): what run monitoring does when the services run (`run_launcher`'s health check of
    a run's own process). Without the services nothing did, and the night's next `score` was
    refused for good: "its batches are being scored (run R …) … Wait until that ends". Only
    the runs of a process on this host that is gone; a `warning:` line on stderr names each."""
    filters = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags={TRIGGER_TAG: CLI_TRIGGER})
    for run in instance.get_runs(filters=filters):
        if not executed_by_score(run):
            continue  # a re-execution of one from the UI: run monitoring watches its worker
        gone = worker_gone(run.tags.get(WORKER_TAG))
        if gone is None:
            continue
        partition = run.tags.get("dagster/partition", "")
        instance.report_run_failed(
            run, f"{gone} (the in-process run of `scoring-pipeline score`, killed)"
        )
        own_by_code_location(instance, run.run_id)
        print(
            f"warning: failed the run {run.run_id} ({run.job_name} {partition}) whose "
            f"`scoring-pipeline score` is gone: {gone}",
            file=sys.stderr,
        )


def run_night(
    score_date: dt.date,
    *,
    refresh: Refresh | None = None,
    echo: Callable[[str], None] | None = None,
    group: str = ALL_MARKETS,
) -> NightSummary:
    """Run a group's snapshots then every batch of the date; return the night's summary.

    Ctrl-C or SIGTERM stops it after the run in flight (a batch interrupted in its step is
    rolled back): the batches not scored count as failed and the night closes, `interrupted`."""
    with _StopRequests() as stop:
        return _run_night(score_date, refresh, say=echo or (lambda _: None), group=group, stop=stop)


def _run_night(
    score_date: dt.date,
    refresh: Refresh | None,
    *,
    say: Callable[[str], None],
    group: str,
    stop: _StopRequests,
) -> NightSummary:
    from scoring_pipeline.definitions import defs
    from scoring_pipeline.defs.job_names import BATCH_JOB, SNAPSHOTS_JOB
    from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUP

    def job_name(name: str) -> str:
        return name if group == DEFAULT_GROUP else f"{group}_{name}"

    url = prepare_dagster_environment()
    engine = create_engine_for(url)
    definitions = defs()
    instance = dg.DagsterInstance.get()
    fail_runs_of_killed_commands(instance)
    started = time.perf_counter()
    stages: dict[str, int] = {}
    run_ids: list[str] = []
    date_key = score_date.isoformat()
    tags = {
        "scoring/score_date": date_key,
        TRIGGER_TAG: CLI_TRIGGER,
        telemetry.TRACEPARENT: telemetry.new_traceparent(),
        # This process executes the runs: run monitoring fails them if it dies mid-run.
        WORKER_TAG: worker_identity(),
    }

    snapshots_job = definitions.resolve_job_def(job_name(SNAPSHOTS_JOB))
    dates = snapshots_job.partitions_def
    if dates is not None and not dates.has_partition_key(date_key):
        keys = dates.get_partition_keys()
        raise ConfigurationError(
            f"--date {date_key}: not a score date (they run from {keys[0]} to {keys[-1]})"
        )
    with engine.connect() as conn:
        earlier = find_night(conn, score_date, market_group=group)
    if earlier is not None:
        say(earlier_night_line(earlier))
    say(f"freezing the inputs of {date_key} for group {group} (users, rates, prices)…")
    snapshot = snapshots_job.execute_in_process(
        partition_key=date_key,
        instance=instance,
        run_config=snapshot_run_config(refresh, group),
        raise_on_error=False,
        tags=tags,
    )
    run_ids.append(snapshot.run_id)
    own_by_code_location(instance, snapshot.run_id)
    stages["snapshots"] = int((time.perf_counter() - started) * 1000)
    if not snapshot.success:
        stopped = _interrupted(snapshot)
        interrupted = stopped or stop.requested()
        error = INTERRUPTED if stopped else _step_errors(snapshot)
        with engine.begin() as conn:
            record_snapshots_run_died(
                conn, score_date, error, run_id=snapshot.run_id, market_group=group
            )
            night = find_night(conn, score_date, market_group=group)
        if night is not None and night.snapshot_run_id != snapshot.run_id:
            # Refused before it started the night (another run is starting or scoring it): the
            # night's row is that run's, not a summary of this command's.
            refusal = _step_errors(snapshot, stage=False)  # the refusal says where it is
            raise NightInProgressError(f"{date_key} was not scored: {refusal}")
        emit_root_span(engine, score_date, market_group=group)
        _send_pending_reports(engine, score_date, group, say)
        summary = _summary(engine, score_date, group, stages, started, run_ids, error=error)
        summary.interrupted = interrupted
        return summary

    with engine.connect() as conn:
        batches = load_membership(conn, score_date).batch_keys
    batch_job = definitions.resolve_job_def(job_name(BATCH_JOB))
    scoring_started = time.perf_counter()
    interrupted = stop.requested()  # after the snapshots: none of the batches is scored
    if interrupted:
        with engine.begin() as conn:
            _count_not_scored(conn, score_date, batches, snapshot.run_id, group)
    for index, batch in enumerate(batches if not interrupted else [], start=1):
        result = batch_job.execute_in_process(
            partition_key=scores_partition_key(date_key, batch),
            instance=instance,
            run_config=_QUIET,
            raise_on_error=False,
            tags=tags,
        )
        run_ids.append(result.run_id)
        own_by_code_location(instance, result.run_id)
        interrupted = _interrupted(result) or stop.requested()
        if not result.success or interrupted:
            with engine.begin() as conn:
                if not result.success:
                    # A stop that landed in the IO manager's write reads as the step's own
                    # failure ("the run was terminated…"): its users were stopped all the same.
                    error = INTERRUPTED if interrupted else _step_errors(result)
                    record_batch_run_died(
                        conn, score_date, batch, result.run_id, error, market_group=group
                    )
                if interrupted:
                    _count_not_scored(conn, score_date, batches[index:], result.run_id, group)
        if interrupted:
            say(f"interrupted at batch {index}/{len(batches)}: the later batches not scored")
            break
        if index % 10 == 0 or index == len(batches):
            say(f"scored {index}/{len(batches)} batches")
    stages["scoring"] = int((time.perf_counter() - scoring_started) * 1000)
    with engine.begin() as conn:
        close_night(conn, score_date, market_group=group)
    emit_root_span(engine, score_date, market_group=group)
    _send_pending_reports(engine, score_date, group, say)
    summary = _summary(engine, score_date, group, stages, started, run_ids)
    summary.interrupted = interrupted
    return summary


def _send_pending_reports(
    engine: sa.Engine, score_date: dt.date, group: str, say: Callable[[str], None]
) -> None:
    """Send the reports (root spans) of earlier nights that the collector did not take when
    they closed, as the services' `night_report_sensor` does: where `score` alone runs the
    nights, they go out with the next one's, or stay pending while the collector fails."""
    earlier = [
        (day, g)
        for day, g in send_pending_root_spans(engine).sent
        if (day, g) != (score_date, group)
    ]
    if earlier:
        say(f"sent {reports_of(earlier)}, which the collector had not taken")


def _count_not_scored(
    conn: sa.Connection, score_date: dt.date, batches: list[str], run_id: str, group: str
) -> None:
    """Batches an interrupted `score` did not get to count as failed (one that had succeeded
    before keeps that success), so the night closes and `retry-failed` re-scores them."""
    for batch in batches:
        record_batch_run_died(
            conn,
            score_date,
            batch,
            run_id,
            f"not scored: {INTERRUPTED} before this batch",
            market_group=group,
        )


def _summary(
    engine: sa.Engine,
    score_date: dt.date,
    group: str,
    stages: dict[str, int],
    started: float,
    run_ids: list[str],
    error: str | None = None,
) -> NightSummary:
    with engine.connect() as conn:
        night = find_night(conn, score_date, market_group=group)
        failed = failed_users(conn, score_date, market_group=group)
    metrics = night.metrics if night is not None else {}
    return NightSummary(
        score_date=score_date,
        market_group=group,
        status=night.status.value if night is not None else "failed",
        users_total=int(metrics.get("users_total", 0)),
        users_success=int(metrics.get("users_success", 0)),
        users_failed=int(metrics.get("users_failed", 0)),
        users_skipped=int(metrics.get("users_skipped", 0))
        + int(metrics.get("users_skipped_no_criteria", 0)),
        assets_scored=int(metrics.get("assets_scored", 0)),
        batches_total=int(metrics.get("batches_total", 0)),
        batches_failed=int(metrics.get("batches_failed", 0)),
        stages_ms=stages,
        duration_ms=int((time.perf_counter() - started) * 1000),
        failed_users=failed,
        error=error,
        run_ids=run_ids,
    )
