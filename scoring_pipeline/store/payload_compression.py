"""How a calculation's event payloads are compressed on disk: INPUTS_CAPTURED with lz4 where the
server has it, everything else with pglz.

PostgreSQL compresses a `jsonb` payload over ~2 KB with the method `default_toast_compression`
names when the row is written, so the batch's events are COPYed in two statements under
`SET LOCAL`: each calculation's CALC_STARTED and INPUTS_CAPTURED first, then its
SCORES_COMPUTED and CALC_COMPLETED. Every calculation's events still get ids in its own order.

Why per event type (measured on the stock PostgreSQL 15, `docs/design.md` "Events"): a
1,000-user night's INPUTS_CAPTURED payloads parsed and stored in 0.91 s with lz4 against 1.76 s
with pglz, for 15 % more bytes (23.3 against 20.3 KB a payload), while SCORES_COMPUTED would
store 40 % more (4.5 against 3.2 KB) for a small saving, and the bytes a later night adds are
close to their target. A server built without lz4 (the embedded PostgreSQL 18 build) keeps
pglz for everything. Rows already stored keep the method they were written with; reading
either is transparent.
"""

import weakref
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from scoring_pipeline.store.copy import copy_text

INPUTS_METHOD = "lz4"
DEFAULT_METHOD = "pglz"
# The event types COPYed (and compressed) first, with INPUTS_METHOD.
CAPTURED_EVENTS = ("CALC_STARTED", "INPUTS_CAPTURED")

_LZ4: "weakref.WeakKeyDictionary[Engine, bool]" = weakref.WeakKeyDictionary()


def server_has_lz4(conn: Connection) -> bool:
    """Whether the connection's server was built with lz4 (asked once per engine)."""
    known = _LZ4.get(conn.engine)
    if known is None:
        known = bool(
            conn.execute(
                sa.text(
                    "SELECT :m = ANY(enumvals) FROM pg_settings "
                    "WHERE name = 'default_toast_compression'"
                ),
                {"m": INPUTS_METHOD},
            ).scalar()
        )
        _LZ4[conn.engine] = known
    return known


def inputs_method(conn: Connection) -> str:
    """The compression INPUTS_CAPTURED payloads get on this connection's server."""
    return INPUTS_METHOD if server_has_lz4(conn) else DEFAULT_METHOD


def compress_with(conn: Connection, method: str) -> None:
    """Compress what the rest of the open transaction writes with `method` (pglz or lz4)."""
    if method not in (INPUTS_METHOD, DEFAULT_METHOD):
        raise ValueError(f"unknown compression method {method!r}")
    conn.execute(sa.text(f"SET LOCAL default_toast_compression = {method}"))


def copy_events(
    conn: Connection,
    table: str,
    columns: Iterable[str],
    captured: Iterable[str],
    computed: Iterable[str],
) -> int:
    """COPY a batch's event lines in the caller's transaction: `captured` (each calculation's
    CALC_STARTED and INPUTS_CAPTURED, in calculation order) with the inputs' compression, then
    `computed` (the rest) with pglz. Returns the rows written."""
    names = tuple(columns)
    compress_with(conn, inputs_method(conn))
    count = copy_text(conn, table, names, captured)
    compress_with(conn, DEFAULT_METHOD)
    return count + copy_text(conn, table, names, computed)
