"""Hardening of the scoring through `dg.materialize` on a real Dagster instance and PostgreSQL:
a 50-rule criteria set, holdings that are all ignored, instruments without fundamentals, invalid
criteria versions (rules as a JSON object, unknown operator, points 101, `between` reversed) that
fail only their user (and, on a re-score, leave the user's previous scores untouched), the same
batch partition materialised by two processes at once, and a user re-scored after a criteria
change.

Every test checks the invariants of SPEC §5: each calculation has a complete event set
(CALC_STARTED → INPUTS_CAPTURED → SCORES_COMPUTED → CALC_COMPLETED success, or a failed one that
ends in CALC_COMPLETED failed), `score_history` holds one row per (user, symbol, date), the job
run matches what happened, and no score comes from invalid inputs.
"""

import json
import multiprocessing
from decimal import Decimal
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.invariants import (
    FAILED_BEFORE_INPUTS,
    assert_event_invariants,
    assert_history_unique,
    assert_scores_match_last_success,
    criteria_version_id,
    event_sets,
    job_run,
)
from scoring_pipeline_tests.scenario import (
    DATE,
    batch,
    rows,
    rules,
    snapshots,
    users_in_two_currencies,
)

pytestmark = pytest.mark.db


def test_a_50_rule_criteria_set_scores_every_rule(world, dagster_instance):
    # 40 positive rules (20 × price exists, 20 × roe >= 10, +100 each) and 10 negative ones
    # (pe_ratio < 20, -100 each): max 4,000; AAA (pe 15, roe 15) scores 4000 - 1000 = 3000 and
    # BBB (pe 15, roe 5) 2000 - 1000 = 1000.
    fifty = [
        f.rule("price", "exists", None, 100) if i % 2 else f.rule("roe", "gte", "10", 100)
        for i in range(40)
    ] + [f.rule("pe_ratio", "lt", "20", -100) for _ in range(10)]
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", fifty)])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    scored = {
        r.symbol: r
        for r in rows(
            world,
            "SELECT symbol, score, max_possible_score, percentage, breakdown "
            "FROM asset_scores JOIN asset_score_breakdowns USING (user_id, symbol) "
            "WHERE user_id = :u",
            u=user,
        )
    }
    assert set(scored) == {"AAA", "BBB"}
    aaa, bbb = scored["AAA"], scored["BBB"]
    assert aaa.max_possible_score == bbb.max_possible_score == Decimal("4000.0000")
    assert (aaa.score, aaa.percentage) == (Decimal("3000.0000"), Decimal("75.0000"))
    assert (bbb.score, bbb.percentage) == (Decimal("1000.0000"), Decimal("25.0000"))
    for r in (aaa, bbb):
        assert [b["ruleId"] for b in r.breakdown] == [rule["id"] for rule in fifty]
    assert sum(b["points"] for b in aaa.breakdown) == 3000
    assert [b["matched"] for b in bbb.breakdown[:2]] == [False, True]  # roe 5 < 10; price
    calculations = assert_event_invariants(world)
    assert len(calculations[user]) == 1
    captured = calculations[user][0][1].payload["criteria"][0]["rules"]
    assert [r["id"] for r in captured] == [rule["id"] for rule in fifty]
    assert_history_unique(world)
    assert_scores_match_last_success(world)
    job = job_run(world)
    assert (job.status, job.users_processed, job.users_failed) == ("completed", 1, 0)
    assert job.metrics["assets_scored"] == 2


