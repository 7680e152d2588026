"""A batch's write of the night's metric values: rows already stored with the same values are
neither rewritten nor locked (every batch of a night shows mostly the same ones), a differing
value (a refreshed snapshot) is updated, a new one inserted."""

import datetime as dt

import pytest
import sqlalchemy as sa

from scoring_pipeline.engine.batch import BatchOutput
from scoring_pipeline.store.metric_values import write_metric_values
from scoring_pipeline.store.month_partitions import ensure_partitions

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


def _stored(engine: sa.Engine) -> dict[tuple[str, str], tuple[str, str, str]]:
    """(symbol, base) -> (values as text, xmin, xmax) of each stored row."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT symbol, base_currency, metric_values::text AS v, xmin::text AS xmin, "
                "xmax::text AS xmax FROM score_metric_values WHERE score_date = :d"
            ),
            {"d": DAY},
        ).all()
    return {(r.symbol, r.base_currency): (r.v, r.xmin, r.xmax) for r in rows}


def test_metric_values_written_once_and_updated_only_when_they_differ(clean_db):
    with clean_db.begin() as conn:
        ensure_partitions(conn, DAY)
    first = {
        ("AAA", "USD"): '{"price":"10.50","pe_ratio":"7"}',
        ("AAA", "EUR"): '{"price":"10.50","pe_ratio":"7"}',
    }
    with clean_db.begin() as conn:
        assert write_metric_values(conn, _output(first)) == 2
    stored = _stored(clean_db)

    # The next batch shows the same values, in another key order of the JSON: nothing is
    # written, and the stored rows are not even locked (no new xmax).
    same = {k: '{"pe_ratio":"7","price":"10.50"}' for k in first}
    with clean_db.begin() as conn:
        assert write_metric_values(conn, _output(same)) == 0
    assert _stored(clean_db) == stored
    assert all(xmax == "0" for _, _, xmax in stored.values())

    # A refreshed snapshot: the differing row is updated, a new pair inserted, the rest kept.
    changed = {
        ("AAA", "USD"): '{"price":"11.00","pe_ratio":"7"}',
        ("AAA", "EUR"): first[("AAA", "EUR")],
        ("BBB", "USD"): '{"price":"3"}',
    }
    with clean_db.begin() as conn:
        assert write_metric_values(conn, _output(changed)) == 2
    after = _stored(clean_db)
    assert after[("AAA", "EUR")] == stored[("AAA", "EUR")]
    assert after[("AAA", "USD")][0] == '{"price": "11.00", "pe_ratio": "7"}'
    assert after[("BBB", "USD")][0] == '{"price": "3"}'


def test_a_process_sends_only_pairs_it_has_not_seen_stored_and_forgets_a_pruned_date(
    clean_db, monkeypatch
):
    """`store_metric_values` remembers what it stored for a date, so the night's next batches
    send only new or changed pairs; when pairs it would skip are gone (their month pruned), it
    sends all again and the rows are back."""
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
    first = {("AAA", "USD"): '{"price":"10.50"}', ("BBB", "USD"): '{"price":"3"}'}
    assert metric_values.store_metric_values(clean_db, _output(first)) == 2
    assert metric_values.store_metric_values(clean_db, _output(first)) == 0
    changed = {**first, ("AAA", "USD"): '{"price":"11.00"}', ("CCC", "EUR"): '{"price":"1"}'}
    assert metric_values.store_metric_values(clean_db, _output(changed)) == 2
    assert sent == [set(first), set(), {("AAA", "USD"), ("CCC", "EUR")}]
    assert _stored(clean_db)[("AAA", "USD")][0] == '{"price": "11.00"}'

    # The date's rows are gone (as `prune` drops a month), and another market group's batch
    # stored pairs of its own since: everything is sent and stored again.
    with clean_db.begin() as conn:
        conn.execute(sa.text("DELETE FROM score_metric_values WHERE score_date = :d"), {"d": DAY})
    others = {(f"BR{i}", "USD"): '{"price":"1"}' for i in range(5)}
    with clean_db.begin() as conn:
        assert metric_values.write_metric_values(conn, _output(others)) == 5
    assert metric_values.store_metric_values(clean_db, _output(changed)) == 3
    assert sent[-1] == set(changed)
    assert set(_stored(clean_db)) == set(changed) | set(others)
