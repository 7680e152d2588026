"""Per-market nights (SPEC §6): a batch's outcome is per market group.

Each configured market group scores the date's batches for its own markets, so one batch has one
outcome per group: `scoring_batch_results` gains `market_group` (existing rows belong to the
default group `all`) and its key becomes (score_date, market_group, batch_key).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "scoring_batch_results",
        sa.Column("market_group", sa.Text, nullable=False, server_default="all"),
    )
    op.drop_constraint("scoring_batch_results_pkey", "scoring_batch_results", type_="primary")
    op.create_primary_key(
        "scoring_batch_results_pkey",
        "scoring_batch_results",
        ["score_date", "market_group", "batch_key"],
    )


def downgrade() -> None:
    # Only the default group's outcomes fit the old key.
    op.execute("DELETE FROM scoring_batch_results WHERE market_group <> 'all'")
    op.drop_constraint("scoring_batch_results_pkey", "scoring_batch_results", type_="primary")
    op.create_primary_key(
        "scoring_batch_results_pkey", "scoring_batch_results", ["score_date", "batch_key"]
    )
    op.drop_column("scoring_batch_results", "market_group")
