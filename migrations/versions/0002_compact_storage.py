"""Storage of the large JSON columns: a low TOAST target on asset_scores, lz4 where available.

lz4 (when the server was built with it) compresses the big event payloads several times faster
than the default pglz. The 128-byte TOAST target only applies to rows PostgreSQL toasts at all,
those over ~2 KB (a fixed threshold): a 12-rule breakdown is ~1.5 KB and stays stored as is.
(Measured after this revision landed; its schema effect is unchanged.)

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
