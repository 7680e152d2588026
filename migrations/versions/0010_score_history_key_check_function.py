"""`score_history`'s key check as a function of its own, for writers that COPY into a month.

PostgreSQL's COPY inserts row by row, not in its multi-row batches, into a partitioned table
that has a statement trigger with a transition table (`REFERENCING NEW TABLE`): the trigger
`score_history_unique_key` of migration 0008 made every night's history COPY go one row at a time
(`copyfrom.c`: "for partitioned tables we can't support multi-inserts when there are any
statement level insert triggers"). A COPY straight into the month partition has no such trigger
and inserts in batches; the writer then checks the (user, date)s it wrote by calling
`score_history_check_keys(users, dates)` in the same transaction.

- `score_history_check_keys(users uuid[], dates date[])`: what the trigger did after its
  statement, for the given keys (the arrays pair up; duplicates and order do not matter): take a
  transaction advisory lock per (user, date) in key order, then fail with `unique_violation`
  when one of them holds a symbol twice.
- `score_history_unique_key()`, the trigger's function, now collects the statement's
  (user, date)s and calls it: writes through the parent table are checked as before.

Downgrading drops the function and restores 0008's trigger function.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from alembic import context, op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The lock and the check are 0008's, unchanged; see that migration for why `jit = off`, the
# "C" collation and the lock's key.
_CHECK_KEYS = """
CREATE FUNCTION score_history_check_keys(users uuid[], dates date[]) RETURNS void
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    key_users uuid[];
    key_dates date[];
    dup record;
BEGIN
    SELECT array_agg(k.user_id ORDER BY k.user_id, k.score_date),
           array_agg(k.score_date ORDER BY k.user_id, k.score_date)
    INTO key_users, key_dates
    FROM (SELECT DISTINCT user_id, score_date
          FROM unnest(users, dates) AS t(user_id, score_date)) k;
    PERFORM pg_advisory_xact_lock(hashtextextended(CAST(k.user_id AS text),
                                                   k.score_date - DATE '2000-01-01'))
    FROM unnest(key_users, key_dates) AS k(user_id, score_date);
    SELECT k.user_id, d.symbol, k.score_date INTO dup
    FROM unnest(key_users, key_dates) AS k(user_id, score_date),
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
END
$$
"""

_TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION score_history_unique_key() RETURNS trigger LANGUAGE plpgsql
SET jit = off AS $$
DECLARE
    users uuid[];
    dates date[];
BEGIN
    SELECT array_agg(k.user_id), array_agg(k.score_date) INTO users, dates
    FROM (SELECT DISTINCT user_id, score_date FROM inserted) k;
    PERFORM score_history_check_keys(users, dates);
    RETURN NULL;
END
$$
"""


def _function_of_0008() -> str:
    """Migration 0008's trigger function, which the downgrade puts back."""
    text: str = context.script.get_revision("0008").module._CHECK_FUNCTION
    return text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute(_CHECK_KEYS)
    op.execute(_TRIGGER_FUNCTION)


def downgrade() -> None:
    op.execute(_function_of_0008())
    op.execute("DROP FUNCTION score_history_check_keys(uuid[], date[])")
