"""`scoring-pipeline bench`: a whole night through the real path, measured.

A fresh database gets a benchmark universe (3 markets × 200 instruments in 3 currencies, ~12 rules
per criteria set, 1–3 sets per user, 5–20 holdings); the Dagster webserver, daemon and Celery run
workers start on a temporary DAGSTER_HOME with PostgreSQL storage; the night is launched like the
schedule launches it, and the table printed at the end says where the time and the bytes went,
next to a raw PostgreSQL COPY of the same output rows measured in the same run. With `--groups`,
one night is compared with the same universe's per-market-group nights instead.
"""
