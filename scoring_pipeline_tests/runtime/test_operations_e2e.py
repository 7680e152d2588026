"""A night operated through Dagster's real daemon, webserver (GraphQL) and Celery run workers on
PostgreSQL storage: a batch with bad users fails while the others land and get warm dashboards,
`scoring-pipeline retry-failed` re-scores exactly that batch and the night becomes `completed`;
a run worker killed mid-batch is marked failed and the night is not left `started`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from scoring_pipeline.defs.partitions import SCORES_PARTITIONS_NAME
from scoring_pipeline.runtime.dagster_api import DagsterApi
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.cli_helpers import reap
from scoring_pipeline_tests.e2e import latest_check_statuses, partition_statuses, runs, wait_for

pytestmark = [pytest.mark.db, pytest.mark.slow]

DATE = "2026-11-26"


def _uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _world(engine, files, n_users, bad=()):
    f.market(engine, "US_TECH")
    f.market(engine, "EU_IND")
    f.instrument(engine, "AAA", market="US_TECH", currency="USD", eps="2", roe="15")
    f.instrument(engine, "BBB", market="US_TECH", currency="USD", eps="1", roe="5")
    f.instrument(engine, "CCC", market="EU_IND", currency="EUR", eps="1", revenue="1000")
    f.provider_files(
        files,
        rates={"EUR": "0.5"},
        prices={"AAA": ("30", "USD"), "BBB": ("3", "USD"), "CCC": ("10", "EUR")},
        day=DATE,  # closes of the night's own date, as a provider gives them that night
    )
    good = [f.rule("pe_ratio", "lt", "15", 10), f.rule("roe", "gte", "10", 5)]
    for n in range(1, n_users + 1):
        if n in bad and n % 2:
            criteria = [("US_TECH", "stock", [f.rule("roe", "between", "9", 5, value2="1")])]
            f.user(engine, user_id=_uid(n), holdings=[("AAA", "USD")], criteria=criteria)
        elif n in bad:
            criteria = [("EU_IND", "stock", [f.rule("revenue", "gt", "10", 10)])]
            f.user(
                engine,
                user_id=_uid(n),
                base_currency="JPY",
                holdings=[("CCC", "EUR")],
                criteria=criteria,
            )
        else:
            f.user(
                engine,
                user_id=_uid(n),
                holdings=[("AAA", "USD")],
                criteria=[("US_TECH", "stock", good)],
            )


def _job(engine, job_type="scoring"):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT status, users_failed, metrics FROM overnight_job_runs "
                "WHERE score_date = :d "
                "AND job_type = :t"
            ),
            {"d": DATE, "t": job_type},
        ).first()


def _scalar(engine, sql, **params):
    with engine.connect() as conn:
        params = {"d": DATE, **params} if ":d" in sql else params
        return conn.execute(sa.text(sql), params).scalar()


def _closed(engine, statuses=("completed", "partial", "failed")):
    row = _job(engine)
    return row if row is not None and row.status in statuses else None


def _retry(services):
    env = {**services.env}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scoring_pipeline.cli",
            "retry-failed",
            "--date",
            DATE,
            "--url",
            services.url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bad_batch_fails_alone_then_retry_completes_the_night(services, clean_db):
    engine = clean_db
    # batch b0001 holds users 4, 5, 6 and b0002 users 7, 8, 9
    _world(engine, services.files, 9, bad=(5, 8))
    api = DagsterApi(services.url)
    origin = api.launch_job("overnight_snapshots_job", tags={"dagster/partition": DATE})

    job = wait_for("the night to close", lambda: _closed(engine))
    assert job.status == "partial" and job.users_failed == 2
    # The sensor scored the night's three batches in one run (SCORING_BATCHES_PER_RUN, 10).
    launched = [
        tags
        for r in runs(api, "scoring_batch_job")
        if (tags := {t["key"]: t["value"] for t in r["tags"]}).get("scoring/origin_run") == origin
    ]
    assert [
        (t.get("dagster/asset_partition_range_start"), t.get("dagster/asset_partition_range_end"))
        for t in launched
    ] == [(f"{DATE}/b0000", f"{DATE}/b0002")]
    statuses = wait_for(
        "partition statuses", lambda: s if (s := partition_statuses(api, DATE))["failed"] else None
    )
    assert statuses["failed"] == {"b0001", "b0002"}
    assert statuses["materialized"] == {"b0000"}
    # Every partition of `scores` is a batch of a real night: nothing "missing", so the UI's
    # "backfill failed and missing" with everything selected launches exactly b0001 and b0002. (This
    # Dagster instance is shared with the session's other tests, whose nights' rows are gone
    # from the application database: only the partitions of scoring nights that exist here
    # count. Not any night: this module's new daemon may warm a batch an earlier module left
    # materialised, which opens that date's `cache_warm` night here without its scoring.)
    with engine.connect() as conn:
        nights = {
            str(d)
            for d in conn.execute(
                sa.text("SELECT score_date FROM overnight_job_runs WHERE job_type = 'scoring'")
            ).scalars()
        }
    everything = {
        status: {k for k in keys if k.split("/")[0] in nights}
        for status, keys in partition_statuses(api).items()
    }
    assert everything["missing"] == set()
    assert everything["failed"] == {f"{DATE}/b0001", f"{DATE}/b0002"}
    healthy = {_uid(n) for n in (1, 2, 3, 4, 6, 7, 9)}
    warm = wait_for(
        "the healthy users' dashboards",
        lambda: w if (w := {r for r in _users_warm(engine)}) >= healthy else None,
        timeout=60,
    )
    assert warm == healthy  # the failed users have no dashboard
    with engine.connect() as conn:  # the services' sessions say whose they are
        names = set(
            conn.execute(
                sa.text(
                    "SELECT application_name FROM pg_stat_activity "
                    "WHERE datname = current_database()"
                )
            ).scalars()
        )
    assert "scoring-pipeline-dagster" in names  # the daemon's and webserver's pooled stores

    # Fix the data: valid criteria for user 5, a base currency with a rate for user 8.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE criteria_versions SET rules = jsonb_set(rules, '{0,value2}', '\"20\"') "
                "WHERE user_id = :u"
            ),
            {"u": _uid(5)},
        )
        conn.execute(
            sa.text("UPDATE users SET base_currency = 'EUR' WHERE id = :u"), {"u": _uid(8)}
        )
    retried_at = time.monotonic()
    out = _retry(services)
    assert out.startswith("backfill ") and "b0001" in out and "b0002" in out
    assert "b0000" not in out
    # Asked again at once: the batches are that backfill's (or already re-scored), never
    # launched twice (one retry run below).
    again = _retry(services)
    assert not again.startswith("backfill "), again
    assert "left to what is scoring them now" in again or "nothing to retry" in again

    job = wait_for("the retried night to complete", lambda: _closed(engine, ("completed",)))
    assert job.users_failed == 0
    # A figure for the operator (shown with pytest -s); nothing is asserted about time.
    print(f"\nretry-failed -> job run completed: {time.monotonic() - retried_at:.1f} s")
    print(f"batch landed -> its users' dashboards warm (worst): {_warm_lag(engine):.1f} s")
    statuses = wait_for(
        "every partition materialised",
        lambda: s if not (s := partition_statuses(api, DATE))["failed"] else None,
        timeout=60,
    )
    assert statuses["materialized"] == {"b0000", "b0001", "b0002"}
    for check in ("events_invariant", "history_invariant", "current_invariant"):
        checked = {k: v for k, v in latest_check_statuses(api, check).items() if k.startswith(DATE)}
        assert checked == {f"{DATE}/{b}": "SUCCEEDED" for b in ("b0000", "b0001", "b0002")}
    wait_for("every dashboard", lambda: len(_users_warm(engine)) == 9 or None, timeout=60)
    assert (
        _scalar(
            engine,
            "SELECT count(*) - count(DISTINCT (user_id, symbol)) FROM "
            "score_history WHERE score_date = :d",
        )
        == 0
    )
    sets = _event_sets(engine)
    for n in (1, 2, 3):
        assert sets[_uid(n)] == [("success", 4)]
    for n in (4, 6, 7, 9):
        assert sets[_uid(n)] == [("success", 4), ("success", 4)]  # their batch was re-scored
    assert sets[_uid(5)] == [("failed", 2), ("success", 4)]  # invalid criteria: no inputs
    assert sets[_uid(8)] == [("failed", 3), ("success", 4)]  # missing rate: inputs captured
    # The backfill scored both failed batches in one run (the asset's BackfillPolicy).
    retried = [
        tags
        for r in runs(api, "__ASSET_JOB")
        if (tags := {t["key"]: t["value"] for t in r["tags"]}).get("scoring/trigger")
        == "retry-failed"
        and tags.get("dagster/asset_partition_range_start", "").startswith(DATE)
    ]
    assert [
        (t["dagster/asset_partition_range_start"], t["dagster/asset_partition_range_end"])
        for t in retried
    ] == [(f"{DATE}/b0001", f"{DATE}/b0002")]
    _check_trace(engine, services.otlp)
    _check_service_logs(Path(services.env["DAGSTER_HOME"]) / "service-logs")


def _check_service_logs(logs: Path) -> None:
    """What an operator reads in the service logs after the night: the daemon's log names the
    runs its sensors launched without a line per sensor evaluation; a run's output in the
    worker's log is INFO, not Celery's WARNING, without Dagster's DEBUG events; no process
    repeats Dagster's beta notices or Celery's about dagster-celery's task; no line is coloured."""
    daemon = (logs / "daemon.log").read_text()
    assert "Launching run for scoring_batches_sensor" in daemon
    assert "Checking for new runs for sensor" not in daemon
    assert "skipped: " not in daemon
    # The retry's backfill: one line an iteration, not every partition key of it each time.
    assert "Evaluating asset backfill" in daemon and "Overall backfill status" not in daemon
    worker = (logs / "worker.log").read_text()
    assert "batch b0000 of " + DATE in worker  # a run's summary line
    assert "INFO/ForkPoolWorker" in worker
    # A WARNING is a warning of the night's (the bad users' base currency has no rate), not a
    # Dagster event relabelled by Celery.
    warnings = [line for line in worker.splitlines() if "WARNING/ForkPoolWorker" in line]
    assert all(f"rates for {DATE}: JPY not returned by file" in w for w in warnings), warnings
    assert "setup plugin alembic" not in worker
    assert " - dagster - DEBUG - " not in worker  # the events are in the runs' event logs
    for name in ("worker.log", "code-server.log", "daemon.log", "webserver.log"):
        text = (logs / name).read_text()
        assert "BetaWarning" not in text and "DuplicateTaskNameWarning" not in text, name
        # Plain lines in a file: no colour codes around the timestamps and levels (but for the
        # code server's gRPC child, which configures its logging apart: `runtime/plain_logs`).
        lines = text.splitlines()
        if name == "code-server.log":
            lines = [line for line in lines if "code proxy server" in line]
            assert lines, text
        coloured = [line for line in lines if "\x1b[" in line]
        assert not coloured, (name, coloured[:3])


