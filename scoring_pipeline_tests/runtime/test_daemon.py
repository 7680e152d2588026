"""The deployment's daemon sets the sensor daemon's loop period the loop reads, and keeps its
log to what an operator reads."""

import inspect
import logging

import dagster._daemon.sensor as sensor_daemon
import pytest

from scoring_pipeline.runtime.daemon import (
    SENSOR_DAEMON_LOGGER,
    SENSOR_LOOP_SECONDS,
    WithoutTickChatter,
    quiet_sensor_ticks,
    use_sensor_loop_seconds,
)


def test_the_sensor_loop_period_is_set_where_the_loop_reads_it(monkeypatch):
    monkeypatch.setattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME", 5)
    use_sensor_loop_seconds()
    assert sensor_daemon.MIN_INTERVAL_LOOP_TIME == SENSOR_LOOP_SECONDS == 1
    # The loop reads the module's name when it computes its sleep, not a copy taken earlier.
    loop = sensor_daemon.execute_sensor_iteration_loop.__code__
    assert "MIN_INTERVAL_LOOP_TIME" in loop.co_names


def test_a_dagster_without_the_setting_is_refused(monkeypatch):
    monkeypatch.delattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME")
    with pytest.raises(RuntimeError, match="MIN_INTERVAL_LOOP_TIME"):
        use_sensor_loop_seconds()


def test_the_sensor_daemon_log_keeps_launches_and_errors_not_each_evaluation(caplog):
    # The messages as the pinned Dagster's sensor daemon logs them, on its logger.
    quiet_sensor_ticks()
    quiet_sensor_ticks()  # once per process, however often it is asked
    logger = logging.getLogger(SENSOR_DAEMON_LOGGER)
    assert sum(isinstance(f, WithoutTickChatter) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=SENSOR_DAEMON_LOGGER):
        logger.info("Checking for new runs for sensor: %s", "scoring_batches_sensor")
        logger.info("Sensor dashboard_cache_sensor skipped: no newly scored batch to warm")
        logger.info("No run requests returned for scoring_run_failure_sensor, skipping")
        logger.info("Launching run for scoring_batches_sensor")
        logger.error("Sensor scoring_batches_sensor failed: boom")
    assert [r.getMessage() for r in caplog.records] == [
        "Launching run for scoring_batches_sensor",
        "Sensor scoring_batches_sensor failed: boom",
    ]


def test_the_messages_it_drops_are_the_sensor_daemons_own():
    # A Dagster that rewords them would bring the lines back, not lose others: this says when.
    source = inspect.getsource(sensor_daemon)
    for fragment in (
        'f"Checking for new runs for sensor: {',
        'f"Sensor {remote_sensor.name} skipped: {',
        'f"No run requests returned for {',
    ):
        assert fragment in source, fragment
