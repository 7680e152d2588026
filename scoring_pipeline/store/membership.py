"""The batch membership of a score date: which active users a night scores, in which batch.

Frozen once per date like the rates and prices (replaced only on purpose), it is what the date's
`scores` partitions are registered from and what every batch reads its users from.
"""

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.store import tables as t


@dataclass(frozen=True, slots=True)
class Membership:
    members: list[tuple[str, str]]  # (user_id, batch_key), deterministic order
    users_skipped: int  # not deleted, holding assets, but no active criteria set

    @property
    def batch_keys(self) -> list[str]:
        return sorted({b for _, b in self.members})


# The key of a night's metrics that keeps its membership's counts (store/night/closing).
MEMBERSHIP_COUNTS = "membership_counts"


def batch_key(index: int) -> str:
    """The key of the batch at `index` (`b0001`): the batch part of a `scores` partition key."""
    return f"b{index:04d}"


def compute_membership(conn: Connection, batch_size: int) -> Membership:
    """The date's active users in deterministic batches (ordered by user id)."""
    active = (
        conn.execute(
            sa.text(
                "SELECT u.id FROM users u WHERE u.deleted_at IS NULL "
                "AND EXISTS (SELECT 1 FROM portfolios p JOIN portfolio_assets a "
                "  ON a.portfolio_id = p.id WHERE p.user_id = u.id AND NOT a.is_ignored) "
                "AND EXISTS (SELECT 1 FROM criteria_versions c WHERE c.user_id = u.id "
                "  AND c.is_active) "
                "ORDER BY u.id"
            )
        )
        .scalars()
        .all()
    )
    skipped = conn.execute(
        sa.text(
            "SELECT count(*) FROM users u WHERE u.deleted_at IS NULL "
            "AND EXISTS (SELECT 1 FROM portfolios p JOIN portfolio_assets a "
            "  ON a.portfolio_id = p.id WHERE p.user_id = u.id AND NOT a.is_ignored) "
            "AND NOT EXISTS (SELECT 1 FROM criteria_versions c WHERE c.user_id = u.id "
            "  AND c.is_active)"
        )
    ).scalar_one()
    members = [(str(uid), batch_key(i // batch_size)) for i, uid in enumerate(active)]
    return Membership(members=members, users_skipped=int(skipped))


def store_membership(conn: Connection, score_date: dt.date, membership: Membership) -> None:
    """Replace the date's membership; earlier batch outcomes of the date no longer apply."""
    conn.execute(t.scoring_batches.delete().where(t.scoring_batches.c.score_date == score_date))
    conn.execute(
        t.scoring_batch_results.delete().where(t.scoring_batch_results.c.score_date == score_date)
    )
    conn.execute(
        sa.text(
            "UPDATE overnight_job_runs SET metrics = metrics - :k "
            "WHERE score_date = :d AND metrics ? :k"
        ),
        {"d": score_date, "k": MEMBERSHIP_COUNTS},
    )
    if membership.members:
        conn.execute(
            t.scoring_batches.insert(),
            [
                {"score_date": score_date, "user_id": u, "batch_key": b}
                for u, b in membership.members
            ],
        )


def load_membership(conn: Connection, score_date: dt.date) -> Membership:
    rows = conn.execute(
        sa.select(t.scoring_batches.c.user_id, t.scoring_batches.c.batch_key)
        .where(t.scoring_batches.c.score_date == score_date)
        .order_by(t.scoring_batches.c.user_id)
    ).all()
    return Membership(members=[(str(r.user_id), r.batch_key) for r in rows], users_skipped=0)


def has_batch(conn: Connection, score_date: dt.date, batch: str) -> bool:
    """Whether the date's membership uses this batch key (an index lookup: a batch run asks,
    and reading the whole membership made each of a 100,000-user night's 2,000 batch runs read
    100,000 rows)."""
    return bool(
        conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM scoring_batches "
                "WHERE score_date = :d AND batch_key = :b)"
            ),
            {"d": score_date, "b": batch},
        ).scalar_one()
    )


def batch_keys_text(conn: Connection, score_date: dt.date) -> str:
    """The date's batch keys for a message: all of a few, else the first, the last and how many."""
    keys = (
        conn.execute(
            sa.text(
                "SELECT DISTINCT batch_key FROM scoring_batches WHERE score_date = :d "
                "ORDER BY batch_key"
            ),
            {"d": score_date},
        )
        .scalars()
        .all()
    )
    if len(keys) > 6:
        return f"{keys[0]} to {keys[-1]} ({len(keys)} batches)"
    return ", ".join(keys) or "none"
