"""A worker for the concurrent-open test: in each round, open a new results store at the same instant as the other
workers (a barrier) and write one row to it, as trials starting on a fresh workspace do; report what failed. Lives
here so `multiprocessing` can import it in spawned processes."""
from __future__ import annotations

from pathlib import Path


def open_rounds(root: str, rounds: int, barrier, queue, worker: int) -> None:
    from infmask.store import ResultsStore

    failures = []
    for r in range(rounds):
        barrier.wait(timeout=120)
        try:
            store = ResultsStore(Path(root) / f"round{r}.sqlite")
            store.upsert_sweep(f"worker{worker}", name="race", file="-", benchmark=None, method=None, config={},
                               metric_name=None, metric_goal=None, status="running")
        except Exception as e:  # noqa: BLE001 - every failure is what the test counts
            failures.append(f"round {r}: {type(e).__name__}: {e}")
    queue.put(failures)
