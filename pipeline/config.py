"""Typed run configuration: one YAML per benchmark with presets, overrides from argv, validation.

A benchmark file (`pipeline/configs/<benchmark>.yaml`) holds

    benchmark: trifeatures           # the config name
    dataset: trifeatures             # the registry entry it reads
    methods: [infmasking, comm, ...] # methods this benchmark supports
    base: {data: ..., model: ..., optim: ..., trainer: ..., probe: ...}   # the paper's values
    method_overrides: {comm: {...}}  # per-method deltas on top of base
    presets: {paper: {}, cpu: {..., method_overrides: {cross_self: {...}}, when: [...]}, smoke: {...}}

The resolved config is `base` + `method_overrides[method]` + `presets[preset]` + the preset's own
`method_overrides[method]` + the preset's matching `when` entries (pipeline/config_layers.py) + command-line
overrides, in that order, checked field by field against the dataclasses below. Every key a sweep may touch is
declared here, so an unknown key is an error (exit code 2 from the CLI), never silently ignored.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infmask.models.method_registry import (METHOD_NAMES, ModelParams, OptimParams, method_knobs, method_param_fields,
                                            param_problems)

from .config_layers import (PRESETS, ConfigError, deep_merge, methods_of, preset_layers,  # noqa: F401 (re-exported)
                            presets_of, when_layers)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DataConfig:
    dataset: str = "trifeatures"
    biased: bool = False                 # Trifeatures: train on correlated (texture, colour) pairs (synergy runs)
    image_size: int = 224
    max_size: int = 10000                # Trifeatures: pairs drawn per split
    data_seed: int = 42                  # dataset construction seed, independent of the run seed
    val_fraction: float = 0.1            # share of train combinations/items held out as validation
    batch_size: int = 64
    num_workers: int = 0
    augmentations: Any = None            # MultiBench: "drop+noise" or a list, one pipeline per modality
    keys: list = field(default_factory=list)   # MultiBench: modality keys in order (e.g. [vision, text])
    task: Any = None                     # MultiBench/MIMIC task selector; V&T: ee_yaw_next or contact_next
    probe_random_crop: bool = False      # reference: random resized crop at probe time (stochastic features)
    crop_scale: list = field(default_factory=lambda: [0.08, 1.0])  # SSL RandomResizedCrop area range (images)
    blur_sigma: list = field(default_factory=lambda: [0.1, 2.0])   # SSL GaussianBlur sigma range, pixels (images)
    render_size: int = 224               # Trifeatures: images rendered at this size, then resized to image_size
    max_items: Any = None                # cap on items per split (smoke/cpu presets), None = all
    text_mask_prob: float = 0.15         # MM-IMDb: frozen text encoder token masking in training
    feature_cache: bool = False          # MM-IMDb: train the fusion on precomputed frozen-tower features
    cache_copies: int = 2                # MM-IMDb cached mode: augmented copies precomputed per item
    weights_dir: Any = None              # MM-IMDb: local directory of the CLIP towers
    image_norm: str = "imagenet"          # MM-IMDb: imagenet (reference [ODDITY]) | clip statistics


def _model_config() -> type:
    """`model.*`: the knobs every method shares (`ModelParams`) and those each method declares in the method
    registry (models/method_registry.py), in one flat section. The shared encoder-level knobs stay last, so that
    dumped configs keep one key order whatever the registry holds."""
    hints = typing.get_type_hints(ModelParams)
    tail = ("channels_last", "modalities")
    shared = [(f.name, hints[f.name], f) for f in dataclasses.fields(ModelParams)]
    ordered = [s for s in shared if s[0] not in tail] + method_param_fields() + [s for s in shared if s[0] in tail]
    specs = [(name, tp, f.default if f.default is not dataclasses.MISSING else field(default_factory=f.default_factory))
             for name, tp, f in ordered]
    cls = dataclasses.make_dataclass("ModelConfig", specs)
    cls.__module__ = __name__
    return cls


ModelConfig = _model_config()
OptimConfig = OptimParams    # the optimiser knobs are the methods' (BaseMethod.configure_optimizers reads them)


@dataclass
class TrainerConfig:
    max_epochs: int = 100
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"              # "auto" = bf16-mixed on CUDA, 32-true elsewhere
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    log_every_n_steps: int = 10
    early_stopping_patience: Any = None  # epochs without improvement of the val probe metric, None = off
    compile: bool = False
    deterministic: bool = False


@dataclass
class ProbeConfig:
    every_n_epochs: int = 1              # per-epoch probe on the validation split (0 = off)
    monitor: str = "acc1"                # val probe metric driving checkpoint selection
    mode: str = "max"
    checkpoint: str = "best"             # checkpoint probed at the end: "best" (by val metric) or "last"
    protocol: str = "clean"              # "clean" = select on val; "reference" = the reference's val==test splits
    costs: list = field(default_factory=lambda: [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6])
    fastsearch: bool = False             # coarse grid only (no bisection refinement)
    max_iter: int = 100
    max_train_samples: Any = None        # cap on train features for the per-epoch probe (speed)
    standardize: bool = True             # z-score features with train statistics (reference: False, raw features)


@dataclass
class TrackingConfig:
    project: str = "infmask"
    entity: Any = None
    tags: list = field(default_factory=list)


@dataclass
class Config:
    benchmark: str
    method: str
    preset: str
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = _build(cls, d, "")
        validate(cfg)
        return cfg

    @classmethod
    def load_yaml(cls, path: Path) -> "Config":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    def config_hash(self) -> str:
        """Identity of the run's math without its seed: runs differing only in seed share it (seed groups)."""
        d = self.to_dict()
        d.pop("seed")
        for section, keys in NON_IDENTITY_KEYS.items():
            for k in keys:
                d[section].pop(k, None)
        for k in foreign_knobs(self.method):
            d["model"].pop(k, None)
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    @property
    def run_id(self) -> str:
        return f"{self.benchmark}-{self.method}-{self.config_hash()}-s{self.seed}"

    @property
    def group(self) -> str:
        return f"{self.benchmark}/{self.method}/{self.config_hash()}"


