"""What `status` prints of a night, from the night's row alone (no database): stale inputs, and
the count of failed users beyond those it lists."""

import dataclasses
import datetime as dt

from scoring_pipeline.cli.status import _detail, _overview
from scoring_pipeline.store.month_partitions import Coverage, Partition
from scoring_pipeline.store.night.model import Night, NightStatus

DAY = dt.date(2026, 12, 3)
STARTED = dt.datetime(2026, 12, 3, 4, 0, tzinfo=dt.UTC)
DECEMBER = (dt.date(2026, 12, 1), dt.date(2027, 1, 1))
KEPT = Coverage(
    tuple(
        Partition(table, f"{table}_2026_12", *DECEMBER, rows=1, bytes=8192)
        for table in ("score_history", "calculation_events", "score_metric_values")
    ),
    frozenset(),
)


def _night(status: NightStatus, **metrics: object) -> Night:
    return Night(
        id="1",
        job_type="scoring",
        score_date=DAY,
        market_group="all",
        status=status,
        correlation_id="c",
        started_at=STARTED,
        completed_at=STARTED + dt.timedelta(seconds=30),
        users_processed=0,
        error_details=None,
        metrics={"users_total": 200, "batches_total": 4, **metrics},
    )


def test_a_night_scored_on_stale_inputs_says_so_and_what_to_run():
    night = _night(
        NightStatus.COMPLETED,
        rates_stale=True,
        prices_stale=True,
        prices_symbols=296,
        prices_unpriced=1,
        prices_unpriced_symbols=["EU0090.EU"],
    )

    lines = _detail(night, None, [], ["all"], KEPT)

    assert (
        "stale inputs    rates and prices: every provider failed, an earlier snapshot was "
        "reused" in lines
    )
    assert lines[-1] == (
        "next            once the providers answer, `scoring-pipeline score --date 2026-12-03 "
        "--refresh` fetches the inputs again and re-scores the night"
    )
    assert any(line.startswith("prices          1 of 296 needed symbols") for line in lines)
    assert _overview([(night, None)], KEPT)[1].endswith("not warmed yet  (stale inputs)")
    fresh = _night(NightStatus.COMPLETED)
    assert not any("stale" in line for line in _detail(fresh, None, [], ["all"], KEPT))
    assert not _overview([(fresh, None)], KEPT)[1].endswith("(stale inputs)")


def test_failed_users_beyond_those_listed_are_counted_from_the_nights_figure():
    night = _night(NightStatus.PARTIAL, users_failed=150, batches_failed=3)
    failed = [
        {"userId": f"u{n}", "batch": "b0000", "stage": "batch", "error": {"message": "x"}}
        for n in range(100)  # what `failed_users` returns at most
    ]

    lines = _detail(night, None, failed, ["all"], KEPT)

    assert sum(line.startswith("  failed user ") for line in lines) == 20
    assert "  … and 130 more (every one in scoring_batch_results.failed_users of the date)" in lines


def test_a_night_whose_month_was_pruned_says_its_calculations_are_gone():
    night = _night(NightStatus.COMPLETED)
    events_only = Coverage(
        tuple(p for p in KEPT.months if p.table == "calculation_events"), frozenset()
    )
    for coverage, dropped in (
        (Coverage((), frozenset()), "score_history and calculation_events"),
        (events_only, "score_history"),
    ):
        lines = _detail(night, None, [], ["all"], coverage)
        assert (
            f"pruned          its month of {dropped} was dropped (`scoring-pipeline prune`): "
            "the figures above stand, its calculations can no longer be replayed"
        ) in lines
        assert _overview([(night, None)], coverage)[1].endswith("not warmed yet  (pruned)")
    # A DEFAULT partition takes any day: nothing was dropped.
    defaults = Coverage((), frozenset({"score_history", "calculation_events"}))
    assert not any(
        line.startswith("pruned") for line in _detail(night, None, [], ["all"], defaults)
    )
    assert not any(line.startswith("pruned") for line in _detail(night, None, [], ["all"], KEPT))
    assert not _overview([(night, None)], KEPT)[1].endswith("(pruned)")


def test_a_pruned_night_with_failed_users_is_scored_anew_not_retried():
    night = _night(NightStatus.PARTIAL, users_failed=1, batches_failed=1)
    failed = [{"userId": "u1", "batch": "b0001", "stage": "criteria_validation", "error": {}}]

    lines = _detail(night, None, failed, ["all"], Coverage((), frozenset()))

    assert lines[-1] == (
        "next            its batches cannot be retried (a retry would write back part of a "
        "pruned month); to score the date anew, `scoring-pipeline score --date 2026-12-03`"
    )
    assert "retry-failed" in _detail(night, None, failed, ["all"], KEPT)[-1]


def test_a_night_started_again_is_not_counted_yet_and_names_the_earlier_warming():
    """A night started again (`score` on a scored date, a tick after a failed start) has its
    figures zeroed until its first batch lands: not "0 users in all", and the date's warming is
    the earlier attempt's until this one's batches are warm."""
    again = dataclasses.replace(
        _night(NightStatus.STARTED),
        started_at=STARTED + dt.timedelta(hours=2),
        completed_at=None,
        metrics={"markets": None},
    )
    earlier_warming = dataclasses.replace(
        _night(NightStatus.COMPLETED),
        id="2",
        job_type="cache_warm",
        correlation_id="w",
        users_processed=200,
        metrics={"users_warm": 200},
    )

    lines = _detail(again, earlier_warming, [], ["all"], KEPT)

    assert (
        "users           not counted yet: the night's users and batches are counted when its "
        "first batch lands"
    ) in lines
    assert "batches         not counted yet" in lines
    assert (
        "dashboards      none warmed since the night was started again (before: completed, "
        "200 warm)"
    ) in lines
    row = _overview([(again, earlier_warming)], KEPT)[1].split()
    assert row[3:6] == ["…", "0", "…"], row
    # Once counted, and for a warming of this attempt, the figures and the warming as they are.
    counted = _night(NightStatus.STARTED, users_success=50, users_failed=0)
    warming = dataclasses.replace(earlier_warming, started_at=STARTED + dt.timedelta(minutes=1))
    lines = _detail(counted, warming, [], ["all"], KEPT)
    assert "users           200 in all: 50 scored, 0 failed, 0 skipped" in lines
    assert "batches         4 (0 failed)" in lines
    assert "dashboards      completed, 200 warm" in lines


def test_a_report_the_collector_did_not_take_says_whether_it_is_still_sent():
    recent = dataclasses.replace(
        _night(NightStatus.COMPLETED, span_pending="x"),
        completed_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=6, hours=23),
    )
    (line,) = [line for line in _detail(recent, None, [], ["all"], KEPT) if "report" in line]
    assert line == (
        "report          not taken by the OpenTelemetry collector when the night closed; sent "
        "again every 30 s by the services' night_report_sensor, and by the next "
        "`scoring-pipeline score`"
    )
    old = dataclasses.replace(recent, completed_at=recent.completed_at - dt.timedelta(hours=2))
    (line,) = [line for line in _detail(old, None, [], ["all"], KEPT) if "report" in line]
    assert line.endswith("; no longer sent (only nights closed in the last 7 days are)"), line
    taken = _night(NightStatus.COMPLETED, span_emitted_for="x")
    assert not any("report" in line for line in _detail(taken, None, [], ["all"], KEPT))
