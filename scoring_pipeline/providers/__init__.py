"""Rates and prices providers over httpx (SPEC §8): models, value checks, implementations."""
