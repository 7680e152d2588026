"""The `scoring-pipeline` command: database, scoring (in process or through the services),
replay, prune, the benchmark and demo data."""
