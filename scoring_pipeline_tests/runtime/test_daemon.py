"""The deployment's daemon sets the sensor daemon's loop period the loop reads."""

import dagster._daemon.sensor as sensor_daemon
import pytest

from scoring_pipeline.runtime.daemon import SENSOR_LOOP_SECONDS, use_sensor_loop_seconds


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