# Keys that change how a run executes but not what it computes; left out of the config hash so that, e.g., a
# resumed run with more data-loader workers or another W&B project is still the same run.
NON_IDENTITY_KEYS = {
    "data": ("num_workers",),
    "trainer": ("accelerator", "strategy", "log_every_n_steps", "compile"),
    "tracking": ("project", "entity", "tags"),
}

# Knobs a method declares for itself count in the identity of that method's runs only, so that registering a new
# method with knobs of its own leaves every existing run id as it was. These three predate that rule and stay in
# every method's identity (the run ids already in workspaces and results stores include them).
KNOBS_IN_EVERY_HASH = ("cross_proj_dim", "ssl_scale", "cross_self_hidden")


def foreign_knobs(method: str) -> list[str]:
    """The `model.*` knobs that `method`'s config hash leaves out: those only other methods declare."""
    own = set(method_knobs(method)) | set(KNOBS_IN_EVERY_HASH)
    return [name for name, _, _ in method_param_fields() if name not in own]


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name in
            ("data", "model", "optim", "trainer", "probe", "tracking")}
_SECTION_CLASSES = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "trainer": TrainerConfig,
                    "probe": ProbeConfig, "tracking": TrackingConfig}
TOP_LEVEL_SCALARS = {"seed": int, "benchmark": str, "method": str, "preset": str}

CHOICES = {
    "model.keep_rounding": ("truncate", "round"),
    "optim.scheduler": ("none", "warmup_cosine"),
    "probe.mode": ("max", "min"),
    "probe.checkpoint": ("best", "last"),
    "probe.protocol": ("clean", "reference"),
    "data.image_norm": ("imagenet", "clip"),
    "trainer.precision": ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "64-true", "bf16-true"),
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
}
SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed range; outside it Lightning silently draws a random seed


