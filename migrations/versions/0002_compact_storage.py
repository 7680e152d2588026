"""Compact storage of the large JSON columns: compress breakdowns inline, lz4 where available.

A scored asset's breakdown (one small object per rule) is a few hundred bytes: below the 2 KB at
which PostgreSQL compresses a row, so by default it is stored raw. A 128-byte TOAST target makes
PostgreSQL compress it; lz4 (when the server was built with it) compresses the big event
payloads several times faster than the default pglz.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON_COLUMNS = (
    ("asset_scores", "breakdown"),
    ("calculation_events", "payload"),
    ("dashboard_cache", "payload"),
)


def _has_lz4() -> bool:
    values = (
        op.get_bind()
        .execute(
            sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        )
        .scalar()
    )
    return bool(values) and "lz4" in values


def upgrade() -> None:
    op.execute("ALTER TABLE asset_scores SET (toast_tuple_target = 128)")
    if _has_lz4():
        for table, column in JSON_COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")


def downgrade() -> None:
    op.execute("ALTER TABLE asset_scores RESET (toast_tuple_target)")
    for table, column in JSON_COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION default")
