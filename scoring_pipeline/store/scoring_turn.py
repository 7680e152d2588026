"""A batch's scoring turn: one run at a time scores a given batch, from its scoring to its write.

The write's own lock (`batch_write`) keeps two writes of a batch from interleaving, but both runs
would still score it, one after the other. Runs that overlap on a batch (the Runs page's
*Re-execute … from failure* with a failed run and its failed re-execution both selected, or
clicked twice) take turns here instead, so the later one can see that the batch has landed
meanwhile and keep it rather than score it a second time.
"""

import contextlib
import datetime as dt
import time
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# Polled rather than waited on in the server: a run terminated while it waits stops at once
# (its worker interrupts Python, not a blocked statement) and leaves no session waiting behind.
_POLL_S = 0.1


@contextlib.contextmanager
def scoring_turn(
    engine: Engine, score_date: dt.date, market_group: str, batch: str
) -> Iterator[None]:
    """Hold the batch's scoring turn (a session-level advisory lock, on its own connection)
    until the block ends: the batch is scored and written in it."""
    key = {"k": f"{score_date.isoformat()}|{market_group}|{batch}"}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        take = sa.text("SELECT pg_try_advisory_lock(hashtext('scoring-turn:' || :k))")
        while not conn.execute(take, key).scalar_one():
            time.sleep(_POLL_S)
        try:
            yield
        finally:
            try:
                conn.execute(
                    sa.text("SELECT pg_advisory_unlock(hashtext('scoring-turn:' || :k))"), key
                )
            except Exception:  # noqa: BLE001 - the lock ends with its session: drop the session
                conn.invalidate()
