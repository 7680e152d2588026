"""Each batch outcome counts its users whose dashboard is warm for the date.

`scoring_batch_results.users_warm`: set when the batch is warmed (its successful users whose
`dashboard_cache` row shows the batch's score date). The `cache_warm` night sums it instead of
matching every warm dashboard against every batch's successful users after each batch warmed,
which grew with the night (a 100,000-user night's warm runs took longer than its batches). Rows
warmed before this migration get their count from `dashboard_cache` as it is.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("scoring_batch_results", sa.Column("users_warm", sa.Integer, nullable=True))
    op.execute(
        "UPDATE scoring_batch_results r SET users_warm = (SELECT count(*) FROM "
        "jsonb_array_elements(r.succeeded_users) u JOIN dashboard_cache dc "
        "ON dc.user_id::text = u->>'userId' AND dc.score_date = r.score_date) "
        "WHERE r.warmed_seq IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_column("scoring_batch_results", "users_warm")
