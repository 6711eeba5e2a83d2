"""The methods by name: display name, where the class lives, and the hyper-parameters each one declares.

This module imports no torch, so that the CLI's help, the config and the reports can list methods and check their
keys cheaply; the class is imported only when a method is built (`method_class`). A method's own knobs are a
small dataclass declared beside its entry, here rather than in the method's module because that module imports
torch; every field becomes a `model.<field>` config key (with its default, type and checks). Knobs every method
shares (encoders, fusion, heads, loss, optimiser) are `ModelParams` and `OptimParams`. Adding a method: its module
under `models/methods/` and one `MethodSpec` line in `METHOD_SPECS` (see docs/adding-a-method.md).
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional


@dataclass
class ModelParams:
    """Shared model knobs (`model.*`)."""
    embed_dim: int = 512
    n_layers: int = 1
    n_heads: int = 8
    mask_ratio: float = 0.7
    num_mask: int = 6
    temperature: float = 0.1
    mask_lambda: float = 1.0
    weights: Any = None                  # list of loss-term weights, or None for equal weights
    cross: bool = False
    penalty: Any = None                  # entropy penalty weight, or None
    only_mask_last: bool = False
    keep_rounding: str = "truncate"      # "truncate" = reference int(L*(1-rho)); "round" = exact rounding
    mask_all_subsets: bool = False       # True = reference: masked views for unimodal subsets too (BN parity)
    fast_fusion: bool = True             # exact savings: shared mask token, CLS-only last layer
    mask_padding: bool = True            # honour key-padding masks in training (reference: False, MM-IMDb only)
    head_hidden: int = 512
    head_out: int = 256
    channels_last: bool = True           # CNN encoders in channels_last memory format
    modalities: list = field(default_factory=list)


@dataclass
class OptimParams:
    """Optimiser knobs (`optim.*`): AdamW, optionally with the reference's per-epoch warm-up + cosine schedule."""
    lr: float = 3e-4
    weight_decay: float = 1e-4
    scheduler: str = "none"              # "none" | "warmup_cosine" (per epoch)
    warmup_epochs: int = 10
    warmup_start_lr: float = 1e-6
    min_lr: float = 1e-6


def _at_least(params, name: str, lowest) -> Iterator[tuple[str, str]]:
    value = getattr(params, name)
    if value < lowest:
        yield name, f"must be >= {lowest}, got {value}"


# --------------------------------------------------------------------------------------- method-specific knobs

@dataclass
class ProjectionParams:
    """Cross and CMC: bias-free linear projections of the pooled encoder outputs."""
    cross_proj_dim: int = 256            # Cross / CMC projection size

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from _at_least(self, "cross_proj_dim", 1)


@dataclass
class CrossSelfParams:
    """Cross+Self: per-modality SimCLR heads beside the cross-modal term."""
    ssl_scale: float = 1.0               # Cross+Self: weight of the self terms
    cross_self_hidden: int = 1024        # Cross+Self: hidden width of the per-modality heads

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from _at_least(self, "ssl_scale", 0)
        yield from _at_least(self, "cross_self_hidden", 1)


# ---------------------------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class MethodSpec:
    name: str                            # config and CLI name (`--method`, run ids, the results store)
    display: str                         # how tables and figures name it
    target: str                          # "module:Class", imported on use
    params: Optional[type] = None        # dataclass of the method's own `model.*` knobs; `problems()` checks them


METHOD_SPECS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("infmasking", "InfMasking", "infmask.models.methods.infmasking:InfMasking"),
    MethodSpec("comm", "CoMM", "infmask.models.methods.comm:CoMM"),
    MethodSpec("cross", "Cross", "infmask.models.methods.cross:Cross", ProjectionParams),
    MethodSpec("cross_self", "Cross+Self", "infmask.models.methods.cross_self:CrossSelf", CrossSelfParams),
    MethodSpec("cmc", "CMC", "infmask.models.methods.cmc:CMC", ProjectionParams),
)}
METHOD_NAMES = tuple(METHOD_SPECS)


def display_names() -> tuple[tuple[str, str], ...]:
    """(name, display name) of every method, in registry order."""
    return tuple((s.name, s.display) for s in METHOD_SPECS.values())


def method_class(name: str) -> type:
    """The LightningModule class registered as `name` (imports its module, and so torch)."""
    if name not in METHOD_SPECS:
        raise ValueError(f"cfg['method'] must be one of {sorted(METHOD_SPECS)}, got {name!r}")
    module, cls = METHOD_SPECS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)


def method_param_classes() -> list[type]:
    """Each method-specific parameter dataclass once, in registry order."""
    out: list[type] = []
    for spec in METHOD_SPECS.values():
        if spec.params is not None and spec.params not in out:
            out.append(spec.params)
    return out


def method_param_fields() -> list[tuple[str, type, dataclasses.Field]]:
    """(name, type, field) of every method's own knobs; two methods may share a knob only with the same default."""
    shared = {f.name for f in dataclasses.fields(ModelParams)}
    seen: dict[str, tuple[str, type, dataclasses.Field]] = {}
    for cls in method_param_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in shared:
                raise TypeError(f"model.{f.name} of {cls.__name__} shadows a shared ModelParams knob")
            if f.name in seen and seen[f.name][2].default != f.default:
                raise TypeError(f"model.{f.name} is declared twice with different defaults ({cls.__name__})")
            seen.setdefault(f.name, (f.name, hints[f.name], f))
    return list(seen.values())


def method_knobs(name: str) -> tuple[str, ...]:
    """The names of the knobs method `name` declares for itself (none for an unknown name)."""
    params = METHOD_SPECS[name].params if name in METHOD_SPECS else None
    return tuple(f.name for f in dataclasses.fields(params)) if params is not None else ()


def model_defaults() -> dict:
    """Every `model.*` default: the shared knobs and each method's own."""
    out = dataclasses.asdict(ModelParams())
    for cls in method_param_classes():
        out.update(dataclasses.asdict(cls()))
    return out


def optim_defaults() -> dict:
    return dataclasses.asdict(OptimParams())


def param_problems(model: dict) -> Iterator[tuple[str, str]]:
    """(key, message) for each method-specific knob in `model` that its method's checks refuse."""
    for cls in method_param_classes():
        names = [f.name for f in dataclasses.fields(cls)]
        params = cls(**{n: model[n] for n in names if n in model})
        for name, message in getattr(params, "problems", lambda: ())():
            yield f"model.{name}", message