def test_a_user_whose_holdings_are_all_ignored_is_not_active(world, dagster_instance):
    active = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    ignored = f.user(
        world,
        holdings=[("AAA", "USD"), ("BBB", "USD")],
        criteria=[("US_TECH", "stock", rules())],
    )
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE portfolio_assets SET is_ignored = true WHERE portfolio_id IN "
                "(SELECT id FROM portfolios WHERE user_id = :u)"
            ),
            {"u": ignored},
        )
    result = snapshots(dagster_instance)
    assert result.success
    members = rows(
        world, "SELECT user_id::text AS u FROM scoring_batches WHERE score_date = :d", d=DATE
    )
    assert [m.u for m in members] == [active]
    assert result.asset_materializations_for_node("active_users")[0].metadata["users"].value == 1
    assert batch(dagster_instance).success
    assert rows(world, "SELECT 1 FROM calculation_events WHERE user_id = :u", u=ignored) == []
    assert rows(world, "SELECT 1 FROM asset_scores WHERE user_id = :u", u=ignored) == []
    assert set(assert_event_invariants(world)) == {active}
    assert_scores_match_last_success(world)
    job = job_run(world)
    assert (job.status, job.users_processed, job.users_failed) == ("completed", 1, 0)
    assert job.metrics["users_total"] == 1


