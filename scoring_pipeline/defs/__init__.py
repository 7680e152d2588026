"""The Dagster objects, thin: assets, partitions, jobs, schedules, sensors, checks, resources and
the IO manager, built per market group by `nights`. Logic lives in the engine and the store."""
