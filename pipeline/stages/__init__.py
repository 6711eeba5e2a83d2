"""One function per CLI stage, each taking the parsed argparse namespace. Modules are imported on use so that
`infmask --help` and `infmask download --list` stay fast (no torch import)."""
from __future__ import annotations

import importlib

# stage -> (module in pipeline.stages, function)
STAGE_FUNCTIONS = {
    "download": ("data_stages", "download_cli"),
    "preprocess": ("data_stages", "preprocess_cli"),
    "pretrain": ("pretrain", "pretrain_cli"),
    "probe": ("probe", "probe_cli"),
    "report": ("report", "report_cli"),
    "run": ("run", "run_cli"),
    "trial": ("trial", "trial_cli"),
    "sweep": ("sweep", "sweep_cli"),
    "bench": ("bench", "bench_cli"),
    "agent-script": ("sweep", "agent_script_cli"),
    "notebooks": ("notebooks", "notebooks_cli"),
    "config": ("show_config", "config_cli"),
}


def run_stage(stage: str, args) -> int:
    module, func = STAGE_FUNCTIONS[stage]
    return int(getattr(importlib.import_module(f"infmask.stages.{module}"), func)(args) or 0)
