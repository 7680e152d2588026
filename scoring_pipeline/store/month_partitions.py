"""Monthly range partitions of the tables that grow every night, by score date.

`score_history`, `calculation_events` and `score_metric_values` are PostgreSQL declarative range
partitions (migration 0005), one partition per calendar month: `score_history_2026_11` holds
[2026-11-01, 2026-12-01). A night creates its month's partitions and the next month's before it
writes (`ensure_partitions`, idempotent and safe to race); nothing is ever dropped but by
`scoring-pipeline prune --before DATE --yes`, which detaches and drops whole months that end on
or before DATE (`prunable`, `drop`). A new month is made as a table of its own, its columns in
the order that wastes no alignment padding, then attached (`_compact_columns`).
"""

import datetime as dt
import re
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

PARTITIONED_TABLES = ("score_history", "calculation_events", "score_metric_values")
# What a night's month keeps of its calculations: gone with it, they can no longer be replayed.
HISTORY_TABLES = ("score_history", "calculation_events")
_BOUNDS = re.compile(r"FROM \('(\d{4}-\d{2}-\d{2})'\) TO \('(\d{4}-\d{2}-\d{2})'\)")


@dataclass(frozen=True, slots=True)
class Partition:
    """One month of one partitioned table."""

    table: str
    name: str
    start: dt.date
    end: dt.date  # exclusive
    rows: int  # the planner's estimate (exact after ANALYZE; -1 when never analysed)
    bytes: int
    rows_exact: bool = False  # `rows` was counted (`counted`), not estimated


def month_of(day: dt.date) -> tuple[dt.date, dt.date]:
    """The first day of `day`'s month and of the month after."""
    first = day.replace(day=1)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    return first, following


def partition_name(table: str, first: dt.date) -> str:
    return f"{table}_{first:%Y_%m}"


def ensure_partitions(conn: Connection, score_date: dt.date, *, months_ahead: int = 1) -> list[str]:
    """Create the partitions of `score_date`'s month (and `months_ahead` after) that are missing;
    returns the names created. Creators serialise on an advisory lock; a night whose partitions
    exist (every night but the first of a month) only looks them up."""
    wanted = []
    first = score_date
    for _ in range(months_ahead + 1):
        start, end = month_of(first)
        wanted += [
            (table, partition_name(table, start), start, end) for table in PARTITIONED_TABLES
        ]
        first = end
    if not _missing(conn, wanted):
        return []
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('scoring:table_partitions'))"))
    created = []
    for table, name, start, end in _missing(conn, wanted):
        conn.execute(sa.text(f'CREATE TABLE "{name}" ({", ".join(_compact_columns(conn, table))})'))
        conn.execute(
            sa.text(
                f'ALTER TABLE {table} ATTACH PARTITION "{name}" '
                f"FOR VALUES FROM ('{start}') TO ('{end}')"
            )
        )
        created.append(name)
    return created


def month_partition(conn: Connection, table: str, day: dt.date) -> str | None:
    """The month partition of `table` that holds `day`, as `ensure_partitions` makes them, or None
    when there is none of that name and those bounds (a DEFAULT partition or one made by hand
    then takes the rows through the parent table)."""
    found = _of_month_partition(conn, table, day, "c.relname")
    return str(found) if found is not None else None


def month_partition_storage(conn: Connection, table: str, day: dt.date) -> int | None:
    """The filenode of `month_partition`'s table (new once the month is dropped and made again,
    or truncated), or None when there is no such partition."""
    node = _of_month_partition(conn, table, day, "pg_relation_filenode(c.oid)")
    return int(node) if node is not None else None


def _of_month_partition(conn: Connection, table: str, day: dt.date, what: str) -> Any:
    """`what` (an expression of `c`, the partition's pg_class row) of `month_partition`'s
    table, or None, in one catalog read."""
    start, end = month_of(day)
    # The bounds are compared as the server prints them, in the session's DateStyle both.
    return conn.execute(
        sa.text(
            f"SELECT {what} FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid "
            "WHERE c.oid = to_regclass(:n) AND i.inhparent = CAST(:t AS regclass) "
            "AND pg_get_expr(c.relpartbound, c.oid) = "
            "format('FOR VALUES FROM (%L) TO (%L)', CAST(:s AS date), CAST(:e AS date))"
        ),
        {"n": partition_name(table, start), "t": table, "s": start, "e": end},
    ).scalar_one_or_none()


_ALIGNMENT = {"d": 8, "i": 4, "s": 2, "c": 1}


