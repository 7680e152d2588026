"""The invariants of SPEC §5 checked over the whole test database (every calculation's event
set complete and in order, one history row per user, symbol and date, current scores equal to the
last successful calculation) and the night's job row: shared by the hardening and restart tests."""

from collections import defaultdict
from decimal import Decimal
from typing import Any

from scoring_pipeline_tests.scenario import (
    DATE,
    EVENT_ORDER,
    rows,
)

FAILED_WITH_INPUTS = ["CALC_STARTED", "INPUTS_CAPTURED", "CALC_COMPLETED"]
FAILED_BEFORE_INPUTS = ["CALC_STARTED", "CALC_COMPLETED"]


def event_sets(engine) -> dict[str, list[Any]]:
    """Every user calculation's events, by correlation id, in `id` order."""
    by_correlation: dict[str, list[Any]] = defaultdict(list)
    for e in rows(
        engine,
        "SELECT id, correlation_id::text AS c, user_id::text AS u, event_type, payload "
        "FROM calculation_events WHERE user_id IS NOT NULL ORDER BY id",
    ):
        by_correlation[e.c].append(e)
    return dict(by_correlation)


def assert_event_invariants(engine) -> dict[str, list[list[Any]]]:
    """Each calculation is complete (success or failed), of one user, with a consistent payload;
    returns the calculations of each user in order."""
    by_user: dict[str, list[list[Any]]] = defaultdict(list)
    for correlation_id, events in event_sets(engine).items():
        types = [e.event_type for e in events]
        assert len({e.u for e in events}) == 1, correlation_id
        assert all(e.payload["correlationId"] == correlation_id for e in events)
        completed = events[-1].payload
        if completed["status"] == "success":
            assert types == EVENT_ORDER, (correlation_id, types)
            computed = events[2].payload["results"]
            assert completed["assetCount"] == len(computed)
        else:
            assert completed["status"] == "failed", completed
            assert types in (FAILED_WITH_INPUTS, FAILED_BEFORE_INPUTS), (correlation_id, types)
            assert completed["error"]["type"] and completed["error"]["message"]
            assert completed["assetCount"] == 0
        by_user[events[0].u].append(events)
    return dict(by_user)


def assert_history_unique(engine) -> None:
    duplicates = rows(
        engine,
        "SELECT user_id, symbol, score_date, count(*) AS n FROM score_history "
        "GROUP BY user_id, symbol, score_date HAVING count(*) > 1",
    )
    assert duplicates == []


def assert_scores_match_last_success(engine) -> None:
    """The current scores and the history of DATE are exactly the last successful calculation's
    SCORES_COMPUTED results, for every user."""
    last: dict[str, list[Any]] = {}
    for events in event_sets(engine).values():
        if events[-1].payload["status"] == "success":
            user = events[0].u
            if user not in last or last[user][0].id < events[0].id:
                last[user] = events
    current = defaultdict(set)
    for r in rows(
        engine,
        "SELECT user_id::text AS u, symbol, criteria_version_id::text AS cv, score, "
        "correlation_id::text AS c FROM asset_scores",
    ):
        current[r.u].add((r.symbol, r.cv, r.score, r.c))
    history = defaultdict(set)
    for r in rows(
        engine,
        "SELECT user_id::text AS u, symbol, criteria_version_id::text AS cv, score, "
        "correlation_id::text AS c FROM score_history WHERE score_date = :d",
        d=DATE,
    ):
        history[r.u].add((r.symbol, r.cv, r.score, r.c))
    assert set(current) == set(last) == set(history)
    for user, events in last.items():
        expected = {
            (x["assetId"], x["criteriaVersionId"], Decimal(x["score"]), events[0].c)
            for x in events[2].payload["results"]
        }
        assert current[user] == expected == history[user], user


def job_run(engine):
    return rows(
        engine,
        "SELECT status, users_processed, users_failed, error_details, metrics "
        "FROM overnight_job_runs WHERE job_type = 'scoring' AND score_date = :d",
        d=DATE,
    )[0]


def criteria_version_id(engine, user: str) -> str:
    return str(
        rows(
            engine,
            "SELECT id::text FROM criteria_versions WHERE user_id = :u ORDER BY version DESC",
            u=user,
        )[0].id
    )
