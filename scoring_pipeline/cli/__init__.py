"""The `scoring-pipeline` command (main.py: parser and dispatch; a module per theme of commands),
the `score` command's in-process runner, the benchmark and the demo data."""
