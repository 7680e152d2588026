"""Overnight scoring pipeline: a Dagster code location that scores every active user's criteria."""
