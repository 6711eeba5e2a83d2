"""`infmask sweep`: the embedded runner with a toy trial program (tests/sweep_toy_trial.py) that honours the trial
contract in a fraction of a second."""
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import infmask.sweeping as sweeping
from infmask.cli import main
from infmask.store import ResultsStore
from infmask.sweeping import SweepRunner, load_sweep
from infmask.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "tests" / "helpers" / "sweep_toy_trial.py"
METRIC = "probe/val/acc1"


def toy_metric(mask_ratio: float, temperature: float) -> float:
    return 1.0 - (mask_ratio - 0.7) ** 2 - (math.log10(temperature) + 1.0) ** 2


def write_sweep(path: Path, masks=(0.5, 0.7), temps=(0.05, 0.1), method="grid", **extra) -> Path:
    params = {"benchmark": {"value": "trifeatures"}, "method": {"value": "infmasking"},
              "preset": {"value": "smoke"}, "seed": {"value": 42},
              "model.mask_ratio": {"values": list(masks)}, "model.temperature": {"values": list(temps)}}
    params.update(extra.pop("parameters", {}))
    config = {"program": str(TOY), "method": method, "metric": {"name": METRIC, "goal": "maximize"},
              "parameters": params, "command": ["${env}", "${interpreter}", "${program}", "${args}"], **extra}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A workspace, a toy-trial log, and no stray W&B settings from the caller's shell."""
    for key in ("WANDB_DIR", "WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "TOY_FAIL", "TOY_CRASH",
                "TOY_SLOW", "TOY_SLOW_SLEEP",
                "CUDA_VISIBLE_DEVICES", "INFMASK_ROOT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("TOY_LOG", str(tmp_path / "toy.log"))
    monkeypatch.setenv("TOY_SLEEP", "0.2")
    return tmp_path


def toy_events(tmp_path, event=None) -> list[dict]:
    path = tmp_path / "toy.log"
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if event is None or e["event"] == event]


def starts_per_params(tmp_path) -> dict:
    counts = {}
    for e in toy_events(tmp_path, "start"):
        key = (e["params"]["model.mask_ratio"], e["params"]["model.temperature"])
        counts[key] = counts.get(key, 0) + 1
    return counts


def run_inprocess(sweep_file, root, **kwargs):
    out = io.StringIO()
    runner = SweepRunner(load_sweep(sweep_file), Workspace.open(root), kwargs.pop("sweep_id", None), out=out,
                         **kwargs)
    rc = runner.run()
    return rc, out.getvalue(), runner


def trials(root, sweep_id) -> list[dict]:
    return ResultsStore(Path(root) / "results.sqlite").trials(sweep_id)


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_runners():
    yield
    while STARTED:   # a failed test must not leave a runner going
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def cli(*args, **kw) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "infmask", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)
    STARTED.append(proc)
    return proc


# ------------------------------------------------------------------------------------------------ a whole grid

def test_grid_runs_every_trial_once_as_an_agent_would_and_records_it(env):
    f = write_sweep(env / "toy.yaml")
    rc, out, runner = run_inprocess(f, env / "ws")
    assert rc == 0, out
    rows = trials(env / "ws", runner.sweep_id)
    assert [r["status"] for r in rows] == ["finished"] * 4
    for r in rows:
        p = json.loads(r["params_json"])
        assert r["metric_value"] == pytest.approx(toy_metric(p["model.mask_ratio"], p["model.temperature"]))
        assert r["run_id"] == f"toy-{r['trial_id']}" and r["returncode"] == 0
        assert (env / "ws" / "sweeps" / runner.sweep_id / f"{r['trial_id']}.log").exists()
    assert starts_per_params(env) == {(m, t): 1 for m in ("0.5", "0.7") for t in ("0.05", "0.1")}
    store = ResultsStore(env / "ws" / "results.sqlite")
    sweep, = store.query("SELECT * FROM sweeps WHERE sweep_id=?", (runner.sweep_id,))
    assert (sweep["status"], sweep["benchmark"], sweep["metric_name"], sweep["metric_goal"]) == \
        ("finished", "trifeatures", METRIC, "maximize")

    first = toy_events(env, "start")[0]
    assert first["argv"] == ["--benchmark=trifeatures", "--method=infmasking", "--model.mask_ratio=0.5",
                             "--model.temperature=0.05", "--preset=smoke", "--seed=42"]
    e = first["env"]
    trial_id = rows[0]["trial_id"]
    assert e["WANDB_SWEEP_ID"] == runner.sweep_id and e["WANDB_RUN_ID"] == trial_id
    assert e["WANDB_SWEEP_PARAM_PATH"] == str(env / "ws" / "wandb" / f"sweep-{runner.sweep_id}" /
                                              f"config-{trial_id}.yaml")
    assert e["WANDB_DIR"] == e["INFMASK_ROOT"] == str(env / "ws")
    assert (e["WANDB_PROJECT"], e["WANDB_MODE"], e["WANDB_SERVICE"]) == ("infmask", "offline", None)
    assert e["INFMASK_TRIAL_RESULT"].endswith(f"{trial_id}.result.json")
    assert first["param_file_ok"] and first["stdin"] == "eof" and first["own_process_group"]
    assert first["cwd"] == str(env)   # the directory `program` resolves from
    assert f"best {METRIC}=1:" in out and out.count(" finished  rc=0") == 4

    # the same command again resumes the same sweep: nothing left to do
    rc, out, again = run_inprocess(f, env / "ws")
    assert rc == 0 and again.sweep_id == runner.sweep_id
    assert len(toy_events(env, "start")) == 4 and "this run 0 finished" in out


