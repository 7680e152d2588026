"""`score_history`'s key kept by a trigger, its lookups by two deduplicated indexes.

The primary key (user_id, symbol, score_date) was a third of what a later night adds on disk:
~60 B a row in a B-tree whose leaf pages split on every night (each user-symbol's new entry
goes right after its previous night's). It is replaced by
- `ix_score_history_user_date` (user_id, score_date): a user's rows of a date, what the nights
  delete and check; B-tree deduplication keeps a user's ~200 rows of a night as one key and a
  posting list of row pointers (~9 B a row);
- `ix_score_history_user_symbol` (user_id, symbol): a user's history of one instrument, what a
  chart reads; a month's later nights add a row pointer to each posting list (a few bytes a row);
- the trigger `score_history_unique_key`: after every INSERT or COPY statement, it locks each
  (user, date) written and fails the statement with `unique_violation` when one of them has an
  instrument twice, so the key is still enforced by the database, concurrent writers included
  (READ COMMITTED: after the lock, the check sees what the other writer committed). Rows are
  written through the parent table (a statement on a month partition itself is not checked).
See docs/design.md, "What a later night adds on disk". Downgrading restores the primary key
(and fails if rows violate it, which the trigger prevents).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# `jit = off`: the check is a few milliseconds of work a batch; a JIT compile would cost ~0.2 s.
# The symbols are grouped under the "C" collation (bytes compared, not the locale's rules): it is
# only equality that matters, and it keeps the grouping off the (user_id, symbol) index, whose
# order would otherwise tempt the planner into reading every date of the user's month.
_CHECK_FUNCTION = """
CREATE FUNCTION score_history_unique_key() RETURNS trigger LANGUAGE plpgsql
SET jit = off AS $$
DECLARE
    users uuid[];
    dates date[];
    dup record;
BEGIN
    SELECT array_agg(k.user_id ORDER BY k.user_id, k.score_date),
           array_agg(k.score_date ORDER BY k.user_id, k.score_date)
    INTO users, dates
    FROM (SELECT DISTINCT user_id, score_date FROM inserted) k;
    -- One lock per (user, date) written, taken in key order (no deadlock between writers):
    -- a concurrent writer of the same keys waits here until this transaction ends. The lock's
    -- key is the user's canonical text hashed with the date's day number as seed (a date's text
    -- would depend on the session's DateStyle).
    PERFORM pg_advisory_xact_lock(hashtextextended(CAST(k.user_id AS text),
                                                   k.score_date - DATE '2000-01-01'))
    FROM unnest(users, dates) AS k(user_id, score_date);
    SELECT k.user_id, d.symbol, k.score_date INTO dup
    FROM unnest(users, dates) AS k(user_id, score_date),
    LATERAL (SELECT h.symbol COLLATE "C" AS symbol FROM score_history h
             WHERE h.user_id = k.user_id AND h.score_date = k.score_date
             GROUP BY h.symbol COLLATE "C" HAVING count(*) > 1 LIMIT 1) d
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'duplicate key value violates the key of "score_history"'
            USING ERRCODE = 'unique_violation',
                  DETAIL = format('Key (user_id, symbol, score_date)=(%s, %s, %s) already exists.',
                                  dup.user_id, dup.symbol, dup.score_date),
                  TABLE = 'score_history';
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE score_history DROP CONSTRAINT score_history_pkey")
    op.execute("CREATE INDEX ix_score_history_user_date ON score_history (user_id, score_date)")
    op.execute("CREATE INDEX ix_score_history_user_symbol ON score_history (user_id, symbol)")
    op.execute(_CHECK_FUNCTION)
    op.execute(
        "CREATE TRIGGER score_history_unique_key AFTER INSERT ON score_history "
        "REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT "
        "EXECUTE FUNCTION score_history_unique_key()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER score_history_unique_key ON score_history")
    op.execute("DROP FUNCTION score_history_unique_key()")
    op.execute("DROP INDEX ix_score_history_user_symbol")
    op.execute("DROP INDEX ix_score_history_user_date")
    op.execute(
        "ALTER TABLE score_history ADD CONSTRAINT score_history_pkey "
        "PRIMARY KEY (user_id, symbol, score_date)"
    )
