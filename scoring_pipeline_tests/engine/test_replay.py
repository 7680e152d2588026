"""Replay (SPEC §5) of a stored calculation: the compact SCORES_COMPUTED (each result's
`breakdown` a string of outcomes) is reproduced exactly from INPUTS_CAPTURED, so are events
recorded in the earlier forms (canonical breakdowns; the compact form under `outcomes`), and a
tampered event of any form is caught."""

import json

import pytest
import sqlalchemy as sa

from scoring_pipeline.store.replay import STORED_BREAKDOWNS, replay
from scoring_pipeline_tests.scenario import batch, rows, snapshots, users_in_two_currencies

pytestmark = pytest.mark.db


def _set_results(engine, correlation_id, results):
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE calculation_events SET payload = jsonb_set(payload, '{results}', "
                "CAST(:r AS jsonb)) WHERE correlation_id = CAST(:c AS uuid) "
                "AND event_type = 'SCORES_COMPUTED'"
            ),
            {"r": json.dumps(results), "c": correlation_id},
        )


def _replay(engine, correlation_id):
    with engine.connect() as conn:
        return replay(conn, correlation_id)


def test_replay_reproduces_compact_and_legacy_events_and_catches_tampering(world, dagster_instance):
    user = users_in_two_currencies(world, 2)[1]  # EUR base: converted metrics in its breakdowns
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    (event,) = rows(
        world,
        "SELECT correlation_id::text AS c, payload FROM calculation_events "
        "WHERE user_id = :u AND event_type = 'SCORES_COMPUTED'",
        u=user,
    )
    results = event.payload["results"]
    # SPEC §5's keys: `breakdown` in its compact form, one outcome character per rule.
    assert all(
        set(r)
        == {"assetId", "criteriaVersionId", "score", "maxPossibleScore", "percentage"}
        | {"breakdown"}
        and isinstance(r["breakdown"], str)
        and set(r["breakdown"]) <= set("mus")
        for r in results
    ), results
    assert _replay(world, event.c).reproduced

    def flipped(outcomes: str) -> str:
        return "".join("m" if c != "m" else "u" for c in outcomes)

    tampered = [dict(r) for r in results]
    tampered[0]["breakdown"] = flipped(tampered[0]["breakdown"])
    _set_results(world, event.c, tampered)
    result = _replay(world, event.c)
    assert not result.reproduced and tampered[0]["assetId"] in result.differences[0]

    # As recorded from the compact form until 2026-12-04: the outcomes under `outcomes`.
    earlier = [
        {k: v for k, v in r.items() if k != "breakdown"} | {"outcomes": r["breakdown"]}
        for r in results
    ]
    _set_results(world, event.c, earlier)
    assert _replay(world, event.c).reproduced
    earlier[0]["outcomes"] = flipped(earlier[0]["outcomes"])
    _set_results(world, event.c, earlier)
    assert not _replay(world, event.c).reproduced

    # The same calculation as recorded before the compact form: canonical breakdowns.
    canonical = {
        r.symbol: r.breakdown
        for r in rows(
            world, "SELECT symbol, breakdown FROM asset_score_breakdowns WHERE user_id = :u", u=user
        )
    }
    legacy = [
        {k: v for k, v in r.items() if k != "breakdown"} | {"breakdown": canonical[r["assetId"]]}
        for r in results
    ]
    _set_results(world, event.c, legacy)
    assert _replay(world, event.c).reproduced
    legacy[-1]["breakdown"][0]["points"] += 1
    _set_results(world, event.c, legacy)
    assert not _replay(world, event.c).reproduced


