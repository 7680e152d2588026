"""The night's software-defined assets: three daily snapshots and the batch-partitioned scores."""