def _check_trace(engine, otlp):
    """Spans of the night from every process (run workers, sensors) share the night's trace."""
    traceparent = _scalar(
        engine,
        "SELECT metrics->>'traceparent' FROM overnight_job_runs "
        "WHERE score_date = :d AND job_type = 'scoring'",
    )
    trace_id, root_id = traceparent.split("-")[1:3]
    roots = wait_for(
        "the night spans",
        lambda: (
            r
            if (r := [s for s in otlp.named("overnight-scoring-job") if s.trace_id == trace_id])
            and r[-1].status_code == 1
            else None
        ),
        timeout=30,
    )
    assert {r.span_id for r in roots} == {root_id}
    # partial (ERROR), again partial once the first retried batch lands (the other still
    # failed), then completed (OK)
    assert [r.status_code for r in roots] == [2, 2, 1]
    children = [s for s in otlp.spans if s.trace_id == trace_id and s.span_id != root_id]
    names = [s.name for s in children]
    assert {"active_users", "exchange_rates", "prices", "cache-warm"} <= set(names)
    assert names.count("score-batch") == 5  # three batches, then the two retried
    assert all(s.parent_span_id == root_id for s in children)


def _events_of_b0001(engine) -> int:
    """How many calculation events b0001's users (4 to 6) have."""
    return int(
        _scalar(
            engine,
            "SELECT count(*) FROM calculation_events WHERE user_id IN (:a, :b, :c)",
            a=_uid(4),
            b=_uid(5),
            c=_uid(6),
        )
    )


