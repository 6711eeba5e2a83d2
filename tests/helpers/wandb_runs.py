"""Offline W&B runs read back with wandb's own reader (`wandb leet inspect --json`: one record per line)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def records(run_dir: Path) -> list[dict]:
    wandb_bin = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_bin), "leet", "inspect", "--json", str(run_dir)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def run_record(recs: list[dict]) -> dict:
    return next(r["run"] for r in recs if r.get("type") == "run")


def config(recs: list[dict]) -> dict:
    """The run's config as wandb stored it: {key: value} (values unwrapped from {"value": ...} where needed)."""
    cfg = run_record(recs).get("config") or {}
    cfg = cfg.get("update", cfg)
    return {k: (v["value"] if isinstance(v, dict) and set(v) == {"value"} else v) for k, v in cfg.items()}


def logged_keys(recs: list[dict]) -> set[str]:
    keys = set()
    for r in recs:
        if r.get("type") == "history":
            keys |= set(r["history"].get("item") or {})
        elif r.get("type") == "summary":
            keys |= set(r["summary"].get("update") or {})
    return {k for k in keys if not k.startswith("_")}


def declared_summaries(recs: list[dict]) -> dict[str, dict]:
    """define_metric records that declare a summary: {key: summary options}."""
    return {r["metric"]["name"]: r["metric"]["summary"] for r in recs
            if r.get("type") == "metric" and r["metric"].get("summary")}


def metric_records(recs: list[dict]) -> list[dict]:
    return [r["metric"] for r in recs if r.get("type") == "metric"]
