"""The results store: one SQLite database per workspace, the source of truth for reports and notebooks.

WAL mode and a busy timeout let several processes (sweep workers, DDP rank 0, notebooks) write at once; every
write is one short `BEGIN IMMEDIATE` transaction and every row has a natural key, so a retried write replaces
rather than duplicates. Opening is safe under any concurrency: the schema and the switch to WAL (which SQLite
does not retry on its busy timeout) happen once per open under a lock file, retried until the timeout. A file
that is not a readable SQLite database raises StoreError (a usage error, exit 2) naming it and what to do.
"""
from __future__ import annotations

import fcntl
import json
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import pandas as pd

from .errors import UsageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id        TEXT PRIMARY KEY,
    benchmark     TEXT NOT NULL,
    method        TEXT NOT NULL,
    preset        TEXT NOT NULL,
    seed          INTEGER NOT NULL,
    config_hash   TEXT NOT NULL,   -- config without its seed: runs of one seed group share it
    config_json   TEXT NOT NULL,
    protocol      TEXT NOT NULL DEFAULT 'clean',
    status        TEXT NOT NULL,   -- pending | running | finished | failed | preempted
    message       TEXT,
    run_dir       TEXT,
    code_version  TEXT,
    wandb_run_id  TEXT,
    wandb_group   TEXT,
    sweep_id      TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_group ON runs (benchmark, method, config_hash);
