"""The seeded draws the demo data is built from: UUIDs and exact decimals."""

import random
import uuid
from decimal import Decimal


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_decimal(rng: random.Random, low: float, high: float, places: int) -> Decimal:
    # Built from an integer so the text is exact; the random draw itself is not money.
    scale = 10**places
    value: Decimal = Decimal(rng.randint(int(low * scale), int(high * scale))) / scale
    return value
