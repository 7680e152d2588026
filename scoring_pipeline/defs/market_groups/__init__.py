"""Market groups: which markets a night scores, and when it starts (SPEC §6 per-market nights).

`group` is what a group is (`MarketGroup`, the default group, the group of a run); `config` reads
and checks the `MARKET_GROUPS_FILE` that configures them; `calendars` says which days an
exchange trades, from `exchange_calendars`.
"""
