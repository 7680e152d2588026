"""Replay (SPEC §5) of a stored calculation: the compact SCORES_COMPUTED is reproduced exactly
from INPUTS_CAPTURED, so is an event recorded before the compact form (canonical breakdowns),
and a tampered event of either form is caught."""

import json

import pytest
import sqlalchemy as sa

from scoring_pipeline.store.replay import replay
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
    assert all(set(r) >= {"outcomes", "score"} and "breakdown" not in r for r in results)
    assert _replay(world, event.c).reproduced

    tampered = [dict(r) for r in results]
    tampered[0]["outcomes"] = "".join("m" if c != "m" else "u" for c in tampered[0]["outcomes"])
    _set_results(world, event.c, tampered)
    result = _replay(world, event.c)
    assert not result.reproduced and tampered[0]["assetId"] in result.differences[0]

    # The same calculation as recorded before the compact form: canonical breakdowns.
    canonical = {
        r.symbol: r.breakdown
        for r in rows(
            world, "SELECT symbol, breakdown FROM asset_score_breakdowns WHERE user_id = :u", u=user
        )
    }
    legacy = [
        {k: v for k, v in r.items() if k != "outcomes"} | {"breakdown": canonical[r["assetId"]]}
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