def _compact_columns(conn: Connection, table: str) -> list[str]:
    """The parent table's column definitions, ordered for the least alignment padding: fixed-width
    columns first, widest alignment first, then the variable-width ones (short varlenas need no
    alignment). `score_history` in its parent's order pads 8 bytes per row before
    `calculated_at` (128 against 120 bytes on disk); a partition may order its columns as it
    likes (tuple routing maps them), the parent keeps the order readers see."""
    rows = conn.execute(
        sa.text(
            "SELECT a.attnum, quote_ident(a.attname) AS name, "
            "format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null, "
            "pg_get_expr(d.adbin, d.adrelid) AS default_value, t.typlen AS length, "
            "t.typalign AS align, CASE WHEN a.attcollation <> t.typcollation "
            "THEN (SELECT quote_ident(c.collname) FROM pg_collation c "
            "WHERE c.oid = a.attcollation) END AS collation "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        {"t": table},
    ).all()
    ordered = sorted(rows, key=lambda r: (r.length < 0, -_ALIGNMENT[r.align], r.attnum))
    return [
        f"{r.name} {r.type}"
        + (f" COLLATE {r.collation}" if r.collation else "")
        + (" NOT NULL" if r.not_null else "")
        + (f" DEFAULT {r.default_value}" if r.default_value is not None else "")
        for r in ordered
    ]


def _missing(
    conn: Connection, wanted: list[tuple[str, str, dt.date, dt.date]]
) -> list[tuple[str, str, dt.date, dt.date]]:
    # `pg_class` read under the statement's snapshot, not `to_regclass`: a name looked up while
    # another creator's tables were not committed yet stays "missing" in this session's catalog
    # cache after it waited for that creator's lock (CREATE TABLE then failed, DuplicateTable).
    found = conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_class c WHERE c.relname = ANY(CAST(:n AS text[])) "
            "AND c.relnamespace = to_regnamespace(current_schema())"
        ),
        {"n": [w[1] for w in wanted]},
    ).scalars()
    present = set(found)
    return [w for w in wanted if w[1] not in present]


def partitions(conn: Connection) -> list[Partition]:
    """Every month partition of the partitioned tables, oldest first."""
    rows = conn.execute(
        sa.text(
            "SELECT p.relname AS parent, c.relname AS name, "
            "pg_get_expr(c.relpartbound, c.oid) AS bound, c.reltuples::bigint AS rows, "
            "pg_total_relation_size(c.oid) AS bytes "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname = ANY(:t) AND p.relnamespace = to_regnamespace(current_schema()) "
            "ORDER BY c.relname"
        ),
        {"t": list(PARTITIONED_TABLES)},
    ).all()
    out = []
    for r in rows:
        bounds = _BOUNDS.search(r.bound or "")
        if bounds is None:
            continue  # a DEFAULT partition or one made by hand: never ours to drop
        start, end = (dt.date.fromisoformat(b) for b in bounds.groups())
        out.append(Partition(r.parent, r.name, start, end, int(r.rows), int(r.bytes)))
    return sorted(out, key=lambda p: (p.start, p.table))


def counted(conn: Connection, p: Partition) -> Partition:
    """`p` with its rows counted when the planner has no estimate: a partition never analysed
    is new or empty (autovacuum analyses a loaded one within minutes), so counting it is cheap."""
    if p.rows >= 0:
        return p
    n = conn.execute(sa.text(f'SELECT count(*) FROM "{p.name}"')).scalar_one()
    return replace(p, rows=int(n), rows_exact=True)


def prunable(conn: Connection, before: dt.date) -> tuple[list[Partition], list[Partition]]:
    """The whole months whose every day is before `before` (nothing of `before` itself or later),
    and apart those of them kept: metric values that current scores still show."""
    old = [p for p in partitions(conn) if p.end <= before]
    shown = {
        d
        for d in conn.execute(
            sa.text("SELECT DISTINCT date_trunc('month', score_date)::date FROM asset_scores")
        ).scalars()
    }
    kept = [p for p in old if p.table == "score_metric_values" and p.start in shown]
    return [p for p in old if p not in kept], kept


def drop(conn: Connection, doomed: list[Partition]) -> None:
    """Detach then drop each partition, in the caller's transaction."""
    for p in doomed:
        conn.execute(sa.text(f'ALTER TABLE {p.table} DETACH PARTITION "{p.name}"'))
        conn.execute(sa.text(f'DROP TABLE "{p.name}"'))


@dataclass(frozen=True)
class Coverage:
    """Which days the partitioned tables can hold: their month partitions, and the tables with
    a DEFAULT partition (which takes any day)."""

    months: tuple[Partition, ...]
    with_default: frozenset[str]

    def dropped(self, day: dt.date, tables: tuple[str, ...] = PARTITIONED_TABLES) -> list[str]:
        """Of `tables`, those with no partition for `day`: its month was pruned (or never
        made), so none of the day's rows are there."""
        covered = {p.table for p in self.months if p.start <= day < p.end}
        return [t for t in tables if t not in covered and t not in self.with_default]


def coverage(conn: Connection) -> Coverage:
    defaults = conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_partitioned_table pt JOIN pg_class c ON c.oid = pt.partrelid "
            "WHERE pt.partdefid <> 0 AND c.relname = ANY(:t) "
            "AND c.relnamespace = to_regnamespace(current_schema())"
        ),
        {"t": list(PARTITIONED_TABLES)},
    ).scalars()
    return Coverage(tuple(partitions(conn)), frozenset(str(d) for d in defaults))