def test_failed_and_crashed_trials_are_recorded_and_the_sweep_goes_on(env, monkeypatch):
    monkeypatch.setenv("TOY_FAIL", "model.mask_ratio=0.5,model.temperature=0.1")   # says failed, exit 1
    monkeypatch.setenv("TOY_CRASH", "model.mask_ratio=0.7,model.temperature=0.05")   # no result, exit 3
    f = write_sweep(env / "toy.yaml")
    rc, out, runner = run_inprocess(f, env / "ws")
    assert rc == 1, out   # some trial failed
    status = {(json.loads(r["params_json"])["model.mask_ratio"], json.loads(r["params_json"])["model.temperature"]):
              (r["status"], r["returncode"]) for r in trials(env / "ws", runner.sweep_id)}
    assert status == {(0.5, 0.05): ("finished", 0), (0.5, 0.1): ("failed", 1), (0.7, 0.05): ("failed", 3),
                      (0.7, 0.1): ("finished", 0)}
    assert "failed    rc=3" in out and "(log: " in out

    # W&B semantics: a grid does not re-suggest failed cells; retry_failed reruns them once
    monkeypatch.delenv("TOY_FAIL")
    monkeypatch.delenv("TOY_CRASH")
    rc, out, _ = run_inprocess(f, env / "ws")
    assert rc == 0 and "this run 0 finished" in out
    rc, out, _ = run_inprocess(f, env / "ws", retry_failed=True)
    assert rc == 0 and "this run 2 finished" in out
    assert {r["status"] for r in trials(env / "ws", runner.sweep_id)} == {"finished"}


def test_a_trial_that_cannot_start_is_failed_and_the_sweep_stops_after_five_such(env):
    f = write_sweep(env / "toy.yaml", masks=(0.1, 0.3, 0.5, 0.7), temps=(0.05, 0.1))
    config = yaml.safe_load(f.read_text())
    config["command"] = ["/nonexistent/python", "${program}", "${args}"]
    f.write_text(yaml.safe_dump(config))
    rc, out, runner = run_inprocess(f, env / "ws")
    rows = trials(env / "ws", runner.sweep_id)
    assert rc == 1 and [r["status"] for r in rows] == ["failed"] * 5   # then stops, as `wandb agent` does
    assert "first 5 trials all failed" in out


# ------------------------------------------------------------------------------------------------ limits

def test_run_cap_and_count(env):
    f = write_sweep(env / "cap.yaml", masks=(0.1, 0.3, 0.5, 0.7), temps=(0.05, 0.1, 0.2), run_cap=3)
    rc, out, runner = run_inprocess(f, env / "ws")
    assert rc == 0 and len(trials(env / "ws", runner.sweep_id)) == 3 and f"sweep {runner.sweep_id} finished" in out
    rc, out, _ = run_inprocess(f, env / "ws")   # the cap holds across invocations
    assert len(trials(env / "ws", runner.sweep_id)) == 3

    g = write_sweep(env / "count.yaml")
    rc, out, runner = run_inprocess(g, env / "ws", count=3)
    assert rc == 0 and len(trials(env / "ws", runner.sweep_id)) == 3 and "paused" in out
    rc, out, _ = run_inprocess(g, env / "ws", count=3)
    assert len(trials(env / "ws", runner.sweep_id)) == 4 and f"sweep {runner.sweep_id} finished" in out


