"""A realistic synthetic universe for the demo and the benchmark, plus files for `file` providers.

Several markets and currencies, fundamentals (some missing), users with different base
currencies, 1–3 criteria sets of ~12 rules each, and 5–20 holdings. Deterministic for a seed:
every value is drawn from one `random.Random`, in an order the modules here keep.
"""
