"""The embedded sweep runner: a W&B sweep file run here, offline, with W&B's own sweep engine.

`wandb agent` asks W&B's server for the next parameters; here the `sweeps` package (the engine behind that
server) suggests them from the trials recorded in the results store, and each trial is started the way a W&B
agent starts it: argv from wandb's own helpers (`create_sweep_command`, `create_sweep_command_args`, expanded as
in `wandb_agent.Agent._command_run`), the same environment (WANDB_SWEEP_ID, WANDB_RUN_ID, WANDB_SWEEP_PARAM_PATH
written by wandb's `config_util`, WANDB_DIR, WANDB_PROJECT, WANDB_SERVICE removed), its own process group, stdin
closed. So one sweep file and one trial program behave the same under `wandb agent` and `infmask sweep`.

Deliberate differences from the agent:
- `${interpreter}` is this Python (`sys.executable`), not `python` from PATH, so the runner works without
  activating the venv.
- WANDB_DIR defaults to the workspace root (the agent: the current directory); WANDB_MODE defaults to offline.
- The trial also gets INFMASK_ROOT, INFMASK_TRIAL_RESULT (where it writes its result JSON) and INFMASK_LOCAL_SWEEP=1
  (the sweep id exists only in this workspace, not on a W&B server).

Coordination lives in the results store (`sweep_trials`) plus one lock file per trial: a trial is claimed in a
single write transaction (so two runners on one sweep never start the same trial) and its lock is held by the
runner *and* inherited by the trial process, so a trial whose runner was killed still counts as running until
the trial itself exits. A "running" trial whose lock is free was orphaned: its result is adopted if it wrote one,
otherwise it is rerun with the same parameters and run id (as W&B requeues a preempted run).
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .workspace import atomic_path

TRIAL_STATUSES = ("running", "finished", "failed", "preempted")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _engine():
    """`sweeps` 0.2.0 warns about pydantic v1-style configs on import; the warnings say nothing about our use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def suggest(config: dict, runs: list):
    """One suggestion from the engine (None once a grid is exhausted). Its GP fit warns about length scales at
    bounds on small sweeps; W&B's server does not show those either."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _engine().next_run(config, runs)


def to_python(obj):
    """Engine values are numpy scalars (np.float64, np.int64): not YAML- or JSON-serialisable. Plain Python out."""
    if isinstance(obj, dict):
        return {k: to_python(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_python(v) for v in obj]
    if hasattr(obj, "item") and type(obj).__module__ == "numpy":
        return obj.item()
    return obj


# ============================================================================================ the sweep file

@dataclass
class SweepSpec:
    path: Path
    config: dict                    # the file as written (run_cap included)
    name: str
    run_cap: int | None
    metric_name: str | None
    metric_goal: str
    metric_target: float | None
    benchmark: str | None           # the fixed benchmark, if there is one
    method: str | None              # the fixed method, if there is one
    cwd: Path                       # where the trial command runs (the directory `program` is relative to)
    varying: list = field(default_factory=list)   # parameter names that take several values

    @property
    def engine_config(self) -> dict:
        """What the `sweeps` engine sees: 0.2.0's schema has no `run_cap`, which we enforce ourselves."""
        cfg = copy.deepcopy(self.config)
        cfg.pop("run_cap", None)
        return cfg

    @property
    def search(self) -> str:
        return self.config["method"]

    def default_sweep_id(self) -> str:
        """Same file name and content, same id: rerunning the same command resumes the same sweep."""
        blob = json.dumps({"file": self.path.stem, "name": self.name, "config": self.config}, sort_keys=True,
                          default=str)
        slug = re.sub(r"[^a-z0-9]+", "-", self.path.stem.lower()).strip("-")[:40] or "sweep"
        return f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and check a sweep file; every problem is a UsageError naming the file and the problem."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise UsageError(f"sweep file '{src}' not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{src}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{src}: a sweep file is a mapping (program, method, metric, parameters, ...), "
                         f"got {type(config).__name__}")
    check_schema(config, src)
    params = config["parameters"]
    for name, spec in params.items():
        if isinstance(spec, dict) and "parameters" in spec:
            raise UsageError(f"{src}: parameter '{name}': nested parameters are not supported; use flat dotted "
                             f"names (e.g. model.mask_ratio) so the trial receives --model.mask_ratio=...")
    check_parameters(params, src)
    run_cap = config.get("run_cap")
    metric = config.get("metric") or {}
    fixed = {k: v["value"] for k, v in params.items() if "value" in v}
    fixed.update({k: v["values"][0] for k, v in params.items() if len(v.get("values") or ()) == 1})
    spec = SweepSpec(
        path=path.resolve(), config=config, name=str(config.get("name") or path.stem), run_cap=run_cap,
        metric_name=metric.get("name"), metric_goal=metric.get("goal", "minimize"), metric_target=metric.get("target"),
        benchmark=fixed.get("benchmark"), method=fixed.get("method"), cwd=_trial_cwd(path, config.get("program")),
        varying=sorted(k for k in params if k not in fixed))
    if spec.search == "bayes" and not spec.metric_name:
        raise UsageError(f"{src}: method bayes needs a metric section (name and goal)")
    _dry_suggestion(spec, src)
    return spec


