"""A universe's metric values held as columns, and the cache that shares them: the rules of
every criteria set scoring the same instruments at the same rates read the same columns."""

from decimal import Decimal

import numpy as np
import numpy.typing as npt

from scoring_pipeline.engine.metrics import value_tail


class UniverseColumns:
    """A universe's instruments at one set of conversion rates, held as columns: per metric,
    the values in instrument order and their breakdown text (`,"actualValue":"…"}`, or ''
    when the value is missing). Built lazily, shared by every set that scores the universe."""

    __slots__ = ("values", "_columns", "_tails", "_ordered", "outcomes")

    def __init__(self, values: list[dict[str, Decimal | None]]) -> None:
        self.values = values
        self._columns: dict[str, list[Decimal | None]] = {}
        self._tails: dict[str, list[str]] = {}
        self._ordered: dict[str, list[Decimal] | None] = {}
        # A comparison rule's outcome characters over a column (ASCII bytes), by (metric,
        # where its value falls among the column's distinct values): see `rule_plan`.
        self.outcomes: dict[tuple[str, tuple[object, ...]], npt.NDArray[np.uint8]] = {}

    def ordered(self, metric: str) -> list[Decimal] | None:
        """The column's distinct values in ascending order, or None when one of them is not a
        finite number (NaN does not order: such a column is compared value by value)."""
        if metric in self._ordered:
            return self._ordered[metric]
        present = [x for x in self.column(metric) if x is not None]
        found = sorted(set(present)) if all(x.is_finite() for x in present) else None
        self._ordered[metric] = found
        return found

    def column(self, metric: str) -> list[Decimal | None]:
        found = self._columns.get(metric)
        if found is None:
            found = self._columns[metric] = [v[metric] for v in self.values]
        return found

    def tails(self, metric: str) -> list[str]:
        found = self._tails.get(metric)
        if found is None:
            found = self._tails[metric] = [
                "" if x is None else value_tail(x) for x in self.column(metric)
            ]
        return found


class MetricsCache:
    """Shared by the calls that score one batch. Rates are keyed by their text: 2 and 2.0 are
    equal Decimals, but a value converted with each has a different text, which the breakdown
    shows."""

    __slots__ = ("instruments", "universes")

    def __init__(self) -> None:
        # An instrument's metrics by (symbol, text of its conversion rate, or "" for none).
        self.instruments: dict[tuple[str, str], dict[str, Decimal | None]] = {}
        # A universe's columns by (its symbols, (currency, rate text) of its conversions).
        self.universes: dict[
            tuple[tuple[str, ...], tuple[tuple[str, str], ...]], UniverseColumns
        ] = {}