def test_metric_target_stops_new_trials(env):
    f = write_sweep(env / "t.yaml", masks=(0.7, 0.5), temps=(0.1, 0.05))
    config = yaml.safe_load(f.read_text())
    config["metric"]["target"] = 0.99
    f.write_text(yaml.safe_dump(config))
    rc, out, runner = run_inprocess(f, env / "ws")
    assert rc == 0 and len(trials(env / "ws", runner.sweep_id)) == 1   # (0.7, 0.1) hits 1.0 first


# ------------------------------------------------------------------------------------------------ concurrency

def test_two_workers_run_at_once_and_lose_and_duplicate_nothing(env, monkeypatch):
    monkeypatch.setenv("TOY_SLEEP", "0.5")
    monkeypatch.setattr(sweeping.runner, "worker_gpus", lambda env, workers: ["5", "7"])   # as if 2 GPUs were visible
    f = write_sweep(env / "toy.yaml", masks=(0.3, 0.5, 0.7), temps=(0.05, 0.1))
    rc, out, runner = run_inprocess(f, env / "ws", workers=2)
    assert rc == 0, out
    assert [r["status"] for r in trials(env / "ws", runner.sweep_id)] == ["finished"] * 6
    assert set(starts_per_params(env).values()) == {1} and len(starts_per_params(env)) == 6
    starts, ends = toy_events(env, "start"), {e["pid"]: e["t"] for e in toy_events(env, "end")}
    spans = [(s["t"], ends[s["pid"]], s["env"]["CUDA_VISIBLE_DEVICES"]) for s in starts]
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, "the two workers never ran at the same time"
    assert all(a[2] != b[2] for a, b in overlapping)   # one GPU each
    assert {s[2] for s in spans} == {"5", "7"}


def test_two_runners_on_one_sweep_lose_and_duplicate_nothing(env, monkeypatch):
    monkeypatch.setenv("TOY_SLEEP", "0.3")
    f = write_sweep(env / "toy.yaml", masks=(0.3, 0.5, 0.7), temps=(0.05, 0.1))
    procs = [cli("sweep", str(f), "--root", str(env / "ws")) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(" start " in o for o in outs), outs   # both took part
    sweep_id = load_sweep(f).default_sweep_id()
    assert [r["status"] for r in trials(env / "ws", sweep_id)] == ["finished"] * 6
    assert len(starts_per_params(env)) == 6 and set(starts_per_params(env).values()) == {1}


# ------------------------------------------------------------------------------------------------ interruption

def _wait_for(predicate, timeout=60.0):
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.05)


