"""The deployment's Dagster daemon: `dagster-daemon run`, with the sensor loop every second.

Dagster's sensor daemon evaluates the sensors in a loop that waits until 5 s have passed since
the loop began (`dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME`), whatever a sensor's
`minimum_interval_seconds` asks. A night waits on a sensor twice (its batches start when the
snapshots run has succeeded; the last dashboards are warmed after the last batch lands), so a
1,000-user night spent ~2.5 s of its ~15 s waiting for each. Every sensor here asks for 1 s, and
a loop of them costs the daemon and the code server a few milliseconds.

Each evaluation also logs two INFO lines ("Checking for new runs for sensor: …", "Sensor … skipped:
…"): every second for four sensors, ~700,000 lines a day in the daemon's log, saying nothing that
the UI's tick history of each sensor does not. The daemon's log keeps everything else: the runs a
sensor launches, errors, the other daemons' lines.
"""

import logging
import re

import dagster._daemon.sensor as sensor_daemon

SENSOR_LOOP_SECONDS = 1
SENSOR_DAEMON_LOGGER = "dagster.daemon.SensorDaemon"
_TICK_CHATTER = re.compile(
    r"Checking for new runs for sensor: |Sensor \S+ skipped: |No run requests returned for "
)


class WithoutTickChatter(logging.Filter):
    """Drops the sensor daemon's per-evaluation lines (a sensor looked, or skipped)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _TICK_CHATTER.match(record.getMessage()) is None


def quiet_sensor_ticks() -> None:
    """Keep the per-evaluation lines out of the daemon's log (once per process)."""
    logger = logging.getLogger(SENSOR_DAEMON_LOGGER)
    if not any(isinstance(f, WithoutTickChatter) for f in logger.filters):
        logger.addFilter(WithoutTickChatter())


def use_sensor_loop_seconds(seconds: float = SENSOR_LOOP_SECONDS) -> None:
    """Set the sensor daemon's loop period; refuses a Dagster that no longer has the setting
    (the pinned version has it), rather than silently keeping the 5 s loop."""
    if not isinstance(getattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME", None), int | float):
        raise RuntimeError(
            "this Dagster version has no dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME: "
            "review scoring_pipeline.runtime.daemon against its sensor daemon"
        )
    sensor_daemon.MIN_INTERVAL_LOOP_TIME = seconds  # type: ignore[assignment]


def main() -> None:
    from dagster._daemon.cli import main as daemon_main

    use_sensor_loop_seconds()
    quiet_sensor_ticks()
    daemon_main()


if __name__ == "__main__":
    main()
