"""Plans for the statements that read or replace one batch's users' rows of a large table.

Such a statement touches a sliver of the table (50 users' ~10,000 of millions of rows) through
its primary key, but PostgreSQL plans it from the table's statistics, and those can be far off
in the middle of a night: a first night grows `asset_scores` from empty to millions of rows
before autovacuum analyzes it (never analyzed, PostgreSQL 15 assumes a few pages). Measured at
10,000 users on a stock PostgreSQL 15: each batch's "later scores?" read and its delete of the
replaced scores ran a parallel sequential scan of the whole table, 35 s each in a 250 s night,
against 3 s each on PostgreSQL 18. Inside `by_index`, the transaction's statements take an
index where one applies, and neither JIT-compile nor start parallel workers for a plan that
`enable_seqscan = off` only makes look expensive.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# What `by_index` sets for the statements inside it.
_SETTINGS = {"enable_seqscan": "off", "jit": "off", "max_parallel_workers_per_gather": "0"}


def _set_local(conn: Connection, values: dict[str, str]) -> None:
    params = {f"v{i}": value for i, value in enumerate(values.values())}
    calls = ", ".join(f"set_config('{name}', :v{i}, true)" for i, name in enumerate(values))
    conn.execute(sa.text(f"SELECT {calls}"), params)


@contextmanager
def by_index(conn: Connection) -> Iterator[None]:
    """The statements inside plan index scans. The settings are the transaction's (`SET LOCAL`):
    the previous values come back on leaving, and a failed transaction drops them anyway."""
    names = ", ".join(f"current_setting('{name}')" for name in _SETTINGS)
    previous = dict(zip(_SETTINGS, conn.execute(sa.text(f"SELECT {names}")).one(), strict=True))
    _set_local(conn, _SETTINGS)
    yield
    _set_local(conn, previous)
