"""The deployment's Dagster daemon: `dagster-daemon run`, with the sensor loop every second.

Dagster's sensor daemon evaluates the sensors in a loop that waits until 5 s have passed since
the loop began (`dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME`), whatever a sensor's
`minimum_interval_seconds` asks. A night waits on a sensor twice (its batches start when the
snapshots run has succeeded; the last dashboards are warmed after the last batch lands), so a
1,000-user night spent ~2.5 s of its ~15 s waiting for each. Every sensor a night waits on asks
for 1 s (the night reports' sensor, 30 s), and a loop of them costs the daemon and the code
server a few milliseconds.

Each evaluation also logs two INFO lines ("Checking for new runs for sensor: …", "Sensor … skipped:
…"): every second for four sensors, ~700,000 lines a day in the daemon's log, saying nothing that
the UI's tick history of each sensor does not. The backfill daemon logs, at every iteration of a
backfill, every partition it has materialised, failed and requested (three multi-line dumps of
all the backfill's keys). Dagster OSS keeps no log of a backfill's own, and the backfill's page in
the UI shows each partition's status. The daemon's log keeps everything else: the runs a sensor
launches, each backfill iteration's one-line status, errors, the other daemons' lines.
"""

import logging
import re
import warnings

import dagster._daemon.sensor as sensor_daemon

from scoring_pipeline.runtime.plain_logs import plain_unless_a_terminal

SENSOR_LOOP_SECONDS = 1
SENSOR_DAEMON_LOGGER = "dagster.daemon.SensorDaemon"
BACKFILL_DAEMON_LOGGER = "dagster.daemon.BackfillDaemon"
# Messages (their start) the daemon's log leaves out, by the daemon logger that writes them.
LEFT_OUT = {
    SENSOR_DAEMON_LOGGER: re.compile(
        r"Checking for new runs for sensor: |Sensor \S+ skipped: |No run requests returned for "
    ),
    BACKFILL_DAEMON_LOGGER: re.compile(
        r"Backfill iteration summary:|Overall backfill status:|"
        r"Root assets that have not yet been requested:|"
        # An asset backfill's iteration: kept are "Evaluating asset backfill X" and, when it
        # launches, "Asset partitions to request:" with what it requests.
        r"Assets targeted by backfill \S+ are valid|Not all root assets |"
        r"No asset partitions to request|Considering the following candidate subset|"
        r"Candidate subset is empty|No relevant assets materialized since last tick|"
        r"Assets materialized since last tick"
    ),
}


class LeaveOut(logging.Filter):
    """Drops the records whose message starts with what `pattern` matches."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def quiet_daemon_logs() -> None:
    """Keep the per-evaluation and per-iteration dumps out of the daemon's log (once per
    process: the filters sit on the daemons' loggers, which Dagster looks up by name)."""
    for name, pattern in LEFT_OUT.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, LeaveOut) for f in logger.filters):
            logger.addFilter(LeaveOut(pattern))


def use_sensor_loop_seconds(seconds: float = SENSOR_LOOP_SECONDS) -> None:
    """Set the sensor daemon's loop period; refuses a Dagster that no longer has the setting
    (the pinned version has it), rather than silently keeping the 5 s loop."""
    if not isinstance(getattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME", None), int | float):
        raise RuntimeError(
            "this Dagster version has no dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME: "
            "review scoring_pipeline.runtime.daemon against its sensor daemon"
        )
    sensor_daemon.MIN_INTERVAL_LOOP_TIME = seconds  # type: ignore[assignment]


def quiet_launcher_notice() -> None:
    """dagster-celery's launcher re-registers its task at every launch; Celery's warning about it
    is harmless (`services.LAUNCHER_NOTICE`)."""
    from celery.exceptions import DuplicateTaskNameWarning

    from scoring_pipeline.runtime.services import LAUNCHER_NOTICE_MESSAGE

    warnings.filterwarnings(
        "ignore", message=LAUNCHER_NOTICE_MESSAGE, category=DuplicateTaskNameWarning
    )


def import_before_threads() -> None:
    """Import, before the daemon starts its threads, what one of them would otherwise import
    first while another uses it: the run launcher builds its Celery app (kombu's SQLAlchemy
    transport imports `sqlalchemy.orm`) when a queued run is launched, while the scheduler's
    thread runs SQLAlchemy queries that look `sqlalchemy.orm` up half-imported. Seen once, in a
    daemon started with runs already queued: "partially initialized module
    'sqlalchemy.orm.exc'" failed the schedule's tick and left its run never submitted."""
    import kombu.transport.sqlalchemy  # noqa: F401
    import sqlalchemy.orm  # noqa: F401


def main() -> None:
    from dagster._daemon.cli import main as daemon_main

    import_before_threads()
    plain_unless_a_terminal()
    use_sensor_loop_seconds()
    quiet_daemon_logs()
    quiet_launcher_notice()
    daemon_main()


if __name__ == "__main__":
    main()
