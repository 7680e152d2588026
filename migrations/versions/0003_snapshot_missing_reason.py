"""Per-value rejection of provider data (SPEC §8, revised 2026-11-30): why a value is missing.

`price_snapshots.missing_reason` and `exchange_rate_snapshots.missing_reason` say why `close` or
`rate` is null (`not_returned`, or the reason a value the provider gave was rejected: `nan`,
`not_positive`, `currency_mismatch`…); null on a row that holds its value. A rejected rate is
stored as a row with a null `rate`, so that column becomes nullable.

Downgrading deletes the rejected-rate rows (the old schema cannot hold them; readers skipped
them anyway) before `rate` is NOT NULL again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("price_snapshots", sa.Column("missing_reason", sa.Text, nullable=True))
    op.add_column("exchange_rate_snapshots", sa.Column("missing_reason", sa.Text, nullable=True))
    op.alter_column("exchange_rate_snapshots", "rate", nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM exchange_rate_snapshots WHERE rate IS NULL")
    op.alter_column("exchange_rate_snapshots", "rate", nullable=False)
    op.drop_column("exchange_rate_snapshots", "missing_reason")
    op.drop_column("price_snapshots", "missing_reason")