def test_replay_of_failed_and_damaged_calculations_says_what_they_are(world, dagster_instance):
    from scoring_pipeline.errors import ReplayError
    from scoring_pipeline_tests import factories as f

    # JPY has no rate on the date: the calculation fails at its conversion, inputs captured.
    jpy = f.user(
        world,
        base_currency="JPY",
        holdings=[("CCC", "EUR")],
        criteria=[("EU_IND", "stock", [f.rule("revenue", "gt", "10", 10)])],
    )
    good = users_in_two_currencies(world, 1)[0]
    assert snapshots(dagster_instance).success
    batch(dagster_instance)

    def calculation(user):
        return rows(
            world,
            "SELECT correlation_id::text AS c FROM calculation_events "
            "WHERE user_id = :u AND event_type = 'CALC_STARTED'",
            u=user,
        )[0].c

    failed = calculation(jpy)
    with world.connect() as conn, pytest.raises(ReplayError) as caught:
        replay(conn, failed)
    message = str(caught.value)  # it was the recomputation's bare error
    assert message.startswith(f"calculation {failed} failed (") and "JPY" in message, message
    assert "its captured inputs fail again when replayed: " in message, message

    done = calculation(good)
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "DELETE FROM calculation_events WHERE correlation_id = CAST(:c AS uuid) "
                "AND event_type = 'INPUTS_CAPTURED'"
            ),
            {"c": done},
        )
    with world.connect() as conn, pytest.raises(ReplayError) as caught:
        replay(conn, done)
    assert str(caught.value) == (  # it said the calculation "failed before its inputs"
        f"calculation {done} completed, but its INPUTS_CAPTURED event is missing from "
        "calculation_events (deleted?): it cannot be replayed"
    )


def test_scores_not_rescored_keep_showing_the_values_they_were_computed_with(
    world, dagster_instance
):
    """A batch re-scored after a fundamental changed stores the new values as a new revision:
    the other batch's scores (and every history row) still show, through the views, the
    values their calculations used, and replay compares those stored breakdowns too."""
    users_in_two_currencies(world, 4)  # batches of 2: b0000 and b0001
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance, "b0000").success
    assert batch(dagster_instance, "b0001").success

    def shown(view, batch_key):
        return {
            (r.u, r.symbol): r.breakdown
            for r in rows(
                world,
                f"SELECT v.user_id::text AS u, v.symbol, v.breakdown FROM {view} v "
                "JOIN scoring_batches b ON b.user_id = v.user_id AND b.score_date = v.score_date "
                "WHERE b.batch_key = :k",
                k=batch_key,
            )
        }

    def roe(breakdowns):
        return {
            entry.get("actualValue")
            for (_, symbol), entries in breakdowns.items()
            if symbol == "AAA"
            for entry in entries
            if entry["ruleId"] == entries[1]["ruleId"]  # the roe rule (second of rules())
        }

    before = {view: shown(view, "b0000") for view in STORED_BREAKDOWNS}
    assert roe(before["asset_score_breakdowns"]) == {"15"}
    with world.begin() as conn:
        conn.execute(sa.text("UPDATE instrument_fundamentals SET roe = 25 WHERE symbol = 'AAA'"))
    assert batch(dagster_instance, "b0001").success  # re-materialised, as a retry does

    for view in STORED_BREAKDOWNS:
        assert shown(view, "b0000") == before[view], view
        assert roe(shown(view, "b0001")) == {"25"}, view
    revisions = rows(
        world,
        "SELECT base_currency, array_agg(revision ORDER BY revision) AS r "
        "FROM score_metric_values WHERE symbol = 'AAA' GROUP BY base_currency",
    )
    rescored = {
        r.base_currency
        for r in rows(
            world,
            "SELECT u.base_currency FROM users u JOIN scoring_batches b ON b.user_id = u.id "
            "WHERE b.batch_key = 'b0001'",
        )
    }
    assert {(r.base_currency, tuple(r.r)) for r in revisions} == {
        (base, (1, 2) if base in rescored else (1,)) for base in ("USD", "EUR")
    }

    calculations = {
        key: rows(
            world,
            "SELECT DISTINCT a.correlation_id::text AS c FROM asset_scores a "
            "JOIN scoring_batches b ON b.user_id = a.user_id WHERE b.batch_key = :k",
            k=key,
        )[0].c
        for key in ("b0000", "b0001")
    }
    for correlation_id in calculations.values():
        result = _replay(world, correlation_id)
        assert result.reproduced, result.differences
        assert result.stored_breakdowns == 8  # 4 assets: current scores and history

    # A stored score naming the wrong values is caught.
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE asset_scores SET values_revision = 2 "
                "WHERE correlation_id = CAST(:c AS uuid) AND symbol = 'AAA'"
            ),
            {"c": calculations["b0000"]},
        )
    result = _replay(world, calculations["b0000"])
    assert not result.reproduced
    assert [d.split(" shows ")[0] for d in result.differences] == ["AAA: asset_score_breakdowns"]
