"""No vacuum truncation of the tables every night rewrites: `asset_scores`, `dashboard_cache`.

Every night replaces each user's current scores and dashboard, so these tables settle at about two
nights' rows: the current ones, and the space of the replaced ones, which vacuum frees for the
next night. With truncation on (PostgreSQL's default), a vacuum that finds the replaced rows at
the end of the file cuts those pages off, under an ACCESS EXCLUSIVE lock that blocks the app's
reads of current scores for that moment, and the next night extends the file again by the same
amount: the table's size swung by a night's rows every other night (1,000 users: -29.8 MB, then
+29.6 MB). `vacuum_truncate = false` keeps the pages for the next night's rows.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TABLES = ("asset_scores", "dashboard_cache")


def upgrade() -> None:
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} SET (vacuum_truncate = false)")


def downgrade() -> None:
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} RESET (vacuum_truncate)")
