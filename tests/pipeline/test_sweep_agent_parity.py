"""The embedded runner starts a trial exactly as `wandb agent` does: same argv, same environment, same parameter
file. The reference is wandb's own Agent._command_run and AgentProcess, run for real with only Popen replaced."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infmask.sweeping import SweepSpec, build_argv, trial_command

COMMAND = ["${env}", "${interpreter}", "-m", "infmask", "trial", "${args}"]
# Values of every shape an engine or a server sends: float noise, bool, None, list, a space, an int.
PARAMS = {"benchmark": "trifeatures", "data.biased": False, "method": "infmasking",
          "model.mask_ratio": 0.30000000000000004, "model.penalty": None, "model.temperature": 0.1,
          "model.weights": [1, 1, 5], "preset": "smoke", "seed": 42, "tracking.project": "a b"}


class FakePopen:
    calls = []

    def __init__(self, args, **kwargs):
        FakePopen.calls.append((list(args), kwargs))

        class _Stdin:
            def close(self):
                kwargs["_stdin_closed"] = True
        self.stdin = _Stdin()


def agent_launch(command, params, *, sweep_id, run_id, project, program="pipeline/__main__.py"):
    """What `wandb agent ENTITY/PROJECT/SWEEP` runs for a `run` command from the server: run_agent sets
    WANDB_PROJECT and WANDB_SWEEP_ID, Agent.__init__ sets WANDB_DIR if unset, _command_run does the rest."""
    from wandb import wandb_agent

    FakePopen.calls = []
    with pytest.MonkeyPatch.context() as mp:   # restores os.environ as the agent leaves it, and Popen
        for key in ("WANDB_SWEEP_ID", "WANDB_PROJECT", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):
            if key in os.environ:
                mp.setenv(key, os.environ[key])
            else:
                mp.setenv(key, "x")
                mp.delenv(key)
        mp.setenv("WANDB_PROJECT", project)
        mp.setenv("WANDB_SWEEP_ID", sweep_id)
        mp.setattr(subprocess, "Popen", FakePopen)
        agent = wandb_agent.Agent(None, None, sweep_id=sweep_id)
        agent._sweep_command = list(command)
        agent._command_run({"type": "run", "run_id": run_id, "program": program,
                            "args": {k: {"value": v} for k, v in params.items()}})
    (argv, kwargs), = FakePopen.calls
    return argv, kwargs


def spec_for(tmp_path, command, project="infmask") -> SweepSpec:
    config = {"program": "pipeline/__main__.py", "method": "grid", "project": project, "command": command,
              "parameters": {k: {"value": v} for k, v in PARAMS.items()}}
    return SweepSpec(path=tmp_path / "s.yaml", config=config, name="s", run_cap=None, metric_name=None,
                     metric_goal="maximize", metric_target=None, benchmark="trifeatures", method="infmasking",
                     cwd=tmp_path)


@pytest.fixture
def base_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SERVICE", "2-1234-tcp-localhost-5678")   # the agent's own service: must be dropped
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("SOME_USER_VAR", "kept")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    return tmp_path


@pytest.mark.parametrize("command", [COMMAND, ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}",
                                               "${envvar:SOME_USER_VAR}", "${args_json_file}", "${unknown}"]])
def test_argv_env_and_param_file_match_wandb_agent(monkeypatch, base_env, command):
    sweep_id, run_id = "trifeatures-0a1b2c3d", "trifeatures-0a1b2c3d-0007"
    before = dict(os.environ)
    agent_argv, agent_kwargs = agent_launch(command, PARAMS, sweep_id=sweep_id, run_id=run_id,
                                            project="infmask")
    param_file = Path(base_env, "wandb", f"sweep-{sweep_id}", f"config-{run_id}.yaml")
    agent_file = param_file.read_bytes()
    json_file = param_file.with_suffix(".json")
    agent_json = json_file.read_bytes() if json_file.exists() else None
    param_file.unlink()

    spec = spec_for(base_env, command)
    ours_python, ours_env = trial_command(spec, sweep_id=sweep_id, run_id=run_id, params=PARAMS, base_env=before,
                                          wandb_dir=os.getcwd(), interpreter="python")
    ours, _ = trial_command(spec, sweep_id=sweep_id, run_id=run_id, params=PARAMS, base_env=before,
                            wandb_dir=os.getcwd())

    assert ours_python == agent_argv
    # the one deliberate difference: ${interpreter} is this Python, so no venv needs activating
    assert [sys.executable if a == "python" else a for a in agent_argv] == ours
    assert ours_env == agent_kwargs["env"]
    assert "WANDB_SERVICE" not in ours_env and ours_env["SOME_USER_VAR"] == "kept"
    assert param_file.read_bytes() == agent_file
    if agent_json is not None:
        assert json_file.read_bytes() == agent_json
    # the agent: own process group, stdin closed; the runner does the same (checked live in test_sweep_runner)
    assert agent_kwargs["process_group"] == 0 and agent_kwargs["_stdin_closed"]


def test_args_sorted_and_formatted_as_the_trial_expects():
    argv = build_argv(COMMAND, "pipeline/__main__.py", PARAMS, interpreter="python")
    assert argv[:5] == ["/usr/bin/env", "python", "-m", "infmask", "trial"]
    assert argv[5:] == ["--benchmark=trifeatures", "--data.biased=False", "--method=infmasking",
                        "--model.mask_ratio=0.30000000000000004", "--model.penalty=None", "--model.temperature=0.1",
                        "--model.weights=[1, 1, 5]", "--preset=smoke", "--seed=42", "--tracking.project=a b"]


def test_user_wandb_dir_is_kept_like_the_agent(monkeypatch, base_env, tmp_path):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    before = dict(os.environ)
    _, agent_kwargs = agent_launch(COMMAND, PARAMS, sweep_id="s1", run_id="r1", project="infmask")
    _, ours_env = trial_command(spec_for(base_env, COMMAND), sweep_id="s1", run_id="r1", params=PARAMS,
                                base_env=before, wandb_dir=str(tmp_path / "workspace"))
    assert ours_env == agent_kwargs["env"]
    assert ours_env["WANDB_SWEEP_PARAM_PATH"].startswith(str(tmp_path / "elsewhere"))


def test_create_sweep_command_does_not_mutate_the_sweep_config(monkeypatch):
    monkeypatch.setenv("SOME_USER_VAR", "v")
    command = ["${env}", "${interpreter}", "${program}", "--tag=${envvar:SOME_USER_VAR}", "${args}"]
    argv = build_argv(command, "p.py", {"a": 1}, interpreter="python")
    assert argv == ["/usr/bin/env", "python", "p.py", "--tag=v", "--a=1"]
    assert command[3] == "--tag=${envvar:SOME_USER_VAR}"
