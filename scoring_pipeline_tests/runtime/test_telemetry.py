"""Tracing of a night (SPEC §7): the `overnight-scoring-job` span and its children received over
OTLP/HTTP by a local receiver that decodes the protobuf; nothing is set up without an exporter."""

import pytest
import sqlalchemy as sa

from scoring_pipeline import telemetry
from scoring_pipeline_tests.cli_helpers import run

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
    for child in children:
        assert child.trace_id == root.trace_id
        assert child.parent_span_id == root.span_id
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
