"""Short hyper-parameter labels for configs in tables, figure legends and titles: what a reader needs to tell
configs apart (method, mask ratio ρ, temperature τ, biased data), never a hash when anything else can tell them
apart. Works on resolved config dicts (Config.to_dict(), or the config_json the results store keeps)."""
from __future__ import annotations

import json

from ..config import NON_IDENTITY_KEYS

# The keys every label shows (when they apply), in this order; ρ only for methods that mask.
MASKING_METHODS = ("infmasking",)


def parse(config) -> dict:
    if isinstance(config, dict):
        return config
    try:
        return json.loads(config) if config else {}
    except (TypeError, ValueError):
        return {}


def flat(config) -> dict:
    """Dotted identity keys of a config (no seed, no execution-only keys), values as compact text."""
    cfg = parse(config)
    out = {}
    for section, values in cfg.items():
        if section in ("seed", "tracking"):
            continue
        if not isinstance(values, dict):
            out[section] = str(values)
            continue
        skip = NON_IDENTITY_KEYS.get(section, ())
        for key, value in values.items():
            if key not in skip:
                out[f"{section}.{key}"] = json.dumps(value, sort_keys=True, default=str)
    return out


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def short_label(config, *, method: bool = True, biased: bool | None = True) -> str:
    """`infmasking ρ=0.7 τ=0.1 biased`. `biased`: True shows biased/unbiased, None only when biased, False never."""
    cfg = parse(config)
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    parts = [str(cfg.get("method", "?"))] if method else []
    if cfg.get("method") in MASKING_METHODS and "mask_ratio" in model:
        parts.append(f"ρ={_num(model['mask_ratio'])}")
    if "temperature" in model:
        parts.append(f"τ={_num(model['temperature'])}")
    is_biased = bool(data.get("biased", False))
    if biased is True or (biased is None and is_biased):
        parts.append("biased" if is_biased else "unbiased")
    return " ".join(parts)


def distinguishing_labels(configs: dict, *, biased: bool = True) -> dict:
    """{key: label} for several configs: each short label, plus the other keys whose values differ between the
    configs that share it (`lr=0.001`), so that every label is different; a hash prefix only as a last resort."""
    flats = {k: flat(c) for k, c in configs.items()}
    labels = {k: short_label(c, biased=biased) for k, c in configs.items()}
    shown = {"method", "model.mask_ratio", "model.temperature", "data.biased", "benchmark"}
    by_label: dict[str, list] = {}
    for k, label in labels.items():
        by_label.setdefault(label, []).append(k)
    for label, keys in by_label.items():
        if len(keys) < 2:
            continue
        names = [n for n in set().union(*(flats[k] for k in keys)) - shown
                 if len({flats[k].get(n) for k in keys}) > 1]
        chosen: list[str] = []
        for name in sorted(names, key=_priority):   # the fewest, most telling keys that set the configs apart
            blocks = _blocks(keys, flats, chosen)
            if all(len(b) < 2 for b in blocks):
                break
            if any(len({flats[k].get(name) for k in b}) > 1 for b in blocks if len(b) > 1):
                chosen.append(name)
        for k in keys:
            extra = " ".join(f"{n.split('.')[-1]}={_short(flats[k].get(n))}" for n in chosen)
            labels[k] = f"{label} {extra}".strip()
    seen: dict[str, int] = {}
    for label in labels.values():
        seen[label] = seen.get(label, 0) + 1
    return {k: (f"{label} [{str(k if isinstance(k, str) else k[-1])[:6]}]" if seen[label] > 1 else label)
            for k, label in labels.items()}


SECTION_ORDER = ("preset", "optim", "model", "data", "probe", "trainer")


def _priority(name: str) -> tuple:
    head = name.split(".")[0]
    return (SECTION_ORDER.index(head) if head in SECTION_ORDER else len(SECTION_ORDER), name)


def _blocks(keys: list, flats: dict, chosen: list[str]) -> list[list]:
    """The configs grouped by their values of the chosen keys."""
    out: dict[tuple, list] = {}
    for k in keys:
        out.setdefault(tuple(flats[k].get(n) for n in chosen), []).append(k)
    return list(out.values())


def _short(text, width: int = 18) -> str:
    text = str(text).strip('"')
    return text if len(text) <= width else text[: width - 1] + "…"
