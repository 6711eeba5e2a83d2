"""MM-IMDb's stages: download + safe extraction, the index, the frozen-feature cache, the data module.

Layout (``paths.raw`` = raw/mmimdb, ``paths.processed`` = processed/mmimdb)::

    raw/mmimdb/mmimdb.tar.gz            verified download (trust-on-first-use sha256 in raw/checksums.json, recorded
                                        once the archive lists mmimdb/split.json and no unsafe member; see
                                        data/acquire.py for which record applies to a mirror)
    raw/mmimdb/extracted/mmimdb/...     the archive, extracted all-or-nothing (members with '..' are refused)
    raw/mmimdb/extracted.json           which archive (sha256) the extraction came from
    processed/mmimdb/index_v1/          index.json, labels.npy, manifest.json (data/mmimdb.py)
    processed/mmimdb/index_v1/cache-<key>/   frozen-tower features (data.feature_cache=True); <key> hashes
                                        everything they depend on (towers, image size and normalisation, copies,
                                        text_mask_prob, max_items, data_seed)

The frozen towers' weights are found through ``data.weights_dir`` (or $INFMASK_CLIP_DIR); they are never
downloaded (models/clip_towers.py). This is the one place the data layer reaches down into ``infmask.models``
(imported where used): the stages need the towers' tokenizer, their input size and width to check the config
against, and the towers themselves to fill the feature cache. The data module and its datasets do not.
Missing data or weights are ``DatasetError``s that say what to fetch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import mmimdb
from .durable import atomic_write_text
from .interface import DataPaths, DatasetError, DatasetStages

log = logging.getLogger("infmask.data")

IMAGE_ENCODER, TEXT_ENCODER = "clip_image", "clip_text"


@dataclass(frozen=True)
class MMIMDbSettings:
    modalities: tuple | list = ()   # the model's modalities: the image tower, then the text tower (encoder kwargs)
    weights_dir: str | None = None  # where the towers' weights are, unless an encoder's own weights_dir says
    image_size: int = 224
    image_norm: str = "imagenet"
    text_mask_prob: float = 0.15
    max_items: int | None = None
    data_seed: int = 42
    batch_size: int = 64
    num_workers: int = 0
    crop_scale: tuple = (0.08, 1.0)
    feature_cache: bool = False
    cache_copies: int = 2
    accelerator: str = "auto"       # where the cache's towers run: as training would
    precision: str = "auto"


def raw_dir(paths: DataPaths) -> Path:
    return paths.raw


def index_dir(paths: DataPaths) -> Path:
    return paths.processed / f"index_v{mmimdb.INDEX_VERSION}"



# ------------------------------------------------------------------------------------------------------- download

def _marker(raw: Path) -> Path:
    return raw / "extracted.json"


def _read_marker(raw: Path) -> dict:
    try:
        return json.loads(_marker(raw).read_text())
    except (OSError, ValueError):
        return {}


def _archive_check(path: Path) -> None:
    """The content check of the MM-IMDb archive: safe members, and the split file among them."""
    from .safe_io import list_archive

    if not any(n == "split.json" or n.endswith("/split.json") for n in list_archive(path)):
        raise ValueError("the archive holds no split.json; it is not the MM-IMDb archive")


def download(entry, paths: DataPaths, *, data_seed: int = 42, force: bool = False, base_url: str | None = None,
             **_) -> Path:
    from . import acquire, fetch, safe_io
    from .trust_store import TrustStoreError
    from .urls import BadMirrorURL

    raw = raw_dir(paths)
    f = entry.files[0]
    archive, extracted = raw / f.name, raw / "extracted"
    if force:
        shutil.rmtree(extracted, ignore_errors=True)
        _marker(raw).unlink(missing_ok=True)
        for p in (archive, archive.with_name(archive.name + ".verified.json")):
            p.unlink(missing_ok=True)
    marker = _read_marker(raw)
    if not archive.exists() and marker and mmimdb.find_source(raw) is not None:
        print(f"mmimdb already extracted at {extracted} (archive sha256 {marker.get('sha256', '?')[:12]}…, "
              "archive since removed): nothing to do")
        return extracted
    try:
        sha, source, _ = acquire.obtain(paths.checksums, entry.name, f, archive, base_url=base_url,
                                        check=_archive_check)
    except (BadMirrorURL, TrustStoreError) as e:
        raise DatasetError(str(e)) from None
    except fetch.ChecksumError as e:
        raise DatasetError(f"{f.name}: {e}") from None
    except fetch.DownloadError as e:
        raise DatasetError(f"downloading {f.name} failed: {e}") from None
    if marker.get("sha256") == sha and mmimdb.find_source(raw) is not None:
        print(f"mmimdb archive verified (sha256 {sha[:12]}…) and already extracted at {extracted}: nothing to do")
        return extracted
    try:
        safe_io.safe_extract(archive, extracted, overwrite=True)
    except safe_io.UnsafeArchiveError as e:
        raise DatasetError(f"{e}. The archive at {archive} is not the MM-IMDb release; delete it (and its record in "
                     f"{paths.checksums}) before downloading again") from None
    except safe_io.ArchiveError as e:
        raise DatasetError(str(e)) from None
    if mmimdb.find_source(raw) is None:
        raise DatasetError(f"{archive} extracted to {extracted} but holds no mmimdb/split.json + mmimdb/dataset/; it is "
                     "not the MM-IMDb archive")
    atomic_write_text(_marker(raw), json.dumps({"archive": f.name, "sha256": sha, "url": source}, indent=1))
    print(f"downloaded and extracted mmimdb into {extracted} (archive sha256 {sha[:12]}…)")
    return extracted


# ----------------------------------------------------------------------------------------------------- weights

def _tower_kwargs(s: MMIMDbSettings) -> tuple[dict, dict]:
    mods = list(s.modalities)
    names = [m.get("encoder") for m in mods]
    if names != [IMAGE_ENCODER, TEXT_ENCODER]:
        raise DatasetError(f"model.modalities: MM-IMDb needs the encoders [{IMAGE_ENCODER}, {TEXT_ENCODER}] in this "
                     f"order (image, text), got {names}")
    return dict(mods[0].get("encoder_kwargs") or {}), dict(mods[1].get("encoder_kwargs") or {})


def tower_paths(s: MMIMDbSettings) -> tuple[Path, Path]:
    """Local directories of the image and text towers; a ``DatasetError`` naming what to fetch when absent."""
    from infmask.models import clip_towers as ct

    img_kw, txt_kw = _tower_kwargs(s)
    try:
        return tuple(ct.resolve_weights(kw.get("weights", ct.DEFAULT_WEIGHTS),
                                        kw.get("weights_dir") or s.weights_dir) for kw in (img_kw, txt_kw))
    except ct.MissingWeightsError as e:
        raise DatasetError(str(e)) from None


def _weights_note(s: MMIMDbSettings) -> str:
    try:
        tower_paths(s)
        return ""
    except Exception as e:  # the data is missing too: say both at once
        return f" Pretraining will also need the frozen towers: {e}"


# --------------------------------------------------------------------------------------------------- preprocess

def _index_params(paths: DataPaths) -> dict:
    raw = raw_dir(paths)
    src = mmimdb.find_source(raw)
    return {"source": str(src.relative_to(raw)) if src else None, "archive_sha256": _read_marker(raw).get("sha256")}


def _ensure_index(paths: DataPaths, s: MMIMDbSettings, force: bool) -> Path:
    raw = raw_dir(paths)
    src = mmimdb.find_source(raw)
    if src is None:
        raise DatasetError(f"no extracted MM-IMDb under {raw}; run `infmask download mmimdb` first (about 8 GB from "
                     f"archive.org; --base-url for a mirror).{_weights_note(s)}")
    out = index_dir(paths)
    if force and out.exists():
        shutil.rmtree(out)
    params = _index_params(paths)
    problems = mmimdb.verify(out, expect=params) if out.exists() else ["missing"]
    if not problems:
        return out
    if out.exists():
        log.warning("mmimdb index at %s is stale or damaged (%s); rebuilding it", out, "; ".join(problems[:3]))
    try:
        info = mmimdb.build_index(src, out, raw, params=params)
    except ValueError as e:
        raise DatasetError(f"cannot build the MM-IMDb index from {src}: {e}") from None
    c, skipped = info["counts"], info["skipped"]
    why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
    print(f"indexed mmimdb into {out} in {info['seconds']:.1f} s: train {c['train']}, val {c['val']}, test "
          f"{c['test']}" + (f"; skipped {sum(skipped.values())} ({why})" if skipped else ""))
    return out


def preprocess(entry, paths: DataPaths, s: MMIMDbSettings, *, force: bool = False, **_) -> Path:
    out = _ensure_index(paths, s, force)
    if s.feature_cache:
        _ensure_cache(paths, s, force=force)
    return out


def processed_dir(paths: DataPaths, s: MMIMDbSettings) -> Path:
    return index_dir(paths)


# ------------------------------------------------------------------------------------------------- data module

def _online_datamodule(paths: DataPaths, s: MMIMDbSettings):
    from infmask.models import clip_towers as ct

    from .mmimdb_datamodule import MMIMDbDataModule

    img_path, txt_path = tower_paths(s)
    vision = json.loads((img_path / "config.json").read_text())
    vision = vision.get("vision_config", vision)
    size = vision.get("image_size")
    if size not in (None, s.image_size):
        raise DatasetError(f"data.image_size={s.image_size} but the CLIP vision tower in {img_path} takes {size}x{size} "
                     f"images; set data.image_size={size}")
    img_kw, txt_kw = _tower_kwargs(s)
    for what, kw, path, cls in (("image", img_kw, img_path, ct.ClipImageEncoder),
                                ("text", txt_kw, txt_path, ct.ClipTextEncoder)):
        width = cls._read_width(path)
        if kw.get("width") not in (None, width):
            raise DatasetError(f"model.modalities: the {what} tower in {path} is {width} wide but its encoder_kwargs say "
                         f"width={kw['width']}; set width: {width}")
    try:
        tokenizer = ct.load_tokenizer(txt_path)
        max_length = ct.text_max_length(txt_path, tokenizer)
        return MMIMDbDataModule(
            index_dir(paths), raw_dir(paths), tokenizer=tokenizer, max_length=max_length,
            text_mask_prob=s.text_mask_prob, image_size=s.image_size, image_norm=s.image_norm,
            max_items=s.max_items, data_seed=s.data_seed, batch_size=s.batch_size, num_workers=s.num_workers,
            crop_scale=tuple(s.crop_scale))
    except (ValueError, OSError) as e:
        raise DatasetError(f"cannot set up MM-IMDb from {index_dir(paths)} with the towers in {txt_path}: {e}") from None


def cache_key(paths: DataPaths, s: MMIMDbSettings, dm) -> tuple[str, dict]:
    from infmask.models import clip_towers as ct

    img_path, txt_path = tower_paths(s)
    img_kw, txt_kw = _tower_kwargs(s)
    index_manifest = mmimdb.read_manifest(index_dir(paths))
    params = {"version": mmimdb.CACHE_VERSION, "index_sha256": index_manifest["files"]["index.json"]["sha256"],
              "max_items": s.max_items, "data_seed": s.data_seed, "image_size": s.image_size,
              "image_norm": s.image_norm, "copies": s.cache_copies,
              "text_mask_prob": s.text_mask_prob, "mask_id": dm.masker.mask_id, "max_length": dm.max_length,
              "image_weights": [img_kw.get("weights", ct.DEFAULT_WEIGHTS), ct.weights_fingerprint(img_path)],
              "text_weights": [txt_kw.get("weights", ct.DEFAULT_WEIGHTS), ct.weights_fingerprint(txt_path)],
              "dtype": _cache_dtype(s)[1]}
    key = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return key, params


def _cache_device(s: MMIMDbSettings):
    import torch

    want = torch.cuda.is_available() and s.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if want else "cpu")


def _cache_dtype(s: MMIMDbSettings):
    """Tower precision while caching: bf16 where training would run bf16-mixed (CUDA, precision auto), else fp32."""
    import torch

    if _cache_device(s).type == "cuda" and s.precision in ("auto", "bf16-mixed", "bf16-true"):
        return torch.bfloat16, "bf16"
    return None, "fp32"


def cache_dir(paths: DataPaths, s: MMIMDbSettings, dm=None) -> Path:
    dm = dm or _online_datamodule(paths, s)
    return index_dir(paths) / f"cache-{cache_key(paths, s, dm)[0]}"


def _ensure_cache(paths: DataPaths, s: MMIMDbSettings, force: bool = False) -> Path:
    from infmask.models import clip_towers as ct

    from .mmimdb_cache import build_feature_cache

    # s.cache_copies is checked with the config (an even number >= 2)
    dm = _online_datamodule(paths, s)
    key, params = cache_key(paths, s, dm)
    out = index_dir(paths) / f"cache-{key}"
    if force and out.exists():
        shutil.rmtree(out)
    problems = mmimdb.verify(out, expect=params, deep=False) if out.exists() else ["missing"]
    if not problems:
        return out
    img_kw, txt_kw = _tower_kwargs(s)
    towers = [cls(weights=kw.get("weights", ct.DEFAULT_WEIGHTS), weights_dir=kw.get("weights_dir") or s.weights_dir,
                  width=kw.get("width")) for cls, kw in ((ct.ClipImageEncoder, img_kw), (ct.ClipTextEncoder, txt_kw))]
    device = _cache_device(s)
    dtype = _cache_dtype(s)[0]
    print(f"caching frozen-tower features for mmimdb ({s.cache_copies} augmented copies per item, on {device}) "
          f"into {out}", flush=True)
    info = build_feature_cache(dm, out, *towers, copies=s.cache_copies, params=params, device=device,
                               autocast_dtype=dtype, seed=s.data_seed,
                               batch_size=max(s.batch_size, 256 if device.type == "cuda" else 64),
                               num_workers=s.num_workers)
    counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items())
    print(f"cached mmimdb features in {info['seconds']:.1f} s ({counts})")
    return out


def datamodule(entry, paths: DataPaths, s: MMIMDbSettings):
    from .mmimdb_datamodule import MMIMDbDataModule

    dm = _online_datamodule(paths, s)
    if not s.feature_cache:
        return dm
    out = _ensure_cache(paths, s)
    return MMIMDbDataModule(index_dir(paths), raw_dir(paths), tokenizer=dm.tokenizer, max_length=dm.max_length,
                            text_mask_prob=s.text_mask_prob, image_size=s.image_size, image_norm=s.image_norm,
                            max_items=s.max_items, data_seed=s.data_seed, cache_dir=out, batch_size=s.batch_size,
                            num_workers=s.num_workers, crop_scale=tuple(s.crop_scale))


STAGES = DatasetStages(settings=MMIMDbSettings, download=download, preprocess=preprocess,
                       processed_dir=processed_dir, datamodule=datamodule, builds_by_processed_dir=False)
