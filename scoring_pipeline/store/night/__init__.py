"""A night's lifecycle: the one owner of `overnight_job_runs`, its JOB_* events and its span.

A night is one row per (job type, score date, market group)::

    (none) --open_night--> started --close_night--> completed | partial | failed
                              ^                                    |
                              +--- open_night(restart) (a deliberate re-run of the date's
                                   snapshots, or a tick after a night that failed unscored)

Nothing outside this package writes `overnight_job_runs` or the JOB_* events, or emits the
`overnight-scoring-job` root span; everything else calls these modules:

- `model`: the night's vocabulary (`NightStatus`, `JobType`, `Night`, `BatchOutcome`), reading
  a night (`find_night`), `merge_metrics`, and the row and JOB_* event helpers the others share.
- `opening`: `open_night` (the snapshots run starts or deliberately restarts the night:
  JOB_STARTED), `tick_skip_reason` (whether a schedule tick may start it, SPEC §6) and
  `fail_night` (it died before scoring).
- `outcomes`: `record_batch_outcome` (a batch's result, in the batch's write transaction),
  `record_batch_run_died` / `record_snapshots_run_died` (runs that ended without writing an
  outcome, so a night never stays `started` once its runs have ended) and `batches_to_retry`.
- `closing`: `close_night` — the night closes when every batch of its membership has an
  outcome: `completed` (no failure), `partial` (some users or batches failed) or `failed`
  (nothing succeeded); JOB_COMPLETED carries the figures — and `failed_users`.
- `root_span`: `emit_root_span` (the `overnight-scoring-job` span, once per closing, after the
  commit; one the collector did not take is kept pending), `send_pending_root_spans` and
  `night_traceparent`.
- `cache_warming`: `record_cache_warming`, the `cache_warm` night that follows the scoring night.

Re-scoring a batch updates its outcome and closes the night again, so a retried `partial` night
becomes `completed`. Every change runs under the night's row lock: concurrent batches serialise.
Nothing here opens a night except `open_night`: a partition that belongs to no night finds none.
"""
