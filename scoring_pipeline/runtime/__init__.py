"""What runs Dagster on a machine: the instance storage, the Celery app of the run workers, the
services (webserver, daemon, workers) and the GraphQL client that talks to them."""
