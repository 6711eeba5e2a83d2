"""Trifeatures' stages: where the generated and preprocessed files live, and when to (re)build them."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from . import manifest, trifeatures
from .interface import DataPaths, DatasetStages


@dataclass(frozen=True)
class TrifeaturesSettings:
    data_seed: int = 42
    image_size: int = 224
    # Size the raw images are rendered at (then resized to ``image_size``): the paper's 224 px by default.
    # Rendering closer to the training size keeps the textures' period (10 px at the render size) legible.
    render_size: int = trifeatures.DEFAULT_SIZE
    val_fraction: float = 0.1
    max_size: int = 10000
    biased: bool = False
    batch_size: int = 64
    num_workers: int = 0
    probe_random_crop: bool = False
    crop_scale: tuple = (0.08, 1.0)
    blur_sigma: tuple = (0.1, 2.0)


def raw_dir(paths: DataPaths, data_seed: int, size: int = trifeatures.DEFAULT_SIZE) -> Path:
    suffix = "" if size == trifeatures.DEFAULT_SIZE else f"_px{size}"
    return paths.raw / f"seed_{data_seed}{suffix}"


def processed_dir(paths: DataPaths, s: TrifeaturesSettings) -> Path:
    render = "" if s.render_size == trifeatures.DEFAULT_SIZE else f"_render{s.render_size}"
    return paths.processed / f"seed{s.data_seed}_px{s.image_size}{render}_val{s.val_fraction}_max{s.max_size}"


def download(entry, paths: DataPaths, *, data_seed: int = 42, force: bool = False,
             size: int = trifeatures.DEFAULT_SIZE, **_) -> Path:
    """Generate the raw set. At a ``size`` other than 224 the images are rendered natively at that size: shapes
    scale with the canvas, the textures keep their 10 px period (so they stay legible at low resolution)."""
    out = raw_dir(paths, data_seed, size)
    if force and out.exists():
        shutil.rmtree(out)
    what = f"seed {data_seed}" + ("" if size == trifeatures.DEFAULT_SIZE else f", rendered at {size} px")
    if manifest.ready(out, "generated Trifeatures set"):
        print(f"trifeatures ({what}) already generated and verified at {out}: nothing to do")
        return out
    info = trifeatures.generate(out, seed=data_seed, size=size)
    print(f"generated trifeatures ({what}) at {out} in {info.get('seconds', float('nan')):.1f} s")
    return out


def preprocess(entry, paths: DataPaths, s: TrifeaturesSettings, *, force: bool = False, **_) -> Path:
    src = raw_dir(paths, s.data_seed, s.render_size)
    if not manifest.ready(src, "generated Trifeatures set"):
        download(entry, paths, data_seed=s.data_seed, size=s.render_size)  # generation is local and deterministic
    out = processed_dir(paths, s)
    if force and out.exists():
        shutil.rmtree(out)
    if manifest.ready(out, "preprocessed Trifeatures set"):
        print(f"trifeatures preprocessed at {out} already and verified: nothing to do")
        return out
    info = trifeatures.preprocess(src, out, image_size=s.image_size, val_fraction=s.val_fraction,
                                  max_size=s.max_size, data_seed=s.data_seed)
    print(f"preprocessed trifeatures into {out} in {info.get('seconds', float('nan')):.1f} s")
    return out


def datamodule(entry, paths: DataPaths, s: TrifeaturesSettings):
    from .trifeatures_datamodule import TrifeaturesDataModule

    out = processed_dir(paths, s)
    dm = TrifeaturesDataModule(out, biased=s.biased, batch_size=s.batch_size, num_workers=s.num_workers,
                               image_size=s.image_size, probe_random_crop=s.probe_random_crop,
                               crop_scale=tuple(s.crop_scale), blur_sigma=tuple(s.blur_sigma),
                               check_integrity=not manifest.verified_earlier(out))
    dm.reference_val_split = "test"  # the reference's val loader is the test split (labelled 'reference' protocol)
    return dm


STAGES = DatasetStages(settings=TrifeaturesSettings, download=download, preprocess=preprocess,
                       processed_dir=processed_dir, datamodule=datamodule)
