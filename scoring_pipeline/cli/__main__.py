"""`python -m scoring_pipeline.cli`: the same command as `scoring-pipeline`."""

from scoring_pipeline.cli.main import main

raise SystemExit(main())
