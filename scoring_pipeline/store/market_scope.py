"""What a market group's night covers, as SQL conditions on the parameter `:m` (the group's
markets; NULL for the default group, every market): its users are the members with an active
criteria set in those markets, its rows are those of those markets' instruments (SPEC §6)."""

from collections.abc import Sequence


def member_in_group(member: str = "b") -> str:
    """Batch member `<member>`.user_id is scored by the group's night."""
    return (
        "(CAST(:m AS text[]) IS NULL OR EXISTS (SELECT 1 FROM criteria_versions c "
        f"WHERE c.user_id = {member}.user_id AND c.is_active "
        "AND c.target_market = ANY(CAST(:m AS text[]))))"
    )


# A criteria version (unqualified columns) targets one of the group's markets.
CRITERIA_IN_GROUP = "(CAST(:m AS text[]) IS NULL OR target_market = ANY(CAST(:m AS text[])))"


def symbol_in_group(column: str = "symbol") -> str:
    """The row's `column` is an instrument of one of the group's markets."""
    return (
        f"(CAST(:m AS text[]) IS NULL OR {column} IN (SELECT i.symbol FROM instruments i "
        "WHERE i.market = ANY(CAST(:m AS text[]))))"
    )


def markets_param(markets: Sequence[str] | None) -> list[str] | None:
    """The value of `:m` for a group's markets (None: every market)."""
    return list(markets) if markets is not None else None