def check_schema(config: dict, src: str) -> None:
    """W&B's own schema (sweeps 0.2.0), minus `run_cap` which that version lacks and which we check here."""
    cfg = dict(config)
    run_cap = cfg.pop("run_cap", None)
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1):
        raise UsageError(f"{src}: run_cap must be a positive integer, got {run_cap!r}")
    try:
        problems = _engine().schema_violations_from_proposed_config(cfg)
    except ValueError as e:
        problems = [str(e)]
    if problems:
        raise UsageError(f"{src}: not a valid W&B sweep config: {'; '.join(problems)}")
    if not isinstance(cfg.get("parameters"), dict) or not cfg["parameters"]:
        raise UsageError(f"{src}: 'parameters' must be a mapping with at least one parameter")


def _candidate_values(spec: dict) -> list:
    """Values that show whether a parameter's range fits the config: every listed value, or a range's ends."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    if spec.get("distribution") in ("log_uniform", "q_log_uniform"):   # min/max are exponents here
        return [math.exp(spec["min"]), math.exp(spec["max"])]
    if "min" in spec and "max" in spec:
        return [spec["min"], spec["max"]]
    if "mu" in spec:
        return [spec["mu"]]
    return []


def check_parameters(params: dict, src: str) -> None:
    """Every parameter must be a key the benchmark's config declares, with a value it accepts. Checked the way the
    trial itself parses its argv (`infmask trial`'s parser, same defaults), from the very arguments a W&B agent
    builds: each parameter alone for each of its values (or range ends), then all first values together."""
    from .config import ConfigError
    from .stages.trial import parse_trial_argv

    if "benchmark" not in params:
        raise UsageError(f"{src}: parameter 'benchmark' is required (the trial needs --benchmark)")
    candidates = {name: _candidate_values(spec) for name, spec in params.items()}
    for name, values in candidates.items():
        if not values:
            raise UsageError(f"{src}: parameter '{name}': give value, values, or a distribution with min and max")
    fixed = ("benchmark", "method", "preset")

    def parse(chosen: dict, what: str):
        try:
            parse_trial_argv(build_argv(["${args}"], None, chosen))
        except (ConfigError, UsageError) as e:
            raise UsageError(f"{src}: {what}: {e}") from None

    for benchmark in candidates["benchmark"]:
        for method in candidates.get("method", [None]):
            for preset in candidates.get("preset", [None]):
                trial = {k: v for k, v in zip(fixed, (benchmark, method, preset)) if v is not None}
                parse(trial, " ".join(f"{k}={v}" for k, v in trial.items()))
                for name, values in candidates.items():
                    if name not in fixed:
                        for value in values:
                            parse({**trial, name: value}, f"parameter '{name}' = {value!r}")
                parse({**{k: v[0] for k, v in candidates.items()}, **trial}, "the first values together")


def _trial_cwd(path: Path, program) -> Path:
    """The directory a W&B agent would be started in: the first of the sweep file's directory and its parents in
    which `program` exists (the repository root for `program: pipeline/__main__.py`)."""
    if program:
        for d in [path.resolve().parent, *path.resolve().parents]:
            if (d / str(program)).exists():
                return d
        for d in (Path.cwd(), REPO_ROOT):
            if (d / str(program)).exists():
                return d
    return Path.cwd()


def _dry_suggestion(spec: SweepSpec, src: str) -> None:
    """Ask the engine once, with no runs: it rejects what its schema lets through (e.g. grid over a continuous
    distribution)."""
    try:
        suggest(spec.engine_config, [])
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{src}: the sweep engine rejects this config: {e}") from None


# ============================================================================================ agent parity

def param_path(wandb_dir: str, sweep_id: str, run_id: str) -> str:
    """Where `wandb agent` writes a run's parameters (wandb_agent.Agent._command_run)."""
    return os.path.join(wandb_dir, "wandb", f"sweep-{sweep_id}", f"config-{run_id}.yaml")


def write_param_file(path: str, params: dict) -> None:
    """The agent's file (`wandb_version: 1`, then `name: {value: v}`, via wandb's config_util), written atomically."""
    from wandb.sdk.lib import config_util

    with atomic_path(Path(path)) as tmp:
        config_util.save_config_file_from_dict(str(tmp), {k: {"value": v} for k, v in params.items()})


def build_argv(command: list | None, program: str | None, params: dict, *, interpreter: str = sys.executable,
               args_json_file: str | None = None) -> list[str]:
    """The child command exactly as `wandb agent` builds it, but `${interpreter}` -> `interpreter`."""
    from wandb.sdk.launch.sweeps.utils import DEFAULT_SWEEP_COMMAND, create_sweep_command, create_sweep_command_args

    # create_sweep_command rewrites ${envvar:...} in place: give it a copy, never the config's list
    sweep_command = create_sweep_command([str(c) for c in (command or DEFAULT_SWEEP_COMMAND)])
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars["interpreter"] = [interpreter]
    sweep_vars["program"] = [program]
    sweep_vars["args_json_file"] = [args_json_file]
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    if args_json_file and "${args_json_file}" in sweep_command:
        with open(args_json_file, "w") as fp:
            fp.write(sweep_vars["args_json"][0])
    argv: list[str] = []
    for c in sweep_command:
        c = str(c)
        if c.startswith("${") and c.endswith("}"):
            argv += sweep_vars.get(c[2:-1]) or []   # unknown macros expand to nothing, as in the agent
        else:
            argv.append(c)
    return argv


def build_env(base_env: dict, *, sweep_id: str, run_id: str, wandb_dir: str | None, project: str | None = None,
              entity: str | None = None) -> dict:
    """The child environment as `wandb agent` builds it (run_agent, Agent.__init__, _command_run, AgentProcess);
    writes nothing. WANDB_DIR: the caller's if set (the agent keeps it too), else `wandb_dir`."""
    env = dict(base_env)
    if entity:
        env["WANDB_ENTITY"] = entity
    if project:
        env["WANDB_PROJECT"] = project
    env["WANDB_SWEEP_ID"] = sweep_id
    if env.get("WANDB_DIR") is None:
        env["WANDB_DIR"] = os.path.abspath(wandb_dir or os.getcwd())
    env["WANDB_RUN_ID"] = run_id
    env["WANDB_SWEEP_PARAM_PATH"] = param_path(env["WANDB_DIR"], sweep_id, run_id)
    env.pop("WANDB_SERVICE", None)   # each child starts its own wandb-core
    return env


def trial_command(spec: SweepSpec, *, sweep_id: str, run_id: str, params: dict, base_env: dict, wandb_dir: str,
                  interpreter: str = sys.executable) -> tuple[list[str], dict]:
    """argv and env for one trial; writes the parameter file (and the args JSON file where `command` asks)."""
    env = build_env(base_env, sweep_id=sweep_id, run_id=run_id, wandb_dir=wandb_dir,
                    project=spec.config.get("project") or base_env.get("WANDB_PROJECT") or "infmask",
                    entity=spec.config.get("entity"))
    path = env["WANDB_SWEEP_PARAM_PATH"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_param_file(path, params)
    argv = build_argv(spec.config.get("command"), spec.config.get("program"), params, interpreter=interpreter,
                      args_json_file=path[: -len(".yaml")] + ".json")
    env.setdefault("WANDB_MODE", "offline")
    return argv, env


# ============================================================================================ GPUs

def worker_gpus(env: dict, workers: int) -> list[str]:
    """Device ids to pin workers to, one each: empty (no pinning) unless several GPUs are visible and several
    workers run; a single worker keeps every GPU (so a trial may use DDP)."""
    if workers < 2:
        return []
    try:
        import torch
        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: nothing to pin
        n = 0
    if n < 2:
        return []
    visible = [s.strip() for s in (env.get("CUDA_VISIBLE_DEVICES") or "").split(",") if s.strip()]
    return visible[:n] if visible else [str(i) for i in range(n)]


# ============================================================================================ trial records

def _try_lock(path: Path):
    """An exclusive flock on `path`, or None if someone (a runner or its trial) holds it."""
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _lock_is_free(path: Path) -> bool:
    f = _try_lock(path)
    if f is None:
        return False
    f.close()
    return True


def read_result(path: Path) -> dict | None:
    """The trial's result JSON ({"run_id", "status", "metrics"}), or None if missing or unreadable."""
    try:
        res = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return res if isinstance(res, dict) else None


def outcome(returncode: int | None, result: dict | None, preempting: bool) -> str:
    """A trial's final status. A non-zero exit is never `finished`; a trial stopped by us is `preempted` (rerun on
    resume) unless it had already finished or said it failed."""
    status = (result or {}).get("status")
    if returncode == 0:
        return status if status in TRIAL_STATUSES and status != "running" else "finished"
    if status in ("failed", "preempted") and not preempting:
        return status
    if preempting or returncode in (130, 143, -signal.SIGTERM, -signal.SIGINT, -signal.SIGKILL):
        return "preempted"
    return "failed"


def metric_of(result: dict | None, name: str | None) -> float | None:
    value = ((result or {}).get("metrics") or {}).get(name) if name else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


_UPSERT_TRIAL = """
INSERT INTO sweep_trials (sweep_id, trial_index, trial_id, params_json, status, run_id, metric_value, returncode,
                          created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(sweep_id, trial_index) DO UPDATE SET status=excluded.status,
    run_id=COALESCE(excluded.run_id, sweep_trials.run_id), metric_value=excluded.metric_value,
    returncode=excluded.returncode, updated_at=excluded.updated_at"""


def _write_trial(conn, sweep_id, index, trial_id, params, status, run_id=None, metric_value=None, returncode=None):
    """ResultsStore.upsert_trial inside an open transaction (the claim must be one transaction)."""
    from .store import now

    t = now()
    conn.execute(_UPSERT_TRIAL, (sweep_id, index, trial_id, json.dumps(params, sort_keys=True), status, run_id,
                                 metric_value, returncode, t, t))


def to_sweep_runs(rows: list[dict], metric_name: str | None) -> list:
    """Trial rows as the engine's SweepRun objects. summary_metrics is set by attribute: sweeps 0.2.0 under
    pydantic 2 silently drops it when passed to the constructor by field name."""
    sweeps = _engine()
    runs = []
    for row in rows:
        run = sweeps.SweepRun(name=row["trial_id"], config={k: {"value": v} for k, v in
                                                            json.loads(row["params_json"]).items()},
                              state=sweeps.RunState(row["status"]))
        if metric_name and row["metric_value"] is not None:
            run.summary_metrics = {metric_name: float(row["metric_value"])}
        runs.append(run)
    return runs


# ============================================================================================ the runner

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
        from .store import ResultsStore

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
        recorded = self.store.query("SELECT config_json FROM sweeps WHERE sweep_id=?", (self.sweep_id,))
        if recorded and json.loads(recorded[0]["config_json"]) != self.spec.config:
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
                _killpg(a.popen.pid)

    def _loop(self) -> None:
        while not self.signals:
            self._reap()
            if self.signals:
                return
            self._fill()
            if not self.active:
                if self.end_reason in ("count", "failures") or not self._others_running():
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
                   and not _lock_is_free(self.lock_path(r["trial_id"])) for r in self.store.trials(self.sweep_id))

    # ---------------------------------------------------------------------------------------- claiming
    def _claim(self) -> Claim | None:
        # Nothing changed since the last empty answer (no status change, no orphan released): skip the engine and
        # the write transaction.
        key = tuple((r["trial_index"], r["status"], self._orphaned(r)) for r in self.store.trials(self.sweep_id))
        if key == self._idle_key:
            return None
        with self.store.transaction() as conn:
            rows = [dict(r) for r in conn.execute(
                "SELECT * FROM sweep_trials WHERE sweep_id=? ORDER BY trial_index", (self.sweep_id,))]
            claim = self._claim_rerun(conn, rows) or self._claim_new(conn, rows)
        self._idle_key = key if claim is None else None
        return claim

    def _orphaned(self, row: dict) -> bool:
        """Recorded running, not ours, and its lock free: its runner and the trial process are both gone."""
        return (row["status"] == "running" and row["trial_index"] not in self.active
                and _lock_is_free(self.lock_path(row["trial_id"])))

    def _claim_rerun(self, conn, rows: list[dict]) -> Claim | None:
        """Preempted trials, trials orphaned by a killed runner, and (with retry_failed) failed ones: same trial,
        same parameters, same run id."""
        for row in rows:
            idx, status = row["trial_index"], row["status"]
            if idx in self.active or status == "finished":
                continue
            if status == "failed" and not (self.retry_failed and idx not in self.retried):
                continue
            lock = _try_lock(self.lock_path(row["trial_id"]))
            if lock is None:
                continue   # alive under another runner
            params = json.loads(row["params_json"])
            if status == "running":
                result = read_result(self.result_path(row["trial_id"]))
                if result and result.get("status") in ("finished", "failed"):
                    row["status"] = result["status"]
                    row["metric_value"] = metric_of(result, self.spec.metric_name)
                    _write_trial(conn, self.sweep_id, idx, row["trial_id"], params, row["status"],
                                 run_id=result.get("run_id"), metric_value=row["metric_value"])
                    lock.close()
                    self.say(f"trial {row['trial_id']}  {row['status']} (adopted: its runner was killed)")
                    continue
            if self.end_reason == "target":
                lock.close()
                continue
            if status == "failed":
                self.retried.add(idx)
            _write_trial(conn, self.sweep_id, idx, row["trial_id"], params, "running")
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
        lock = _try_lock(self.lock_path(trial_id))
        if lock is None:
            raise RuntimeError(f"lock {self.lock_path(trial_id)} is held but the trial is not recorded")
        _write_trial(conn, self.sweep_id, idx, trial_id, params, "running")
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
                    _killpg(a.popen.pid)
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


def best_trial(rows: list[dict], goal: str) -> dict | None:
    done = [r for r in rows if r["status"] == "finished" and r["metric_value"] is not None]
    if not done:
        return None
    pick = max if goal == "maximize" else min
    return pick(done, key=lambda r: r["metric_value"])


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def run_sweep(file, root=None, *, sweep_id=None, count=None, workers=1, retry_failed=False, out=None) -> int:
    """`infmask sweep FILE`: check everything, the trial command included (exit 2 before any trial starts), then
    run."""
    from .sweep_command import check_command
    from .workspace import Workspace

    spec = load_sweep(file)
    check_command(spec)
    runner = SweepRunner(spec, Workspace.open(root), sweep_id, workers=workers, count=count,
                         retry_failed=retry_failed, out=out)
    return runner.run()
