"""Options the commands refuse before doing anything: argparse's usage error (exit status 2)
naming the option, never services started with a count or port they cannot have."""

import pytest

from scoring_pipeline.cli.main import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["services", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (["bench", "--workers", "-1"], "argument --workers: must be at least 1, got -1"),
        (["worker", "--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
        (["services", "--workers", "two"], "argument --workers: must be a whole number, got 'two'"),
        (["services", "--port", "0"], "argument --port: must be at least 1, got 0"),
        (
            ["services", "--port", "70000"],
            "argument --port: must be a port number (1 – 65535), got 70000",
        ),
    ],
)
def test_counts_and_ports_out_of_range_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_defaults_and_a_valid_value_parse():
    from scoring_pipeline.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["services"]).workers == 2
    assert parser.parse_args(["services", "--port", "3001"]).port == 3001
    assert parser.parse_args(["worker", "--concurrency", "3"]).concurrency == 3
    assert parser.parse_args(["bench", "--workers", "1"]).workers == 1