def test_instruments_without_fundamentals_score_with_missing_fundamental(
    world, dagster_instance, tmp_path, monkeypatch
):
    # NOF has a price but no fundamentals row at all; DDD has neither price nor fundamentals.
    f.instrument(world, "NOF", market="US_TECH", currency="USD")
    env = f.provider_files(
        tmp_path / "nof",
        rates={"EUR": "0.5"},
        prices={
            "AAA": ("30", "USD"),
            "BBB": ("0.3", "USD"),
            "CCC": ("10", "EUR"),
            "NOF": ("7", "USD"),
        },
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    us = f.user(world, holdings=[("NOF", "USD")], criteria=[("US_TECH", "stock", rules())])
    eu_rules = [f.rule("roe", "gte", "10", 5), f.rule("price", "exists", None, 1)]
    eu = f.user(
        world,
        base_currency="EUR",
        holdings=[("CCC", "EUR")],
        criteria=[("EU_IND", "stock", eu_rules)],
    )
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    skipped = {
        "ruleId": None,
        "matched": False,
        "points": 0,
        "skippedReason": "missing_fundamental",
    }
    nof = rows(
        world,
        "SELECT score, max_possible_score, breakdown "
        "FROM asset_scores JOIN asset_score_breakdowns USING (user_id, symbol) "
        "WHERE user_id = :u AND symbol = 'NOF'",
        u=us,
    )[0]
    # pe_ratio and roe need fundamentals: skipped; price exists: matched.
    assert nof.score == Decimal("1.0000") and nof.max_possible_score == Decimal("16.0000")
    assert [{**b, "ruleId": None} for b in nof.breakdown[:2]] == [skipped, skipped]
    assert nof.breakdown[2]["matched"] is True and "skippedReason" not in nof.breakdown[2]
    ddd = rows(
        world,
        "SELECT score, percentage, breakdown "
        "FROM asset_scores JOIN asset_score_breakdowns USING (user_id, symbol) "
        "WHERE user_id = :u AND symbol = 'DDD'",
        u=eu,
    )[0]
    assert ddd.score == Decimal("0.0000") and ddd.percentage == Decimal("0.0000")
    assert [{**b, "ruleId": None} for b in ddd.breakdown] == [skipped, skipped]
    (ccc,) = rows(
        world, "SELECT score FROM asset_scores WHERE user_id = :u AND symbol = 'CCC'", u=eu
    )
    assert ccc.score == Decimal("1.0000")  # has fundamentals (no roe) and a price
    calculations = assert_event_invariants(world)
    inputs = calculations[us][0][1].payload
    assert "NOF" in inputs["assetIds"] and "NOF" not in inputs["fundamentals"]
    assert_history_unique(world)
    assert_scores_match_last_success(world)
    assert job_run(world).status == "completed"


def test_a_fundamental_that_is_not_a_number_counts_as_missing(world, dagster_instance, caplog):
    # NUMERIC takes 'NaN': AAA's eps compared with 0 raised decimal.InvalidOperation, and every
    # user scoring AAA failed with "[<class 'decimal.InvalidOperation'>]", naming nothing.
    with world.begin() as conn:
        conn.execute(sa.text("UPDATE instrument_fundamentals SET eps = 'NaN' WHERE symbol = 'AAA'"))
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    assert job_run(world).status == "completed"
    (aaa,) = rows(
        world,
        "SELECT breakdown FROM asset_score_breakdowns WHERE user_id = :u AND symbol = 'AAA'",
        u=user,
    )
    pe = aaa.breakdown[0]  # pe_ratio lt 15: no P/E without a number for eps
    assert pe["skippedReason"] == "missing_fundamental" and pe["matched"] is False
    assert aaa.breakdown[1]["matched"] is True  # roe 15 >= 10: the other fundamentals are used
    warned = [r.getMessage() for r in caplog.records if r.name == "scoring_pipeline.inputs"]
    assert warned and warned[0].endswith(
        f"fundamentals of {DATE}: 1 value(s) are not finite numbers and count as missing "
        "(their rules are skipped with missing_fundamental): AAA eps NaN"
    ), warned
    assert_event_invariants(world)


def _rules_object() -> str:
    return json.dumps({"rules": rules()})


def _unknown_operator() -> list[dict[str, Any]]:
    return [*rules(), f.rule("roe", "approximately", "10", 5)]


def _points_101() -> list[dict[str, Any]]:
    return [*rules(), f.rule("roe", "gte", "10", 101)]


def _between_reversed() -> list[dict[str, Any]]:
    return [*rules(), f.rule("roe", "between", "20", 5, value2="10")]


@pytest.mark.parametrize(
    "bad_rules",
    [_rules_object, _unknown_operator, _points_101, _between_reversed],
    ids=["rules-json-object", "unknown-operator", "points-101", "between-reversed"],
)
def test_invalid_criteria_fail_only_their_user(world, dagster_instance, bad_rules):
    # Both users land in batch b0000 (batch size 2): the bad one must not stop the healthy one.
    bad = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", bad_rules())])
    good = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    cvid = criteria_version_id(world, bad)
    assert snapshots(dagster_instance).success
    result = batch(dagster_instance)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    message = failure.step_failure_data.error.message
    assert "1 of 2 users" in message and bad in message and cvid in message

    calculations = assert_event_invariants(world)
    assert len(calculations[bad]) == len(calculations[good]) == 1
    bad_events = calculations[bad][0]
    # Criteria are validated before any input is captured (design notes).
    assert [e.event_type for e in bad_events] == FAILED_BEFORE_INPUTS
    completed = bad_events[-1].payload
    assert completed["status"] == "failed" and completed["stage"] == "criteria_validation"
    assert completed["error"]["type"] == "InvalidCriteriaError"
    assert cvid in completed["error"]["message"]
    assert calculations[good][0][-1].payload["status"] == "success"

    for table in ("asset_scores", "score_history"):
        assert rows(world, f"SELECT 1 FROM {table} WHERE user_id = :u", u=bad) == []
        assert (
            rows(world, f"SELECT count(*) AS n FROM {table} WHERE user_id = :u", u=good)[0].n == 2
        )
    assert_history_unique(world)
    assert_scores_match_last_success(world)

    outcome = rows(
        world,
        "SELECT status, users_success, users_failed, failed_users FROM scoring_batch_results "
        "WHERE score_date = :d AND batch_key = 'b0000'",
        d=DATE,
    )[0]
    assert (outcome.status, outcome.users_success, outcome.users_failed) == ("partial", 1, 1)
    assert [u["userId"] for u in outcome.failed_users] == [bad]
    job = job_run(world)
    assert (job.status, job.users_processed, job.users_failed) == ("partial", 2, 1)
    (entry,) = job.error_details["failedUsers"]
    assert entry["userId"] == bad and entry["stage"] == "criteria_validation"
    assert cvid in entry["error"]["message"]


def _materialise_batch_rounds(instance_ref: Any, start: Any, rounds: int, results: Any) -> None:
    """In a fresh process: materialise batch b0000 `rounds` times, each round released together
    with the other process by the barrier `start`."""
    instance = dg.DagsterInstance.from_ref(instance_ref)
    try:
        for _ in range(rounds):
            start.wait(timeout=60)
            result = batch(instance)
            results.put((result.run_id, result.success))
    finally:
        instance.dispose()


def test_the_same_batch_materialised_twice_at_once(world, dagster_instance, monkeypatch):
    # Two processes (as two run workers would be): two threads of one process deadlock inside
    # Dagster's own logging setup (`logging.config.dictConfig` at run start), whatever we do.
    monkeypatch.setenv("SCORING_BATCH_SIZE", "20")
    users = users_in_two_currencies(world, 12)
    assert snapshots(dagster_instance).success
    rounds = 2
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    ref = dagster_instance.get_ref()  # pickled to the spawned processes
    workers = [
        ctx.Process(target=_materialise_batch_rounds, args=(ref, start, rounds, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * rounds)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert [ok for _, ok in outcomes] == [True] * 2 * rounds

    calculations = assert_event_invariants(world)
    assert set(calculations) == set(users)
    for user in users:
        assert len(calculations[user]) == 2 * rounds
        assert all(c[-1].payload["status"] == "success" for c in calculations[user])
    # No interleaving of the two writes: a write stores its calculations' first two events, then
    # their last two (two COPYs, `payload_compression.copy_events`), so the calculations of one
    # write have overlapping id spans, those of different writes disjoint ones, and each write's
    # events fill one unbroken id range.
    spans = sorted((e[0].id, e[-1].id, e[0].u) for e in event_sets(world).values())
    writes: list[list[tuple[int, int, str]]] = []
    for span in spans:
        if writes and span[0] <= max(s[1] for s in writes[-1]):
            writes[-1].append(span)
        else:
            writes.append([span])
    assert len(writes) == 2 * rounds
    for write in writes:
        assert sorted(u for _, _, u in write) == sorted(users)
        first, last = write[0][0], max(s[1] for s in write)
        assert last - first + 1 == 4 * len(users), (first, last)
    assert_history_unique(world)
    assert rows(world, "SELECT count(*) AS n FROM score_history")[0].n == len(users) * 4
    assert rows(world, "SELECT count(*) AS n FROM asset_scores")[0].n == len(users) * 4
    assert_scores_match_last_success(world)
    outcomes_rows = rows(
        world, "SELECT batch_key, status, users_success, dagster_run_id FROM scoring_batch_results"
    )
    assert [(o.batch_key, o.status, o.users_success) for o in outcomes_rows] == [
        ("b0000", "success", len(users))
    ]
    assert outcomes_rows[0].dagster_run_id in {run_id for run_id, _ in outcomes}
    job = job_run(world)
    assert (job.status, job.users_processed, job.users_failed) == ("completed", len(users), 0)
    assert job.metrics["assets_scored"] == len(users) * 4


def test_criteria_turned_invalid_leave_the_previous_scores_untouched(world, dagster_instance):
    # Scored once, then the user's only criteria set is replaced by an invalid version (and a
    # second, valid set is added): the re-score fails the user as a whole and changes no score.
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    scores_sql = (
        "SELECT symbol, criteria_version_id, score, correlation_id, calculated_at FROM {} "
        "WHERE user_id = :u ORDER BY symbol"
    )
    before = rows(world, scores_sql.format("asset_scores"), u=user)
    history_before = rows(world, scores_sql.format("score_history"), u=user)
    assert len(before) == len(history_before) == 2
    invalid = "00000000-0000-4000-8000-0000000000b1"
    with world.begin() as conn:
        for cvid, market, version, text in (
            (invalid, "US_TECH", 2, json.dumps(_between_reversed())),
            ("00000000-0000-4000-8000-0000000000b2", "EU_IND", 1, json.dumps(rules())),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO criteria_versions (id, user_id, target_market, asset_type, "
                    "name, version, is_active, rules) VALUES (:i, :u, :m, 'stock', 'set', :v, "
                    "true, CAST(:r AS jsonb))"
                ),
                {"i": cvid, "u": user, "m": market, "v": version, "r": text},
            )
    again = batch(dagster_instance)
    assert not again.success
    assert rows(world, scores_sql.format("asset_scores"), u=user) == before
    assert rows(world, scores_sql.format("score_history"), u=user) == history_before
    calculations = assert_event_invariants(world)
    first, second = calculations[user]
    assert first[-1].payload["status"] == "success"
    assert [e.event_type for e in second] == FAILED_BEFORE_INPUTS
    assert second[-1].payload["stage"] == "criteria_validation"
    assert invalid in second[-1].payload["error"]["message"]
    assert_history_unique(world)
    job = job_run(world)
    assert (job.status, job.users_processed, job.users_failed) == ("failed", 1, 1)
    assert [u["userId"] for u in job.error_details["failedUsers"]] == [user]


def test_rescoring_after_a_criteria_change_uses_the_new_version(world, dagster_instance):
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    mate = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    old = criteria_version_id(world, user)
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    before = {
        r.symbol: r.score
        for r in rows(world, "SELECT symbol, score FROM asset_scores WHERE user_id = :u", u=user)
    }
    assert before == {"AAA": Decimal("6.0000"), "BBB": Decimal("1.0000")}

    new = "00000000-0000-4000-8000-0000000000c2"
    new_rules = [f.rule("price", "gt", "1", 50), f.rule("roe", "lt", "10", 7)]
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO criteria_versions (id, user_id, target_market, asset_type, name, "
                "version, is_active, rules) VALUES (:i, :u, 'US_TECH', 'stock', 'set', 2, true, "
                "CAST(:r AS jsonb))"
            ),
            {"i": new, "u": user, "r": json.dumps(new_rules)},
        )
    assert batch(dagster_instance).success

    assert_history_unique(world)
    assert_scores_match_last_success(world)
    current = {
        r.symbol: r
        for r in rows(
            world,
            "SELECT symbol, criteria_version_id::text AS cv, score, max_possible_score "
            "FROM asset_scores WHERE user_id = :u",
            u=user,
        )
    }
    assert {s: r.cv for s, r in current.items()} == {"AAA": new, "BBB": new}
    # AAA: price 30 > 1 -> 50, roe 15 -> 0; BBB: price 0.3 -> 0, roe 5 < 10 -> 7; max 57.
    assert {s: r.score for s, r in current.items()} == {
        "AAA": Decimal("50.0000"),
        "BBB": Decimal("7.0000"),
    }
    assert {r.max_possible_score for r in current.values()} == {Decimal("57.0000")}
    history = rows(
        world,
        "SELECT symbol, criteria_version_id::text AS cv, score FROM score_history "
        "WHERE user_id = :u AND score_date = :d ORDER BY symbol",
        u=user,
        d=DATE,
    )
    assert [(h.symbol, h.cv, h.score) for h in history] == [
        ("AAA", new, Decimal("50.0000")),
        ("BBB", new, Decimal("7.0000")),
    ]
    mate_versions = rows(
        world,
        "SELECT DISTINCT criteria_version_id::text AS cv FROM asset_scores WHERE user_id = :u",
        u=mate,
    )
    assert [m.cv for m in mate_versions] == [criteria_version_id(world, mate)]
    calculations = assert_event_invariants(world)
    assert len(calculations[user]) == 2
    versions = [c[1].payload["criteria"][0]["criteriaVersionId"] for c in calculations[user]]
    assert versions == [old, new]
    job = job_run(world)
    assert (job.status, job.users_processed, job.users_failed) == ("completed", 2, 0)