CREATE TABLE IF NOT EXISTS metrics (
    run_id   TEXT NOT NULL REFERENCES runs(run_id),
    stage    TEXT NOT NULL,        -- probe | pretrain | bench ...
    split    TEXT NOT NULL,        -- train | val | test
    task     TEXT NOT NULL,        -- benchmark task (share, synergy, ...) or 'all' for the mean over tasks
    metric   TEXT NOT NULL,        -- acc1, roc_auc, mse, ...
    step     INTEGER NOT NULL DEFAULT -1,   -- epoch for curves; -1 for the final value
    value    REAL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, stage, split, task, metric, step)
);
CREATE TABLE IF NOT EXISTS sweeps (
    sweep_id    TEXT PRIMARY KEY,
    name        TEXT,
    file        TEXT,
    benchmark   TEXT,
    method      TEXT,
    config_json TEXT NOT NULL,
    metric_name TEXT,
    metric_goal TEXT,
    status      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_trials (
    sweep_id     TEXT NOT NULL REFERENCES sweeps(sweep_id),
    trial_index  INTEGER NOT NULL,
    trial_id     TEXT NOT NULL UNIQUE,
    params_json  TEXT NOT NULL,
    status       TEXT NOT NULL,   -- running | finished | failed | preempted
    run_id       TEXT,
    metric_value REAL,
    returncode   INTEGER,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (sweep_id, trial_index)
);
"""

RUN_STATUSES = ("pending", "running", "finished", "failed", "preempted")

# One trial row per (sweep, index); a retried write replaces it, keeping a run id already known.
_UPSERT_TRIAL = """
INSERT INTO sweep_trials (sweep_id, trial_index, trial_id, params_json, status, run_id, metric_value, returncode,
                          created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(sweep_id, trial_index) DO UPDATE SET status=excluded.status,
    run_id=COALESCE(excluded.run_id, sweep_trials.run_id), metric_value=excluded.metric_value,
    returncode=excluded.returncode, updated_at=excluded.updated_at"""


class StoreError(UsageError):
    """The results store cannot be opened or read (damaged, not a database, not a file)."""


def _busy(e: sqlite3.OperationalError) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ResultsStore:
    def __init__(self, path: Path, timeout: float = 60.0):
        self.path = Path(path)
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._guard():
            self._initialise()

    @contextmanager
    def _guard(self):
        """sqlite's errors for a damaged or foreign file as one StoreError that says what to do."""
        try:
            yield
        except sqlite3.OperationalError as e:
            if "unable to open" not in str(e):
                raise
            raise StoreError(f"cannot open the results store {self.path} ({e}); it must be a writable SQLite file "
                             "in a writable folder") from None
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:  # integrity, programming errors: ours, not the file's
                raise
            raise StoreError(f"the results store {self.path} is damaged or not a results store ({e}); move it aside "
                             f"(mv {self.path} {self.path}.damaged) to start a new one, or restore it from a backup; "
                             "runs, checkpoints and metrics.jsonl files stay in the workspace") from None

    def _initialise(self) -> None:
        # Several processes may open a new store at the same instant (parallel trials, array jobs). The switch to WAL
        # takes an exclusive lock that SQLite does not wait for on the busy timeout, so the schema and the switch are
        # done under a lock file, and retried until the timeout should a process without it (an older version) hold
        # the database meanwhile.
        deadline = time.monotonic() + self.timeout
        with open(self.path.with_name(f".{self.path.name}.open-lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                while True:
                    conn = self._connect()
                    try:
                        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                            conn.execute("PRAGMA journal_mode = WAL")
                        conn.executescript(SCHEMA)
                        return
                    except sqlite3.OperationalError as e:
                        if not _busy(e) or time.monotonic() > deadline:
                            raise
                    finally:
                        conn.close()
                    time.sleep(0.05)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def transaction(self):
        """One short write transaction; BEGIN IMMEDIATE takes the write lock up front so concurrent writers
        queue on the busy timeout instead of failing with 'database is locked' at commit."""
        with self._guard():
            with self._transaction() as conn:
                yield conn

    @contextmanager
    def _transaction(self):
        conn = self._connect()
        for attempt in range(50):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:  # pragma: no cover - only under heavy contention
                if "locked" not in str(e) or attempt == 49:
                    conn.close()
                    raise
                time.sleep(0.05 * (attempt + 1))
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def query(self, sql: str, params: Iterable = ()) -> list[sqlite3.Row]:
        with self._guard():
            conn = self._connect()
            try:
                return conn.execute(sql, tuple(params)).fetchall()
            finally:
                conn.close()

    # -------------------------------------------------------------------------------------------- runs
    def upsert_run(self, cfg, *, status: str, run_dir: str | None = None, code_version: str | None = None,
                   wandb_run_id: str | None = None, sweep_id: str | None = None, message: str | None = None) -> str:
        if status not in RUN_STATUSES:
            raise ValueError(f"status: invalid {status!r}; valid: {', '.join(RUN_STATUSES)}")
        t = now()
        with self.transaction() as conn:
            conn.execute(
                """INSERT INTO runs (run_id, benchmark, method, preset, seed, config_hash, config_json, protocol,
                       status, message, run_dir, code_version, wandb_run_id, wandb_group, sweep_id, created_at, updated_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(run_id) DO UPDATE SET status=excluded.status, message=excluded.message,
                       config_json=excluded.config_json, updated_at=excluded.updated_at,
                       run_dir=COALESCE(excluded.run_dir, runs.run_dir),
                       code_version=COALESCE(excluded.code_version, runs.code_version),
                       wandb_run_id=COALESCE(excluded.wandb_run_id, runs.wandb_run_id),
                       sweep_id=COALESCE(excluded.sweep_id, runs.sweep_id)""",
                (cfg.run_id, cfg.benchmark, cfg.method, cfg.preset, cfg.seed, cfg.config_hash(),
                 json.dumps(cfg.to_dict(), sort_keys=True), cfg.probe.protocol, status, message, run_dir,
                 code_version, wandb_run_id, cfg.group, sweep_id, t, t))
        return cfg.run_id

    def set_status(self, run_id: str, status: str, message: str | None = None) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"status: invalid {status!r}; valid: {', '.join(RUN_STATUSES)}")
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET status=?, message=?, updated_at=? WHERE run_id=?",
                         (status, message, now(), run_id))

    def get_run(self, run_id: str) -> dict | None:
        rows = self.query("SELECT * FROM runs WHERE run_id=?", (run_id,))
        return dict(rows[0]) if rows else None

    # -------------------------------------------------------------------------------------------- metrics
    def log_metrics(self, run_id: str, stage: str, rows: Iterable[tuple[str, str, str, float]], step: int = -1) -> int:
        """rows: (split, task, metric, value). Replaces existing values for the same key (idempotent)."""
        t = now()
        data = [(run_id, stage, split, task, metric, step, None if value is None else float(value), t)
                for split, task, metric, value in rows]
        with self.transaction() as conn:
            conn.executemany(
                """INSERT INTO metrics (run_id, stage, split, task, metric, step, value, created_at)
                   VALUES (?,?,?,?,?,?,?,?)
                   ON CONFLICT(run_id, stage, split, task, metric, step)
                   DO UPDATE SET value=excluded.value, created_at=excluded.created_at""", data)
        return len(data)

    def has_metrics(self, run_id: str, stage: str, split: str = "test") -> bool:
        return bool(self.query("SELECT 1 FROM metrics WHERE run_id=? AND stage=? AND split=? AND step=-1 LIMIT 1",
                               (run_id, stage, split)))

    def delete_metrics(self, run_id: str) -> None:
        """Forget every metric of a run (a forced rerun starts its curves and probe results afresh)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))

    # -------------------------------------------------------------------------------------------- frames
    def results_frame(self, benchmark: str | None = None, stage: str = "probe", final_only: bool = True) -> pd.DataFrame:
        """Seed-level results in one query: one row per (run, split, task, metric[, step])."""
        sql = """SELECT r.run_id, r.benchmark, r.method, r.preset, r.seed, r.config_hash, r.protocol, r.status,
                        r.config_json, r.sweep_id, m.stage, m.split, m.task, m.metric, m.step, m.value
                 FROM metrics m JOIN runs r ON r.run_id = m.run_id WHERE m.stage = ?"""
        params: list = [stage]
        if final_only:
            sql += " AND m.step = -1"
        if benchmark:
            sql += " AND r.benchmark = ?"
            params.append(benchmark)
        with self._guard():
            conn = self._connect()
            try:
                return pd.read_sql_query(sql, conn, params=params)
            finally:
                conn.close()

    def runs(self) -> list[dict]:
        return [dict(r) for r in self.query("SELECT * FROM runs")]

    def runs_frame(self) -> pd.DataFrame:
        with self._guard():
            conn = self._connect()
            try:
                return pd.read_sql_query("SELECT * FROM runs", conn)
            finally:
                conn.close()

    # -------------------------------------------------------------------------------------------- sweeps
    def upsert_sweep(self, sweep_id: str, *, name: str, file: str, benchmark: str | None, method: str | None,
                     config: dict, metric_name: str | None, metric_goal: str | None, status: str) -> None:
        t = now()
        with self.transaction() as conn:
            conn.execute(
                """INSERT INTO sweeps (sweep_id, name, file, benchmark, method, config_json, metric_name, metric_goal,
                                       status, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(sweep_id) DO UPDATE SET status=excluded.status, updated_at=excluded.updated_at""",
                (sweep_id, name, file, benchmark, method, json.dumps(config, sort_keys=True), metric_name,
                 metric_goal, status, t, t))

    def upsert_trial(self, sweep_id: str, trial_index: int, trial_id: str, params: dict, status: str,
                     run_id: str | None = None, metric_value: float | None = None,
                     returncode: int | None = None, *, conn: sqlite3.Connection | None = None) -> None:
        """Record a trial (a retried write replaces it; a known run id is kept when none is given). `conn`: write
        inside that open transaction instead of a new one (a sweep runner's claim reads and writes in one)."""
        t = now()
        row = (sweep_id, trial_index, trial_id, json.dumps(params, sort_keys=True), status, run_id, metric_value,
               returncode, t, t)
        if conn is not None:
            conn.execute(_UPSERT_TRIAL, row)
            return
        with self.transaction() as conn:
            conn.execute(_UPSERT_TRIAL, row)

    def trials(self, sweep_id: str, *, conn: sqlite3.Connection | None = None) -> list[dict]:
        """The sweep's trials in index order; `conn`: read inside that open transaction."""
        sql, params = "SELECT * FROM sweep_trials WHERE sweep_id=? ORDER BY trial_index", (sweep_id,)
        rows = conn.execute(sql, params).fetchall() if conn is not None else self.query(sql, params)
        return [dict(r) for r in rows]

    def get_sweep(self, sweep_id: str) -> dict | None:
        rows = self.query("SELECT * FROM sweeps WHERE sweep_id=?", (sweep_id,))
        return dict(rows[0]) if rows else None

    # -------------------------------------------------------------------------------------------- reports
    def counts(self) -> dict[str, int]:
        """What the store holds: runs, runs with final probe test metrics (failed runs left out), runs with
        per-epoch pretraining rows, sweeps and sweep trials."""
        sql = {"runs": "SELECT COUNT(*) FROM runs",
               "results": "SELECT COUNT(DISTINCT m.run_id) FROM metrics m JOIN runs r ON r.run_id = m.run_id "
                          "WHERE m.stage='probe' AND m.split='test' AND m.step=-1 AND r.status != 'failed'",
               "curves": "SELECT COUNT(DISTINCT run_id) FROM metrics WHERE stage='pretrain' AND step >= 0",
               "sweeps": "SELECT COUNT(*) FROM sweeps",
               "trials": "SELECT COUNT(*) FROM sweep_trials"}
        return {what: int(self.query(q)[0][0]) for what, q in sql.items()}

    def sweeps_with_trial_counts(self) -> list[sqlite3.Row]:
        """Every sweep, oldest first, with its number of recorded trials (n_trials)."""
        return self.query("SELECT s.*, (SELECT COUNT(*) FROM sweep_trials t WHERE t.sweep_id = s.sweep_id) "
                          "AS n_trials FROM sweeps s ORDER BY s.created_at, s.sweep_id")

    def trials_with_sweeps(self, sweep_ids: list[str] | None = None) -> list[sqlite3.Row]:
        """Trials (of the given sweeps; None: of all) beside their sweep's name, benchmark, method and metric, in
        (sweep, index) order."""
        sql = ("SELECT t.*, s.name AS sweep_name, s.benchmark AS s_benchmark, s.method AS s_method, s.metric_name, "
               "s.metric_goal FROM sweep_trials t JOIN sweeps s ON s.sweep_id = t.sweep_id")
        if sweep_ids is not None:
            if not sweep_ids:
                return []
            sql += f" WHERE t.sweep_id IN ({','.join('?' * len(sweep_ids))})"
        return self.query(sql + " ORDER BY t.sweep_id, t.trial_index", sweep_ids or ())
