"""The nightly schedule through the real daemon: a cron firing every minute (or the daemon
catching up missed ticks) starts exactly one night per score date — the later ticks are
skipped with a reason naming the night — and every user is scored once."""

import pytest
import sqlalchemy as sa

from scoring_pipeline.runtime.dagster_api import LOCATION, REPOSITORY, DagsterApi
from scoring_pipeline.runtime.services import free_port, private_deployment_env, running_services
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.e2e import wait_for

pytestmark = [pytest.mark.db, pytest.mark.slow]

_TICKS = """
query Ticks($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    ... on Schedule { scheduleState { ticks(limit: 50) { status skipReason runIds } } }
  }
}
"""


_SENSOR_TICKS = """
query SensorTicks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 20) { timestamp } } }
  }
}
"""


def _sensor_tick_gaps(api, name):
    """Seconds between the sensor's last ticks (one per evaluation, skipped ones included)."""
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": REPOSITORY,
        "sensorName": name,
    }
    data = api.query(_SENSOR_TICKS, {"selector": selector})["sensorOrError"]
    stamps = sorted(t["timestamp"] for t in data["sensorState"]["ticks"])
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def _ticks(api):
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": REPOSITORY,
        "scheduleName": "overnight_scoring_schedule",
    }
    data = api.query(_TICKS, {"selector": selector})["scheduleOrError"]
    return data["scheduleState"]["ticks"]


def _rows(engine, sql):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).all()


def test_a_cron_firing_every_minute_starts_one_night(clean_db, database_url, tmp_path):
    engine = clean_db
    f.market(engine, "US_TECH")
    f.instrument(engine, "AAA", market="US_TECH", currency="USD", eps="2", roe="15")
    f.provider_files(tmp_path / "files", rates={"EUR": "0.5"}, prices={"AAA": ("30", "USD")})
    users = [
        f.user(
            engine,
            holdings=[("AAA", "USD")],
            criteria=[("US_TECH", "stock", [f.rule("pe_ratio", "lt", "20", 10)])],
        )
        for _ in range(4)
    ]
    env = private_deployment_env(
        database_url,
        tmp_path / "home",
        tmp_path / "files",
        SCORING_BATCH_SIZE="3",
        OVERNIGHT_JOB_CRON="* * * * *",
    )
    with running_services(port=free_port(), workers=2, env=env) as services:
        api = DagsterApi(services.url)
        # Three ticks: the first starts the night, the next ones find it started or completed.
        ticks = wait_for(
            "three schedule ticks",
            lambda: (
                t if len(t := [x for x in _ticks(api) if x["status"] != "STARTED"]) >= 3 else None
            ),
            timeout=240,
        )
        wait_for(
            "the night to close",
            lambda: _rows(
                engine,
                "SELECT 1 FROM overnight_job_runs WHERE job_type = 'scoring' "
                "AND status = 'completed'",
            ),
            timeout=120,
        )
        # The daemon evaluates the sensors every second (`runtime/daemon`), not every 5 s.
        gaps = _sensor_tick_gaps(api, "dashboard_cache_sensor")
    assert len(gaps) >= 10 and sorted(gaps)[len(gaps) // 2] < 3, gaps
    launched = [t for t in ticks if t["status"] == "SUCCESS"]
    skipped = [t for t in ticks if t["status"] == "SKIPPED"]
    assert len(launched) == 1 and len(launched[0]["runIds"]) == 1
    assert len(skipped) == len(ticks) - 1
    for tick in skipped:
        reason = tick["skipReason"] or ""
        assert "scoring night" in reason or "still queued or running" in reason, reason
    nights = _rows(
        engine, "SELECT score_date, status FROM overnight_job_runs WHERE job_type = 'scoring'"
    )
    assert len(nights) == 1 and nights[0].status == "completed"
    job_events = _rows(
        engine,
        "SELECT event_type FROM calculation_events WHERE user_id IS NULL AND correlation_id = "
        "(SELECT correlation_id FROM overnight_job_runs WHERE job_type = 'scoring') ORDER BY id",
    )
    assert [e.event_type for e in job_events] == ["JOB_STARTED", "JOB_COMPLETED"]
    calculations = _rows(
        engine,
        "SELECT user_id::text AS u, count(*) AS n FROM calculation_events "
        "WHERE event_type = 'CALC_STARTED' GROUP BY user_id",
    )
    assert {(c.u, c.n) for c in calculations} == {(u, 1) for u in users}
