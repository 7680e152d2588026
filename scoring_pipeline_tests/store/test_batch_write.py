"""A batch's write of the night's metric values: rows already stored with the same values are
neither rewritten nor locked (every batch of a night shows mostly the same ones); differing values
(a refreshed snapshot) are the pair's next revision, and stored rows never change."""

import datetime as dt

import pytest
import sqlalchemy as sa

from scoring_pipeline.engine.batch import BatchOutput
from scoring_pipeline.store.metric_values import StoredValues, write_metric_values
from scoring_pipeline.store.month_partitions import (
    drop,
    ensure_partitions,
    month_partition,
    partitions,
)

pytestmark = pytest.mark.db

DAY = dt.date(2026, 11, 27)


def _output(values: dict[tuple[str, str], str]) -> BatchOutput:
    return BatchOutput(
        score_date=DAY,
        batch_key="b0000",
        job_correlation_id="j",
        calculated_at=dt.datetime(2026, 11, 27, 4, tzinfo=dt.UTC),
        users=[],
        users_skipped=[],
        metric_values=values,
    )


def _stored(engine: sa.Engine) -> dict[tuple[str, str, int], tuple[str, str, str]]:
    """(symbol, base, revision) -> (values as text, xmin, xmax) of each stored row."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT symbol, base_currency, revision, metric_values::text AS v, "
                "xmin::text AS xmin, xmax::text AS xmax FROM score_metric_values "
                "WHERE score_date = :d"
            ),
            {"d": DAY},
        ).all()
    return {(r.symbol, r.base_currency, r.revision): (r.v, r.xmin, r.xmax) for r in rows}


def test_metric_values_written_once_and_never_changed_differing_ones_are_a_new_revision(
    clean_db,
):
    with clean_db.begin() as conn:
        ensure_partitions(conn, DAY)
    first = {
        ("AAA", "USD"): '{"price":"10.50","pe_ratio":"7"}',
        ("AAA", "EUR"): '{"price":"10.50","pe_ratio":"7"}',
    }
    with clean_db.begin() as conn:
        assert write_metric_values(conn, _output(first)) == StoredValues(
            2, {("AAA", "USD"): 1, ("AAA", "EUR"): 1}
        )
    stored = _stored(clean_db)

    # The next batch shows the same values, in another key order of the JSON: nothing is
    # written, and the stored rows are not even locked (no new xmax).
    same = {k: '{"pe_ratio":"7","price":"10.50"}' for k in first}
    with clean_db.begin() as conn:
        assert write_metric_values(conn, _output(same)) == StoredValues(
            0, {("AAA", "USD"): 1, ("AAA", "EUR"): 1}
        )
    assert _stored(clean_db) == stored
    assert all(xmax == "0" for _, _, xmax in stored.values())

    # A refreshed snapshot: the differing pair gets revision 2 beside revision 1, which the
    # scores not re-scored still name; a new pair is inserted; the rest kept.
    changed = {
        ("AAA", "USD"): '{"price":"11.00","pe_ratio":"7"}',
        ("AAA", "EUR"): first[("AAA", "EUR")],
        ("BBB", "USD"): '{"price":"3"}',
    }
    with clean_db.begin() as conn:
        assert write_metric_values(conn, _output(changed)) == StoredValues(
            2, {("AAA", "USD"): 2, ("AAA", "EUR"): 1, ("BBB", "USD"): 1}
        )
    after = _stored(clean_db)
    assert after[("AAA", "EUR", 1)] == stored[("AAA", "EUR", 1)]
    assert after[("AAA", "USD", 1)] == stored[("AAA", "USD", 1)]
    assert after[("AAA", "USD", 2)][0] == '{"price": "11.00", "pe_ratio": "7"}'
    assert after[("BBB", "USD", 1)][0] == '{"price": "3"}'

    # Back to the first values (a refresh undone): their revision is found, nothing written.
    with clean_db.begin() as conn:
        assert write_metric_values(conn, _output(first)) == StoredValues(
            0, {("AAA", "USD"): 1, ("AAA", "EUR"): 1}
        )
    assert len(_stored(clean_db)) == 4


def test_a_process_sends_only_pairs_it_has_not_seen_stored_and_forgets_a_pruned_date(
    clean_db, monkeypatch
):
    """`store_metric_values` remembers what it stored for a date, so the night's next batches
    send only new or changed pairs; when pairs it would skip are gone (their month pruned and
    made again, or truncated), it sends all again and the rows are back."""
    import scoring_pipeline.store.metric_values as metric_values

    with clean_db.begin() as conn:
        ensure_partitions(conn, DAY)
    monkeypatch.setattr(metric_values, "_KNOWN", {})
    sent: list[set[tuple[str, str]]] = []
    write = metric_values.write_metric_values

    def recording_write(conn, output, values=None):  # type: ignore[no-untyped-def]
        sent.append(set(values if values is not None else output.metric_values))
        return write(conn, output, values)

    monkeypatch.setattr(metric_values, "write_metric_values", recording_write)
    store = metric_values.store_metric_values
    first = {("AAA", "USD"): '{"price":"10.50"}', ("BBB", "USD"): '{"price":"3"}'}
    assert store(clean_db, _output(first)) == StoredValues(2, dict.fromkeys(first, 1))
    assert store(clean_db, _output(first)) == StoredValues(0, dict.fromkeys(first, 1))
    changed = {**first, ("AAA", "USD"): '{"price":"11.00"}', ("CCC", "EUR"): '{"price":"1"}'}
    revisions = {("AAA", "USD"): 2, ("BBB", "USD"): 1, ("CCC", "EUR"): 1}
    assert store(clean_db, _output(changed)) == StoredValues(2, revisions)
    assert sent == [set(first), set(), {("AAA", "USD"), ("CCC", "EUR")}]
    assert _stored(clean_db)[("AAA", "USD", 2)][0] == '{"price": "11.00"}'
    # The first values again (a refresh undone): sent, and the server finds their revision 1.
    assert store(clean_db, _output(first)) == StoredValues(0, dict.fromkeys(first, 1))
    assert sent[-1] == {("AAA", "USD")}

    # The date's month is dropped (`prune`) and made again, and another market group's batch
    # stored pairs of its own since: everything is sent and stored again.
    with clean_db.begin() as conn:
        month = month_partition(conn, "score_metric_values", DAY)
        drop(conn, [p for p in partitions(conn) if p.name == month])
        ensure_partitions(conn, DAY)
    others = {(f"BR{i}", "USD"): '{"price":"1"}' for i in range(5)}
    with clean_db.begin() as conn:
        assert metric_values.write_metric_values(conn, _output(others)).written == 5
    assert store(clean_db, _output(changed)) == StoredValues(3, dict.fromkeys(changed, 1))
    assert sent[-1] == set(changed)
    assert {(s, b) for s, b, _ in _stored(clean_db)} == set(changed) | set(others)
    # Truncated (as the tests empty the tables between them): sent and stored again too.
    assert store(clean_db, _output(changed)) == StoredValues(0, dict.fromkeys(changed, 1))
    assert sent[-1] == set()
    with clean_db.begin() as conn:
        conn.execute(sa.text("TRUNCATE score_metric_values"))
    assert store(clean_db, _output(changed)) == StoredValues(3, dict.fromkeys(changed, 1))
    assert sent[-1] == set(changed)