def _hold_the_history_key_of(engine, user: str):
    """A connection holding the advisory lock of `user`'s history key of DATE in an open
    transaction: the write of the user's batch waits on it (roll it back to let go)."""
    blocker = engine.connect()
    blocker.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(hashtextextended(CAST(:u AS text), "
            "CAST(:d AS date) - DATE '2000-01-01'))"
        ),
        {"u": user, "d": DATE},
    )
    return blocker


def test_run_worker_killed_mid_batch_is_failed_and_a_retry_finishes(
    services, clean_db, dagster_instance
):
    """The night's two batches run in one ranged run; b0000 lands, then the worker is killed
    while b0001's write waits on a lock (the history key's advisory lock of one of its users):
    run monitoring fails the run, the failure sensor counts b0001 failed and reports b0000's
    materialisation (Dagster recorded none: the run's write never ended), and a retry
    re-scores b0001 only."""
    engine = clean_db
    _world(engine, services.files, 6)  # b0000: users 1-3, b0001: users 4-6
    api = DagsterApi(services.url)
    blocker = _hold_the_history_key_of(engine, _uid(4))
    try:
        api.launch_job("overnight_snapshots_job", tags={"dagster/partition": DATE})
        app = wait_for(
            "b0001's history write to block",
            lambda: _scalar(
                engine,
                # This database's only: another deployment's worker on the same server (an
                # operator's, another test session's) must never be the one killed.
                "SELECT application_name FROM pg_stat_activity WHERE wait_event_type = "
                "'Lock' AND wait_event = 'advisory' AND pid <> pg_backend_pid() "
                "AND datname = current_database() AND application_name LIKE 'scoring-pipeline:%'",
            ),
        )
        os.kill(int(app.split(":")[1]), signal.SIGKILL)
    finally:
        blocker.rollback()
        blocker.close()

    def failed_of_the_night() -> list[dict]:
        # This night's: the session's other tests share the Dagster storage, their runs too.
        return [
            r
            for r in runs(api, "scoring_batch_job", ["FAILURE"])
            if {t["key"]: t["value"] for t in r["tags"]}.get("scoring/score_date") == DATE
        ]

    failed = wait_for(
        "the run to be marked failed", lambda: failed_of_the_night() or None, timeout=120
    )
    assert len(failed) == 1
    job = wait_for("the night to close", lambda: _closed(engine), timeout=60)
    assert job.status == "partial" and job.users_failed == 3
    assert _scalar(engine, "SELECT count(*) FROM score_history WHERE score_date = :d") == 6
    assert _events_of_b0001(engine) == 0  # the killed write left nothing
    statuses = wait_for(
        "partition statuses",
        lambda: s if (s := partition_statuses(api, DATE))["materialized"] else None,
        timeout=30,
    )
    assert statuses["materialized"] == {"b0000"} and statuses["failed"] == {"b0001"}

    # As after an upgrade from the (date x batch) partitions: the failed batch's key is not
    # registered; retry-failed registers the date's real batches before its backfill.
    dagster_instance.delete_dynamic_partition(SCORES_PARTITIONS_NAME, f"{DATE}/b0001")
    out = _retry(services)
    assert "b0001" in out and "b0000" not in out
    wait_for("the retried night to complete", lambda: _closed(engine, ("completed",)))
    assert f"{DATE}/b0001" in dagster_instance.get_dynamic_partitions(SCORES_PARTITIONS_NAME)
    sets = _event_sets(engine)
    assert sets == {_uid(n): [("success", 4)] for n in range(1, 7)}
    assert _scalar(engine, "SELECT count(*) FROM score_history WHERE score_date = :d") == 12


