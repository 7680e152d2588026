"""The default group's job names (a configured group's are prefixed: `MarketGroup.qualified`),
apart from `jobs` so that what only names a job (the assets, the in-flight checks) need not import
the jobs, which import the assets."""

SNAPSHOTS_JOB = "overnight_snapshots_job"
BATCH_JOB = "scoring_batch_job"
