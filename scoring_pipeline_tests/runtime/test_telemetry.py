"""Tracing of a night (SPEC §7): the `overnight-scoring-job` span and its children received over
OTLP/HTTP by a local receiver that decodes the protobuf; nothing is set up without an exporter."""

import logging
import socket
import subprocess
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from scoring_pipeline import telemetry
from scoring_pipeline.definitions import defs
from scoring_pipeline.defs.assets.snapshot import BACKFILL_TAG
from scoring_pipeline.defs.deployment import build_resources
from scoring_pipeline.defs.partitions import scores_partition_key
from scoring_pipeline.defs.sensors import night_report_sensor
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.cli_helpers import run, started, summary_value
from scoring_pipeline_tests.scenario import batch, forget_night_keys, rules, snapshots

pytestmark = [pytest.mark.db, pytest.mark.slow]

DATE = "2026-11-27"
NAMED = (
    "fetch_rates_ms",
    "users_total",
    "users_success",
    "users_failed",
    "total_duration_ms",
    "assets_scored",
    "score_date",
    "fetch_prices_ms",
    "process_users_ms",
    "batches_total",
    "batches_failed",
)


def test_no_exporter_means_no_tracing(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not telemetry.enabled()
    with telemetry.step_span("x", telemetry.new_traceparent()) as span:
        assert span is None
    assert not telemetry.emit_night_span(
        telemetry.new_traceparent(), start_ns=1, end_ns=2, attributes={}, ok=True, description=""
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not telemetry.enabled()


def _night(cli_env, otlp_receiver, tmp_path, users):
    env = {
        **cli_env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url,
        "OTEL_SERVICE_NAME": "scoring-pipeline-test",
        "SCORING_BATCH_SIZE": "20",
    }
    run(env, "migrate")
    run(env, "demo-data", "--users", str(users), "--seed", "3", "--out", str(tmp_path / "demo"))
    return env


def test_night_span_with_children_over_otlp(cli_env, clean_db, otlp_receiver, tmp_path):
    env = _night(cli_env, otlp_receiver, tmp_path, 45)
    run(env, "score", "--date", DATE)
    roots = otlp_receiver.named(telemetry.ROOT_SPAN)
    assert len(roots) == 1
    root = roots[0]
    assert root.parent_span_id == "" and root.service_name == "scoring-pipeline-test"
    assert set(NAMED) <= set(root.attributes)
    assert root.attributes["score_date"] == DATE
    assert root.attributes["users_total"] == root.attributes["users_success"] > 0
    assert root.attributes["users_failed"] == 0 and root.attributes["batches_total"] == 3
    assert root.status_code == 1  # OK
    children = [s for s in otlp_receiver.spans if s.name != telemetry.ROOT_SPAN]
    assert {s.name for s in children} >= {"active_users", "exchange_rates", "prices", "score-batch"}
    assert len([s for s in children if s.name == "score-batch"]) == 3
    # Each batch's write, most of its time, has its own span beside its scoring's.
    writes = [s for s in children if s.name == "write-batch"]
    assert sorted(s.attributes["batch"] for s in writes) == ["b0000", "b0001", "b0002"]
    assert sum(s.attributes["asset_scores"] for s in writes) == root.attributes["assets_scored"]
    assert all(s.status_code == 0 and s.attributes["write_ms"] >= 0 for s in writes)
    for child in children:
        assert child.trace_id == root.trace_id
        assert child.parent_span_id == root.span_id
    # The root span is built by hand: it had no instrumentation scope (an empty name, which
    # the OpenTelemetry specification calls invalid), its children the tracer's.
    assert {s.scope_name for s in otlp_receiver.spans} == {telemetry.SCOPE}
    with clean_db.connect() as conn:
        traceparent = conn.execute(
            sa.text("SELECT metrics->>'traceparent' FROM overnight_job_runs")
        ).scalar_one()
    assert traceparent.split("-")[1:3] == [root.trace_id, root.span_id]


def test_failed_users_make_the_night_span_an_error(cli_env, clean_db, otlp_receiver, tmp_path):
    env = _night(cli_env, otlp_receiver, tmp_path, 10)
    with clean_db.begin() as conn:
        conn.execute(
            sa.text(
                'UPDATE criteria_versions SET rules = \'[{"id": "r1", "metric": "nope", '
                '"operator": "gt", "value": "1", "points": 1}]\' WHERE id = '
                "(SELECT id FROM criteria_versions ORDER BY id LIMIT 1)"
            )
        )
    proc = run(env, "score", "--date", DATE)
    assert "partial" in proc.stdout
    (root,) = otlp_receiver.named(telemetry.ROOT_SPAN)
    assert root.status_code == 2  # ERROR
    assert "1 users" in root.status_message and root.attributes["users_failed"] == 1
    # The failed user's batch is an ERROR too (it was unset, like the batches that succeeded).
    batches = otlp_receiver.named("score-batch")
    failed = [s for s in batches if s.status_code == 2]
    assert len(failed) == 1, [(s.attributes, s.status_code) for s in batches]
    assert failed[0].attributes["users_failed"] == 1
    assert failed[0].status_message.startswith("1 of "), failed[0].status_message
    assert "stage criteria_validation" in failed[0].status_message


def test_a_night_failed_before_scoring_reports_its_duration(
    cli_env, clean_db, otlp_receiver, tmp_path
):
    # The rates provider's file is gone and no earlier snapshot can stand in: the night fails
    # at its rates step. Its span said `total_duration_ms` 0 (and `metrics` had none) while the
    # span itself, and `status`, gave the night its real time. The prices step, next, takes
    # the date's prices: its `fetch_prices_ms` reached `metrics` but the span, emitted when
    # the rates failed, said 0; it is emitted again with it.
    env = _night(cli_env, otlp_receiver, tmp_path, 10)
    (tmp_path / "demo" / "rates.json").unlink()
    proc = run(env, "score", "--date", DATE, check=False)
    assert summary_value(proc.stdout, "job status") == "failed", proc.stdout
    root = _latest_root(otlp_receiver)
    assert root.status_code == 2 and root.attributes["job_status"] == "failed"
    assert set(NAMED) <= set(root.attributes), sorted(root.attributes)
    with clean_db.connect() as conn:
        night = conn.execute(
            sa.text(
                "SELECT (metrics->>'total_duration_ms')::int AS recorded, "
                "floor(extract(epoch FROM completed_at - started_at) * 1000)::int AS lasted, "
                "(metrics->>'fetch_prices_ms')::int AS prices_ms FROM overnight_job_runs"
            )
        ).one()
    assert night.lasted > 0
    assert night.recorded == night.lasted
    assert root.attributes["total_duration_ms"] == night.lasted
    assert night.prices_ms is not None and night.prices_ms > 0
    assert root.attributes["fetch_prices_ms"] == night.prices_ms


def test_a_write_that_fails_is_an_error_span_and_its_retry_is_not(
    cli_env, clean_db, otlp_receiver, tmp_path
):
    # The batch's first write fails (a statement trigger on asset_scores, once: a sequence is
    # not rolled back); the step's retry writes it. The trace showed only the scoring's span,
    # which said every user succeeded.
    env = _night(cli_env, otlp_receiver, tmp_path, 10)
    with clean_db.begin() as conn:
        conn.execute(sa.text("CREATE SEQUENCE write_attempts"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION fail_first_write() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN IF nextval('write_attempts') = 1 THEN "
                "RAISE EXCEPTION 'disk full (a test)'; END IF; RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER fail_first_write BEFORE INSERT ON asset_scores "
                "FOR EACH STATEMENT EXECUTE FUNCTION fail_first_write()"
            )
        )
    proc = run(env, "score", "--date", DATE)
    assert summary_value(proc.stdout, "job status") == "completed", proc.stdout
    writes = otlp_receiver.named("write-batch")
    assert [s.status_code for s in writes] == [2, 0], [
        (s.status_message, s.attributes) for s in writes
    ]
    assert "disk full (a test)" in writes[0].status_message
    assert writes[1].attributes["asset_scores"] > 0


def test_a_night_scored_on_stale_inputs_says_so_on_its_span(
    cli_env, clean_db, otlp_receiver, tmp_path
):
    # The next date's providers are gone: its night reuses this date's snapshot (SPEC §8).
    # `status` flagged it "(stale inputs)"; the span, what a trace backend alerts on, did not.
    env = _night(cli_env, otlp_receiver, tmp_path, 10)
    run(env, "score", "--date", DATE)
    (tmp_path / "demo" / "rates.json").unlink()
    (tmp_path / "demo" / "prices.csv").unlink()
    proc = run(env, "score", "--date", "2026-11-28")
    assert summary_value(proc.stdout, "job status") == "completed", proc.stdout
    by_date = {s.attributes["score_date"]: s for s in otlp_receiver.named(telemetry.ROOT_SPAN)}
    assert set(by_date) == {DATE, "2026-11-28"}
    assert (by_date[DATE].attributes["rates_stale"], by_date[DATE].attributes["prices_stale"]) == (
        False,
        False,
    )
    stale = by_date["2026-11-28"].attributes
    assert (stale["rates_stale"], stale["prices_stale"]) == (True, True), stale


def test_a_failed_rates_step_reports_how_long_the_providers_took(
    cli_env, clean_db, otlp_receiver, tmp_path
):
    # The rates API accepts the connection and never answers: the step fails after its timeout.
    # The failed night's span said `fetch_rates_ms` 0, as if nothing had been tried.
    env = _night(cli_env, otlp_receiver, tmp_path, 10)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = {
            **env,
            "RATES_PROVIDER": "frankfurter",
            "RATES_BASE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
            "PROVIDER_TIMEOUT_SECONDS": "0.3",
            "PROVIDER_MAX_RETRIES": "0",
        }
        proc = run(env, "score", "--date", DATE, check=False)
    assert summary_value(proc.stdout, "job status") == "failed", proc.stdout
    root = _latest_root(otlp_receiver)
    with clean_db.connect() as conn:
        recorded = conn.execute(
            sa.text("SELECT (metrics->>'fetch_rates_ms')::int FROM overnight_job_runs")
        ).scalar_one()
    assert recorded is not None and recorded >= 300
    assert root.attributes["fetch_rates_ms"] == recorded


def test_a_night_with_its_collector_down_warns_once_and_completes(cli_env, clean_db, tmp_path):
    # Nothing listens on the endpoint. The SDK retried every export for its whole timeout at the
    # end of each step (51 s for a 150-user night, against 2 s without tracing) and printed each
    # attempt; now the first failure is one `warning:` line and the steps stop waiting for it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**cli_env, "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cret-token"}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://otel:s3cret-pass@127.0.0.1:{port}"
    run(env, "migrate")
    run(env, "demo-data", "--users", "30", "--seed", "3", "--out", str(tmp_path / "demo"))
    proc = run({**env, "SCORING_BATCH_SIZE": "10"}, "score", "--date", DATE)
    assert summary_value(proc.stdout, "job status") == "completed"
    traces = [line for line in proc.stderr.splitlines() if "traces" in line]
    assert len(traces) == 1, proc.stderr
    assert traces[0].startswith(
        f"warning: traces: could not export to http://otel:***@127.0.0.1:{port}/v1/traces ("
    ), traces[0]
    assert "([Errno 111] Connection refused); the night goes on" in traces[0], traces[0]
    assert "s3cret" not in proc.stderr and "s3cret" not in proc.stdout
    assert "Transient error" not in proc.stderr and "Failed to export" not in proc.stderr


def test_a_collector_that_never_answers_does_not_hold_the_command_at_exit(
    cli_env, clean_db, tmp_path
):
    # The collector accepts connections (the kernel's backlog) and never answers. Each step
    # waited its 2 s once, but at exit the SDK's hook waited for the export in flight until
    # OTEL_EXPORTER_OTLP_TIMEOUT: `score` ended 7 s after its summary with the default 10 s.
    env = {**cli_env, "OTEL_EXPORTER_OTLP_TIMEOUT": "30"}
    run(env, "migrate")
    run(env, "demo-data", "--users", "10", "--seed", "3", "--out", str(tmp_path / "demo"))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with started(env, "score", "--date", DATE, stderr=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            summary_at = None
            for line in proc.stdout:
                if line.startswith("duration"):
                    summary_at = time.monotonic()
            proc.wait(timeout=120)
            exited_at = time.monotonic()
    assert proc.returncode == 0 and summary_at is not None
    assert exited_at - summary_at < telemetry.FLUSH_WAIT_S + 3.0, exited_at - summary_at


@pytest.fixture
def fresh_tracing(monkeypatch):
    """A tracer provider of the test's own, shut down after it (the process keeps one)."""
    monkeypatch.setattr(telemetry, "_state", {})
    yield
    state = telemetry._state
    if "provider" in state:
        state["exporter"].shutdown()  # its retries stop at once
        state["provider"].shutdown()
        for name in telemetry._EXPORT_LOGGERS:
            logging.getLogger(name).removeFilter(state["exporter"].attempts)


def test_steps_stop_waiting_for_a_failing_collector_and_resume_when_it_answers(
    monkeypatch, otlp_receiver, fresh_tracing, caplog
):
    otlp_receiver.status = 503  # a collector that is down: every export refused, retried
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{otlp_receiver.url}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setattr(telemetry, "RETRY_AFTER_S", 3600.0)
    traceparent = telemetry.new_traceparent()
    caplog.set_level(logging.WARNING)
    with telemetry.step_span("first", traceparent):
        pass
    exporter = telemetry._state["exporter"]
    _wait_for(lambda: exporter.failing and otlp_receiver.posts > 0)
    _wait_for(lambda: not telemetry._state["processor"]._batch_processor._queue)
    tried = otlp_receiver.posts
    for n in range(5):  # no export is tried, so no step waits on one
        with telemetry.step_span(f"step {n}", traceparent):
            pass
    _wait_for(lambda: exporter.dropped >= 6)  # the first step's span and these five
    assert otlp_receiver.posts == tried
    shown = [r.getMessage() for r in caplog.records if r.name.startswith(("opentelemetry", "scor"))]
    assert len(shown) == 1 and shown[0].startswith(
        f"traces: could not export to {otlp_receiver.url}/v1/traces ("
    ), shown
    # The collector is back: the next try sends the spans of the steps after it, and says so.
    otlp_receiver.status = 200
    monkeypatch.setattr(telemetry, "RETRY_AFTER_S", 0.0)
    with telemetry.step_span("after", traceparent):
        pass
    _wait_for(lambda: bool(otlp_receiver.named("after")))
    # The receiver has the spans before the exporter has its answer: wait for that too.
    _wait_for(lambda: not exporter.failing)
    shown = [r.getMessage() for r in caplog.records if r.name == "scoring_pipeline.telemetry"]
    assert shown[1].startswith(f"traces: {otlp_receiver.url}/v1/traces answers again ("), shown
    assert otlp_receiver.named("first") == []  # dropped while it was down


def test_a_refused_restart_and_a_snapshots_backfill_leave_no_trace_without_a_root(
    world, dagster_instance, otlp_receiver, fresh_tracing, monkeypatch
):
    """Every span belongs to a night's trace. A restart refused because the night's batches are
    being scored opens no span, and a snapshots backfill's membership step joins the date's
    night (each used to open an `active_users` span under a new trace whose root was never
    emitted: a trace without a root in the collector)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    forget_night_keys(dagster_instance)
    assert snapshots(dagster_instance).success
    scoring = dagster_instance.create_run_for_job(
        defs().resolve_job_def("scoring_batch_job"),
        tags={"dagster/partition": scores_partition_key(DATE, "b0000")},
        status=dg.DagsterRunStatus.STARTED,
    )
    assert not snapshots(dagster_instance, raise_on_error=False).success  # refused
    dagster_instance.report_run_canceled(scoring)
    assert batch(dagster_instance).success  # the night closes: its root span is emitted
    assert snapshots(dagster_instance, tags={BACKFILL_TAG: "snapshots-again"}).success
    _wait_for(lambda: len(otlp_receiver.named("prices")) == 2)
    (root,) = {s.trace_id: s for s in otlp_receiver.named(telemetry.ROOT_SPAN)}.values()
    assert {s.trace_id for s in otlp_receiver.spans} == {root.trace_id}
    steps = otlp_receiver.named("active_users")
    assert len(steps) == 2 and {s.parent_span_id for s in steps} == {root.span_id}


def _metrics(engine, score_date: str) -> dict:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT metrics FROM overnight_job_runs WHERE score_date = :d"),
            {"d": score_date},
        ).scalar_one()


def test_a_night_report_the_collector_did_not_take_goes_with_the_next_score(
    cli_env, clean_db, otlp_receiver, tmp_path
):
    # The collector refused every export while the night closed (a deploy restarting it): the
    # night's root span was dropped for good, its trace left with steps and no root. It is now
    # kept pending in the night's metrics, `status` says so, and the next `score` sends it.
    otlp_receiver.status = 503
    env = {**_night(cli_env, otlp_receiver, tmp_path, 10), "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    first = run(env, "score", "--date", DATE)
    assert summary_value(first.stdout, "job status") == "completed"
    assert "traces: could not export" in first.stderr
    pending = _metrics(clean_db, DATE)
    assert pending["span_pending"] and "span_emitted_for" not in pending, pending
    report = "report          not taken by the OpenTelemetry collector when the night closed"
    assert report in run(env, "status", "--date", DATE).stdout
    assert otlp_receiver.named(telemetry.ROOT_SPAN) == []

    otlp_receiver.status = 200
    later = "2026-11-28"
    second = run(env, "score", "--date", later)
    assert (
        f"sent the report of the night of {DATE} (all), which the collector had not taken"
        in second.stdout
    ), second.stdout
    roots = {s.attributes["score_date"]: s for s in otlp_receiver.named(telemetry.ROOT_SPAN)}
    assert sorted(roots) == [DATE, later]
    traceparent = pending["traceparent"].split("-")
    assert [roots[DATE].trace_id, roots[DATE].span_id] == traceparent[1:3]
    scored = roots[DATE].attributes
    assert scored["users_success"] == scored["users_total"] > 0 and roots[DATE].status_code == 1
    sent = _metrics(clean_db, DATE)
    assert "span_pending" not in sent and sent["span_emitted_for"] == pending["span_pending"]
    assert report not in run(env, "status", "--date", DATE).stdout
    # Sent once: a third night sends only its own.
    run(env, "score", "--date", "2026-11-29")
    assert len(otlp_receiver.named(telemetry.ROOT_SPAN)) == 3


def test_the_report_sensor_sends_a_night_report_once_the_collector_takes_it(
    world, dagster_instance, otlp_receiver, fresh_tracing, monkeypatch
):
    otlp_receiver.status = 503
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setattr(telemetry, "RETRY_AFTER_S", 0.0)  # every evaluation tries the collector
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    forget_night_keys(dagster_instance)
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success  # the night closes: its report is not taken

    def evaluate() -> str:
        context = dg.build_sensor_context(
            instance=dagster_instance, resources={"database": build_resources()["database"]}
        )
        skipped = night_report_sensor(context)
        assert isinstance(skipped, dg.SkipReason)
        return str(skipped.skip_message)

    assert _metrics(world, DATE)["span_pending"]
    tried = otlp_receiver.posts
    assert evaluate() == (
        f"the collector did not take the report of the night of {DATE} (all); tried again in 30 s"
    )
    assert otlp_receiver.posts > tried and otlp_receiver.named(telemetry.ROOT_SPAN) == []
    otlp_receiver.status = 200
    assert evaluate() == f"sent the report of the night of {DATE} (all)"
    (root,) = otlp_receiver.named(telemetry.ROOT_SPAN)
    metrics = _metrics(world, DATE)
    assert metrics["traceparent"].split("-")[1] == root.trace_id
    assert "span_pending" not in metrics
    posts = otlp_receiver.posts
    assert evaluate() == "no night's report is waiting to be sent"
    assert otlp_receiver.posts == posts
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert evaluate() == "tracing is off: no night report to send"


def _latest_root(receiver):
    """The night's root span as last emitted (a figure landing after it closed, such as the
    prices step's after a failed rates step, emits it again)."""
    _wait_for(lambda: bool(receiver.named(telemetry.ROOT_SPAN)))
    return receiver.named(telemetry.ROOT_SPAN)[-1]


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("service_name", "resource_attributes", "expected"),
    [
        (None, None, "scoring-pipeline"),
        ("from-service-name", None, "from-service-name"),
        # A deployment naming its services in OTEL_RESOURCE_ATTRIBUTES (a Kubernetes manifest,
        # say) had its name replaced by the default.
        (None, "service.name=from-resource,deployment.environment=prod", "from-resource"),
        ("from-service-name", "service.name=from-resource", "from-service-name"),
    ],
)
def test_the_service_is_named_by_the_standard_variables(
    monkeypatch, otlp_receiver, fresh_tracing, service_name, resource_attributes, expected
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    for name, value in (
        ("OTEL_SERVICE_NAME", service_name),
        ("OTEL_RESOURCE_ATTRIBUTES", resource_attributes),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with telemetry.step_span("named", telemetry.new_traceparent()):
        pass
    _wait_for(lambda: bool(otlp_receiver.named("named")))
    (span,) = otlp_receiver.named("named")
    assert span.service_name == expected