# ---------------------------------------------------------------------------------------------- building

def _field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(d).__name__}")
    types = _field_types(cls)
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}'; valid keys: {', '.join(sorted(types))}")
    kwargs = {}
    for name, tp in types.items():
        if name not in d:
            continue
        value = d[name]
        if name in _SECTION_CLASSES and cls is Config:
            kwargs[name] = _build(_SECTION_CLASSES[name], value or {}, f"{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing key '{prefix}{missing[0]}'")
    return cls(**kwargs)


def _coerce(value, tp, key: str):
    """Check (and where lossless, convert) a value against a declared type. Strings from argv go through
    `parse_value` first, so here only YAML-typed values arrive."""
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected a boolean (True/False), got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot in the mantissa) as a string; accept what Python reads as a number.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(float(value)):  # 1e400 arrives as inf
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return value
    return value


def parse_value(text: str):
    """Parse one command-line value the way W&B agents send them: `str(value)` of a Python object, so booleans
    arrive as `True`/`False`, None as `None`, lists as `[1, 2]`. YAML parses all of these."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--model.mask_ratio=0.7` (W&B `${args}`) and `model.mask_ratio=0.7` (`${args_no_hyphens}`) alike."""
    out: dict[str, Any] = {}
    for arg in args:
        body = arg[2:] if arg.startswith("--") else arg
        if "=" not in body:
            raise ConfigError(f"cannot parse override '{arg}': expected key=value (e.g. model.mask_ratio=0.7)")
        key, text = body.split("=", 1)
        out[key.strip()] = parse_value(text)
    return out


def _apply(d: dict, key: str, value):
    parts = key.split(".")
    if len(parts) == 1:
        if parts[0] not in TOP_LEVEL_SCALARS:
            raise ConfigError(f"unknown key '{key}'; valid top-level keys: {', '.join(TOP_LEVEL_SCALARS)}, "
                              f"or a section key like model.mask_ratio (sections: {', '.join(_SECTION_CLASSES)})")
        d[key] = value
        return
    section, name = parts[0], ".".join(parts[1:])
    if section not in _SECTION_CLASSES:
        raise ConfigError(f"unknown section '{section}' in '{key}'; valid sections: {', '.join(_SECTION_CLASSES)}")
    types = _field_types(_SECTION_CLASSES[section])
    if name not in types:
        raise ConfigError(f"unknown key '{key}'; valid keys in {section}: {', '.join(sorted(types))}")
    tp = types[name]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, float):
        value = round(value, 12)  # sweep engines send 0.30000000000000004
    d.setdefault(section, {})[name] = value


# ---------------------------------------------------------------------------------------------- loading

def benchmarks() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def benchmark_spec(benchmark: str) -> dict:
    path = CONFIG_DIR / f"{benchmark}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown benchmark '{benchmark}'; valid benchmarks: {', '.join(benchmarks())}")
    return yaml.safe_load(path.read_text())


def build_config(benchmark: str, method: str = "infmasking", preset: str = "paper", seed: int | None = None,
                 overrides: list[str] | dict | None = None) -> Config:
    spec = benchmark_spec(benchmark)
    valid = presets_of(spec)
    if preset not in valid:
        raise ConfigError(f"unknown preset '{preset}' for benchmark '{benchmark}'; valid presets: {', '.join(valid)}")
    methods = methods_of(spec)
    if method not in methods:
        raise ConfigError(f"unknown method '{method}' for benchmark '{benchmark}'; valid methods: {', '.join(methods)}")
    d = deep_merge(spec["base"], (spec.get("method_overrides") or {}).get(method, {}))
    common, own = preset_layers(spec, preset, method)
    d = deep_merge(deep_merge(d, common), own)
    d.update(benchmark=benchmark, method=method, preset=preset)
    d.setdefault("seed", 42)
    ov = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    # the preset's `when` entries match the config that every other layer gives (config_layers.py)
    for _, delta in when_layers(spec, preset, _build(Config, _finish(d, ov, seed), "").to_dict()):
        d = deep_merge(d, delta)
    return Config.from_dict(_finish(d, ov, seed))


