"""Registry glue for Trifeatures: where the generated and preprocessed files live, and when to (re)build them."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from . import trifeatures

log = logging.getLogger("infmask.data")


def render_size(cfg) -> int:
    """Size the raw images are rendered at: the paper's 224 px (then resized), or the training size itself."""
    return cfg.data.image_size if cfg.data.render == "native" else trifeatures.DEFAULT_SIZE


def raw_dir(ws, data_seed: int, size: int = trifeatures.DEFAULT_SIZE) -> Path:
    suffix = "" if size == trifeatures.DEFAULT_SIZE else f"_px{size}"
    return ws.raw("trifeatures") / f"seed_{data_seed}{suffix}"


def processed_dir(ws, cfg) -> Path:
    d = cfg.data
    native = "_native" if d.render == "native" else ""
    return ws.processed("trifeatures",
                        f"seed{d.data_seed}_px{d.image_size}{native}_val{d.val_fraction}_max{d.max_size}")


_VERIFIED: set[tuple] = set()


def _stamp(path: Path) -> tuple:
    """Identity of a build as files on disk: any rewrite or truncation changes a size or an mtime."""
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))


def _verified(path: Path) -> bool:
    return path.exists() and (str(path), _stamp(path)) in _VERIFIED


def _ready(path: Path, what: str) -> bool:
    """True when `path` holds a complete, checksum-verified build; a damaged one is removed (rebuilt, never used).
    A build verified earlier in this process and unchanged on disk since is not hashed again (`infmask run`
    checks the data before each of its runs)."""
    if not path.exists():
        return False
    key = (str(path), _stamp(path))
    if key in _VERIFIED:
        return True
    problems = trifeatures.verify(path)
    if not problems:
        _VERIFIED.add(key)
        return True
    log.warning("%s at %s is damaged (%s); rebuilding it", what, path, "; ".join(problems[:3]))
    shutil.rmtree(path)
    return False


def download(ws, entry, *, data_seed: int = 42, force: bool = False, size: int = trifeatures.DEFAULT_SIZE,
             **_) -> Path:
    """Generate the raw set. At a ``size`` other than 224 the images are rendered natively at that size: shapes
    scale with the canvas, the textures keep their 10 px period (so they stay legible at low resolution)."""
    out = raw_dir(ws, data_seed, size)
    if force and out.exists():
        shutil.rmtree(out)
    what = f"seed {data_seed}" + ("" if size == trifeatures.DEFAULT_SIZE else f", rendered at {size} px")
    if _ready(out, "generated Trifeatures set"):
        print(f"trifeatures ({what}) already generated and verified at {out}: nothing to do")
        return out
    info = trifeatures.generate(out, seed=data_seed, size=size)
    print(f"generated trifeatures ({what}) at {out} in {info.get('seconds', float('nan')):.1f} s")
    return out


def preprocess(ws, entry, cfg, *, force: bool = False, **_) -> Path:
    size = render_size(cfg)
    src = raw_dir(ws, cfg.data.data_seed, size)
    if not _ready(src, "generated Trifeatures set"):
        download(ws, None, data_seed=cfg.data.data_seed, size=size)  # generation is local and deterministic
    out = processed_dir(ws, cfg)
    if force and out.exists():
        shutil.rmtree(out)
    if _ready(out, "preprocessed Trifeatures set"):
        print(f"trifeatures preprocessed at {out} already and verified: nothing to do")
        return out
    info = trifeatures.preprocess(src, out, image_size=cfg.data.image_size, val_fraction=cfg.data.val_fraction,
                                  max_size=cfg.data.max_size, data_seed=cfg.data.data_seed)
    print(f"preprocessed trifeatures into {out} in {info.get('seconds', float('nan')):.1f} s")
    return out


def datamodule(ws, cfg):
    from .base import TrifeaturesDataModule

    dm = TrifeaturesDataModule(processed_dir(ws, cfg), biased=cfg.data.biased, batch_size=cfg.data.batch_size,
                                 num_workers=cfg.data.num_workers, image_size=cfg.data.image_size,
                                 probe_random_crop=cfg.data.probe_random_crop,
                                 crop_scale=tuple(cfg.data.crop_scale),
                                 blur_sigma=tuple(cfg.data.blur_sigma),
                                 check_integrity=not _verified(processed_dir(ws, cfg)))
    dm.reference_val_split = "test"  # the reference's val loader is the test split (labelled 'reference' protocol)
    return dm
