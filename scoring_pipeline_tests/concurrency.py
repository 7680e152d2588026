"""Two writers of the same rows at once, for the tests of the locks that make them take turns."""

import threading
from collections.abc import Callable

from sqlalchemy.engine import Connection, Engine


def second_writer_after_first(
    engine: Engine, first: Callable[[Connection], None], second: Callable[[Connection], None]
) -> BaseException | None:
    """`first` writes in a transaction kept open; `second` writes in a transaction of its own
    on another thread, which must still be waiting a second later (asserted); then the first
    commits. Returns what the second's transaction ended with: None (committed) or its error."""
    outcome: list[BaseException | None] = []
    held = engine.connect()
    held.begin()
    first(held)

    def write() -> None:
        try:
            with engine.begin() as conn:
                second(conn)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join(timeout=1.0)
    assert thread.is_alive(), "the second writer should wait for the first one's transaction"
    held.commit()
    held.close()
    thread.join(timeout=30)
    assert len(outcome) == 1, "the second writer did not finish"
    return outcome[0]
