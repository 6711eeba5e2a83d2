"""A worker for the concurrent-open test: open a new results store in each round, all workers at the same instant
(a barrier), and report what failed. Lives here so `multiprocessing` can import it in spawned processes."""
from __future__ import annotations

from pathlib import Path


def open_rounds(root: str, rounds: int, barrier, queue) -> None:
    from pipeline.store import ResultsStore

    failures = []
    for r in range(rounds):
        barrier.wait(timeout=120)
        try:
            ResultsStore(Path(root) / f"round{r}.sqlite")
        except Exception as e:  # noqa: BLE001 - every failure is what the test counts
            failures.append(f"round {r}: {type(e).__name__}: {e}")
    queue.put(failures)
