"""The runner: claims trials in one store transaction (reruns first, then the engine's next suggestion), starts
them as a W&B agent would, records their outcome, and stops them resumably on a signal."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .agent import trial_command, worker_gpus
from .command_check import check_command
from .engine import suggest, to_python, to_sweep_runs
from .spec import SweepSpec, load_sweep
from ..run_lock import lock_is_free, try_lock
from .trials import TRIAL_STATUSES, best_trial, kill_group, metric_of, outcome, read_result

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Claim:
    index: int
    trial_id: str
    params: dict
    lock: Any
    rerun: bool = False


@dataclass
class Active:
    claim: Claim
    popen: subprocess.Popen
    log: Any
    slot: int
    gpu: str | None
    started: float


class SweepRunner:
    """Runs one sweep to its end (grid exhausted, run_cap, metric target), to --count trials, or to a signal."""

    def __init__(self, spec: SweepSpec, ws, sweep_id: str | None = None, *, workers: int = 1,
                 count: int | None = None, retry_failed: bool = False, out=None, poll: float = 0.1,
                 env: dict | None = None):
        from ..store import ResultsStore

        if workers < 1:
            raise UsageError(f"--workers must be >= 1, got {workers}")
        if count is not None and count < 1:
            raise UsageError(f"--count must be >= 1, got {count}")
        if sweep_id is not None and not ID_PATTERN.match(sweep_id):
            raise UsageError(f"--sweep-id '{sweep_id}': use letters, digits, '.', '_' or '-' (at most 64)")
        if spec.search in ("random", "bayes") and count is None and spec.run_cap is None:
            raise UsageError(f"{spec.path}: a {spec.search} sweep never ends by itself: give --count N or run_cap")
        self.spec, self.ws = spec, ws
        self.sweep_id = sweep_id or spec.default_sweep_id()
        self.workers, self.count, self.retry_failed = workers, count, retry_failed
        self.out = out or sys.stdout
        self.poll = poll
        self.base_env = dict(os.environ if env is None else env)
        self.store = ResultsStore(ws.db_path)
        self.dir = Path(ws.sweeps) / self.sweep_id
        self.gpus = worker_gpus(self.base_env, workers)
        self.active: dict[int, Active] = {}
        self.launched = 0
        self.done: list[tuple[str, str]] = []     # (trial_id, status) of trials this invocation ran
        self.retried: set[int] = set()
        self.end_reason: str | None = None        # exhausted | run_cap | target | count | failures
        self.signals: list[int] = []
        self._idle_key = None

    # ---------------------------------------------------------------------------------------- paths
    def log_path(self, trial_id: str) -> Path:
        return self.dir / f"{trial_id}.log"

    def result_path(self, trial_id: str) -> Path:
        return self.dir / f"{trial_id}.result.json"

    def lock_path(self, trial_id: str) -> Path:
        return self.dir / f"{trial_id}.lock"

    def say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)

    # ---------------------------------------------------------------------------------------- main loop
    def run(self) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        recorded = self.store.get_sweep(self.sweep_id)
        if recorded and json.loads(recorded["config_json"]) != self.spec.config:
            self.say(f"sweep {self.sweep_id}: the file differs from the recorded config; continuing with the file "
                     f"(recorded trials are kept)")
        self._record_sweep("running")
        n_done = sum(1 for r in self.store.trials(self.sweep_id) if r["status"] != "running")
        self.say(f"sweep {self.sweep_id} ({self.spec.search}, {self.spec.path.name}): {n_done} trial(s) already "
                 f"recorded; logs in {self.dir}" + (f"; GPUs {','.join(self.gpus)}" if self.gpus else ""))
        if self.gpus and self.workers > len(self.gpus):
            self.say(f"note: {self.workers} workers share {len(self.gpus)} GPUs")
        if self.spec.config.get("early_terminate"):
            self.say("note: early_terminate is applied by W&B's server only; here every trial runs to its end")
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._loop()
        finally:
            if self.active:   # a signal, or an error in the runner itself: stop the trials, keep them resumable
                self._stop_active()
            for s, h in old.items():
                signal.signal(s, h)
        return self._finish()

    def _on_signal(self, signum, frame):
        self.signals.append(signum)
        if len(self.signals) > 1:   # a second signal while trials stop: kill them now
            for a in self.active.values():
                kill_group(a.popen.pid)

    def _loop(self) -> None:
        while not self.signals:
            self._reap()
            if self.signals:
                return
            self._fill()
            if not self.active:
                if self.end_reason in ("count", "failures"):
                    return
                if not self._others_running():
                    # An orphan may have freed its lock after _fill looked; one more pass adopts or reruns it.
                    self._fill()
                    if not self.active:
                        return
            time.sleep(self.poll)

    def _fill(self) -> None:
        while len(self.active) < self.workers and not self.signals and self.end_reason not in ("count", "failures"):
            if self.count is not None and self.launched >= self.count:
                self.end_reason = "count"
                return
            claim = self._claim()
            if claim is None:
                return
            self._launch(claim)

    def _others_running(self) -> bool:
        """Trials still running under another runner (or orphaned ones still alive): wait for them, since they
        may end preempted (to rerun) or leave a result to adopt."""
        return any(r["status"] == "running" and r["trial_index"] not in self.active
                   and not lock_is_free(self.lock_path(r["trial_id"])) for r in self.store.trials(self.sweep_id))

    # ---------------------------------------------------------------------------------------- claiming
    def _claim(self) -> Claim | None:
        # Nothing changed since the last empty answer (no status change, no orphan released): skip the engine and
        # the write transaction.
        key = tuple((r["trial_index"], r["status"], self._orphaned(r)) for r in self.store.trials(self.sweep_id))
        if key == self._idle_key:
            return None
        with self.store.transaction() as conn:
            rows = self.store.trials(self.sweep_id, conn=conn)
            claim = self._claim_rerun(conn, rows) or self._claim_new(conn, rows)
        self._idle_key = key if claim is None else None
        return claim

    def _orphaned(self, row: dict) -> bool:
        """Recorded running, not ours, and its lock free: its runner and the trial process are both gone."""
        return (row["status"] == "running" and row["trial_index"] not in self.active
                and lock_is_free(self.lock_path(row["trial_id"])))

    def _claim_rerun(self, conn, rows: list[dict]) -> Claim | None:
        """Preempted trials, trials orphaned by a killed runner, and (with retry_failed) failed ones: same trial,
        same parameters, same run id."""
        for row in rows:
            idx, status = row["trial_index"], row["status"]
            if idx in self.active or status == "finished":
                continue
            if status == "failed" and not (self.retry_failed and idx not in self.retried):
                continue
            lock = try_lock(self.lock_path(row["trial_id"]))
            if lock is None:
                continue   # alive under another runner
            params = json.loads(row["params_json"])
            if status == "running":
                result = read_result(self.result_path(row["trial_id"]))
                if result and result.get("status") in ("finished", "failed"):
                    row["status"] = result["status"]
                    row["metric_value"] = metric_of(result, self.spec.metric_name)
                    self.store.upsert_trial(self.sweep_id, idx, row["trial_id"], params, row["status"],
                                            run_id=result.get("run_id"), metric_value=row["metric_value"], conn=conn)
                    lock.close()
                    self.say(f"trial {row['trial_id']}  {row['status']} (adopted: its runner was killed)")
                    continue
            if self.end_reason == "target":
                lock.close()
                continue
            if status == "failed":
                self.retried.add(idx)
            self.store.upsert_trial(self.sweep_id, idx, row["trial_id"], params, "running", conn=conn)
            return Claim(idx, row["trial_id"], params, lock, rerun=True)
        return None

    def _claim_new(self, conn, rows: list[dict]) -> Claim | None:
        if self._target_reached(rows):
            self.end_reason = "target"
            return None
        if self.spec.run_cap is not None and len(rows) >= self.spec.run_cap:
            self.end_reason = "run_cap"
            return None
        suggestion = suggest(self.spec.engine_config, to_sweep_runs(rows, self.spec.metric_name))
        if suggestion is None:
            self.end_reason = "exhausted"
            return None
        params = {k: v["value"] for k, v in sorted(to_python(suggestion.config).items())}
        idx = max((r["trial_index"] for r in rows), default=-1) + 1
        trial_id = f"{self.sweep_id}-{idx:04d}"
        lock = try_lock(self.lock_path(trial_id))
        if lock is None:
            raise RuntimeError(f"lock {self.lock_path(trial_id)} is held but the trial is not recorded")
        self.store.upsert_trial(self.sweep_id, idx, trial_id, params, "running", conn=conn)
        return Claim(idx, trial_id, params, lock)

    def _target_reached(self, rows: list[dict]) -> bool:
        target, goal = self.spec.metric_target, self.spec.metric_goal
        if target is None:
            return False
        values = [r["metric_value"] for r in rows if r["status"] == "finished" and r["metric_value"] is not None]
        return any(v >= target if goal == "maximize" else v <= target for v in values)

    # ---------------------------------------------------------------------------------------- trials
    def _launch(self, claim: Claim) -> None:
        self.launched += 1
        slot = min(set(range(self.workers)) - {a.slot for a in self.active.values()})
        gpu = self.gpus[slot % len(self.gpus)] if self.gpus else None
        base_env = dict(self.base_env)
        if gpu is not None:
            base_env["CUDA_VISIBLE_DEVICES"] = gpu
        self.result_path(claim.trial_id).unlink(missing_ok=True)
        argv, env = trial_command(self.spec, sweep_id=self.sweep_id, run_id=claim.trial_id, params=claim.params,
                                  base_env=base_env, wandb_dir=str(self.ws.root))
        env.update(INFMASK_ROOT=str(self.ws.root), INFMASK_TRIAL_RESULT=str(self.result_path(claim.trial_id)),
                   INFMASK_LOCAL_SWEEP="1")
        log = open(self.log_path(claim.trial_id), "ab")
        log.write(f"# infmask sweep {self.sweep_id}: {'rerun' if claim.rerun else 'start'} {time.strftime('%F %T')}"
                  f"{f' on GPU {gpu}' if gpu else ''}: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            # Own process group (as the agent: process_group=0), so a terminal's Ctrl-C reaches only the runner,
            # which forwards SIGTERM; the trial inherits the lock, which stays held until it exits.
            popen = subprocess.Popen(argv, cwd=self.spec.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, pass_fds=(claim.lock.fileno(),),
                                     **({"process_group": 0} if sys.version_info >= (3, 11)
                                        else {"preexec_fn": os.setpgrp}))
        except OSError as e:
            log.write(f"# could not start: {e}\n".encode())
            log.close()
            self._record(claim, "failed", None, None, time.time())
            return
        self.active[claim.index] = Active(claim, popen, log, slot, gpu, time.time())
        self.say(f"trial {claim.trial_id}  {'rerun' if claim.rerun else 'start'}"
                 f"{f' gpu={gpu}' if gpu else ''}  {self._params_text(claim.params)}")

    def _reap(self, preempting: bool = False) -> None:
        for idx, a in list(self.active.items()):
            rc = a.popen.poll()
            if rc is None:
                continue
            del self.active[idx]
            a.log.close()
            result = read_result(self.result_path(a.claim.trial_id))
            self._record(a.claim, outcome(rc, result, preempting), result, rc, a.started)

    def _record(self, claim: Claim, status: str, result, rc, started: float) -> None:
        value = metric_of(result, self.spec.metric_name) if status == "finished" else None
        self.store.upsert_trial(self.sweep_id, claim.index, claim.trial_id, claim.params, status,
                                run_id=(result or {}).get("run_id"), metric_value=value, returncode=rc)
        claim.lock.close()   # after the record: a runner that dies in between leaves a result to adopt
        self.done.append((claim.trial_id, status))
        self._idle_key = None
        metric = f"{self.spec.metric_name}={value:.4g}" if value is not None else (
            f"{self.spec.metric_name}=n/a" if self.spec.metric_name else "")
        self.say(f"trial {claim.trial_id}  {status:<9} rc={rc}  {time.time() - started:.1f}s  {metric}  "
                 f"{self._params_text(claim.params)}" + ("" if status == "finished" else
                                                        f"  (log: {self.log_path(claim.trial_id)})"))
        self._check_initial_failures()

    def _check_initial_failures(self) -> None:
        """As `wandb agent`: stop if the first WANDB_AGENT_MAX_INITIAL_FAILURES (5) trials all failed; a broken
        trial program would otherwise mark a whole grid failed."""
        try:
            limit = int(self.base_env.get("WANDB_AGENT_MAX_INITIAL_FAILURES", 5))
        except ValueError:
            limit = 5
        if len(self.done) == limit and all(s == "failed" for _, s in self.done):
            self.end_reason = "failures"
            self.say(f"sweep {self.sweep_id}: the first {limit} trials all failed; stopping (see their logs)")

    def _params_text(self, params: dict) -> str:
        keys = self.spec.varying or list(params)
        short = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in params.items()}   # full values: the log
        return " ".join(f"{k}={short[k]}" for k in keys if k in short)

    def _stop_active(self) -> None:
        """Forward SIGTERM to every running trial, wait for them (SIGKILL after WANDB_AGENT_KILL_DELAY seconds, 30 by
        default, or at a second signal) and record them; a preempted trial is rerun on resume."""
        try:
            delay = float(self.base_env.get("WANDB_AGENT_KILL_DELAY", 30))
        except ValueError:
            delay = 30.0
        self.say(f"sweep {self.sweep_id}: stopping {len(self.active)} running trial(s) (SIGTERM)")
        for a in self.active.values():
            try:
                a.popen.send_signal(signal.SIGTERM)
            except OSError:
                pass
        deadline = time.time() + delay
        while self.active:
            self._reap(preempting=True)
            if self.active and (time.time() > deadline or len(self.signals) > 1):
                for a in self.active.values():
                    kill_group(a.popen.pid)
            time.sleep(0.05)

    # ---------------------------------------------------------------------------------------- the end
    def _record_sweep(self, status: str) -> None:
        self.store.upsert_sweep(self.sweep_id, name=self.spec.name, file=str(self.spec.path),
                                benchmark=self.spec.benchmark, method=self.spec.method, config=self.spec.config,
                                metric_name=self.spec.metric_name, metric_goal=self.spec.metric_goal, status=status)

    def _complete(self, rows: list[dict]) -> bool:
        """Nothing left to run: no trial running or to rerun, and the search over (grid exhausted, run_cap or
        metric target reached). A random or bayes sweep without run_cap is never complete."""
        if any(r["status"] in ("running", "preempted") for r in rows):
            return False
        if self._target_reached(rows) or (self.spec.run_cap is not None and len(rows) >= self.spec.run_cap):
            return True
        return self.spec.search == "grid" and suggest(
            self.spec.engine_config, to_sweep_runs(rows, self.spec.metric_name)) is None

    def _finish(self) -> int:
        rows = self.store.trials(self.sweep_id)
        if self.signals:
            status = "interrupted"
        elif self._complete(rows):
            status = "finished"
        elif self.end_reason == "failures":
            status = "failed"
        else:
            status = "paused"    # --count reached with more to do; rerunning the same command continues
        self._record_sweep(status)
        by = {s: sum(1 for r in rows if r["status"] == s) for s in TRIAL_STATUSES}
        ran = {s: sum(1 for _, st in self.done if st == s) for s in TRIAL_STATUSES}
        self.say(f"sweep {self.sweep_id} {status}: this run {ran['finished']} finished, {ran['failed']} failed, "
                 f"{ran['preempted']} preempted; in all {len(rows)} trial(s): "
                 + ", ".join(f"{n} {s}" for s, n in by.items() if n))
        best = best_trial(rows, self.spec.metric_goal)
        if best:
            self.say(f"best {self.spec.metric_name}={best['metric_value']:.4g}: {best['trial_id']}  "
                     f"{self._params_text(json.loads(best['params_json']))}")
        if self.signals:
            return 128 + (signal.SIGINT if self.signals[0] == signal.SIGINT else signal.SIGTERM)
        return 1 if ran["failed"] or self.end_reason == "failures" else 0


def run_sweep(file, root=None, *, sweep_id=None, count=None, workers=1, retry_failed=False, out=None) -> int:
    """`infmask sweep FILE`: check everything, the trial command included (exit 2 before any trial starts), then
    run."""
    from ..workspace import Workspace

    spec = load_sweep(file)
    check_command(spec)
    runner = SweepRunner(spec, Workspace.open(root), sweep_id, workers=workers, count=count,
                         retry_failed=retry_failed, out=out)
    return runner.run()