def test_sigterm_stops_trials_records_them_preempted_and_a_rerun_finishes_only_the_rest(env, monkeypatch):
    monkeypatch.setenv("TOY_SLOW", "model.mask_ratio=0.5,model.temperature=0.1")   # the 2nd trial: 30 s
    f = write_sweep(env / "toy.yaml")
    proc = cli("sweep", str(f), "--root", str(env / "ws"))
    _wait_for(lambda: len(toy_events(env, "end")) == 1 and len(toy_events(env, "start")) == 2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, out
    sweep_id = load_sweep(f).default_sweep_id()
    assert [r["status"] for r in trials(env / "ws", sweep_id)] == ["finished", "preempted"]
    assert len(toy_events(env, "preempted")) == 1   # the trial got SIGTERM and said so
    store = ResultsStore(env / "ws" / "results.sqlite")
    assert store.query("SELECT status FROM sweeps WHERE sweep_id=?", (sweep_id,))[0]["status"] == "interrupted"

    monkeypatch.delenv("TOY_SLOW")
    rc, out, runner = run_inprocess(f, env / "ws")
    assert rc == 0 and runner.sweep_id == sweep_id
    rows = trials(env / "ws", sweep_id)
    assert [r["status"] for r in rows] == ["finished"] * 4
    assert f"trial {rows[1]['trial_id']}  rerun" in out   # same trial, same params, same run id
    counts = starts_per_params(env)
    assert counts == {("0.5", "0.05"): 1, ("0.5", "0.1"): 2, ("0.7", "0.05"): 1, ("0.7", "0.1"): 1}
    reruns = [e for e in toy_events(env, "start") if e["params"]["model.temperature"] == "0.1"
              and e["params"]["model.mask_ratio"] == "0.5"]
    assert reruns[0]["env"]["WANDB_RUN_ID"] == reruns[1]["env"]["WANDB_RUN_ID"] == rows[1]["trial_id"]


def test_sigint_forwards_sigterm_and_exits_130(env, monkeypatch):
    monkeypatch.setenv("TOY_SLEEP", "5")
    f = write_sweep(env / "toy.yaml")

    def interrupt_when_started():
        _wait_for(lambda: len(toy_events(env, "start")) == 1)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    t0 = time.time()
    rc, out, runner = run_inprocess(f, env / "ws")
    assert rc == 130 and time.time() - t0 < 5, out
    assert [r["status"] for r in trials(env / "ws", runner.sweep_id)] == ["preempted"]
    assert len(toy_events(env, "preempted")) == 1


def test_sigkill_of_the_runner_orphans_nothing_and_a_restart_completes_only_the_rest(env, monkeypatch):
    monkeypatch.setenv("TOY_SLOW", "model.mask_ratio=0.5,model.temperature=0.1")   # the 2nd trial: 3 s
    monkeypatch.setenv("TOY_SLOW_SLEEP", "3")
    f = write_sweep(env / "toy.yaml")
    proc = cli("sweep", str(f), "--root", str(env / "ws"))
    _wait_for(lambda: len(toy_events(env, "end")) == 1 and len(toy_events(env, "start")) == 2)
    proc.kill()   # SIGKILL: no handler runs; trial 2 keeps running, orphaned, and holds its lock
    proc.communicate(timeout=30)
    sweep_id = load_sweep(f).default_sweep_id()
    assert [r["status"] for r in trials(env / "ws", sweep_id)] == ["finished", "running"]

    rc, out, _ = run_inprocess(f, env / "ws")   # the orphan still runs (and still has TOY_SLOW in its env)
    assert rc == 0, out
    assert [r["status"] for r in trials(env / "ws", sweep_id)] == ["finished"] * 4
    assert "adopted" in out   # the orphan finished on its own; its result was taken, not rerun
    assert set(starts_per_params(env).values()) == {1} and len(starts_per_params(env)) == 4


def test_a_trial_left_running_with_no_process_is_rerun_with_the_same_params(env):
    f = write_sweep(env / "toy.yaml")
    spec = load_sweep(f)
    sweep_id = spec.default_sweep_id()
    store = ResultsStore(Workspace.open(env / "ws").db_path)
    params = {"benchmark": "trifeatures", "method": "infmasking", "model.mask_ratio": 0.7,
              "model.temperature": 0.1, "preset": "smoke", "seed": 42}
    store.upsert_trial(sweep_id, 0, f"{sweep_id}-0000", params, "running")   # its runner died before it started
    rc, out, _ = run_inprocess(f, env / "ws")
    assert rc == 0 and f"trial {sweep_id}-0000  rerun" in out
    assert [r["status"] for r in trials(env / "ws", sweep_id)] == ["finished"] * 4
    assert set(starts_per_params(env).values()) == {1}


# ------------------------------------------------------------------------------------------------ bayes

def test_bayes_gets_finished_results_back_as_plain_python(env, monkeypatch):
    f = write_sweep(env / "bayes.yaml", method="bayes", run_cap=4, parameters={
        "model.mask_ratio": {"distribution": "uniform", "min": 0.1, "max": 0.9},
        "model.temperature": {"distribution": "log_uniform_values", "min": 0.02, "max": 0.5}})
    engine = sweeping.load_engine()
    seen = []
    real_next_run = engine.next_run

    def spy(config, runs, *a, **kw):
        seen.append([(r.state, dict(r.summary_metrics or {}), r.config) for r in runs])
        return real_next_run(config, runs, *a, **kw)

    monkeypatch.setattr(engine, "next_run", spy)
    monkeypatch.setenv("TOY_SLEEP", "0.05")
    rc, out, runner = run_inprocess(f, env / "ws")
    assert rc == 0, out
    rows = trials(env / "ws", runner.sweep_id)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    last = seen[-1]   # the 4th suggestion saw the first three trials, finished, with their metric
    assert [s for s, _, _ in last] == ["finished"] * 3
    for (state, summary, config), row in zip(last, rows):
        assert summary == {METRIC: row["metric_value"]} and type(summary[METRIC]) is float
        assert all(type(v["value"]) in (int, float, str) for v in config.values())
    for e in toy_events(env, "start"):
        assert "np." not in " ".join(e["argv"]) and float(e["params"]["model.mask_ratio"]) < 0.9


# ------------------------------------------------------------------------------------------------ bad input

BAD = {
    "unknown parameter": ({"parameters": {"model.mask_rati": {"values": [0.5]}}}, "model.mask_rati"),
    "value out of range": ({"parameters": {"model.mask_ratio": {"values": [0.5, 1.5]}}}, "model.mask_ratio"),
    "unknown benchmark": ({"parameters": {"benchmark": {"value": "nope"}}}, "unknown benchmark 'nope'"),
    "schema violation": ({"method": "sideways"}, "not a valid W&B sweep config"),
    "nested parameters": ({"parameters": {"model": {"parameters": {"mask_ratio": {"value": 0.5}}}}}, "nested"),
    "bad run_cap": ({"run_cap": 0}, "run_cap"),
    "grid over a range": ({"parameters": {"model.mask_ratio": {"distribution": "uniform", "min": 0.1, "max": 0.9}}},
                          "Grid search requires"),
    "bayes without metric": ({"method": "bayes", "metric": None}, "bayes needs a metric"),
    "random never ends": ({"method": "random"}, "--count N or run_cap"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_files_exit_2_naming_the_problem_with_no_trial_started(env, capsys, case):
    change, message = BAD[case]
    f = write_sweep(env / "bad.yaml")
    config = yaml.safe_load(f.read_text())
    for k, v in change.items():
        if k == "parameters":
            config["parameters"].update(v)
        elif v is None:
            config.pop(k)
        else:
            config[k] = v
    f.write_text(yaml.safe_dump(config))
    assert main(["sweep", str(f), "--root", str(env / "ws")]) == 2
    assert message in capsys.readouterr().err
    assert toy_events(env) == [] and not (env / "ws" / "sweeps").exists()


@pytest.mark.parametrize("text,message", [
    ("program: x.py\ncommand: [${env}, ${interpreter}, ${program}, ${args}]\n", "invalid YAML"),
    ("- just\n- a list\n", "a sweep file is a mapping"),
])
def test_invalid_yaml_exits_2(env, capsys, text, message):
    f = env / "bad.yaml"
    f.write_text(text)
    assert main(["sweep", str(f), "--root", str(env / "ws")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--workers", "0"], "--workers"), (["--count", "0"], "--count"), (["--sweep-id", "a b/c"], "--sweep-id"),
])
def test_bad_options_exit_2(env, capsys, args, message):
    f = write_sweep(env / "toy.yaml")
    assert main(["sweep", str(f), "--root", str(env / "ws"), *args]) == 2
    assert message in capsys.readouterr().err and toy_events(env) == []


def test_missing_file_exits_2(env, capsys):
    assert main(["sweep", str(env / "nope.yaml"), "--root", str(env / "ws")]) == 2
    assert "not found" in capsys.readouterr().err


def test_explicit_sweep_id_names_the_sweep(env):
    f = write_sweep(env / "toy.yaml", masks=(0.7,), temps=(0.1,))
    rc, out, runner = run_inprocess(f, env / "ws", sweep_id="my-sweep.1")
    assert rc == 0 and [r["trial_id"] for r in trials(env / "ws", "my-sweep.1")] == ["my-sweep.1-0000"]


# ------------------------------------------------------------------------------------------------ GPUs

def test_worker_gpus_one_per_worker_only_where_several_exist(monkeypatch):
    class FakeCuda:
        n = 3

        @classmethod
        def device_count(cls):
            return cls.n

    fake_torch = type(sys)("torch")
    fake_torch.cuda = FakeCuda
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert sweeping.worker_gpus({}, 1) == []           # one worker keeps every GPU (DDP inside a trial)
    assert sweeping.worker_gpus({}, 2) == ["0", "1", "2"]
    assert sweeping.worker_gpus({"CUDA_VISIBLE_DEVICES": "4,6,7"}, 2) == ["4", "6", "7"]
    FakeCuda.n = 1
    assert sweeping.worker_gpus({}, 4) == []