def _warm_lag(engine):
    """Longest wait between a batch outcome being written and its users' dashboards."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT max(extract(epoch FROM c.warmed_at - r.updated_at)) FROM dashboard_cache c "
                "JOIN scoring_batches b ON b.user_id = c.user_id AND b.score_date = c.score_date "
                "JOIN scoring_batch_results r ON r.score_date = b.score_date "
                "AND r.batch_key = b.batch_key"
            )
        ).scalar()


def _users_warm(engine):
    with engine.connect() as conn:
        return {
            str(u)
            for u in conn.execute(
                sa.text("SELECT user_id FROM dashboard_cache WHERE score_date = :d"), {"d": DATE}
            ).scalars()
        }


def _event_sets(engine):
    """Per user, in order: (CALC_COMPLETED status, number of events) of each calculation."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT user_id::text AS u, correlation_id, count(*) AS n, "
                "max(payload->>'status') FILTER (WHERE event_type = 'CALC_COMPLETED') AS status, "
                "min(id) AS first FROM calculation_events WHERE user_id IS NOT NULL "
                "GROUP BY user_id, correlation_id ORDER BY first"
            )
        ).all()
    out: dict[str, list[tuple[str, int]]] = {}
    for r in rows:
        out.setdefault(r.u, []).append((r.status, r.n))
    return out


