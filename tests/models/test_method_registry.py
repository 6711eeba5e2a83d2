"""The method registry: every registered name builds on CPU, and docs/adding-a-method.md's worked example, taken
from the page itself, registers, trains, and leaves the run ids of existing configs alone."""
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from infmask.models import method_registry as registry
from infmask.models.methods import METHODS, BaseMethod, build_method

from helpers.method_inputs import MOD_PROPRIO, MOD_SEQ, MOD_TAB, make_batch, make_cfg

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "adding-a-method.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_registry_names_display_names_and_classes_agree():
    assert tuple(METHODS) == registry.METHOD_NAMES
    displays = [d for _, d in registry.display_names()]
    assert all(displays) and len(set(displays)) == len(displays)
    for name in registry.METHOD_NAMES:
        assert registry.method_class(name) is METHODS[name]
    with pytest.raises(ValueError, match="must be one of"):
        registry.method_class("nope")


@pytest.mark.parametrize("name", registry.METHOD_NAMES)
def test_every_registered_method_builds_from_its_name_on_cpu(name):
    mods = [MOD_TAB, MOD_PROPRIO]
    method = build_method(make_cfg(name, mods))
    assert isinstance(method, BaseMethod) and type(method) is registry.method_class(name)
    assert set(registry.method_knobs(name)) <= set(method.hparams_model)
    batch = {k: v for k, v in make_batch(mods, B=4).items() if k in method.batch_inputs}
    assert torch.isfinite(method.compute_loss(batch)["loss"])


def _example_module(monkeypatch):
    """The page's class block, as the module infmask.models.methods.toy."""
    code = _blocks("python")[0]
    module = types.ModuleType("infmask.models.methods.toy")
    module.__package__ = "infmask.models.methods"
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


def _example_spec(ns: dict | None = None) -> registry.MethodSpec:
    """The page's knobs dataclass and registry line, evaluated in the registry's namespace."""
    params_code, line = _blocks("python")[1:3]
    ns = dict(vars(registry)) if ns is None else ns
    exec(compile(params_code, str(DOC), "exec"), ns)
    return eval(line.strip().rstrip(","), ns)


def test_worked_example_registers_and_trains(monkeypatch):
    module = _example_module(monkeypatch)
    spec = _example_spec()
    assert (spec.name, spec.target) == ("toy", "infmask.models.methods.toy:Toy")
    monkeypatch.setitem(registry.METHOD_SPECS, spec.name, spec)

    assert registry.model_defaults()["toy_dim"] == 64 and registry.method_knobs("toy") == ("toy_dim",)
    assert list(registry.param_problems({"toy_dim": 0})) == [("model.toy_dim", "must be >= 1, got 0")]
    mods = [MOD_TAB, MOD_SEQ, MOD_PROPRIO]
    method = build_method(make_cfg("toy", mods, toy_dim=8))
    assert type(method) is module.Toy
    opt = method.configure_optimizers()["optimizer"]
    for step in range(2):
        opt.zero_grad()
        loss = method.training_step({"x": make_batch(mods, seed=step)["x"]}, step)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    with torch.no_grad():
        assert method.features(make_batch(mods)["x"]).shape == (4, 10 + 16 + 16)

    benchmark = yaml.safe_load(_blocks("yaml")[0])
    assert "toy" in benchmark["methods"] and benchmark["method_overrides"]["toy"]["model"]["toy_dim"] == 32


def test_worked_example_keeps_existing_run_ids():
    """With "toy" registered, the config has model.toy_dim, and the run ids of the existing methods stay."""
    from infmask.config import build_config

    before = {m: build_config("trifeatures", m, "paper").run_id for m in ("infmasking", "cross", "cross_self")}
    code = ("import json, sys\n"
            "from infmask.models import method_registry as registry\n"
            "params_code, line = json.loads(sys.argv[1])\n"
            "ns = dict(vars(registry))\n"
            "exec(params_code, ns)\n"
            "registry.METHOD_SPECS['toy'] = eval(line.strip().rstrip(','), ns)\n"
            "from infmask.config import build_config\n"
            "ids = {m: build_config('trifeatures', m, 'paper').run_id for m in json.loads(sys.argv[2])}\n"
            "cfg = build_config('trifeatures', 'infmasking', 'paper', overrides=['model.toy_dim=3'])\n"
            "print(json.dumps({'ids': ids, 'toy_dim': cfg.model.toy_dim,\n"
            "                  'changed': cfg.run_id != ids['infmasking']}))\n")
    args = [json.dumps(_blocks("python")[1:3]), json.dumps(sorted(before))]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ids"] == before
    assert res["toy_dim"] == 3 and not res["changed"]   # infmasking's identity ignores toy's knob
