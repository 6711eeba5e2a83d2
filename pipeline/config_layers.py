"""How a benchmark file's layers compose: presets, their per-method deltas and their conditional (`when`) deltas.

A preset may hold, besides the values it sets for every method,

    method_overrides: {cross_self: {model: {...}}}          # for one method
    when:                                                   # for the runs whose config matches
      - if: {method: infmasking, data.biased: false}
        set: {model: {temperature: 0.1}}

A `when` entry's `if` names the method and/or dotted config keys with the values they must have in the config
resolved from every other layer (run variant and command line included), so `infmask pretrain ... data.biased=False`
and `infmask run`'s unbiased variant resolve to the same run. Matching entries apply in file order after the
preset's method layer and before the run variant and the command line, which still win. An entry may not set a key
its own `if` reads, so one pass decides every match. Why a preset needs it: the paper sweeps its knobs per run, and
the best value for a method's redundancy/uniqueness runs need not be the best for its synergy runs.
"""
from __future__ import annotations

import copy

from infmask.models.method_registry import METHOD_NAMES

PRESETS = ("paper", "cpu", "smoke")   # every benchmark has these; a benchmark file may add its own (e.g. demo)


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key and the valid choices."""


def deep_merge(base: dict, delta: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (delta or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "modalities":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def presets_of(spec: dict) -> list[str]:
    """The presets a benchmark file offers: paper, cpu and smoke, then any of its own."""
    own = [p for p in (spec.get("presets") or {}) if p not in PRESETS]
    return list(PRESETS) + own


def methods_of(spec: dict) -> list[str]:   # the methods a benchmark file lists (all registered if none)
    return spec.get("methods", list(METHOD_NAMES))


def preset_layers(spec: dict, preset: str, method: str) -> tuple[dict, dict]:
    """A preset's delta for every method and for `method` alone (its `method_overrides` entry): a preset that
    changes a knob the paper sweeps for some methods can leave the others at their own."""
    p = dict((spec.get("presets") or {}).get(preset) or {})
    p.pop("when", None)
    per_method = p.pop("method_overrides", None) or {}
    methods = methods_of(spec)
    if unknown := sorted(set(per_method) - set(methods)):
        raise ConfigError(f"preset '{preset}' of '{spec.get('benchmark')}': method_overrides names unknown method(s) "
                          f"{', '.join(unknown)}; valid methods: {', '.join(methods)}")
    return p, per_method.get(method) or {}


def _lookup(resolved: dict, key: str, where: str):
    section, _, name = key.partition(".")
    if not name:
        if key not in ("method", "benchmark", "preset", "seed"):
            raise ConfigError(f"{where}: unknown key '{key}' in `if`; use method or a dotted key like data.biased")
        return resolved[key]
    if not isinstance(resolved.get(section), dict) or name not in resolved[section]:
        raise ConfigError(f"{where}: unknown key '{key}' in `if`; valid sections: "
                          f"{', '.join(k for k, v in resolved.items() if isinstance(v, dict))}")
    return resolved[section][name]


def layer_keys(d: dict | None, prefix: str = "") -> set[str]:
    """Dotted keys a layer sets: section.key (values inside a key, e.g. modalities, are the key's own)."""
    out = set()
    for k, v in (d or {}).items():
        if isinstance(v, dict) and not prefix:
            out |= {f"{k}.{sub}" for sub in v}
        else:
            out.add(f"{prefix}{k}")
    return out


def when_layers(spec: dict, preset: str, resolved: dict) -> list[tuple[str, dict]]:
    """The preset's `when` entries that match `resolved` (a full config as a dict): (label, delta) in file order.
    The label reads like the entry's condition, e.g. "when method=infmasking, data.biased=false"."""
    entries = ((spec.get("presets") or {}).get(preset) or {}).get("when") or []
    where = f"preset '{preset}' of '{spec.get('benchmark')}'"
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: `when` must be a list of {{if: {{...}}, set: {{...}}}} entries")
    out = []
    for i, entry in enumerate(entries):
        here = f"{where}, when[{i}]"
        if not (isinstance(entry, dict) and set(entry) == {"if", "set"} and isinstance(entry["if"], dict)
                and entry["if"] and isinstance(entry["set"], dict)):
            raise ConfigError(f"{here}: expected {{if: {{KEY: VALUE, ...}}, set: {{SECTION: {{...}}}}}}, got {entry!r}")
        cond, delta = entry["if"], entry["set"]
        if clash := sorted(set(cond) & layer_keys(delta)):
            raise ConfigError(f"{here}: sets {', '.join(clash)}, which its own `if` reads")
        if "method" in cond and cond["method"] not in methods_of(spec):
            raise ConfigError(f"{here}: unknown method '{cond['method']}'; valid methods: "
                              f"{', '.join(methods_of(spec))}")
        if all(_lookup(resolved, k, here) == v for k, v in cond.items()):
            keys = sorted(cond, key=lambda k: k != "method")   # the method first, then the file's order
            label = ", ".join(f"{k}={str(cond[k]).lower() if isinstance(cond[k], bool) else cond[k]}" for k in keys)
            out.append((f"when {label}", delta))
    return out
