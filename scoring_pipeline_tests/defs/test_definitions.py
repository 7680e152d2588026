"""The real code location loads and validates; every asset has a description; the scores asset
is partitioned by (score date × batch) with the shared partition objects; the environment is read
once at load into typed resource configuration, and a bad setting fails the load naming it."""

import dagster as dg
import pytest

from scoring_pipeline.definitions import defs
from scoring_pipeline.defs.partitions import score_date_partitions, scores_partitions
from scoring_pipeline.errors import ConfigurationError


def test_definitions_are_loadable():
    dg.Definitions.validate_loadable(defs())


def test_every_asset_has_a_description_and_the_expected_partitions():
    graph = defs().resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"active_users", "exchange_rates", "prices", "scores"}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        expected = scores_partitions if key.to_user_string() == "scores" else score_date_partitions
        assert node.partitions_def == expected


def test_jobs_schedule_and_sensor_are_registered():
    d = defs()
    assert d.resolve_job_def("overnight_snapshots_job")
    assert d.resolve_job_def("scoring_batch_job")
    assert d.resolve_schedule_def("overnight_scoring_schedule").cron_schedule == "0 4 * * *"
    assert d.resolve_sensor_def("scoring_batches_sensor")
    # What the UI's Automation page shows beside each name.
    assert len(list(d.sensors or [])) == 5 and d.schedules
    for sensor in d.sensors or []:
        assert sensor.description, sensor.name
    for schedule in d.schedules or []:
        assert schedule.description, schedule.name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCORING_BATCH_SIZE", "0"),
        ("SCORING_BATCH_SIZE", "fifty"),
        ("SCORING_BATCH_SIZE", "100000000000000000000"),
        ("SNAPSHOT_MAX_AGE_DAYS", "-1"),
        ("SNAPSHOT_MAX_AGE_DAYS", "99999999999"),
        ("OVERNIGHT_JOB_CRON", "not a cron"),
        ("OVERNIGHT_JOB_TIMEZONE", "Mars/Olympus"),
        ("OVERNIGHT_JOB_TIMEZONE", "../etc/passwd"),
        ("RATES_PROVIDER", "ecb"),
        ("PRICES_PROVIDER", "bloomberg"),
        ("RATES_BASE_URL", "not a url"),
        ("PRICES_FALLBACK_BASE_URL", "ftp://prices.example"),
        ("PROVIDER_TIMEOUT_SECONDS", "-1"),
        ("PROVIDER_TIMEOUT_SECONDS", "1e300"),
        ("PROVIDER_BACKOFF_SECONDS", "1e300"),
        ("PROVIDER_BACKOFF_MAX_SECONDS", "1e300"),
        ("PROVIDER_MAX_RETRIES", "lots"),
        ("PROVIDER_MAX_REJECTED_FRACTION", "2"),
    ],
)
def test_bad_settings_are_clear_errors(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name) as caught:
        defs()
    assert "\n" not in str(caught.value)


def test_settings_are_typed_resource_configuration_read_at_load(monkeypatch):
    for name, value in {
        "RATES_PROVIDER": "file",
        "RATES_FILE": "rates.json",
        "PRICES_BASE_URL": "https://quotes.example",
        "PROVIDER_TIMEOUT_SECONDS": "4.5",
        "PROVIDER_MAX_REJECTED_FRACTION": "0.1",
        "SCORING_BATCH_SIZE": "25",
        "PRICES_API_KEY": "pk-visible-only-by-name",
    }.items():
        monkeypatch.setenv(name, value)

    resources = defs().resources
    # Read once: changing the environment afterwards changes nothing already loaded.
    monkeypatch.setenv("RATES_PROVIDER", "frankfurter")

    rates, prices = resources["rates_provider"], resources["prices_provider"]
    assert (rates.provider, rates.file, rates.timeout_seconds) == ("file", "rates.json", 4.5)
    assert (prices.provider, prices.base_url) == ("yahoo", "https://quotes.example")
    assert prices.max_rejected_fraction == 0.1
    assert isinstance(prices.api_key, dg.EnvVar) and prices.api_key == "PRICES_API_KEY"
    assert resources["settings"].batch_size == 25
