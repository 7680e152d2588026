"""The deployment's daemon sets the sensor daemon's loop period the loop reads, and keeps its
log to what an operator reads, in plain lines."""

import inspect
import logging
import os
import re
import subprocess
import sys

import coloredlogs
import dagster._daemon.sensor as sensor_daemon
import pytest

from scoring_pipeline.runtime.daemon import (
    BACKFILL_DAEMON_LOGGER,
    SENSOR_DAEMON_LOGGER,
    SENSOR_LOOP_SECONDS,
    LeaveOut,
    quiet_daemon_logs,
    use_sensor_loop_seconds,
)
from scoring_pipeline.runtime.plain_logs import PlainFormatter, plain_unless_a_terminal


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


def test_the_daemon_log_keeps_launches_and_errors_not_each_evaluation(caplog):
    # The messages as the pinned Dagster's sensor and backfill daemons log them, on their loggers.
    quiet_daemon_logs()
    quiet_daemon_logs()  # once per process, however often it is asked
    sensors = logging.getLogger(SENSOR_DAEMON_LOGGER)
    backfills = logging.getLogger(BACKFILL_DAEMON_LOGGER)
    for logger in (sensors, backfills):
        assert sum(isinstance(f, LeaveOut) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO):
        sensors.info("Checking for new runs for sensor: %s", "scoring_batches_sensor")
        sensors.info("Sensor dashboard_cache_sensor skipped: no newly scored batch to warm")
        sensors.info("No run requests returned for scoring_run_failure_sensor, skipping")
        sensors.info("Launching run for scoring_batches_sensor")
        sensors.error("Sensor scoring_batches_sensor failed: boom")
        backfills.info("Backfill iteration summary:\n**Assets materialized since last iteration:**")
        backfills.info("Overall backfill status:\n**Materialized assets:**\n- scores: {...}")
        backfills.info("Root assets that have not yet been requested:\n- scores: {...}")
        backfills.info("Evaluating asset backfill abc")
        backfills.info("Assets targeted by backfill abc are valid. Continuing execution ...")
        backfills.info("Not all root assets (assets in backfill that do not have parents ...")
        backfills.info("Assets materialized since last tick:\n- scores: {...}")
        backfills.info("No relevant assets materialized since last tick.")
        backfills.info("Considering the following candidate subset:\n- scores: {...}")
        backfills.info("Candidate subset is empty.")
        backfills.info("No asset partitions to request.")
        backfills.info("Asset partitions to request:\n- scores: {2026-12-04/b0001}")
        backfills.info("Asset backfill abc completed iteration with status REQUESTED.")
    assert [r.getMessage() for r in caplog.records] == [
        "Launching run for scoring_batches_sensor",
        "Sensor scoring_batches_sensor failed: boom",
        "Evaluating asset backfill abc",
        "Asset partitions to request:\n- scores: {2026-12-04/b0001}",
        "Asset backfill abc completed iteration with status REQUESTED.",
    ]


def test_the_messages_it_leaves_out_are_the_daemons_own():
    # A Dagster that rewords them would bring the lines back, not lose others: this says when.
    import dagster._core.execution.asset_backfill as asset_backfill

    sources = {
        SENSOR_DAEMON_LOGGER: inspect.getsource(sensor_daemon),
        BACKFILL_DAEMON_LOGGER: inspect.getsource(asset_backfill),
    }
    fragments = {
        SENSOR_DAEMON_LOGGER: (
            'f"Checking for new runs for sensor: {',
            'f"Sensor {remote_sensor.name} skipped: {',
            'f"No run requests returned for {',
        ),
        BACKFILL_DAEMON_LOGGER: (
            '"Backfill iteration summary:\\n"',
            '"Overall backfill status:\\n"',
            'f"Root assets that have not yet been requested:\\n{',
            'f"Assets targeted by backfill {backfill.backfill_id} are valid.',
            '"Not all root assets (assets in backfill',
            '"No asset partitions to request."',
            'f"Considering the following candidate subset:\\n{',
            '"Candidate subset is empty."',
            '"No relevant assets materialized since last tick."',
            'f"Assets materialized since last tick:\\n{',
        ),
    }
    for logger, expected in fragments.items():
        for fragment in expected:
            assert fragment in sources[logger], fragment


_LOG_A_LINE = """
import io, logging, sys
from dagster._utils.log import configure_loggers
from scoring_pipeline.runtime.plain_logs import plain_unless_a_terminal
print(plain_unless_a_terminal(io.StringIO()), file=sys.stderr)
configure_loggers(handler="default", formatter="colored", log_level="INFO")
logging.getLogger("dagster.daemon.SensorDaemon").warning("Launching run for a_sensor")
"""


def test_dagsters_log_lines_are_plain_when_written_to_a_file():
    """Dagster colours its lines whatever its output is; not a terminal, they are plain (a
    process of its own: the swap is for the whole process)."""
    done = subprocess.run(
        [sys.executable, "-c", _LOG_A_LINE], capture_output=True, text=True, check=True
    )
    assert done.stderr.strip() == "True"
    assert "\x1b[" not in done.stdout
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} - dagster\.daemon\.SensorDaemon - WARNING - "
        r"Launching run for a_sensor\n",
        done.stdout,
    ), done.stdout


def test_dagsters_log_lines_keep_their_colours_on_a_terminal():
    main, other = os.openpty()
    try:
        with os.fdopen(other, "w", closefd=False) as terminal:
            assert plain_unless_a_terminal(terminal) is False
    finally:
        os.close(main)
        os.close(other)
    assert coloredlogs.ColoredFormatter is not PlainFormatter
