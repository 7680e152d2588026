"""The frozen market data of a score date: exchange rates (`rates`) and prices (`prices`).

Each snapshot is written once per date (delete the date's rows, insert, one transaction) and
read by every batch of that date. When every provider fails, the most recent earlier snapshot
no older than `SNAPSHOT_MAX_AGE_DAYS` is copied to the date, flagged `is_stale` (`reuse`).

A value the provider gave but the checks rejected (SPEC §8: per value) is stored as missing —
`rate` or `close` NULL — with its reason in `missing_reason` (a `Rejection` value, or
`not_returned` for a symbol the provider did not return); readers see it as absent, and the
snapshot steps report them (`rejections`).
"""
