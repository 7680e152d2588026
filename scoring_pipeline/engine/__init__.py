"""The pure scoring engine: criteria parsing, metric values, rule evaluation, a batch's scoring
and its events' payloads, replay's recomputation. No Dagster, no SQL, no I/O (import-linter)."""