def _finish(d: dict, ov: dict, seed: int | None) -> dict:
    """The command-line layer and --seed on a copy of `d`."""
    d = copy.deepcopy(d)
    for key, value in ov.items():
        if key in ("benchmark", "method", "preset") and value != d[key]:
            raise ConfigError(f"'{key}' cannot be overridden here (it is {d[key]!r}); pass it as the stage argument")
        _apply(d, key, value)
    if seed is not None:
        d["seed"] = seed
    return d


# ---------------------------------------------------------------------------------------------- validation

def _check(cond: bool, key: str, msg: str):
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _optional_int(cfg: Config, key: str, minimum: int) -> None:
    section, name = key.split(".")
    v = getattr(getattr(cfg, section), name)
    _check(v is None or _int(v) and v >= minimum, key, f"must be None or an integer >= {minimum}, got {v!r}")


def _check_trainer(t: TrainerConfig) -> None:
    dev = t.devices
    ok = (_int(dev) and (dev >= 1 or dev == -1)) or dev == "auto" \
        or (isinstance(dev, str) and bool(re.fullmatch(r"-1|\d+|\d+(,\d+)+,?", dev.strip())) and dev.strip() != "0") \
        or (isinstance(dev, list) and bool(dev) and all(_int(i) and i >= 0 for i in dev) and len(set(dev)) == len(dev))
    _check(ok, "trainer.devices", f"must be a number of devices >= 1 (or -1 for all), 'auto', or a list of device "
                                  f"indices like [0, 1] or '0,1', got {dev!r}")
    for key, v, lowest in (("trainer.limit_train_batches", t.limit_train_batches, 1),
                           ("trainer.limit_val_batches", t.limit_val_batches, 0)):
        ok = (_int(v) and v >= lowest) or (isinstance(v, float) and (0.0 < v <= 1.0 if lowest else 0.0 <= v <= 1.0))
        _check(ok, key, f"must be a number of batches >= {lowest} or a fraction in {'(0' if lowest else '[0'}, 1], "
                        f"got {v!r}")
    _check(t.num_nodes >= 1, "trainer.num_nodes", f"must be >= 1, got {t.num_nodes}")
    _check(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", f"must be >= 1, got {t.log_every_n_steps}")


def validate(cfg: Config) -> None:
    if cfg.benchmark not in benchmarks():
        raise ConfigError(f"unknown benchmark '{cfg.benchmark}'; valid benchmarks: {', '.join(benchmarks())}")
    for key, seed in (("seed", cfg.seed), ("data.data_seed", cfg.data.data_seed)):
        _check(0 <= seed <= SEED_MAX, key, f"must be in [0, {SEED_MAX}], got {seed}")
    dataset = benchmark_spec(cfg.benchmark).get("dataset")
    _check(cfg.data.dataset == dataset, "data.dataset",
           f"benchmark '{cfg.benchmark}' reads the dataset '{dataset}', got {cfg.data.dataset!r}")
    _check(cfg.method in METHOD_NAMES, "method", f"unknown method '{cfg.method}'; valid: {', '.join(METHOD_NAMES)}")
    valid = presets_of(benchmark_spec(cfg.benchmark))
    _check(cfg.preset in valid, "preset", f"unknown preset '{cfg.preset}'; valid: {', '.join(valid)}")
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        _check(value in choices, key, f"invalid value {value!r}; valid choices: {', '.join(choices)}")
    m = cfg.model
    _check(0.0 <= m.mask_ratio < 1.0, "model.mask_ratio", f"must be in [0, 1), got {m.mask_ratio}")
    _check(m.temperature > 0, "model.temperature", f"must be > 0, got {m.temperature}")
    _check(m.num_mask >= 1, "model.num_mask", f"must be >= 1, got {m.num_mask}")
    _check(m.mask_lambda >= 0, "model.mask_lambda", f"must be >= 0, got {m.mask_lambda}")
    _check(m.n_heads >= 1, "model.n_heads", f"must be >= 1, got {m.n_heads}")
    _check(m.embed_dim > 0 and m.embed_dim % m.n_heads == 0, "model.embed_dim",
           f"must be a positive multiple of model.n_heads={m.n_heads}, got {m.embed_dim}")
    _check(m.n_layers >= 1, "model.n_layers", f"must be >= 1, got {m.n_layers}")
    _check(len(m.modalities) >= 2, "model.modalities", f"need at least 2 modalities, got {len(m.modalities)}")
    if m.weights is not None:
        _check(isinstance(m.weights, list) and all(_number(w) for w in m.weights),
               "model.weights", f"must be a list of finite numbers or None, got {m.weights!r}")
    if m.penalty is not None:
        _check(_number(m.penalty), "model.penalty", f"must be a finite number or None, got {m.penalty!r}")
    for key in ("head_hidden", "head_out"):
        _check(getattr(m, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(m, key)}")
    for key, message in param_problems(dataclasses.asdict(m)):
        raise ConfigError(f"{key}: {message}")
    d = cfg.data
    _check(d.batch_size >= 2, "data.batch_size", f"must be >= 2 (contrastive losses need negatives), got {d.batch_size}")
    _check(0.0 < d.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {d.val_fraction}")
    _check(d.image_size >= 32, "data.image_size", f"must be >= 32, got {d.image_size}")
    _check(len(d.crop_scale) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          for v in d.crop_scale) and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
           "data.crop_scale", f"must be [min, max] with 0 < min <= max <= 1, got {d.crop_scale}")
    _check(32 <= d.render_size <= 1024, "data.render_size", f"must be in [32, 1024], got {d.render_size}")
    _check(len(d.blur_sigma) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          for v in d.blur_sigma) and 0 < d.blur_sigma[0] <= d.blur_sigma[1],
           "data.blur_sigma", f"must be [min, max] with 0 < min <= max, got {d.blur_sigma}")
    _check(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    _check(d.max_size >= 1, "data.max_size", f"must be >= 1, got {d.max_size}")
    _optional_int(cfg, "data.max_items", 1)
    _check(d.cache_copies >= 2 and d.cache_copies % 2 == 0, "data.cache_copies",
           f"must be an even number >= 2 (pairs of views), got {d.cache_copies}")
    _check(0.0 <= d.text_mask_prob < 1.0, "data.text_mask_prob", f"must be in [0, 1), got {d.text_mask_prob}")
    o = cfg.optim
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    for key in ("warmup_epochs", "warmup_start_lr", "min_lr"):
        _check(getattr(o, key) >= 0, f"optim.{key}", f"must be >= 0, got {getattr(o, key)}")
    t = cfg.trainer
    _check(t.max_epochs >= 1, "trainer.max_epochs", f"must be >= 1, got {t.max_epochs}")
    _check_trainer(t)
    _optional_int(cfg, "trainer.early_stopping_patience", 1)
    p = cfg.probe
    _check(p.every_n_epochs >= 0, "probe.every_n_epochs", f"must be >= 0, got {p.every_n_epochs}")
    _check(len(p.costs) >= 1 and all(_number(c) and c > 0 for c in p.costs), "probe.costs",
           f"must be a non-empty list of finite positive numbers, got {p.costs!r}")
    _check(p.max_iter >= 1, "probe.max_iter", f"must be >= 1, got {p.max_iter}")
    _optional_int(cfg, "probe.max_train_samples", 1)
