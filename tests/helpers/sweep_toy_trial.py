"""A stand-in for `infmask trial` in the sweep tests: it honours the trial contract (parameters from `${args}`,
the agent's environment, a result JSON at $INFMASK_TRIAL_RESULT, exit 0 / non-zero / 143 on SIGTERM) without
training anything. Its metric peaks at mask ratio 0.7, temperature 0.1.

Knobs (environment):
  TOY_SLEEP   seconds to "train" (default 0.2)
  TOY_SLOW    "name=value[,name=value]": matching trials sleep TOY_SLOW_SLEEP seconds instead (default 30)
  TOY_FAIL    "name=value[,name=value]": when every listed parameter matches, write status failed and exit 1
  TOY_CRASH   same matching, but die with exit 3 and no result (a segfault, an OOM kill)
  TOY_LOG     append one JSON line per start and per end (pid, parameters, environment, param file check)
"""
import json
import math
import os
import signal
import sys
import time

import yaml

ENV_KEYS = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_DIR", "WANDB_PROJECT", "WANDB_MODE",
            "WANDB_SERVICE", "INFMASK_ROOT", "INFMASK_TRIAL_RESULT", "CUDA_VISIBLE_DEVICES")


def log(event: dict) -> None:
    if os.environ.get("TOY_LOG"):
        with open(os.environ["TOY_LOG"], "a") as f:
            f.write(json.dumps(event) + "\n")


def write_result(status: str, metrics: dict) -> None:
    path = os.environ.get("INFMASK_TRIAL_RESULT")
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"run_id": f"toy-{os.environ.get('WANDB_RUN_ID')}", "status": status, "metrics": metrics}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def matches(spec: str, params: dict) -> bool:
    pairs = [p.split("=", 1) for p in spec.split(",") if p]
    return bool(pairs) and all(params.get(k) == v for k, v in pairs)


def main() -> int:
    params = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    with open(os.environ["WANDB_SWEEP_PARAM_PATH"]) as f:
        from_file = yaml.safe_load(f)
    file_ok = from_file.pop("wandb_version") == 1 and {k: str(v["value"]) for k, v in from_file.items()} == params
    log({"event": "start", "pid": os.getpid(), "t": time.time(), "argv": sys.argv[1:], "params": params,
         "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in ENV_KEYS}, "param_file_ok": file_ok,
         "stdin": _stdin_state(), "own_process_group": os.getpgid(0) == os.getpid()})

    def on_term(signum, frame):
        write_result("preempted", {})
        log({"event": "preempted", "pid": os.getpid(), "params": params})
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    slow = matches(os.environ.get("TOY_SLOW", ""), params)
    time.sleep(float(os.environ.get("TOY_SLOW_SLEEP", "30") if slow else os.environ.get("TOY_SLEEP", "0.2")))
    if matches(os.environ.get("TOY_CRASH", ""), params):
        log({"event": "crash", "pid": os.getpid(), "params": params})
        return 3
    if matches(os.environ.get("TOY_FAIL", ""), params):
        write_result("failed", {})
        log({"event": "failed", "pid": os.getpid(), "params": params})
        return 1
    mr, t = float(params["model.mask_ratio"]), float(params["model.temperature"])
    acc = 1.0 - (mr - 0.7) ** 2 - (math.log10(t) + 1.0) ** 2
    write_result("finished", {"probe/val/acc1": acc, "probe/val/loss": 1 - acc})
    log({"event": "end", "pid": os.getpid(), "t": time.time(), "params": params})
    return 0


def _stdin_state() -> str:
    try:
        return "eof" if sys.stdin.read(1) == "" else "data"
    except (OSError, ValueError, AttributeError):
        return "closed"


if __name__ == "__main__":
    sys.exit(main())
