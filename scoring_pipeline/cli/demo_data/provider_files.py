"""The input files of the `file` providers for the demo universe: `rates.json` and `prices.csv`."""

import csv
import datetime as dt
from decimal import Decimal
from pathlib import Path

from scoring_pipeline.cli.demo_data.instruments import MARKETS

USD_RATES = {"USD": "1", "EUR": "0.9183", "BRL": "5.4127", "GBP": "0.7891"}


def write_provider_files(out_dir: Path, prices: dict[str, Decimal], day: dt.date) -> None:
    """`rates.json` (frankfurter's shape) and `prices.csv` for the `file` providers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Rates as exact decimal text in the frankfurter shape (no float round trip).
    body = ",".join(f'"{c}":{v}' for c, v in USD_RATES.items() if c != "USD")
    text = f'{{"amount":1.0,"base":"USD","date":"{day.isoformat()}","rates":{{{body}}}}}'
    (out_dir / "rates.json").write_text(text + "\n")
    with (out_dir / "prices.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["symbol", "close", "currency", "price_date"])
        for symbol, close in sorted(prices.items()):
            writer.writerow([symbol, format(close, "f"), _currency_of(symbol), day.isoformat()])


def _currency_of(symbol: str) -> str:
    suffix = symbol.rsplit(".", 1)[-1]
    return {m.code[:2]: m.currency for m in MARKETS}[suffix]