_TERMINATE = """
mutation Terminate($runId: String!, $policy: TerminateRunPolicy) {
  terminateRun(runId: $runId, terminatePolicy: $policy) {
    __typename
    ... on PythonError { message }
  }
}
"""
_WAITING_ON_ADVISORY_LOCK = (
    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
    "AND wait_event = 'advisory' AND pid <> pg_backend_pid() AND datname = current_database()"
)
_RUN_STATUS = """
query Status($runId: ID!) { runOrError(runId: $runId) { ... on Run { status } } }
"""
_FROM_FAILURE = """
mutation Reexecute($runId: String!) {
  launchPipelineReexecution(reexecutionParams: {parentRunId: $runId, strategy: FROM_FAILURE}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""


def _re_executed_from_failure(api: DagsterApi, run_id: str) -> None:
    """Re-execute the run from failure as the UI does, and wait for that run to succeed."""
    answer = api.query(_FROM_FAILURE, {"runId": run_id})
    launched = answer["launchPipelineReexecution"]
    assert launched["__typename"] == "LaunchRunSuccess", answer
    child = launched["run"]["runId"]
    wait_for(
        "the re-execution to succeed",
        lambda: (
            api.query(_RUN_STATUS, {"runId": child})["runOrError"]["status"] == "SUCCESS" or None
        ),
    )


@pytest.mark.parametrize("policy", ["SAFE_TERMINATE", "MARK_AS_CANCELED_IMMEDIATELY"])
def test_a_batch_run_terminated_from_the_ui_stops_and_a_retry_scores_it_once(
    services, clean_db, policy
):
    """The UI's Terminate (and its "Force termination immediately") while a batch run waits in
    its write: the run worker stops the run, so it neither lands nor turns SUCCESS after it was
    marked canceled, and a retry scores its users once: `retry-failed` after the one, the run
    page's "Re-execute from failure" after the other, which scores the batch the run did not
    land and keeps the one it did. Before, dagster-celery's revoke never reached the worker on
    the PostgreSQL broker: Terminate did nothing, and a forced one left the run writing while a
    retry scored the same users again (an operator review)."""
    engine = clean_db
    _world(engine, services.files, 6)  # b0000: users 1-3, b0001: users 4-6
    api = DagsterApi(services.url)
    spans_before = len(services.otlp.spans)
    blocker = _hold_the_history_key_of(engine, _uid(4))
    try:
        api.launch_job("overnight_snapshots_job", tags={"dagster/partition": DATE})
        wait_for(
            "b0001's history write to block",
            lambda: _scalar(engine, _WAITING_ON_ADVISORY_LOCK),
        )
        (run,) = [
            r
            for r in runs(api, "scoring_batch_job", ["STARTED"])
            if {t["key"]: t["value"] for t in r["tags"]}.get("scoring/score_date") == DATE
        ]
        answer = api.query(_TERMINATE, {"runId": run["runId"], "policy": policy})
        assert answer["terminateRun"]["__typename"] == "TerminateRunSuccess", answer

        def status() -> str:
            return str(api.query(_RUN_STATUS, {"runId": run["runId"]})["runOrError"]["status"])

        wait_for("the run to be canceled", lambda: status() == "CANCELED", timeout=60)
        # A forced termination marks the run CANCELED at once: its worker then stops it, and
        # the write waiting on the lock goes, before the lock is let go.
        wait_for(
            "the run's blocked write to be stopped",
            lambda: not _scalar(engine, _WAITING_ON_ADVISORY_LOCK),
            timeout=30,
        )
    finally:
        blocker.rollback()
        blocker.close()
    # Its write had begun: once it may go on, nothing of it lands and the run stays canceled.
    wait_for(
        "the run's write to end",
        lambda: (
            not _scalar(
                engine,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'active' AND query ILIKE '%score_history%' "
                "AND pid <> pg_backend_pid()",
            )
        ),
        timeout=30,
    )
    time.sleep(2)  # what a run still going would write now
    assert status() == "CANCELED"
    assert _events_of_b0001(engine) == 0
    # The trace says so: the batch's `write-batch` span is an ERROR (its `score-batch` span,
    # ended before the write, says its users succeeded; there was no span of the write).
    stopped = wait_for(
        "the terminated write's span",
        lambda: (
            [
                s
                for s in services.otlp.spans[spans_before:]
                if s.name == "write-batch" and s.attributes.get("batch") == "b0001"
            ]
            or None
        ),
        timeout=30,
    )
    assert [(s.status_code, s.status_message) for s in stopped] == [
        (2, "the run was terminated: the batch's write rolled back")
    ]
    job = wait_for("the night to close", lambda: _closed(engine), timeout=60)
    assert job.status == "partial" and job.users_failed == 3

    if policy == "SAFE_TERMINATE":
        out = _retry(services)
        assert "b0001" in out and "b0000" not in out
    else:
        _re_executed_from_failure(api, run["runId"])
    wait_for("the retried night to complete", lambda: _closed(engine, ("completed",)))
    assert _event_sets(engine) == {_uid(n): [("success", 4)] for n in range(1, 7)}
    statuses = wait_for(
        "both partitions materialised",
        lambda: s if not (s := partition_statuses(api, DATE))["failed"] else None,
        timeout=60,
    )
    assert statuses["materialized"] == {"b0000", "b0001"}
    # The night's last runs (its dashboards) done before the next test empties the tables.
    wait_for("every dashboard warm", lambda: len(_users_warm(engine)) == 6, timeout=60)


def test_a_failed_batch_run_of_score_is_re_executed_from_failure_in_the_ui(services, clean_db):
    """A night run with `scoring-pipeline score` (its runs executed in the command's process)
    beside the services: its failed batch run is re-executed from failure as the UI does it
    (run page, or the Runs page's bulk action), once the user's criteria are mended. Before,
    Dagster refused with "CheckError: Expected non-None value: None": the command's runs named
    no code location to launch a re-execution from (an operator review)."""
    engine = clean_db
    _world(engine, services.files, 6, bad=(5,))  # b0001: users 4, 5 (bad), 6
    proc = subprocess.run(
        [sys.executable, "-m", "scoring_pipeline.cli", "score", "--date", DATE],
        env=services.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "job status      partial" in proc.stdout, proc.stdout + proc.stderr
    api = DagsterApi(services.url)
    (failed,) = [
        r
        for r in runs(api, "scoring_batch_job", ["FAILURE"])
        if {t["key"]: t["value"] for t in r["tags"]}.get("dagster/partition") == f"{DATE}/b0001"
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE criteria_versions SET rules = CAST(:r AS jsonb) WHERE user_id = :u"),
            {"r": json.dumps([f.rule("pe_ratio", "lt", "15", 10)]), "u": _uid(5)},
        )
    _re_executed_from_failure(api, failed["runId"])
    job = wait_for("the night to complete", lambda: _closed(engine, ("completed",)))
    assert job.users_failed == 0
    # b0001 scored again (it had not landed with every user), b0000 kept.
    sets = _event_sets(engine)
    assert sets[_uid(5)] == [("failed", 2), ("success", 4)]
    assert {n: len(sets[_uid(n)]) for n in range(1, 7)} == {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2}
    wait_for("every dashboard warm", lambda: len(_users_warm(engine)) == 6, timeout=60)


def test_a_run_of_a_killed_score_failed_by_run_monitoring_is_re_executed_in_the_ui(
    services, clean_db
):
    """`score` killed (SIGKILL) while b0001's write waits, with the services running and no
    next `score`: run monitoring fails that run, and the UI re-executes it from failure. Before,
    a run failed that way named no code location, and Dagster refused to re-execute it
    ("CheckError: Expected non-None value: None"); only the next `score` recorded one."""
    engine = clean_db
    _world(engine, services.files, 6)  # b0000: users 1-3, b0001: users 4-6
    api = DagsterApi(services.url)
    blocker = _hold_the_history_key_of(engine, _uid(4))
    command = [sys.executable, "-m", "scoring_pipeline.cli", "score", "--date", DATE]
    proc = subprocess.Popen(
        command, env=services.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(
            "b0001's history write to block",
            lambda: (
                _scalar(
                    engine,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND wait_event = 'advisory' AND pid <> pg_backend_pid() "
                    "AND datname = current_database()",
                )
                or None
            ),
        )
        proc.kill()
        proc.wait(timeout=60)
    finally:
        blocker.rollback()
        blocker.close()
        reap(proc)

    def failed_b0001() -> list[dict]:
        return [
            r
            for r in runs(api, "scoring_batch_job", ["FAILURE"])
            if {t["key"]: t["value"] for t in r["tags"]}.get("dagster/partition") == f"{DATE}/b0001"
        ]

    (failed,) = wait_for("run monitoring to fail the run", lambda: failed_b0001() or None)
    assert _events_of_b0001(engine) == 0  # the killed write left nothing
    _re_executed_from_failure(api, failed["runId"])
    job = wait_for("the night to complete", lambda: _closed(engine, ("completed",)))
    assert job.users_failed == 0
    assert _event_sets(engine) == {_uid(n): [("success", 4)] for n in range(1, 7)}
    wait_for("every dashboard warm", lambda: len(_users_warm(engine)) == 6, timeout=60)


def test_the_ui_opens_on_no_newsletter_dialog(services):
    """Dagster's first-visit dialog ("Join the Dagster community", an e-mail field for its
    newsletter) covered the run page an operator opened in a fresh browser (a UI review)."""
    api = DagsterApi(services.url)
    assert api.query("query { shouldShowNux }", {}) == {"shouldShowNux": False}
