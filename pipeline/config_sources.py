"""The resolved config as YAML with each key's source: what `infmask config` and `--print-config` print.

A key's value comes from the last of these layers that sets it (the order `build_config` applies them):
`default` (the dataclasses in pipeline/config.py; the model and optim knobs come from models/method_registry.py),
`base`, `method <name>`, `preset <name>`, `preset <name>, method <name>` and `preset <name>, when <condition>` (the
benchmark's file in pipeline/configs/), `run variant`, `command line` (KEY=VALUE overrides), `--seed`. The output is
valid YAML that loads back into the same config (sources are trailing comments).
"""
from __future__ import annotations

import yaml

from .config import Config, benchmark_spec, build_config, parse_overrides, preset_layers, when_layers
from .config_layers import layer_keys

TOP_LEVEL = ("benchmark", "method", "preset", "seed")


def sources(benchmark: str, method: str, preset: str, seed: int | None, overrides,
            variant: dict | None = None, cfg: Config | None = None) -> dict[str, str]:
    """Dotted key -> the layer that set it. `variant`: keys `infmask run` sets per data variant (run_variants);
    `cfg`: the config these arguments resolve to, when the caller has built it already."""
    spec = benchmark_spec(benchmark)
    ov = parse_overrides(list(overrides)) if isinstance(overrides, (list, tuple)) else dict(overrides or {})
    common, own = preset_layers(spec, preset, method)
    # a `when` entry never sets a key its condition reads, so matching it on the final config is the same match
    cfg = cfg or build_config(benchmark, method, preset, seed=seed, overrides={**(variant or {}), **ov})
    matched = when_layers(spec, preset, cfg.to_dict())
    layers = [("base", layer_keys(spec.get("base"))),
              (f"method {method}", layer_keys((spec.get("method_overrides") or {}).get(method))),
              (f"preset {preset}", layer_keys(common)),
              (f"preset {preset}, method {method}", layer_keys(own)),
              *((f"preset {preset}, {label}", layer_keys(delta)) for label, delta in matched),
              ("run variant", set(variant or {})),
              ("command line", {k.lstrip("-") for k in ov})]
    found = {"benchmark": "argument", "method": "argument", "preset": "argument"}
    for name, keys in layers:
        for key in keys:
            found[key] = name
    if seed is not None:
        found["seed"] = "--seed"
    return found


def _value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10 ** 9, allow_unicode=True, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def render(cfg: Config, found: dict[str, str], header: str = "") -> str:
    lines = [f"# {header}"] if header else []
    lines += [f"# run id {cfg.run_id} (config hash {cfg.config_hash()}, without the seed; W&B group {cfg.group})",
              "# source of each key: default (pipeline/config.py) < base < method < preset < preset's method "
              f"< preset's when (pipeline/configs/{cfg.benchmark}.yaml) < run variant (infmask run) < command line "
              "< --seed"]
    d = cfg.to_dict()
    for key in TOP_LEVEL:
        lines.append(f"{key}: {_value(d.pop(key))}  # {found.get(key, 'default')}")
    for section, values in d.items():
        lines.append(f"{section}:")
        for key, value in values.items():
            lines.append(f"  {key}: {_value(value)}  # {found.get(f'{section}.{key}', 'default')}")
    return "\n".join(lines) + "\n"


def resolved_yaml(benchmark: str, method: str = "infmasking", preset: str = "paper", seed: int | None = None,
                  overrides=None, header: str = "", variant: dict | None = None) -> str:
    """The config `build_config` resolves for these arguments, as annotated YAML (raises ConfigError like it)."""
    ov = parse_overrides(list(overrides)) if isinstance(overrides, (list, tuple)) else dict(overrides or {})
    cfg = build_config(benchmark, method, preset, seed=seed, overrides={**(variant or {}), **ov})
    return render(cfg, sources(benchmark, method, preset, seed, ov, variant, cfg), header)
