"""SQL over the app database: engines and the embedded server, tables and migrations, COPY, the
date's snapshots and membership, a batch's inputs and its write, the night's lifecycle, the
dashboard cache and month partitions. Never imports Dagster (import-linter)."""
