"""The time of each part of a batch's write, as the benchmark reports it."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class WriteTimer:
    """Seconds spent in each part of a batch's write, summed per part: the benchmark shows
    where the write's time goes beyond the COPYs themselves."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed

    def timings(self) -> dict[str, int]:
        """`write_<part>_ms` per part, as the batch's timings record them."""
        return {f"write_{name}_ms": round(s * 1000) for name, s in self.seconds.items()}
